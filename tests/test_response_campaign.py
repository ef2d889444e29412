"""Response campaigns (Perturb-seq, pairs) through the LangGraph loop and the store: scores in every round,
response vectors in the store, crash-safe resume (the same batches as an uninterrupted run), and
`perturbloop run` on a response config."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from forked import perturbloop, run_campaign_process

from agent.runner import run_campaign
from agent.benchmark import campaign_for
from perturbloop.config import parse_config
from perturbloop.store import Store

ROOT = Path(__file__).resolve().parent.parent

GRN = {
    "name": "grn-loop", "objective": "learn_response", "initial": 8, "rounds": 2, "batch_size": 6,
    "world": {"kind": "synthetic_grn", "seed": 3, "cells_per_run": 40,
              "params": {"n_genes": 80, "n_regulators": 6, "pairs_per_type": 1}},
    "design": {"space": "pairs", "features": ["expression_pca"]},
    "surrogate": {"kind": "ensemble", "epochs": 60, "members": 3},
    "acquisition": {"kind": "uncertainty"},
    "evaluation": {"seeds": 1, "max_test": 20, "de_method": "abs_lfc"},
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Small models: one thread (two shared cores spin-wait badly on tiny matmuls)."""


def _toml(cfg: dict) -> str:
    lines, tables = [], []
    for k, v in cfg.items():
        if isinstance(v, dict):
            body = []
            for kk, vv in v.items():
                if isinstance(vv, dict):
                    vv = "{ " + ", ".join(f"{a} = {b!r}" for a, b in vv.items()) + " }"
                    body.append(f"{kk} = {vv}")
                else:
                    body.append(f"{kk} = {_val(vv)}")
            tables.append(f"[{k}]\n" + "\n".join(body))
        else:
            lines.append(f"{k} = {_val(v)}")
    return "\n".join(lines) + "\n\n" + "\n\n".join(tables) + "\n"


def _val(v) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    return repr(v)


def _picks(store: Store, name: str) -> list[list[str]]:
    return [list(store.decision(r.id).final) for r in store.rounds(name)]


def test_loop_stores_responses_and_scores_every_round(tmp_path):
    cfg = parse_config(GRN)
    store = Store(str(tmp_path / "pl.db"))
    res = run_campaign(cfg, store)
    assert res.status == "finished" and len(res.rounds) == cfg.rounds + 1
    for r in res.rounds:
        assert {"mse_top20_de", "mse_top20_de@additive", "mse_top20_de@mean"} <= set(r["metrics"])
    picks = _picks(store, cfg.name)
    # every measured response is in the store with its observation; held-out pairs were never run
    responses = store.responses(cfg.name)
    obs = store.observations(cfg.name)
    assert set(responses) == {o.perturbation for o in obs} and len(obs) == cfg.initial + cfg.rounds * cfg.batch_size
    for o in obs:
        v = np.asarray(responses[o.perturbation])
        assert v.shape == (80,) and o.value == pytest.approx(float(np.linalg.norm(v)))
    proposals = [p.perturbation for r in store.rounds(cfg.name) for p in store.proposals(r.id)]
    assert len(proposals) == len(set(proposals))
    # a re-run of a finished campaign does nothing
    again = run_campaign(cfg, store)
    assert again.status == "finished" and _picks(store, cfg.name) == picks
    assert all(len(store.lab_jobs(r.id)) == 1 for r in store.rounds(cfg.name))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["submit:1", "ingest:2"])
def test_killed_response_campaign_resumes_without_loss_or_duplicates(tmp_path, stage):
    cfg_path = tmp_path / "grn.toml"
    cfg_path.write_text(_toml(GRN))
    db = tmp_path / "pl.db"
    env = {**os.environ, "PERTURBLOOP_KILL_AT": stage, "OMP_NUM_THREADS": "1"}
    killed = run_campaign_process(cfg_path, db, env=env, cwd=ROOT)  # a process of its own (tests/forked.py)
    assert killed.returncode == -9, killed.stderr[-2000:]
    env.pop("PERTURBLOOP_KILL_AT")
    done = run_campaign_process(cfg_path, db, env=env, cwd=ROOT)
    assert "STATUS finished" in done.stdout, done.stderr[-2000:]
    store = Store(str(db))
    cfg = parse_config(GRN)
    assert _picks(store, cfg.name) == campaign_for(cfg, "uncertainty", cfg.seed)["picks"]
    assert all(len(store.lab_jobs(r.id)) == 1 for r in store.rounds(cfg.name))
    obs = store.observations(cfg.name, include_failed=True)
    assert len(obs) == len({o.perturbation for o in obs}) == cfg.initial + cfg.rounds * cfg.batch_size
    assert set(store.responses(cfg.name)) == {o.perturbation for o in obs}
    assert all("mse_top20_de" in store.model_fit(r.id).metrics for r in store.rounds(cfg.name))


@pytest.mark.slow
def test_cli_runs_a_response_config_and_refuses_a_bad_one(tmp_path):
    cfg_path = tmp_path / "grn.toml"
    cfg_path.write_text(_toml(GRN))
    db = tmp_path / "pl.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"}  # the session's Prefect server (conftest)
    out = perturbloop("run", str(cfg_path), "--store", str(db), "--no-baseline", env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "held-out" in out.stdout and "SYNTHETIC" in out.stdout and "additive" in out.stdout
    status = perturbloop("status", "--store", str(db), "--json", env=env, cwd=tmp_path, timeout=120)
    assert '"rounds_planned": 3' in status.stdout and '"status": "finished"' in status.stdout

    bad = dict(GRN, name="grn-bad", world={**GRN["world"], "kind": "not_a_world"})
    bad_path = tmp_path / "bad.toml"
    bad_path.write_text(_toml(bad))
    refused = perturbloop("run", str(bad_path), "--store", str(db), env=env, cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "world.kind" in refused.stderr and "Traceback" not in refused.stderr
    assert Store(str(db)).get_campaign("grn-bad") is None
