"""Scientist approval: the loop pauses after proposing, a validated decision resumes it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from agent.approval import decide, pending_proposal
from agent.context import build_context
from agent.runner import run_campaign
from perturbloop.config import load_config, parse_config
from perturbloop.errors import PerturbloopError, UnknownGeneError
from perturbloop.store import Store


def _cfg(slice_csv):
    return parse_config({"name": "appr", "rounds": 2, "batch_size": 8, "approval": "required",
                         "data": {"screen": str(slice_csv)}})


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_pause_edit_and_resume(backend, slice_csv, data_dir, tmp_path, request):
    """On SQLite, and on PostgreSQL (store and LangGraph checkpoints in the same database)."""
    url = str(tmp_path / "pl.db") if backend == "sqlite" else request.getfixturevalue("fresh_postgres_url")
    store = Store(url)
    cfg = _cfg(slice_csv)
    res = run_campaign(cfg, store, data_dir)
    assert res.status == "awaiting_approval"
    assert store.get_campaign("appr").status == "awaiting_approval"
    r, props = pending_proposal(store, "appr")
    assert r.index == 0 and len(props) == 8 and not store.lab_jobs(r.id)

    # running again (e.g. a scheduled run) keeps waiting, and submits nothing
    assert run_campaign(cfg, store, data_dir).status == "awaiting_approval"
    assert not store.lab_jobs(r.id)

    ctx = build_context(cfg, store, data_dir)
    proposed = [p.perturbation for p in props]
    spare = next(g for g in ctx.pool.labels if g not in proposed)
    with pytest.raises(UnknownGeneError, match="NOTAGENE9"):
        decide(store, "appr", ctx.candidate_labels(), add=["NOTAGENE9"], data_dir=data_dir)
    with pytest.raises(PerturbloopError, match="not in the pending proposal"):
        decide(store, "appr", ctx.candidate_labels(), drop=[spare], data_dir=data_dir)
    assert store.decision(r.id) is None  # refused edits leave the store untouched

    decision = decide(store, "appr", ctx.candidate_labels(), drop=[proposed[0]], add=[spare.lower()], note="swap", by="ada",
                      data_dir=data_dir)
    assert decision["action"] == "edited" and decision["final"] == proposed[1:] + [spare]
    res = run_campaign(cfg, store, data_dir, resume=decision, context=ctx)
    assert res.status == "awaiting_approval"  # round 2 proposed, waiting again
    d = store.decision(r.id)
    assert (d.action, d.by, d.note, d.dropped, d.added) == ("edited", "ada", "swap", [proposed[0]], [spare])
    (job,) = store.lab_jobs(r.id)
    assert job.perturbations == decision["final"]  # what ran is the edited batch; the proposal is kept too
    assert [p.perturbation for p in store.proposals(r.id)] == proposed
    observed = {o.perturbation for o in store.observations("appr")}
    assert observed == set(decision["final"])

    with pytest.raises(PerturbloopError, match="already measured"):
        decide(store, "appr", ctx.candidate_labels(), add=[proposed[1]], data_dir=data_dir)
    final = run_campaign(cfg, store, data_dir, resume=decide(store, "appr", ctx.candidate_labels(), reject=True, data_dir=data_dir),
                         context=ctx)
    assert final.status == "finished"
    assert store.rounds("appr")[1].status == "rejected" and store.decision(store.rounds("appr")[1].id).action == "rejected"


@pytest.mark.slow
def test_cli_review_and_approve(slice_csv, data_dir, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent(f"""
        name = "cli-appr"
        rounds = 1
        batch_size = 6
        approval = "required"
        [data]
        screen = "{slice_csv}"
    """))
    store = tmp_path / "pl.db"
    env = dict(os.environ)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "perturbloop.cli", *args, "--store", str(store)],
                              capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)

    ran = cli("run", str(cfg), "--no-baseline", "--data-dir", str(data_dir))
    assert ran.returncode == 0 and "awaiting_approval" in ran.stdout, ran.stdout + ran.stderr
    shown = cli("review", "cli-appr")
    assert shown.returncode == 0 and "awaiting approval (6 perturbations)" in shown.stdout
    bad = cli("approve", "cli-appr", "--add", "NOTAGENE9", "--data-dir", str(data_dir))
    assert bad.returncode == 2 and "NOTAGENE9" in bad.stderr
    ok = cli("approve", "cli-appr", "--by", "ada", "--data-dir", str(data_dir))
    assert ok.returncode == 0 and "approved by ada: 6 perturbations" in ok.stdout and "finished" in ok.stdout


def test_approval_example_config_requires_approval():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "il2_approval.toml")
    assert cfg.approval == "required" and cfg.data.screen == "schmidt2021_il2"
