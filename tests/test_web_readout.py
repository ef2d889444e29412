"""What the scientist reads (issue 13, daily use): predictions in the screen's own units (|score| and the
probability of a hit, not the model's log or 0/1 scale) on the page, the API and `perturbloop review`; the hit
curve and every decision on the campaign page; a round's time without the hours it waited for approval; a
logged-out browser sent to the login form; a proposal plot that fits the page; and no comparison with random
while the campaign waits for approval."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from agent.approval import decide, pending_round
from agent.report import campaign_overview, pending_view
from agent.context import build_context
from agent.runner import run_campaign
from agent.screen_units import PredictionScale, ScreenPrediction, in_screen_units, median_offset, normal_cdf
from agent.web import create_app
from perturbloop.config import parse_config
from perturbloop.store import ProposalRecord, Round, Store
from tests.conftest import serve_app
from tests.test_web import AUTH, TOKEN, _wait_advanced, paused  # noqa: F401 - `paused` is a fixture

LOG_CAMPAIGN = "logc"


@pytest.fixture(scope="module")
def log_campaign(tmp_path_factory, slice_csv, data_dir) -> Store:
    """A `target_transform = "log"` UCB campaign on the real IL2 slice, paused at its round-2 proposal (round 1
    approved and measured, so round 2 has model predictions)."""
    store = Store(str(tmp_path_factory.mktemp("logc") / "pl.db"))
    cfg = parse_config({"name": LOG_CAMPAIGN, "rounds": 2, "batch_size": 8, "approval": "required",
                        "data": {"screen": str(slice_csv)}, "surrogate": {"target_transform": "log"},
                        "acquisition": {"kind": "ucb"}})
    ctx = build_context(cfg, store, data_dir)
    assert run_campaign(cfg, store, data_dir, context=ctx).status == "awaiting_approval"
    res = run_campaign(cfg, store, data_dir, context=ctx,
                       resume=decide(store, LOG_CAMPAIGN, ctx.candidate_labels(), by="ada", data_dir=data_dir))
    assert res.status == "awaiting_approval" and pending_round(store, LOG_CAMPAIGN).index == 1
    return store


def test_screen_units_of_each_scale():
    """The stored posterior N(mean, sd^2) mapped to the screen's units, on numbers worked out by hand."""
    ident = in_screen_units(2.0, 0.5, PredictionScale("identity", hit_threshold=2.5))
    assert (ident.value, ident.low, ident.high) == (2.0, 1.5, 2.5)
    assert ident.p_hit == pytest.approx(normal_cdf(-1.0) + normal_cdf(-9.0)) and ident.p_hit == pytest.approx(0.1587, abs=1e-4)
    signed = in_screen_units(-3.0, 1.0, PredictionScale("identity", signed=True, hit_threshold=2.5))
    assert signed.p_hit == pytest.approx(normal_cdf(0.5) + normal_cdf(-5.5))  # a strong negative score is a hit too
    m = 0.2
    log = in_screen_units(math.log(1.0 + m), 0.1, PredictionScale("log", offset=m, hit_threshold=1.0))
    assert log.value == pytest.approx(1.0) and log.p_hit == pytest.approx(0.5)  # the median sits on the threshold
    assert log.low == pytest.approx(math.exp(math.log(1.2) - 0.1) - m) and log.high == pytest.approx(math.exp(math.log(1.2) + 0.1) - m)
    far = in_screen_units(math.log(3.0 + m), 0.5, PredictionScale("log", offset=m, hit_threshold=1.0))
    assert far.p_hit == pytest.approx(normal_cdf(math.log(3.2 / 1.2) / 0.5)) and far.p_hit == pytest.approx(0.975, abs=1e-3)
    assert in_screen_units(1.3, 0.2, PredictionScale("hit_call")) == ScreenPrediction(None, None, None, 1.0)
    assert in_screen_units(-0.2, 0.2, PredictionScale("hit_call")).p_hit == 0.0
    assert in_screen_units(0.4, 0.0, PredictionScale("identity")).p_hit is None  # no threshold: no P(hit)
    assert in_screen_units(None, None, PredictionScale("log", offset=m)).value is None  # round 1: priors only


def test_log_offset_is_the_gp_s(il2_screen):
    """The back-transform's `m` is the GP's own: its training targets, untransformed, are `log(|score| + m)`
    (an even count, where the lower median differs from the mean of the two middle values)."""
    import torch

    from surrogates.gp import GPSurrogate

    y = torch.tensor(il2_screen.scores.abs().to_numpy()[:40], dtype=torch.float64)
    X = torch.rand(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gp = GPSurrogate(target_transform="log", max_iter=1, device=torch.device("cpu"))
    gp.fit(X, y)
    z = gp.model.outcome_transform.untransform(gp.model.train_targets.unsqueeze(-1))[0].squeeze(-1)
    m = median_offset(y.tolist())
    assert torch.allclose(z.exp() - m, y, atol=1e-8)
    assert m != pytest.approx(float(y.sort().values[19:21].mean()))  # the lower median, not the mean of the two


def test_log_campaign_review_is_in_screen_units(log_campaign, slice_csv):
    """A log-transform campaign's round-2 proposal: the record keeps the transform's offset (the median |score|
    of what round 1 measured) and the screen's hit threshold; the API, the page and `perturbloop review` show the
    predicted |score| (posterior median and 68% interval) and P(hit), not the log-scale mean."""
    import pandas as pd

    store = log_campaign
    r = pending_round(store, LOG_CAMPAIGN)
    (record,) = store.proposal_records(r.id)
    measured = [abs(o.value) for o in store.observations(LOG_CAMPAIGN) if o.value is not None]
    scores = pd.read_csv(slice_csv)["Score"].abs().sort_values(ascending=False)
    threshold = scores.iloc[round(0.05 * len(scores)) - 1]  # the screen's top-5% cut-off
    assert record.units == {"kind": "log", "signed": False, "offset": pytest.approx(median_offset(measured)),
                            "hit_threshold": pytest.approx(threshold)}

    client = TestClient(create_app(store, TOKEN), headers=AUTH)
    view = client.get(f"/api/campaigns/{LOG_CAMPAIGN}/proposal").json()
    assert view["label"] == "predicted |score| (68% interval)" and len(view["items"]) == 8
    m = record.units["offset"]
    for it in view["items"]:
        assert it["predicted"] == pytest.approx(math.exp(it["mean"]) - m)
        assert it["predicted_low"] < it["predicted"] < it["predicted_high"]
        assert 0.0 <= it["p_hit"] <= 1.0 and (it["p_hit"] > 0.5) == (it["predicted"] > threshold)
    assert any(abs(it["predicted"] - it["mean"]) > 0.05 for it in view["items"])  # the log scale is not shown
    assert all(it["predicted"] <= 2 * scores.iloc[0] for it in view["items"])  # the screen's range

    page = client.get(f"/campaigns/{LOG_CAMPAIGN}").text
    first = view["items"][0]
    assert "predicted |score| (68% interval)" in page and "P(hit)" in page
    assert f"{first['predicted']:.3f} ({first['predicted_low']:.3f} to {first['predicted_high']:.3f})" in page
    assert f"{first['p_hit']:.2f}" in page

    out = CliRunner().invoke(_cli_app(), ["review", LOG_CAMPAIGN, "--store", store.url], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    assert "predicted |score| (68% interval)" in out.output and "P(hit)" in out.output
    assert f"{first['predicted']:.3f} ({first['predicted_low']:.3f} to {first['predicted_high']:.3f})" in out.output
    assert f"{first['mean']:.3f} +-" not in out.output


def _cli_app():
    from perturbloop.cli import app

    return app


def test_hit_call_campaign_shows_the_probability_of_a_hit(tmp_path):
    """A hit-call model predicts no |score|: the review shows P(hit) (its mean, clipped to [0, 1]) alone."""
    from dataclasses import dataclass

    from perturbloop.store import ModelFit

    @dataclass
    class Item:
        perturbation: str
        mean: float
        sd: float
        acq_value: float = 0.0
        rationale: str = ""

    store = Store(str(tmp_path / "pl.db"))
    cfg = parse_config({"name": "hc", "data": {"screen": "schmidt2021_il2", "hit_threshold": 1.0},
                        "surrogate": {"target": "hit_call"}, "approval": "required"})
    store.create_or_check_campaign("hc", cfg.model_dump(mode="json"))
    r = store.get_or_create_round("hc", 1)
    store.save_proposal(r.id, [Item("VAV1", 1.2, 0.1), Item("LAT", 0.3, 0.2), Item("CD3G", -0.1, 0.2)], "prob_hit",
                        ModelFit(round_id=r.id, surrogate="gp", policy="prob_hit", n_train=8, fit_seconds=0.1),
                        units={"kind": "hit_call", "hit_threshold": 1.0})
    view = pending_view(store, "hc")
    assert not view["has_value"] and view["has_p_hit"]
    assert [(i["perturbation"], i["predicted"], i["p_hit"]) for i in view["items"]] == [
        ("VAV1", None, 1.0), ("LAT", None, 0.3), ("CD3G", None, 0.0)]


def test_a_logged_out_browser_is_sent_to_the_login_form(paused, data_dir):  # noqa: F811
    client = TestClient(create_app(paused, TOKEN, str(data_dir)))
    for path in ("/", "/campaigns/web"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login?next=" + path.replace("/", "%2F")
    form = client.get("/campaigns/web")  # followed: the login form, which returns there
    assert form.status_code == 200 and 'id="token"' in form.text and 'name="next" value="/campaigns/web"' in form.text
    assert client.get("/api/campaigns").status_code == 401  # API clients get 401, not a page
    assert client.get("/", headers={"Authorization": "Bearer wrong-token-123"}).status_code == 401
    for asked, went in (("/campaigns/web", "/campaigns/web"), ("//evil.example/x", "/"), ("https://evil.example", "/")):
        r = client.post("/login", data={"token": TOKEN, "next": asked}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == went  # never to another site


def test_campaign_page_shows_the_hit_curve_and_every_decision(paused, data_dir):  # noqa: F811
    """After an edited approval of round 1 (ada) and a rejection of round 2 (bob), the page draws the hits found
    so far (the store's count) and lists both decisions with who, when, why and what changed."""
    app = create_app(paused, TOKEN, str(data_dir))
    client = TestClient(app, headers=AUTH)
    prop = client.get("/api/campaigns/web/proposal").json()
    dropped = prop["items"][0]["perturbation"]
    assert client.post("/api/campaigns/web/decision", json={"by": "ada", "drop": [dropped], "note": "off target",
                                                             "proposal": prop["proposal"]}).status_code == 200
    _wait_advanced(app)
    second = client.get("/api/campaigns/web/proposal").json()
    assert client.post("/api/campaigns/web/decision", json={"by": "bob", "reject": True, "note": "wrong pathway",
                                                             "proposal": second["proposal"]}).status_code == 200
    _wait_advanced(app)

    page = client.get("/campaigns/web").text
    hits = sum(1 for o in paused.observations("web") if o.hit)
    assert re.findall(r'class="hit-point"[^>]*data-round="(\d+)" data-hits="(\d+)"', page) == [("1", str(hits))]
    rows = re.findall(r'<tr class="decision" data-round="(\d)" data-action="(\w+)">(.*?)</tr>', page, re.S)
    assert [(rnd, action) for rnd, action, _ in rows] == [("1", "edited"), ("2", "rejected")]
    (_, _, edited), (_, _, rejected) = rows
    d1 = paused.decision(paused.rounds("web")[0].id)
    assert "ada" in edited and "off target" in edited and f"dropped {dropped}" in edited
    assert d1.at.strftime("%Y-%m-%d %H:%M UTC") in edited
    assert "bob" in rejected and "wrong pathway" in rejected and "proposed again" in rejected
    (c,) = [c for c in client.get("/api/campaigns").json() if c["campaign"] == "web"]
    assert c["hit_curve"] == [hits] and [d["by"] for d in c["rounds"][1]["decisions"]] == ["bob"]


def test_round_time_leaves_out_the_approval_wait(paused, data_dir):  # noqa: F811
    """A proposal that waited two hours for approval: `status` (table and JSON) shows the round's work time in
    seconds and the wait apart."""
    r = pending_round(paused, "web")
    with Session(paused.engine) as s:  # the proposal was made two hours ago (stored timestamps moved back)
        rnd = s.get(Round, r.id)
        rnd.created_at -= timedelta(hours=2)
        (rec,) = s.exec(select(ProposalRecord).where(ProposalRecord.round_id == r.id)).all()
        rec.proposed_at -= timedelta(hours=2)
        s.add(rnd)
        s.add(rec)
        s.commit()
    cfg = parse_config(paused.get_campaign("web").config)
    ctx = build_context(cfg, paused, data_dir)
    run_campaign(cfg, paused, data_dir, context=ctx, resume=decide(paused, "web", ctx.candidate_labels(), by="ada"))
    out = CliRunner().invoke(_cli_app(), ["status", "--json", "--store", paused.url])
    assert out.exit_code == 0, out.output
    import json

    (c,) = json.loads(out.output)["campaigns"]
    first = c["rounds"][0]
    assert first["approval_wait_seconds"] >= 2 * 3600 and 0 < first["seconds"] < 600
    total = (paused.rounds("web")[0].finished_at - paused.rounds("web")[0].created_at).total_seconds()
    assert first["seconds"] == pytest.approx(total - first["approval_wait_seconds"])
    table = CliRunner().invoke(_cli_app(), ["status", "--store", paused.url], env={"COLUMNS": "250"}).output
    assert "round time" in table and "approval wait" in table and "2.0 h" in table


def test_tables_written_to_a_pipe_are_not_cut(paused, data_dir):  # noqa: F811
    """`status` and `review` written to a pipe or a log (not a terminal; COLUMNS=80, as a CI log or `| tee`):
    every header and cell whole (no `mse_top2…`), one line per row, so a log can be read and grepped."""
    note = ("dropped nothing; checked the batch against the arrayed validation list of 2024-05 and the donor "
            "variability notes, all sixteen guides are in stock at the core facility, run them in plate B")
    cfg = parse_config(paused.get_campaign("web").config)
    ctx = build_context(cfg, paused, data_dir)
    run_campaign(cfg, paused, data_dir, context=ctx,
                 resume=decide(paused, "web", ctx.candidate_labels(), by="grace.hopper@lab.example.org", note=note))

    status = CliRunner().invoke(_cli_app(), ["status", "--store", paused.url], env={"COLUMNS": "80"})
    assert status.exit_code == 0, status.output
    assert "…" not in status.output
    header = next(line for line in status.output.splitlines() if line.startswith("┃"))
    assert all(col in header for col in ("hits so far", "decision", "round time", "approval wait", "lab job"))
    (row,) = [line for line in status.output.splitlines() if note in line]  # the note whole, on its round's line
    assert "grace.hopper@lab.example.org" in row and "ingested" in row

    review = CliRunner().invoke(_cli_app(), ["review", "web", "--store", paused.url], env={"COLUMNS": "80"})
    assert review.exit_code == 0, review.output
    assert "…" not in review.output
    view = pending_view(paused, "web")
    header = next(line for line in review.output.splitlines() if line.startswith("┃"))
    assert all(col in header for col in (view["label"], "P(hit)", "acq value", "policy", "rationale"))
    lines = review.output.splitlines()
    for it in view["items"]:
        (row,) = [line for line in lines if f" {it['perturbation']} " in line and it["rationale"] in line]
        assert it["shown"] in row


def test_run_summary_while_awaiting_approval_compares_nothing(paused, data_dir, tmp_path):  # noqa: F811
    """The run's summary for a campaign paused at its first proposal beside a finished random baseline: no
    'ucb 0.000 vs random 0.028 (0.0x)', the unmeasured round shows no hit ratio, and the next step is named;
    once the campaign has finished the comparison is printed."""
    from rich.console import Console

    from flows.campaign import baseline_config
    from perturbloop.cli import _print_results

    cfg = parse_config(paused.get_campaign("web").config)
    ctx = build_context(cfg, paused, data_dir)
    results = {"campaign": run_campaign(cfg, paused, data_dir, context=ctx),
               "baseline": run_campaign(baseline_config(cfg), paused, data_dir)}
    assert results["campaign"].status == "awaiting_approval" and results["baseline"].status == "finished"
    console = Console(record=True, width=220)
    _print_results(console, cfg, results, paused)
    text = console.export_text()
    assert "vs random" not in text and not re.search(r"\(\d+\.\dx\)", text) and "hit curve" not in text
    assert "perturbloop review web" in text and "awaiting_approval" in text
    (row,) = [line for line in text.splitlines() if re.match(r"\W*1\W+proposed", line)]
    assert "0.000" not in row  # no hit ratio for a round not yet measured

    for _ in range(cfg.rounds):
        results["campaign"] = run_campaign(cfg, paused, data_dir, context=ctx,
                                           resume=decide(paused, "web", ctx.candidate_labels(), by="ada"))
    assert results["campaign"].status == "finished"
    console = Console(record=True, width=220)
    _print_results(console, cfg, results, paused)
    assert "vs random" in console.export_text()


@pytest.mark.slow
def test_browser_plot_fits_a_narrow_page_and_the_page_shows_the_hit_curve(paused, data_dir, browser):  # noqa: F811
    """In a 480-pixel-wide window: `/` logged out lands on the login form, which returns to the page asked for; the
    proposal plot and, after an approval, the hit curve fit the page's width."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app(paused, TOKEN, str(data_dir))
    with serve_app(app) as base:
        browser.set_window_size(480, 900)
        wait = WebDriverWait(browser, 120, ignored_exceptions=(WebDriverException,))
        browser.get(base + "/campaigns/web")
        wait.until(EC.presence_of_element_located((By.ID, "token"))).send_keys(TOKEN)
        browser.find_element(By.ID, "login").click()
        wait.until(EC.presence_of_element_located((By.ID, "proposal")))
        assert browser.current_url == base + "/campaigns/web"
        loaded = "const p = document.getElementById('plot'); return p.complete && p.naturalWidth > 0"
        wait.until(lambda b: b.execute_script(loaded))
        fits = "return document.getElementById(arguments[0]).getBoundingClientRect().right <= document.documentElement.clientWidth"
        assert browser.execute_script(fits, "plot")

        browser.find_element(By.ID, "by").send_keys("grace")
        browser.find_element(By.ID, "approve").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "pending-title"), "Round 2 proposal"))
        wait.until(EC.presence_of_element_located((By.ID, "hit-curve")))
        assert browser.execute_script(fits, "hit-curve")
        row = browser.find_element(By.CSS_SELECTOR, '#decisions tr.decision[data-round="1"]')
        assert "grace" in row.text and "approved" in row.text


def _copy_sqlite(src: Path, dst: Path) -> None:
    import sqlite3

    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


@pytest.mark.slow
def test_a_store_from_before_proposal_records_reads_and_resumes(log_campaign, data_dir, tmp_path):
    """A copy of the paused log campaign without the `proposalrecord` table, as a store written before it existed:
    opened read-only it reports its rounds and rebuilds the pending proposal's scale from the config and round 1's
    measurements (the same |score| predictions as recorded); opened for writing it gets the table back and the
    campaign resumes to its end, round times estimated where no record exists."""
    from agent.runner import checkpoint_path

    src = Path(log_campaign.url.removeprefix("sqlite:///"))
    db = tmp_path / "old.db"
    _copy_sqlite(src, db)
    _copy_sqlite(checkpoint_path(log_campaign), checkpoint_path(f"sqlite:///{db}"))
    before = pending_view(log_campaign, LOG_CAMPAIGN)
    with Store(str(db)).engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE proposalrecord")

    old = Store(str(db), read_only=True)
    assert not old.has_table(ProposalRecord)
    (c,) = campaign_overview(old)
    assert c["status"] == "awaiting_approval" and [r["status"] for r in c["rounds"]] == ["ingested", "proposed"]
    assert c["rounds"][0]["decisions"][0]["by"] == "ada" and c["rounds"][0]["approval_wait_seconds"] is not None
    view = pending_view(old, LOG_CAMPAIGN)
    assert view["scale"]["kind"] == "log" and view["scale"]["offset"] == pytest.approx(before["scale"]["offset"])
    assert [i["predicted"] for i in view["items"]] == pytest.approx([i["predicted"] for i in before["items"]])
    assert view["scale"]["hit_threshold"] is None and all(i["p_hit"] is None for i in view["items"])  # no record of it
    out = CliRunner().invoke(_cli_app(), ["status", "--store", str(db)], env={"COLUMNS": "250"})
    assert out.exit_code == 0 and "awaiting_approval" in out.output, out.output

    store = Store(str(db))  # opened for writing: the table is added
    assert store.has_table(ProposalRecord) and Store(str(db), read_only=True).has_table(ProposalRecord)
    cfg = parse_config(store.get_campaign(LOG_CAMPAIGN).config)
    ctx = build_context(cfg, store, data_dir)
    res = run_campaign(cfg, store, data_dir, context=ctx,
                       resume=decide(store, LOG_CAMPAIGN, ctx.candidate_labels(), by="bob", data_dir=data_dir))
    assert res.status == "finished" and [r["status"] for r in res.rounds] == ["ingested", "ingested"]
    assert all(r["seconds"] is not None and r["approval_wait_seconds"] is not None for r in res.rounds)
    assert store.proposal_records(store.rounds(LOG_CAMPAIGN)[1].id) == []  # proposed before the table existed
