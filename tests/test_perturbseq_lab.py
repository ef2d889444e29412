"""A Perturb-seq campaign with a real lab: approval of every batch (the initial design included), order
sheets out through the file drop, the lab's `.h5ad` cells in, summarised at ingest into response vectors
over the campaign's readout genes, and the next round proposed. The lab's cells are real Papalexi 2021
cells that the campaign's reference data set does not hold."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from agent.approval import decide, pending_proposal
from agent.context import build_context
from agent.runner import run_campaign
from lab_adapters.filedrop import job_id
from perturbloop.config import parse_config
from perturbloop.errors import LabResultError, PerturbloopError, UnknownGeneError
from perturbloop.store import Store


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Small models: one thread."""


def _config(reference: Path, tmp: Path) -> dict:
    return {
        "name": "papalexi-lab", "objective": "learn_response", "initial": 3, "rounds": 1, "batch_size": 2,
        "approval": "required",
        "world": {"kind": "perturbseq", "dataset": str(reference), "key": "target", "control": "non-targeting"},
        "design": {"features": ["go", "expression_pca"], "go_dims": 8},
        "surrogate": {"kind": "ensemble", "epochs": 50, "members": 3},
        "lab": {"kind": "filedrop", "outbox": str(tmp / "outbox"), "inbox": str(tmp / "inbox")},
    }


def _delivery(data_dir: Path, reference: Path, labels: list[str], n_cells: int = 40, n_ctrl: int = 200,
              drop_genes: int = 0) -> ad.AnnData:
    """Cells of `labels` (and control cells) from the full Papalexi data that the reference slice does not
    hold, labelled as a lab writes them (`obs['perturbation']`, control `ctrl`), `bio_rep` as `batch`."""
    full = ad.read_h5ad(data_dir / "perturbseq" / "papalexi2021" / "papalexi2021_lowmoi.h5ad")
    held = ~full.obs_names.isin(ad.read_h5ad(reference, backed="r").obs_names)
    rng = np.random.default_rng(1)
    keep: list[int] = []
    for target, n in [*((lab, n_cells) for lab in labels), ("non-targeting", n_ctrl)]:
        idx = np.flatnonzero(held & (full.obs["target"] == target).to_numpy())
        keep += rng.choice(idx, n, replace=False).tolist()
    cells = full[sorted(keep), : full.n_vars - drop_genes].copy()
    cells.obs = cells.obs[["target", "bio_rep"]].rename(columns={"bio_rep": "batch"})
    cells.obs["perturbation"] = cells.obs.pop("target").astype(str).replace({"non-targeting": "ctrl"})
    return cells


def _drop(cells: ad.AnnData, inbox: Path, campaign: str, index: int) -> Path:
    """Write a delivery as the lab does (a temporary name, then renamed), aged past the file drop's wait."""
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / ".incoming.h5ad"
    cells.write_h5ad(tmp)
    path = inbox / f"{job_id(f'{campaign}/round-{index}')}.results.h5ad"
    tmp.replace(path)
    old = time.time() - 60
    os.utime(path, (old, old))
    return path


@pytest.mark.slow
def test_perturbseq_campaign_with_approval_and_a_file_drop_lab(tmp_path, data_dir, papalexi_slice):
    config = parse_config(_config(papalexi_slice, tmp_path))
    store = Store(str(tmp_path / "store.db"))

    # round 1 (the initial design) waits for approval like every batch
    res = run_campaign(config, store, data_dir)
    assert res.status == "awaiting_approval"
    r, props = pending_proposal(store, config.name)
    assert r.index == 0 and len(props) == 3
    ctx = build_context(config, store, data_dir)
    proposed = [p.perturbation for p in props]
    other = next(c for c in ctx.candidate_labels() if c not in proposed)

    # bad edits are refused, naming the perturbation, and store nothing
    with pytest.raises(PerturbloopError, match="a pair in a single-gene campaign"):
        decide(store, config.name, ctx.candidate_labels(), add=["STAT1+IRF1"], data_dir=data_dir)
    with pytest.raises(UnknownGeneError, match="NOTAGENE1"):
        decide(store, config.name, ctx.candidate_labels(), add=["NOTAGENE1"], data_dir=data_dir)
    decision = decide(store, config.name, ctx.candidate_labels(), drop=[proposed[0]], add=[other], by="ada",
                      data_dir=data_dir)
    batch = [*proposed[1:], other]
    assert decision["final"] == batch

    res = run_campaign(config, store, data_dir, resume=decision, context=ctx)
    assert res.status == "waiting_for_lab"
    order = (tmp_path / "outbox" / f"{job_id('papalexi-lab/round-0')}.order.csv").read_text()
    assert all(b in order for b in batch)

    # a delivery without enough control cells is refused, naming it; nothing is ingested
    bad = _drop(_delivery(data_dir, papalexi_slice, batch, n_ctrl=5), tmp_path / "inbox", config.name, 0)
    with pytest.raises(LabResultError, match=r"results.h5ad\]: 5 control cells"):
        run_campaign(config, store, data_dir)
    assert store.observations(config.name, include_failed=True) == []
    bad.unlink()

    # the lab's cells: summarised at ingest (pseudobulk LFC vs the delivery's control cells, per batch)
    cells = _delivery(data_dir, papalexi_slice, batch)
    _drop(cells, tmp_path / "inbox", config.name, 0)
    res = run_campaign(config, store, data_dir)
    assert res.status == "awaiting_approval"
    responses = store.responses(config.name)
    assert sorted(responses) == sorted(batch)
    assert all(len(v) == len(ctx.world.genes) == 299 for v in responses.values())
    obs = {o.perturbation: o for o in store.observations(config.name)}
    assert all(o.value is not None and o.value > 0 and not o.failed for o in obs.values())
    # the stored vector is the delivery's own pseudobulk LFC: STAT1's knockout lowers STAT1 (when ordered)
    genes = list(ctx.world.genes)
    if "STAT1" in responses and "STAT1" in genes:
        assert responses["STAT1"][genes.index("STAT1")] < 0

    # round 2 is proposed from a model fitted on those vectors, and waits for approval
    r, props = pending_proposal(store, config.name)
    assert r.index == 1 and len(props) == 2
    assert not {p.perturbation for p in props} & set(batch)


def test_a_delivery_missing_readout_genes_or_cells_is_refused(tmp_path, data_dir, papalexi_slice):
    from perturbloop.responses import summarise_delivery

    cells = _delivery(data_dir, papalexi_slice, ["STAT1", "IRF1"])
    ctrl = cells[(cells.obs["perturbation"] == "ctrl").to_numpy()].copy()
    by = {lab: cells[(cells.obs["perturbation"] == lab).to_numpy()].copy() for lab in ("STAT1", "IRF1")}
    readout = list(cells.var_names)
    out = summarise_delivery(by, ctrl, readout, min_cells=20, source="d.h5ad")
    assert set(out) == {"STAT1", "IRF1"} and all(v.shape == (len(readout),) for v in out.values())
    with pytest.raises(PerturbloopError, match=r"d.h5ad: too few cells .*STAT1 \(10\)"):
        summarise_delivery({**by, "STAT1": by["STAT1"][:10].copy()}, ctrl, readout, min_cells=20, source="d.h5ad")
    with pytest.raises(PerturbloopError, match="1 of the campaign's .* readout genes"):
        summarise_delivery(by, ctrl, [*readout, "NOTMEASURED"], min_cells=20, source="d.h5ad")
    with pytest.raises(PerturbloopError, match="0 control cells"):
        summarise_delivery(by, None, readout, min_cells=20, source="d.h5ad")


@pytest.mark.slow
def test_perturbseq_proposal_approved_on_the_web_page(tmp_path, data_dir, papalexi_slice, browser):
    """The review page shows a Perturb-seq proposal in the units a scientist reads; approving it there (one
    knockout dropped) sends the order sheet to the file drop."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    from agent.web import create_app
    from tests.conftest import serve_app

    token = "perturbseq-review-token"
    config = parse_config(_config(papalexi_slice, tmp_path))
    store = Store(str(tmp_path / "store.db"))
    assert run_campaign(config, store, data_dir).status == "awaiting_approval"
    r0, props = pending_proposal(store, config.name)
    proposed = [p.perturbation for p in props]
    app = create_app(store, token, str(data_dir))
    with serve_app(app) as base:
        wait = WebDriverWait(browser, 120, ignored_exceptions=(WebDriverException,))
        browser.get(base + "/login")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "login").click()
        wait.until(EC.presence_of_element_located((By.ID, "campaigns")))
        browser.get(f"{base}/campaigns/{config.name}")
        wait.until(EC.presence_of_element_located((By.ID, "proposal")))
        assert "LFC over the readout genes" in browser.find_element(By.ID, "predicted-label").text
        browser.find_element(By.ID, f"drop-{proposed[0]}").click()
        browser.find_element(By.ID, "by").send_keys("ada")
        browser.find_element(By.ID, "approve").click()
        wait.until(lambda _: store.get_campaign(config.name).status == "waiting_for_lab")
        thread = app.state.advancer.running.get(config.name)
        if thread is not None:
            thread.join(120)
    d = store.decision(r0.id)
    assert (d.action, d.by, d.dropped) == ("edited", "ada", [proposed[0]])
    order = (tmp_path / "outbox" / f"{job_id('papalexi-lab/round-0')}.order.csv").read_text()
    assert proposed[0] not in order and all(p in order for p in proposed[1:])
