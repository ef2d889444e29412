"""What a scientist sees of a campaign across contexts (issue 12), from a store holding `GENE@@context` labels:
the review page's gene x context grid and proposal table, `perturbloop status` (and `--json`) with the cost
spent per context, and the labs' context columns (file-drop order sheets and results, the HTTP lab); a headless
Chromium reads the grid."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from agent.screen_units import PredictionScale, in_screen_units
from agent.web import _split_genes, create_app
from perturbloop.store import ModelFit, Observation, Store

TOKEN = "s3cret-review-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONTEXTS = {"contexts": ["Rest", "Stim8hr", "Stim48hr"], "costs": [1.0, 1.0, 2.5], "target": "Stim48hr", "budget": 60}


@dataclass
class _Item:
    """A proposed pair as `Store.save_proposal` takes it."""

    perturbation: str
    mean: float | None
    sd: float | None
    acq_value: float | None
    rationale: str = ""


def _context_store(path, *, config_contexts: dict | None = CONTEXTS, xss: bool = False) -> Store:
    """A context campaign written through the store's API: round 0 measured (values, a hit, a failure), round 1's
    proposal pending approval (predictions with P(hit) over |score| 1.5)."""
    store = Store(str(path))
    config = {"name": "ctx", "rounds": 3, "acquisition": {"kind": "ucb"}, "approval": "required",
              "data": {"screen": "gwt_cd4_polarization"}}
    if config_contexts is not None:
        config["contexts"] = config_contexts
    store.create_or_check_campaign("ctx", config)
    r0 = store.get_or_create_round("ctx", 0)
    measured = ["IL2RA@@Rest", "IL2RA@@Stim8hr", "CD28@@Stim48hr", "VAV1@@Rest"]
    failed = "LAT@@Stim48hr" if not xss else "LAT@@<img src=x onerror=alert(1)>"
    store.begin_lab_job(r0.id, "filedrop", "ctx/round-0", [*measured, failed])
    store.mark_submitted("ctx/round-0", "ctx_round-0")
    rows = [Observation(campaign_id="ctx", round_id=r0.id, perturbation=label, value=v, hit=h)
            for label, v, h in zip(measured, [0.5, -1.25, 3.0, 0.1], [False, False, True, False])]
    rows.append(Observation(campaign_id="ctx", round_id=r0.id, perturbation=failed, failed=True,
                            error="no cells <b>plate 2</b>"))
    store.ingest("ctx", r0.id, "ctx/round-0", rows)
    r1 = store.get_or_create_round("ctx", 1)
    items = [_Item("IL2RA@@Stim48hr", 2.0, 0.5, 1.7, "strong at 8 h"), _Item("CD28@@Rest", 0.4, 0.2, 0.9),
             _Item("ZAP70@@Stim8hr", None, None, None, "prior")]
    store.save_proposal(r1.id, items, "ucb", ModelFit(round_id=r1.id, surrogate="gp", policy="ucb", n_train=4,
                                                      fit_seconds=0.1),
                        units={"kind": "identity", "signed": True, "hit_threshold": 1.5})
    store.set_campaign_status("ctx", "awaiting_approval")
    return store


def _cell(html: str, gene: str, context: str) -> str:
    """The grid cell of (gene, context), as HTML."""
    row = re.search(rf'<tr data-gene="{gene}">(.*?)</tr>', html, re.S)
    assert row, f"no grid row for {gene}"
    cell = re.search(rf'<td class="[^"]*" data-context="{re.escape(context)}"[^>]*>(.*?)</td>', row.group(1), re.S)
    assert cell, f"no cell for {gene} in {context}"
    return cell.group(0)


def test_review_page_shows_a_gene_by_context_grid(tmp_path):
    store = _context_store(tmp_path / "pl.db")
    client = TestClient(create_app(store, TOKEN), headers=AUTH)
    page = client.get("/campaigns/ctx")
    assert page.status_code == 200
    html = page.text
    grid = html[html.index('<table id="context-grid">'):]
    grid = grid[:grid.index("</table>")]
    # columns: the config's contexts, in its order
    assert re.findall(r'<th class="num">([^<]+)</th>', grid) == ["Rest", "Stim8hr", "Stim48hr"]
    assert re.findall(r'<tr data-gene="([^"]+)">', grid) == ["CD28", "IL2RA", "LAT", "VAV1", "ZAP70"]
    assert ">0.500<" in _cell(grid, "IL2RA", "Rest") and ">-1.250<" in _cell(grid, "IL2RA", "Stim8hr")
    assert "<strong>3.000</strong>" in _cell(grid, "CD28", "Stim48hr")  # a hit
    failed = _cell(grid, "LAT", "Stim48hr")
    assert "failed" in failed and 'title="no cells &lt;b&gt;plate 2&lt;/b&gt;"' in failed
    proposed = _cell(grid, "IL2RA", "Stim48hr")
    p_hit = in_screen_units(2.0, 0.5, PredictionScale("identity", signed=True, hit_threshold=1.5)).p_hit
    assert 0.5 < p_hit < 1
    assert "cell-proposed" in proposed and f"proposed 2.000 ± 0.500 (P(hit) {p_hit:.2f})" in proposed
    assert "proposed" in _cell(grid, "ZAP70", "Stim8hr") and "±" not in _cell(grid, "ZAP70", "Stim8hr")
    assert "cell-empty" in re.search(r'<tr data-gene="VAV1">(.*?)</tr>', grid, re.S).group(1)
    # the proposal table: gene and context in their own columns; the add field asks for GENE@@context
    table = html[html.index('<table id="proposal">'):]
    table = table[:table.index("</table>")]
    assert "<th>gene</th><th>context</th>" in table and "<th>perturbation</th>" not in table
    assert '<td class="gene">IL2RA</td><td class="context">Stim48hr</td>' in table
    assert 'name="drop" value="IL2RA@@Stim48hr"' in table
    assert "<code>GENE@@context</code>" in html
    # spend per context: measured + failed pairs x the context's cost
    spend = html[html.index('<table id="context-spend">'):]
    spend = spend[:spend.index("</table>")]
    assert re.findall(r'<td class="num spent">([^<]+)</td>', spend) == ["2", "1", "5"]
    assert '<p id="context-budget">budget 60 cost units, spent 8</p>' in html
    first = client.get("/api/campaigns/ctx/proposal").json()["items"][0]
    assert (first["perturbation"], first["gene"], first["context"]) == ("IL2RA@@Stim48hr", "IL2RA", "Stim48hr")
    assert "default-src 'self'; script-src 'none'" in page.headers["content-security-policy"]


def test_grid_escapes_labels_and_orders_unlisted_contexts_as_first_seen(tmp_path):
    store = _context_store(tmp_path / "pl.db", config_contexts=None, xss=True)
    html = TestClient(create_app(store, TOKEN), headers=AUTH).get("/campaigns/ctx").text
    grid = html[html.index('<table id="context-grid">'):]
    grid = grid[:grid.index("</table>")]
    heads = re.findall(r'<th class="num">([^<]+)</th>', grid)
    assert heads == ["Rest", "Stim8hr", "Stim48hr", "&lt;img src=x onerror=alert(1)&gt;"]
    assert "<img src=x" not in html and "<b>plate" not in html
    # no costs in the config: counts only
    assert "spent" not in html[html.index('<table id="context-spend">'):html.index("</table>", html.index("context-spend"))]


def test_a_campaign_without_contexts_has_no_grid(tmp_path):
    store = Store(str(tmp_path / "pl.db"))
    store.create_or_check_campaign("plain", {"name": "plain", "rounds": 1})
    r = store.get_or_create_round("plain", 0)
    store.save_proposal(r.id, [_Item("VAV1", 1.0, 0.1, 1.0)], "ucb",
                        ModelFit(round_id=r.id, surrogate="gp", policy="ucb", n_train=0, fit_seconds=0.0))
    html = TestClient(create_app(store, TOKEN), headers=AUTH).get("/campaigns/plain").text
    assert "context-grid" not in html and "context-spend" not in html and "<th>perturbation</th>" in html
    assert "GENE@@context" not in html


def test_reading_a_campaign_without_contexts_imports_no_pandas():
    """`status` and the review app stay quick to start: the context view imports `perturbloop.contexts` (numpy,
    pandas) only for a label that holds its separator, which it keeps equal to `PAIR_SEP`."""
    import subprocess
    import sys

    from agent.context_view import PAIR_SEP as here
    from perturbloop.contexts import PAIR_SEP

    assert here == PAIR_SEP
    code = ("import sys; from agent.context_view import gene_and_context as g; "
            "print(g('VAV1'), 'pandas' in sys.modules, g('VAV1@@Rest'), 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["None", "False", "('VAV1',", "'Rest')", "True"]


def test_add_field_keeps_gene_at_context_labels():
    assert _split_genes(" IL2RA@@Stim48hr, CD28@@Rest;HOXA@ ") == ["IL2RA@@Stim48hr", "CD28@@Rest", "HOXA@"]


def test_status_shows_spend_per_context(tmp_path):
    from typer.testing import CliRunner

    from perturbloop.cli import app

    _context_store(tmp_path / "pl.db")
    runner = CliRunner()
    out = runner.invoke(app, ["status", "--json", "--store", str(tmp_path / "pl.db")])
    assert out.exit_code == 0, out.output
    (c,) = json.loads(out.output)["campaigns"]
    assert c["contexts"] == [
        {"context": "Rest", "measured": 2, "failed": 0, "cost": 1.0, "spent": 2.0},
        {"context": "Stim8hr", "measured": 1, "failed": 0, "cost": 1.0, "spent": 1.0},
        {"context": "Stim48hr", "measured": 1, "failed": 1, "cost": 2.5, "spent": 5.0}]
    assert c["context_budget"] == 60.0
    table = runner.invoke(app, ["status", "--store", str(tmp_path / "pl.db")])
    assert table.exit_code == 0, table.output
    assert ("per context: Rest 2 measured, 0 failed, spent 2 (cost 1 each); Stim8hr 1 measured, 0 failed, spent 1 "
            "(cost 1 each); Stim48hr 1 measured, 1 failed, spent 5 (cost 2.5 each); budget 60") in " ".join(table.output.split())


def test_status_counts_per_context_without_costs(tmp_path):
    from agent.report import campaign_overview

    store = _context_store(tmp_path / "pl.db", config_contexts={"contexts": ["Stim48hr", "Rest"], "costs": "bad"})
    (c,) = campaign_overview(store)
    assert c["contexts"] == [{"context": "Stim48hr", "measured": 1, "failed": 1},
                             {"context": "Rest", "measured": 2, "failed": 0},
                             {"context": "Stim8hr", "measured": 1, "failed": 0}]
    assert c["context_budget"] is None


# --- labs: the file drop ------------------------------------------------------------------------------------------

PAIRS = ["IL2RA@@Stim48hr", "CD28@@Rest", "-ABC@@Rest"]
KEY = "ctx/round-1"


@pytest.fixture
def lab(tmp_path):
    from lab_adapters import FileDropLab

    return FileDropLab(tmp_path / "outbox", tmp_path / "inbox", min_age=0)


def test_order_sheet_has_gene_and_context_columns(lab):
    from perturbloop.errors import LabSubmissionError

    job = lab.submit(KEY, PAIRS)
    rows = list(csv.DictReader(lab.order_path(job).open()))
    assert list(rows[0]) == ["round", "perturbation", "gene", "context", "idempotency_key"]
    assert [(r["perturbation"], r["gene"], r["context"]) for r in rows] == [
        ("IL2RA@@Stim48hr", "IL2RA", "Stim48hr"), ("CD28@@Rest", "CD28", "Rest"), ("'-ABC@@Rest", "'-ABC", "Rest")]
    assert lab.submit(KEY, PAIRS) == job  # the sheet reads back as the same batch
    with pytest.raises(LabSubmissionError, match=r"holds other labels: 'VAV1'"):
        lab.submit("ctx/round-2", ["IL2RA@@Rest", "VAV1"])
    assert not lab.order_path("ctx_round-2").exists()


def test_results_by_label_or_by_gene_and_context(lab):
    from lab_adapters import LabError, LabResult

    job = lab.submit(KEY, PAIRS)
    (lab.inbox / "ctx_round-1.partial-1.csv").write_text("gene,context,value,replicate_1\nil2ra,Stim48hr,1.5,1.4\n")
    assert lab.poll(job) == "partial"
    assert lab.collect(job) == {"IL2RA@@Stim48hr": LabResult("IL2RA@@Stim48hr", 1.5, [1.4])}
    # the final file: labels, a label with matching columns, and the escaped gene read back without its quote
    (lab.inbox / "ctx_round-1.results.csv").write_text(
        "perturbation,gene,context,value,error\nCD28@@Rest,CD28,Rest,-0.5,\n,'-ABC,Rest,,no cells\n")
    assert lab.poll(job) == "complete"
    res = lab.collect(job)
    assert res["CD28@@Rest"] == LabResult("CD28@@Rest", -0.5, []) and res["-ABC@@Rest"] == LabError("-ABC@@Rest", "no cells")


@pytest.mark.parametrize(("text", "message"), [
    ("gene,context,value\nIL2RA,,1\n", r"line 2 \(IL2RA\): no context for IL2RA .*one of Stim48hr, Rest"),
    ("gene,context,value\nIL2RA,Stim 48h,1\n", r"line 2 \(IL2RA@@Stim 48h\): unknown context 'Stim 48h' "
                                              r"\(the contexts of this order: Stim48hr, Rest\)"),
    ("perturbation,value\nCD28@@Rest,1\nIL2RA@@,2\n", r"line 3 \(IL2RA@@\): 'IL2RA@@' is not a \(gene, context\) label"),
    ("perturbation,value\nIL2RA,2\n", r"line 2 \(IL2RA\): no context for IL2RA"),
    ("perturbation,context,value\nIL2RA@@Rest,Stim48hr,2\n", r"line 2 \(IL2RA@@Rest\): context 'Stim48hr' differs"),
    ("gene,context,value\nVAV1,Rest,2\n", r"line 2 \(VAV1@@Rest\): not in the order for this job"),
    ("gene,value\nIL2RA,2\n", r"missing column\(s\) perturbation \(or gene and context\)"),
])
def test_malformed_context_rows_name_file_and_line(lab, text, message):
    from perturbloop.errors import LabResultError

    job = lab.submit(KEY, PAIRS)
    path = lab.inbox / "ctx_round-1.partial-1.csv"
    path.write_text(text)
    with pytest.raises(LabResultError, match=message) as err:
        lab.poll(job)
    assert str(path) in str(err.value)


# --- labs: HTTP against the reference server -----------------------------------------------------------------------

@pytest.fixture
def context_world():
    from perturbloop.contexts import ContextScreen
    from simulators.context_replay import ContextReplay

    table = pd.DataFrame({"gene": ["IL2RA", "IL2RA", "CD28", "LAT"], "context": ["Rest", "Stim48hr", "Rest", "Stim48hr"],
                          "score": [0.25, 2.5, -0.75, 1.0], "se": [0.1, 0.1, 0.1, 0.1]})
    return ContextReplay(ContextScreen("toy", table), ["Rest", "Stim48hr"], "Stim48hr", noise=False)


def test_http_lab_sends_gene_and_context_and_reads_results_either_way(context_world):
    import httpx

    from lab_adapters import LabError, LabResult
    from lab_adapters.http import HttpLab, parse_results
    from lab_adapters.http_server import LabServer
    from perturbloop.errors import LabResultError

    batch = ["IL2RA@@Stim48hr", "CD28@@Rest", "LAT@@Rest"]
    with LabServer(context_world) as server:
        lab = HttpLab(server.url, backoff=0.01)
        sent = []
        request = lab._client.request
        lab._client.request = lambda method, path, **kw: (sent.append(kw.get("json")), request(method, path, **kw))[1]
        job = lab.submit(KEY, batch)
        assert sent[0]["items"] == [{"perturbation": "IL2RA@@Stim48hr", "gene": "IL2RA", "context": "Stim48hr"},
                                    {"perturbation": "CD28@@Rest", "gene": "CD28", "context": "Rest"},
                                    {"perturbation": "LAT@@Rest", "gene": "LAT", "context": "Rest"}]
        res = lab.collect(job)
        assert res["IL2RA@@Stim48hr"] == LabResult("IL2RA@@Stim48hr", 2.5, [])
        assert res["CD28@@Rest"] == LabResult("CD28@@Rest", -0.75, [])
        assert isinstance(res["LAT@@Rest"], LabError) and "not measured" in res["LAT@@Rest"].reason
        raw = server.jobs[job.external_id].results()[0]
        assert (raw["gene"], raw["context"]) == ("IL2RA", "Stim48hr")
        # a request whose items do not name its pairs is refused
        bad = httpx.post(server.url + "/jobs", json={"idempotency_key": "k2", "perturbations": ["CD28@@Rest"],
                                                     "items": [{"perturbation": "CD28@@Rest", "gene": "CD28",
                                                                "context": "Stim48hr"}]})
        assert bad.status_code == 400 and "items[0]" in bad.json()["error"]
    # results keyed by gene + context (no label) are the ordered pairs
    out = parse_results({"perturbations": batch, "status": "complete", "results": [
        {"gene": "il2ra", "context": "Stim48hr", "value": 2.0}, {"perturbation": "CD28@@Rest", "value": 1.0},
        {"gene": "LAT", "context": "Rest", "error": "no cells"}]}, "src")
    assert out == {"IL2RA@@Stim48hr": LabResult("IL2RA@@Stim48hr", 2.0, []), "CD28@@Rest": LabResult("CD28@@Rest", 1.0, []),
                   "LAT@@Rest": LabError("LAT@@Rest", "no cells")}
    with pytest.raises(LabResultError, match=r"(?s)result 0 \(IL2RA@@\): no context for IL2RA.*"
                                             r"result 1 \(CD28@@Stim8hr\): unknown context 'Stim8hr'"):
        parse_results({"perturbations": batch, "results": [{"gene": "IL2RA", "value": 1.0},
                                                           {"perturbation": "CD28@@Stim8hr", "value": 1.0}]}, "src")


@pytest.mark.slow
def test_browser_shows_the_grid(tmp_path, browser):
    """A real (headless) Chromium logs in and reads the grid: cells by gene and context, a label with markup shown as
    text (no element made of it), the proposal table's gene and context columns."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.conftest import serve_app

    store = _context_store(tmp_path / "pl.db", xss=True)
    with serve_app(create_app(store, TOKEN)) as base:
        wait = WebDriverWait(browser, 60, ignored_exceptions=(WebDriverException,))
        browser.get(base + "/campaigns/ctx")
        wait.until(EC.presence_of_element_located((By.ID, "token"))).send_keys(TOKEN)
        browser.find_element(By.ID, "login").click()
        grid = wait.until(EC.presence_of_element_located((By.ID, "context-grid")))
        heads = [th.text for th in grid.find_elements(By.TAG_NAME, "th")]
        assert heads == ["gene", "Rest", "Stim8hr", "Stim48hr", "<img src=x onerror=alert(1)>"]
        assert not browser.find_elements(By.CSS_SELECTOR, "#context-grid img")
        cell = grid.find_element(By.CSS_SELECTOR, 'tr[data-gene="IL2RA"] td[data-context="Stim48hr"]')
        assert cell.text.startswith("proposed 2.000 ± 0.500 (P(hit)")
        failed = grid.find_element(By.CSS_SELECTOR, 'tr[data-gene="LAT"] td.cell-failed')
        assert failed.text == "failed" and failed.get_attribute("title") == "no cells <b>plate 2</b>"
        first = browser.find_element(By.CSS_SELECTOR, "#proposal tr:nth-child(2)")
        assert [td.text for td in first.find_elements(By.CSS_SELECTOR, "td.gene, td.context")] == ["IL2RA", "Stim48hr"]
