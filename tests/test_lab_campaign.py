"""Campaigns with a real lab adapter on a slice of the Schmidt 2021 IL2 screen: the round waits for
the lab, partial results are ingested at once (never twice), the round closes when the rest arrive,
and a bad results file is a clear error that leaves the store untouched. File drop and HTTP."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy.exc import IntegrityError

from agent.runner import run_campaign
from lab_adapters.http_server import LabServer
from perturbloop.config import parse_config
from perturbloop.data import load_screen
from perturbloop.errors import LabResultError
from perturbloop.store import Observation, Store
from simulators import ScreenReplay

ROUNDS, BATCH = 2, 12
TOKEN_ENV = "PL_TEST_LAB_TOKEN"


@pytest.fixture(scope="module")
def slice_csv(il2_slice_1500) -> Path:
    """1,500 real IL2 genes (the 150 strongest plus 1,350 drawn at random), shared with the other campaign tests."""
    return il2_slice_1500


@pytest.fixture(scope="module")
def scores(slice_csv, data_dir) -> pd.Series:
    """What the lab measures: the slice's scores."""
    return load_screen(str(slice_csv), data_dir).scores


def _config(slice_csv: Path, name: str, lab: dict):
    return parse_config({"name": name, "rounds": ROUNDS, "batch_size": BATCH, "seed": 1,
                         "data": {"screen": str(slice_csv)}, "design": {"features": ["go"]},
                         "acquisition": {"kind": "ucb"}, "lab": lab})


def _snapshot(store: Store, campaign: str) -> dict:
    """The store's record of the campaign (every table a run writes)."""
    c = store.get_campaign(campaign)
    out: dict = {"campaign": c.status if c else None}
    for r in store.rounds(campaign):
        out[r.index] = {
            "status": r.status,
            "proposed": [p.perturbation for p in store.proposals(r.id)],
            "jobs": [(j.idempotency_key, j.external_id, j.status, tuple(j.perturbations)) for j in store.lab_jobs(r.id)],
            "observed": sorted((o.perturbation, o.value, o.failed, o.error) for o in store.observations(campaign, include_failed=True)
                               if o.round_id == r.id),
        }
    return out


def _observed(store: Store, campaign: str) -> list[str]:
    return [o.perturbation for o in store.observations(campaign, include_failed=True)]


def _order(path: Path) -> list[str]:
    return [row["perturbation"] for row in csv.DictReader(path.open())]


def _write_results(path: Path, rows: list[tuple[str, str, str]]) -> None:
    """Write like a lab would: under a temporary name, then renamed into place; dated a minute ago, as
    the file-drop lab reads only files unchanged for a few seconds (no sleeping in tests)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("perturbation,value,error\n" + "".join(f"{p},{v},{e}\n" for p, v, e in rows))
    old = time.time() - 60
    os.utime(tmp, (old, old))
    tmp.rename(path)


@pytest.mark.slow
def test_filedrop_campaign_waits_ingests_partial_results_once_and_continues(slice_csv, scores, data_dir, tmp_path):
    outbox, inbox = tmp_path / "outbox", tmp_path / "inbox"
    cfg = _config(slice_csv, "fd", {"kind": "filedrop", "outbox": str(outbox), "inbox": str(inbox)})
    store = Store(str(tmp_path / "pl.db"))

    res = run_campaign(cfg, store, data_dir)
    assert res.status == "waiting_for_lab"
    sheet = outbox / "fd_round-0.order.csv"
    batch = _order(sheet)
    assert len(batch) == BATCH and [p.name for p in outbox.glob("*.csv")] == [sheet.name]
    snap = _snapshot(store, "fd")
    assert snap["campaign"] == "waiting_for_lab" and snap[0]["status"] == "dispatched"
    assert snap[0]["jobs"] == [("fd/round-0", "fd_round-0", "submitted", tuple(batch))]
    assert _observed(store, "fd") == []
    # nothing back yet: a second run changes nothing and orders nothing again
    assert run_campaign(cfg, store, data_dir).status == "waiting_for_lab"
    assert _snapshot(store, "fd") == snap and len(list(outbox.glob("*.csv"))) == 1

    # part of the batch (one perturbation failed in the lab): ingested, the rest stays pending
    first, rest = batch[:5], batch[5:]
    part = [(g, repr(float(scores[g])), "") for g in first[:4]] + [(first[4], "", "no guides detected")]
    _write_results(inbox / "fd_round-0.partial-1.csv", part)
    res = run_campaign(cfg, store, data_dir)
    assert res.status == "waiting_for_lab"
    assert sorted(_observed(store, "fd")) == sorted(first)
    (job,) = store.lab_jobs(store.get_round("fd", 0).id)
    assert job.status == "partial" and store.get_round("fd", 0).status == "dispatched"
    failed = [o for o in store.observations("fd", include_failed=True) if o.failed]
    assert [(o.perturbation, o.error) for o in failed] == [(first[4], "no guides detected")]
    # the same partial file at the next run: nothing is ingested twice
    snap = _snapshot(store, "fd")
    assert run_campaign(cfg, store, data_dir).status == "waiting_for_lab"
    assert _snapshot(store, "fd") == snap
    # the lab re-delivers the partial file with a changed value: refused, naming file and line
    part_file = inbox / "fd_round-0.partial-1.csv"
    _write_results(part_file, [(first[0], "123.0", "")] + part[1:])
    with pytest.raises(LabResultError, match=rf"partial-1.csv: line 2 \({first[0]}\): value 123.0 differs from value"):
        run_campaign(cfg, store, data_dir)
    assert _snapshot(store, "fd") == snap
    _write_results(part_file, part)
    # a file still being written (just now, no final newline) is not read
    fresh = inbox / "fd_round-0.partial-2.csv"
    fresh.write_text(f"perturbation,value\n{rest[0]},1")
    assert run_campaign(cfg, store, data_dir).status == "waiting_for_lab"
    assert _snapshot(store, "fd") == snap
    fresh.unlink()

    # a bad final file: a clear error naming the file and lines, and the store is untouched
    bad = inbox / "fd_round-0.results.csv"
    _write_results(bad, [(g, repr(float(scores[g])), "") for g in rest[:-2]] + [(rest[-2], "nan", ""), ("NOTAGENE1", "1.0", "")])
    with pytest.raises(LabResultError, match=r"(?s)fd_round-0.results.csv: 2 problem.*line \d+ \(" + rest[-2]
                       + r"\): value 'nan'.*NOTAGENE1\): not in the order") as err:
        run_campaign(cfg, store, data_dir)
    assert str(bad) in str(err.value)
    assert _snapshot(store, "fd") == snap

    # the lab fixes it: the round closes with exactly its batch observed, and round 2 is ordered
    bad.unlink()
    _write_results(bad, [(g, repr(float(scores[g])), "") for g in rest])
    res = run_campaign(cfg, store, data_dir)
    assert res.status == "waiting_for_lab"
    obs = store.observations("fd", include_failed=True)
    assert sorted(o.perturbation for o in obs) == sorted(batch)
    assert all(o.value == pytest.approx(scores[o.perturbation]) for o in obs if not o.failed)
    r0, r1 = store.rounds("fd")
    assert r0.status == "ingested" and store.lab_jobs(r0.id)[0].status == "collected"
    assert r1.status == "dispatched" and len(store.proposals(r1.id)) == BATCH
    batch2 = _order(outbox / "fd_round-1.order.csv")
    assert len(batch2) == BATCH and not set(batch2) & set(batch)  # the failed one is not proposed again
    assert store.get_campaign("fd").status == "waiting_for_lab"

    # the last round's results: the campaign finishes, every perturbation observed exactly once
    _write_results(inbox / "fd_round-1.results.csv", [(g, repr(float(scores[g])), "") for g in batch2])
    res = run_campaign(cfg, store, data_dir)
    assert res.status == "finished" and [r["round"] for r in res.rounds] == [1, 2]
    labels = _observed(store, "fd")
    assert len(labels) == len(set(labels)) == ROUNDS * BATCH


@pytest.mark.slow
def test_http_campaign_against_the_reference_lab_server(slice_csv, scores, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "tok-1234")
    world = ScreenReplay(load_screen(str(slice_csv), data_dir))
    with LabServer(world, token="tok-1234", auto_release=False) as server:
        cfg = _config(slice_csv, "web", {"kind": "http", "url": server.url, "token_env": TOKEN_ENV, "timeout": 10})
        assert "tok-1234" not in cfg.model_dump_json()
        store = Store(str(tmp_path / "pl.db"))

        assert run_campaign(cfg, store, data_dir).status == "waiting_for_lab"
        job = server.job_for("web/round-0")
        (stored,) = store.lab_jobs(store.get_round("web", 0).id)
        assert stored.external_id == job.job_id and stored.status == "submitted"
        assert len(job.perturbations) == BATCH and _observed(store, "web") == []

        server.release(job.job_id, job.perturbations[:7])
        assert run_campaign(cfg, store, data_dir).status == "waiting_for_lab"
        assert sorted(_observed(store, "web")) == sorted(job.perturbations[:7])
        snap = _snapshot(store, "web")
        assert snap[0]["jobs"][0][2] == "partial"
        assert run_campaign(cfg, store, data_dir).status == "waiting_for_lab"
        assert _snapshot(store, "web") == snap and len(server.jobs) == 1

        server.release(job.job_id)
        server.fail_next = 1  # a lab hiccup (HTTP 500) is retried
        assert run_campaign(cfg, store, data_dir).status == "waiting_for_lab"
        assert sorted(_observed(store, "web")) == sorted(job.perturbations)
        job2 = server.job_for("web/round-1")
        assert len(server.jobs) == 2 and not set(job2.perturbations) & set(job.perturbations)

        server.release(job2.job_id)
        res = run_campaign(cfg, store, data_dir)
    assert res.status == "finished"
    obs = store.observations("web", include_failed=True)
    assert len(obs) == len({o.perturbation for o in obs}) == ROUNDS * BATCH
    assert all(o.value == pytest.approx(scores[o.perturbation]) for o in obs)
    assert res.n_hits == 75 and res.hit_ratio == pytest.approx(sum(bool(o.hit) for o in obs) / 75)


def test_store_partial_ingest_keeps_the_job_open_and_never_duplicates(tmp_path):
    store = Store(str(tmp_path / "pl.db"))
    store.create_or_check_campaign("c1", {})
    rid = store.get_or_create_round("c1", 0).id
    store.begin_lab_job(rid, "filedrop", "c1/round-0", ["VAV1", "CD3G", "LAT"])
    store.mark_submitted("c1/round-0", "c1_round-0")

    def obs(*labels: str) -> list[Observation]:
        return [Observation(campaign_id="c1", round_id=rid, perturbation=p, value=1.0) for p in labels]

    assert store.ingest("c1", rid, "c1/round-0", obs("VAV1"), complete=False) == 1
    assert store.lab_job("c1/round-0").status == "partial" and store.get_round("c1", 0).status == "dispatched"
    assert store.ingest("c1", rid, "c1/round-0", obs("VAV1", "CD3G"), complete=False) == 1
    assert store.observed("c1") == {"VAV1", "CD3G"}
    assert store.ingest("c1", rid, "c1/round-0", obs("CD3G", "LAT")) == 1
    assert store.lab_job("c1/round-0").status == "collected" and store.get_round("c1", 0).status == "ingested"
    assert sorted(_observed(store, "c1")) == ["CD3G", "LAT", "VAV1"]
    with pytest.raises(IntegrityError), store.session() as s:  # the table itself refuses a second observation
        s.add(obs("VAV1")[0])


def test_random_baseline_of_a_real_lab_campaign_stays_in_the_simulator(slice_csv, tmp_path):
    from flows.campaign import baseline_config

    cfg = _config(slice_csv, "fd", {"kind": "filedrop", "outbox": str(tmp_path / "o"), "inbox": str(tmp_path / "i")})
    base = baseline_config(cfg)
    assert base.lab.kind == "simulator" and base.lab.outbox is None and cfg.lab.kind == "filedrop"


def test_a_deleted_store_does_not_send_the_lab_another_batch_under_a_used_key(slice_csv, data_dir, tmp_path):
    """Issue 13, defect 1 with a real lab: the store (and its checkpoints) deleted after round 1 went out, the
    campaign started again under its name picks another batch (here: another seed). The lab holds round 1's
    key with the old batch: the run stops with one clear error naming the campaign, the key and what to do,
    and nothing reaches the lab (the old order sheet is unchanged, no second sheet)."""
    from perturbloop.errors import LabKeyConflictError

    outbox, inbox = tmp_path / "outbox", tmp_path / "inbox"
    lab = {"kind": "filedrop", "outbox": str(outbox), "inbox": str(inbox)}
    db = tmp_path / "pl.db"
    assert run_campaign(_config(slice_csv, "fd", lab), Store(str(db)), data_dir).status == "waiting_for_lab"
    sheet = outbox / "fd_round-0.order.csv"
    sent = sheet.read_text()
    db.unlink()
    (tmp_path / "pl.checkpoints.sqlite").unlink(missing_ok=True)
    other = _config(slice_csv, "fd", lab).model_copy(update={"seed": 7})
    with pytest.raises(LabKeyConflictError, match=r"round 1 of campaign 'fd' with another batch.*new name.*'fd/round-0'"):
        run_campaign(other, Store(str(db)), data_dir)
    assert sheet.read_text() == sent and [p.name for p in outbox.glob("*.csv")] == [sheet.name]
