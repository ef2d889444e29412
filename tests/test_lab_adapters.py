"""The real lab adapters: FileDropLab (order sheets out, results files in) and HttpLab against the
reference lab server on 127.0.0.1: idempotent submission, partial results, every validation error,
retries on 5xx and timeouts, no retry on 4xx; and the lab config."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from lab_adapters import FileDropLab, JobRef, LabError, LabResult, make_lab
from lab_adapters.http import HttpLab
from lab_adapters.http_server import LabServer
from perturbloop.config import parse_config
from perturbloop.data.screens import Screen
from perturbloop.errors import (ConfigError, LabAdapterError, LabRequestError, LabResultError, LabSubmissionError,
                                LabUnavailableError, PerturbloopError)
from simulators import ScreenReplay

BATCH = ["VAV1", "CD3G", "LAT", "ZAP70"]
KEY = "c1/round-0"


@pytest.fixture
def lab(tmp_path: Path) -> FileDropLab:
    """A file-drop lab that reads files as soon as they are written (no `min_age` wait)."""
    return FileDropLab(tmp_path / "outbox", tmp_path / "inbox", min_age=0)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _results(lab: FileDropLab, name: str, text: str) -> Path:
    return _write(lab.inbox / name, text)


# --- FileDropLab: order sheets -------------------------------------------------------------------

def test_submit_writes_one_order_sheet_and_is_idempotent(lab):
    job = lab.submit(KEY, BATCH + ["CD3G+LAT"])
    assert job == JobRef("filedrop", "c1_round-0", KEY)
    sheet = lab.outbox / "c1_round-0.order.csv"
    rows = list(csv.DictReader(sheet.open()))
    assert list(rows[0]) == ["round", "perturbation", "genes", "idempotency_key"]
    assert [r["perturbation"] for r in rows] == BATCH + ["CD3G+LAT"]
    assert rows[-1] == {"round": "round-0", "perturbation": "CD3G+LAT", "genes": "CD3G;LAT", "idempotency_key": KEY}
    # written atomically: no temp file is left; only the sheet is visible to the lab
    assert sorted(p.name for p in lab.outbox.iterdir() if not p.name.startswith(".")) == ["c1_round-0.order.csv"]
    assert not list(lab.outbox.rglob("*.tmp"))

    mtime = sheet.stat().st_mtime_ns
    assert lab.submit(KEY, BATCH + ["CD3G+LAT"]) == job
    assert sheet.stat().st_mtime_ns == mtime
    with pytest.raises(LabSubmissionError, match="already submitted with a different batch"):
        lab.submit(KEY, ["VAV1"])
    # the lab took the sheet away: resubmitting the key does not order the batch again
    sheet.rename(lab.outbox.parent / "taken.csv")
    assert lab.submit(KEY, BATCH + ["CD3G+LAT"]) == job
    assert not sheet.exists()
    # ... and a new process (new adapter) knows the job too
    assert FileDropLab(lab.outbox, lab.inbox, min_age=0).poll(job) == "submitted"


def test_unknown_job_and_missing_folder(lab, tmp_path):
    with pytest.raises(LabAdapterError, match="unknown job nope: no order sheet"):
        lab.poll(JobRef("filedrop", "nope", "k"))
    with pytest.raises(ConfigError, match="does not exist"):
        FileDropLab(tmp_path / "no" / "such" / "outbox", tmp_path / "inbox")


# --- FileDropLab: results ------------------------------------------------------------------------

def test_partial_then_final_results(lab):
    job = lab.submit(KEY, BATCH)
    assert lab.poll(job) == "submitted" and lab.collect(job) == {}
    _results(lab, ".c1_round-0.partial-1.csv", "perturbation,value\nVAV1,1\n")  # still being written: ignored
    _results(lab, "c1_round-0.partial-1.csv.tmp", "perturbation,value\nVAV1,1\n")
    assert lab.poll(job) == "submitted"

    _results(lab, "c1_round-0.partial-1.csv", "perturbation,value,replicate_1,replicate_2\nvav1,-3.6,-3.7,-3.5\nCD3G,-3.2,,\n")
    assert lab.poll(job) == "partial"
    res = lab.collect(job)
    assert res == {"VAV1": LabResult("VAV1", -3.6, [-3.7, -3.5]), "CD3G": LabResult("CD3G", -3.2, [])}

    # the final file brings the rest; repeating a row already delivered (identically) is fine
    _results(lab, "c1_round-0.results.csv", "perturbation,value,error,note\nLAT,0.4,,\nZAP70,,no cells,plate 2 lost\nCD3G,-3.2,,\n")
    assert lab.poll(job) == "complete"
    res = lab.collect(job)
    assert set(res) == set(BATCH)
    assert res["ZAP70"] == LabError("ZAP70", "no cells") and res["LAT"] == LabResult("LAT", 0.4, [])


def test_partial_files_covering_the_batch_complete_it(lab):
    job = lab.submit(KEY, ["VAV1", "CD3G"])
    _results(lab, "c1_round-0.partial-a.csv", "perturbation,value\nVAV1,1.5\n")
    _results(lab, "c1_round-0.partial-b.csv", "\ufeffperturbation,value\r\nCD3G,2.5\r\n")  # Excel: BOM, CRLF
    assert lab.poll(job) == "complete"
    assert lab.collect(job)["CD3G"].value == 2.5


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("results.csv", "perturbation,value\nVAV1,1\nCD3G,2\nLAT,3\nNOTAGENE,4\nZAP70,5\n",
         r"line 5 \(NOTAGENE\): not in the order"),
        ("results.csv", "perturbation,value\nVAV1,1\nCD3G,2\n", r"no result for 2 ordered perturbation\(s\): LAT, ZAP70"),
        ("partial-1.csv", "perturbation,value\nVAV1,nan\nCD3G,abc\nLAT,\nZAP70,1,2\n",
         r"(?s)4 problem\(s\).*line 2 \(VAV1\): value 'nan' is not a finite number.*"
         r"line 3 \(CD3G\): value 'abc' is not a finite number.*line 4 \(LAT\): value is empty.*"
         r"line 5: more fields than the header"),
        ("partial-1.csv", "perturbation,value,replicate_1\nVAV1,1,x\n", r"line 2 \(VAV1\): replicate_1 'x' is not a finite number"),
        ("partial-1.csv", "gene,score\nVAV1,1\n", r"missing column\(s\) perturbation, value; unknown column\(s\) gene, score"),
        ("partial-1.csv", "perturbation,value,comment\nVAV1,1,x\n", r"unknown column\(s\) comment"),
        ("partial-1.csv", "perturbation;value\nVAV1;1\n", r"separated by ';'"),
        ("partial-1.csv", "", "empty file"),
        ("partial-1.csv", "perturbation,value\nVAV1,1\nvav1,2\n", r"line 3 \(vav1\): conflicts with line 2"),
        ("results.xlsx", "binary", "unsupported results format"),
        ("results-v2.csv", "perturbation,value\n", "unexpected name"),
        ("results.h5ad", "not hdf5", "not a readable .h5ad"),
    ],
)
def test_bad_results_file_is_a_clear_error(lab, name, text, message):
    job = lab.submit(KEY, BATCH)
    path = _results(lab, f"c1_round-0.{name}", text)
    for call in (lab.poll, lab.collect):
        with pytest.raises(LabResultError, match=message) as err:
            call(job)
        assert str(path) in str(err.value) and isinstance(err.value, PerturbloopError)


def test_conflicting_deliveries_across_files(lab):
    job = lab.submit(KEY, BATCH)
    _results(lab, "c1_round-0.partial-1.csv", "perturbation,value\nVAV1,1\n")
    _results(lab, "c1_round-0.partial-2.csv", "perturbation,value\nVAV1,2\n")
    with pytest.raises(LabResultError, match=r"partial-2.csv: line 2 \(VAV1\): conflicts with .*partial-1.csv line 2"):
        lab.poll(job)


def test_changed_redelivery_of_a_read_result_is_a_conflict_naming_file_and_line(lab):
    job = lab.submit(KEY, BATCH)
    part = _results(lab, "c1_round-0.partial-1.csv", "perturbation,value\nVAV1,1\nCD3G,2\n")  # cut short by the lab
    assert set(lab.collect(job)) == {"VAV1", "CD3G"}
    # the corrected re-delivery changes a result already read (and handed to the campaign): refused, loudly
    _results(lab, "c1_round-0.partial-1.csv", "perturbation,value\nVAV1,1\nCD3G,2.75\nLAT,3\n")
    for call in (lab.poll, lab.collect):
        with pytest.raises(LabResultError, match=r"partial-1.csv: line 3 \(CD3G\): value 2.75 differs from value 2.0 "
                                                 r"read from c1_round-0.partial-1.csv line 3 at an earlier run") as err:
            call(job)
        assert str(part) in str(err.value)
    # also when the changed row comes in another file (here: as a failure), and in a new process
    _results(lab, "c1_round-0.partial-1.csv", "perturbation,value\nVAV1,1\nCD3G,2\n")
    _results(lab, "c1_round-0.results.csv", "perturbation,value,error\nLAT,3,\nZAP70,4,\nVAV1,,no cells\n")
    with pytest.raises(LabResultError, match=r"results.csv: line 4 \(VAV1\): conflicts with"):
        lab.poll(job)
    (lab.inbox / "c1_round-0.partial-1.csv").unlink()
    with pytest.raises(LabResultError, match=r"results.csv: line 4 \(VAV1\): error 'no cells' differs from value 1.0"):
        FileDropLab(lab.outbox, lab.inbox, min_age=0).poll(job)
    # rows repeated unchanged are fine
    _results(lab, "c1_round-0.results.csv", "perturbation,value\nLAT,3\nZAP70,4\nVAV1,1\nCD3G,2\n")
    assert lab.poll(job) == "complete" and lab.collect(job)["CD3G"] == LabResult("CD3G", 2.0, [])


def test_files_still_being_written_are_left_for_later(tmp_path):
    lab = FileDropLab(tmp_path / "outbox", tmp_path / "inbox", min_age=60)
    job = lab.submit(KEY, BATCH)
    path = _results(lab, "c1_round-0.partial-1.csv", "perturbation,value\nVAV1,1\n")
    assert lab.poll(job) == "submitted" and lab.collect(job) == {}
    assert "modified" in lab.skipped[path]
    old = time.time() - 120  # as if written two minutes ago (no sleeping in tests)
    os.utime(path, (old, old))
    assert lab.poll(job) == "partial" and not lab.skipped
    # a file without a final newline may end in a row cut short ("2" of "2.75"): not read until it ends
    _write(path, "perturbation,value\nVAV1,1\nCD3G,2")
    os.utime(path, (old, old))
    assert set(lab.collect(job)) == set() and "newline" in lab.skipped[path]
    _write(path, "perturbation,value\nVAV1,1\nCD3G,2.75\n")
    os.utime(path, (old, old))
    assert lab.collect(job)["CD3G"].value == 2.75
    with pytest.raises(ValueError, match="min_age"):
        FileDropLab(tmp_path / "outbox", tmp_path / "inbox", min_age=-1)


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_symlinks_in_the_inbox_are_refused_unread(lab, tmp_path, target):
    job = lab.submit(KEY, BATCH)
    secret = tmp_path / "secret.txt" if target == "outside" else lab.inbox / "c1_notes.txt"
    secret.write_text("root:x:0:0:top-secret-line\n")
    link = lab.inbox / "c1_round-0.partial-1.csv"
    link.symlink_to(secret)
    for call in (lab.poll, lab.collect):
        with pytest.raises(LabResultError, match="symbolic link") as err:
            call(job)
        assert str(link) in str(err.value) and "top-secret" not in str(err.value)
    link.unlink()
    (lab.inbox / "c1_round-0.results.csv").symlink_to(tmp_path / "missing.csv")  # a dangling link too
    with pytest.raises(LabResultError, match="symbolic link"):
        lab.poll(job)


def test_huge_field_is_a_lab_result_error_naming_the_file(lab):
    job = lab.submit(KEY, BATCH)
    path = _results(lab, "c1_round-0.partial-1.csv", "perturbation,value,note\nVAV1,1,ok\nCD3G,2," + "x" * 200_000 + "\n")
    with pytest.raises(LabResultError, match=r"line 3: not readable as CSV \(field larger than field limit") as err:
        lab.poll(job)
    assert str(path) in str(err.value) and len(str(err.value)) < 1_000


def test_result_file_names_of_campaigns_sharing_an_inbox_do_not_collide(lab):
    a = lab.submit("a/round-1", ["VAV1", "CD3G"])  # job a_round-1
    b = lab.submit("a_round-1.partial-x/round-0", ["LAT", "ZAP70"])  # job a_round-1.partial-x_round-0
    assert (a.external_id, b.external_id) == ("a_round-1", "a_round-1.partial-x_round-0")
    _results(lab, "a_round-1.partial-x_round-0.results.csv", "perturbation,value\nLAT,1\nZAP70,2\n")
    assert lab.poll(a) == "submitted" and lab.collect(a) == {}
    assert lab.poll(b) == "complete" and set(lab.collect(b)) == {"LAT", "ZAP70"}
    # today's names keep working where they are unambiguous, a dotted partial tag included
    _results(lab, "a_round-1.partial.plate-1.csv", "perturbation,value\nVAV1,1\n")
    _results(lab, "a_round-1.partial_2.csv", "perturbation,value\nCD3G,2\n")
    assert lab.poll(a) == "complete" and lab.poll(b) == "complete"
    from lab_adapters.filedrop import parse_result_name

    assert parse_result_name("a_round-1.partial-x_round-0.results.csv") == ("a_round-1.partial-x_round-0", "results")
    assert parse_result_name("a_round-1.partial.plate-1.csv") == ("a_round-1", "partial.plate-1")
    assert parse_result_name("il2.v2_round-0.partial-1.h5ad") == ("il2.v2_round-0", "partial-1")
    assert parse_result_name("a_round-1.results-v2.csv") is None and parse_result_name("a_round-1.order.csv") is None


def test_order_sheets_escape_spreadsheet_formulas_and_results_read_back(lab):
    batch = ["=HYPERLINK(\"X\")", "+SUM(A1)", "-ABC", "@CMD", "VAV1", "CD3G+=EVIL"]
    job = lab.submit(KEY, batch)
    text = lab.order_path(job).read_text()
    rows = list(csv.reader(text.splitlines()))[1:]
    cells = [c for row in rows for c in row]
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)
    assert [r[1] for r in rows] == ["'=HYPERLINK(\"X\")", "'+SUM(A1)", "'-ABC", "'@CMD", "VAV1", "CD3G+=EVIL"]
    assert lab.submit(KEY, batch) == job  # the escaped sheet reads back as the same batch
    (lab.outbox / ".perturbloop" / f"{job.external_id}.order.csv").unlink()
    assert lab.submit(KEY, batch) == job
    # the lab may return the labels escaped or not (a spreadsheet drops the quote when it saves)
    _results(lab, "c1_round-0.results.csv", "perturbation,value\n'=HYPERLINK(\"X\"),1\n+SUM(A1),2\n'-ABC,3\n@cmd,4\n"
                                            "VAV1,5\n=EVIL+CD3G,6\n")
    res = lab.collect(job)
    assert {k: v.value for k, v in res.items()} == dict(zip(batch, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))


def test_gene_ctrl_is_not_the_control(lab, server):
    import anndata as ad

    from lab_adapters.http import parse_results
    from perturbloop.perturbation import Perturbation, lab_label

    # one canonicaliser: `ctrl` (lower case) is the control, and a control part is dropped (GEARS `A+ctrl`)
    assert (lab_label("CTRL"), lab_label("ctrl"), lab_label("ctrl+vav1")) == ("CTRL", "ctrl", "VAV1")
    assert Perturbation.parse("CTRL").label == "CTRL" and Perturbation.parse("VAV1+ctrl").label == "VAV1"
    # Perturb-seq: cells of the gene CTRL and control cells stay apart
    job = lab.submit(KEY, ["VAV1", "CTRL"])
    labels = ["VAV1"] * 3 + ["CTRL"] * 4 + ["ctrl"] * 2
    adata = ad.AnnData(np.ones((len(labels), 3), dtype=np.float32),
                       obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]))
    adata.write_h5ad(lab.inbox / "c1_round-0.results.h5ad")
    res = lab.collect(job)
    assert set(res) == {"VAV1", "CTRL", "ctrl"}
    assert (res["CTRL"].cells.n_obs, res["ctrl"].cells.n_obs) == (4, 2)
    other = lab.submit("c1/round-1", ["VAV1"])  # control cells labelled CTRL: that gene was not ordered
    adata.write_h5ad(lab.inbox / "c1_round-1.results.h5ad")
    with pytest.raises(LabResultError, match=r"not in the order for this job: CTRL \(label control cells exactly 'ctrl'"):
        lab.poll(other)
    # HTTP: a results payload naming the gene CTRL is accepted (and control is not a result)
    out = parse_results({"results": [{"perturbation": "CTRL", "value": 1.5}, {"perturbation": "VAV1", "value": 2.0}]}, "src")
    assert out == {"CTRL": LabResult("CTRL", 1.5, []), "VAV1": LabResult("VAV1", 2.0, [])}
    with pytest.raises(LabResultError, match=r"result 0 \(ctrl\): not in the batch"):
        parse_results({"results": [{"perturbation": "ctrl", "value": 1.0}]}, "src")
    http = _client(server)
    job = http.submit(KEY, ["CTRL", "VAV1"])
    assert set(http.collect(job)) == {"CTRL", "VAV1"}


def test_perturbseq_results_as_h5ad(lab):
    import anndata as ad

    job = lab.submit(KEY, ["VAV1", "CD3G", "LAT"])
    labels = ["VAV1"] * 3 + ["ctrl"] * 2 + ["cd3g"] * 4
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(1.0, (len(labels), 5)).astype(np.float32),
                       obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]))
    adata.write_h5ad(lab.inbox / "c1_round-0.partial-1.h5ad")
    assert lab.poll(job) == "partial"
    res = lab.collect(job)
    assert set(res) == {"VAV1", "CD3G", "ctrl"}
    assert res["VAV1"].value is None and res["VAV1"].cells.n_obs == 3 and res["CD3G"].cells.n_obs == 4
    assert res["ctrl"].cells.n_obs == 2

    bad = adata.copy()
    bad.obs = bad.obs.rename(columns={"perturbation": "target"})
    bad.write_h5ad(lab.inbox / "c1_round-0.results.h5ad")
    with pytest.raises(LabResultError, match="obs has no 'perturbation' column"):
        lab.poll(job)
    adata.obs["perturbation"] = ["LAT"] * 3 + ["ctrl"] * 2 + ["NOTAGENE"] * 4
    adata.write_h5ad(lab.inbox / "c1_round-0.results.h5ad")
    with pytest.raises(LabResultError, match="not in the order for this job: NOTAGENE"):
        lab.poll(job)


# --- HttpLab against the reference server --------------------------------------------------------

@pytest.fixture(scope="module")
def world() -> ScreenReplay:
    genes = BATCH + ["CD28"]
    scores = pd.Series([-3.6, -3.2, -2.9, -2.5, 0.1], index=genes)
    reps = pd.DataFrame({"d1": scores - 0.1, "d2": scores + 0.1})
    return ScreenReplay(Screen("toy", scores, reps), hit_fraction=0.4)


@pytest.fixture
def server(world):
    with LabServer(world, token="s3cret") as s:
        yield s


def _client(server: LabServer, **kw) -> HttpLab:
    kw.setdefault("backoff", 0.01)
    return HttpLab(server.url, kw.pop("token", "s3cret"), **kw)


def test_http_round_trip_and_idempotent_resubmit(server):
    lab = _client(server)
    job = lab.submit(KEY, BATCH + ["NOTAGENE"])
    assert job.adapter == "http" and job.idempotency_key == KEY
    again = lab.submit(KEY, BATCH + ["NOTAGENE"])
    assert again == job and len(server.jobs) == 1
    post = [r for r in server.requests if r[0] == "POST"]
    assert [r[2] for r in post] == [201, 200]
    assert lab.poll(job) == "complete"
    res = lab.collect(job)
    assert res["VAV1"] == LabResult("VAV1", -3.6, [pytest.approx(-3.7), pytest.approx(-3.5)])
    assert isinstance(res["NOTAGENE"], LabError) and "not measured" in res["NOTAGENE"].reason
    with pytest.raises(LabSubmissionError, match="409.*different batch"):
        lab.submit(KEY, ["VAV1"])
    assert "s3cret" not in repr(lab)


def test_http_partial_results(world):
    with LabServer(world, auto_release=False) as server:
        lab = _client(server, token=None)
        job = lab.submit(KEY, BATCH)
        assert lab.poll(job) == "submitted" and lab.collect(job) == {}
        server.release(job.external_id, ["VAV1", "LAT"])
        assert lab.poll(job) == "partial" and set(lab.collect(job)) == {"VAV1", "LAT"}
        server.release(job.external_id)
        assert lab.poll(job) == "complete" and set(lab.collect(job)) == set(BATCH)


def test_http_retries_5xx_then_succeeds(server):
    server.fail_next, server.fail_status = 2, 503
    lab = _client(server, retries=3)
    job = lab.submit(KEY, BATCH)
    assert [r[2] for r in server.requests] == [503, 503, 201]
    assert lab.poll(job) == "complete"


def test_http_gives_up_after_retries(server):
    server.fail_next = 10
    lab = _client(server, retries=2)
    with pytest.raises(LabUnavailableError, match=r"POST .*/jobs: no answer after 3 attempt\(s\); last: HTTP 500"):
        lab.submit(KEY, BATCH)
    assert len(server.requests) == 3


def test_http_4xx_is_not_retried(server):
    lab = _client(server, retries=3)
    with pytest.raises(LabRequestError, match="HTTP 404: no job 'job-nope'") as err:
        lab.poll(JobRef("http", "job-nope", KEY))
    assert err.value.status == 404 and len(server.requests) == 1
    wrong = HttpLab(server.url, "tok-xyz", backoff=0.01, token_hint="LAB_TOKEN")
    with pytest.raises(LabRequestError, match=r"HTTP 401.*check the lab token in \$LAB_TOKEN") as err:
        wrong.submit(KEY, BATCH)
    assert "tok-xyz" not in str(err.value) and not server.jobs and len(server.requests) == 2


def test_http_timeout_is_retried_then_fails_clearly(server):
    lab = _client(server, timeout=0.2, retries=1)
    server.delay_next, server.delay_seconds = 1, 0.6  # the first answer comes too late: retried
    job = lab.submit(KEY, BATCH)
    assert len(server.jobs) == 1  # the late first POST and its retry are one job (idempotency key)
    server.delay_next = 5
    t0 = time.perf_counter()
    with pytest.raises(LabUnavailableError, match=r"GET .*/jobs/job-00001: no answer after 2 attempt\(s\); last: timed out after 0.2 s"):
        lab.poll(job)
    assert time.perf_counter() - t0 < 2


def test_http_unreachable_lab(world):
    server = LabServer(world).start()
    url = server.url
    server.stop()
    lab = HttpLab(url, retries=1, backoff=0.01)
    with pytest.raises(LabUnavailableError, match="connection failed"):
        lab.submit(KEY, BATCH)


def test_http_bad_results_payload_is_a_clear_error(server, monkeypatch):
    lab = _client(server)
    job = lab.submit(KEY, BATCH)
    src = server.jobs[job.external_id]
    results = [{"perturbation": "VAV1", "value": "abc"}, {"perturbation": "NOTAGENE", "value": 1.0},
               {"perturbation": "LAT", "value": float("nan")}, {"value": 2}]
    monkeypatch.setattr(type(src), "results", lambda self: results)
    with pytest.raises(LabResultError, match=r"(?s)4 problem\(s\).*result 0 \(VAV1\): value 'abc' is not a finite number.*"
                                             r"result 1 \(NOTAGENE\): not in the batch.*result 2 \(LAT\).*"
                                             r"result 3: not an object with a 'perturbation'"):
        lab.collect(job)
    monkeypatch.setattr(type(src), "results", lambda self: [{"perturbation": "VAV1", "value": 1.0}])
    with pytest.raises(LabResultError, match=r"complete but 3 perturbation\(s\) have no result: CD3G, LAT, ZAP70"):
        lab.collect(job)


def test_http_response_vectors():
    from lab_adapters.http import parse_results

    out = parse_results({"results": [
        {"perturbation": "VAV1", "response": [3, 4]},                 # value: the L2 norm
        {"perturbation": "CD3G+LAT", "response": [-1.5]},             # value: its one element
        {"perturbation": "ZAP70", "value": 2.0, "response": [1.0, 1.0], "replicates": [1.9, 2.1]},
        {"perturbation": "CD28", "value": None, "error": "no cells"}]}, "src")
    assert out == {"VAV1": LabResult("VAV1", 5.0, [], response=[3.0, 4.0]),
                   "CD3G+LAT": LabResult("CD3G+LAT", -1.5, [], response=[-1.5]),
                   "ZAP70": LabResult("ZAP70", 2.0, [1.9, 2.1], response=[1.0, 1.0]),
                   "CD28": LabError("CD28", "no cells")}
    bad = [{"perturbation": "VAV1", "response": "1,2"}, {"perturbation": "CD3G", "response": []},
           {"perturbation": "LAT", "response": [1.0, float("nan"), "x", True, None]},
           {"perturbation": "ZAP70", "value": "abc", "response": [1.0]}]
    with pytest.raises(LabResultError, match=r"(?s)4 problem\(s\).*result 0 \(VAV1\): response '1,2' is not a non-empty list"
                                             r".*result 1 \(CD3G\): response '\[\]' is not a non-empty list"
                                             r".*result 2 \(LAT\): response has 4 of 5 entries that are not finite numbers "
                                             r"\(\[1\] = nan, \[2\] = 'x', \[3\] = True, \.\.\.\)"
                                             r".*result 3 \(ZAP70\): value 'abc' is not a finite number"):
        parse_results({"results": bad}, "src")


class _ToyResponseWorld:
    """A world of two readouts (simulators.world.World): `measure` gives a vector, or a failed run for FAILS."""

    name = "toy"

    def __init__(self):
        self.readouts = ["G1", "G2"]
        self.candidates = ["VAV1", "CD3G", "FAILS", "CD3G+LAT"]
        self.measured: list[list[str]] = []

    def measure(self, labels):
        from simulators.world import Measurement

        self.measured.append(list(labels))
        return {lab: Measurement.failed("run failed (no usable cells)") if lab == "FAILS"
                else Measurement(np.array([len(lab), -1.0])) for lab in labels}


def test_http_server_serves_a_response_world():
    world = _ToyResponseWorld()
    with LabServer(world) as server:
        lab = _client(server, token=None)
        job = lab.submit(KEY, ["VAV1", "FAILS", "LAT+CD3G", "NOTAGENE"])
        assert world.measured == [["VAV1", "FAILS", "CD3G+LAT"]]  # what it offers, canonically
        raw = server.jobs[job.external_id].results()
        assert raw[0] == {"perturbation": "VAV1", "value": None, "replicates": [], "error": None, "response": [4.0, -1.0]}
        res = lab.collect(job)
        assert res["VAV1"] == LabResult("VAV1", float(np.hypot(4, 1)), [], response=[4.0, -1.0])
        assert res["LAT+CD3G"].response == [8.0, -1.0]  # measured as CD3G+LAT, answered under the batch's label
        assert res["FAILS"] == LabError("FAILS", "run failed (no usable cells)")
        assert res["NOTAGENE"] == LabError("NOTAGENE", "NOTAGENE is not offered by this lab: not measured in world toy")
        assert httpx.get(server.url).json()["readouts"] == ["G1", "G2"]


def test_http_server_world_of_a_campaign_config(tmp_path, data_dir, slice_csv):
    from lab_adapters.http_server import world_for
    from simulators.response_worlds import CellWorld

    grn = _write(tmp_path / "grn.toml", 'name = "grn"\nobjective = "learn_response"\n[world]\nkind = "synthetic_grn"\n'
                 'seed = 3\ncells_per_run = 40\nparams = { n_genes = 80, n_regulators = 6, pairs_per_type = 1 }\n')
    world, name = world_for(str(grn), str(data_dir))
    assert isinstance(world, CellWorld) and name == f"synthetic_grn world of {grn}"  # measured: test_http_response_campaign
    screen = _write(tmp_path / "screen.toml", f'name = "s"\n[data]\nscreen = "{slice_csv}"\n')
    world, name = world_for(str(screen), str(data_dir))
    assert isinstance(world, ScreenReplay) and len(world.screen.genes) > 0


# --- config ---------------------------------------------------------------------------------------

def _lab_config(**lab):
    return parse_config({"name": "c", "data": {"screen": "x"}, "lab": lab}).lab


@pytest.mark.parametrize(
    ("lab", "message"),
    [
        ({"kind": "filedrop", "outbox": "o"}, "needs lab.inbox"),
        ({"kind": "http"}, "needs lab.url"),
        ({"kind": "http", "url": "lab.example.org"}, "lab.url"),
        ({"kind": "http", "url": "http://x", "token": "s3cret"}, "do not put the token in the config"),
        ({"kind": "simulator", "url": "http://x"}, "lab.url not used with lab.kind = 'simulator'"),
        ({"kind": "http", "url": "http://x", "token_env": "$TOKEN"}, "lab.token_env"),
    ],
)
def test_lab_config_errors_name_the_field(lab, message):
    with pytest.raises(ConfigError, match=message) as err:
        _lab_config(**lab)
    assert "s3cret" not in str(err.value)


def test_lab_configs_round_trip(tmp_path):
    for lab in ({"kind": "filedrop", "outbox": "o", "inbox": "i"},
                {"kind": "http", "url": "https://lab.example.org/api", "token_env": "LAB_TOKEN", "retries": 0}):
        c = parse_config({"name": "c", "data": {"screen": "x"}, "lab": lab})
        assert parse_config(c.model_dump(mode="json")) == c and c.lab.kind == lab["kind"]


def test_make_lab_builds_the_configured_adapter(tmp_path, monkeypatch, world):
    lab = make_lab(_lab_config(kind="filedrop", outbox=str(tmp_path / "o"), inbox=str(tmp_path / "i")))
    assert isinstance(lab, FileDropLab) and lab.inbox.is_dir()
    cfg = _lab_config(kind="http", url="http://127.0.0.1:9/api", token_env="PL_TEST_LAB_TOKEN", timeout=5, retries=1)
    monkeypatch.delenv("PL_TEST_LAB_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="PL_TEST_LAB_TOKEN is not set"):
        make_lab(cfg)
    monkeypatch.setenv("PL_TEST_LAB_TOKEN", "s3cret")
    http = make_lab(cfg)
    assert isinstance(http, HttpLab) and http.base_url == "http://127.0.0.1:9/api" and http.timeout == 5
    assert "s3cret" not in repr(http) and "s3cret" not in cfg.model_dump_json()
    assert make_lab(_lab_config(), world).name == "simulator"
    assert os.environ["PL_TEST_LAB_TOKEN"] == "s3cret"
