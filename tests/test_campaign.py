"""End-to-end campaigns on a slice of the real Schmidt 2021 IL2 screen: the loop, the store,
crash-safe resume, and bad input that must leave the store untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
from forked import run_campaign_process

from agent.runner import run_campaign
from perturbloop.config import parse_config
from perturbloop.data import load_screen
from perturbloop.errors import ConfigError, ScreenFormatError, UnknownDatasetError, UnknownGeneError
from perturbloop.store import Store

ROUNDS, BATCH = 3, 24


@pytest.fixture(scope="module")
def slice_csv(il2_slice_1500) -> Path:
    """1,500 real IL2 genes (the 150 strongest plus 1,350 drawn at random), shared with the other campaign tests."""
    return il2_slice_1500


def _config(slice_csv: Path, name: str = "slice", policy: str = "ucb", **extra):
    return parse_config({"name": name, "rounds": ROUNDS, "batch_size": BATCH, "seed": 1,
                         "data": {"screen": str(slice_csv)}, "acquisition": {"kind": policy}, **extra})


def _snapshot(store: Store, campaign: str) -> dict:
    """Per round: the perturbations proposed, run and observed (the store's record of the campaign)."""
    out = {}
    for r in store.rounds(campaign):
        out[r.index] = {
            "status": r.status,
            "proposed": [p.perturbation for p in store.proposals(r.id)],
            "final": list(store.decision(r.id).final) if store.decision(r.id) else None,
            "jobs": [(j.idempotency_key, j.status, tuple(j.perturbations)) for j in store.lab_jobs(r.id)],
            "observed": sorted(o.perturbation for o in store.observations(campaign, include_failed=True) if o.round_id == r.id),
        }
    return out


@pytest.mark.slow
def test_campaign_runs_every_layer_and_records_each_round(slice_csv, data_dir, tmp_path):
    store = Store(str(tmp_path / "pl.db"))
    seen = []
    res = run_campaign(_config(slice_csv), store, data_dir, on_round=seen.append)
    assert res.status == "finished"
    assert [r["round"] for r in seen] == [1, 2, 3]
    screen = load_screen(str(slice_csv), data_dir)
    hits = screen.hits(0.05)
    assert res.n_hits == len(hits) == 75

    obs = store.observations("slice")
    labels = [o.perturbation for o in obs]
    assert len(labels) == len(set(labels)) == ROUNDS * BATCH
    # each observation is the screen's score, revealed only for genes that were run
    assert all(o.value == pytest.approx(screen.scores[o.perturbation]) for o in obs)
    assert all(o.hit == (o.perturbation in hits) for o in obs)
    assert res.hit_ratio == pytest.approx(sum(o.hit for o in obs) / len(hits))

    rounds = store.rounds("slice")
    assert [r.status for r in rounds] == ["ingested"] * ROUNDS
    for r in rounds:
        props = store.proposals(r.id)
        assert len(props) == BATCH
        assert store.decision(r.id).action == "auto"
        (job,) = store.lab_jobs(r.id)
        assert job.status == "collected" and job.idempotency_key == f"slice/round-{r.index}"
        fit = store.model_fit(r.id)
        if r.index == 0:  # no data yet: random first picks, no model
            assert fit.n_train == 0 and fit.surrogate == "none"
        else:
            assert fit.n_train == r.index * BATCH and fit.surrogate == "gp"
            assert -1 <= fit.metrics["spearman_unmeasured"] <= 1
            assert all(p.mean is not None and p.sd > 0 and p.acq_value is not None for p in props)
            assert fit.params  # hyperparameters kept for warm starts after a restart
    # the proposals of a later round are ranked by acquisition value (UCB, top-q)
    props = store.proposals(rounds[-1].id)
    assert [p.acq_value for p in props] == sorted((p.acq_value for p in props), reverse=True)

    # running again resumes a finished campaign: nothing new is run or written
    before = _snapshot(store, "slice")
    again = run_campaign(_config(slice_csv), store, data_dir)
    assert again.status == "finished" and _snapshot(store, "slice") == before


@pytest.mark.slow
def test_different_config_under_same_name_is_refused(slice_csv, data_dir, tmp_path):
    store = Store(str(tmp_path / "pl.db"))
    run_campaign(_config(slice_csv, name="c1"), store, data_dir)
    with pytest.raises(Exception, match="different config"):
        run_campaign(_config(slice_csv, name="c1", policy="greedy"), store, data_dir)


def _write_config(path: Path, slice_csv: Path, name: str) -> Path:
    path.write_text(textwrap.dedent(f"""
        name = "{name}"
        rounds = {ROUNDS}
        batch_size = {BATCH}
        seed = 1
        [data]
        screen = "{slice_csv}"
        [acquisition]
        kind = "ucb"
    """))
    return path


def _run_process(cfg: Path, store: Path, data_dir: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """The campaign in a process of its own (a fork of a preloaded forkserver: tests/forked.py), SIGKILLed by the
    fault hook after `kill_at`."""
    env = {**os.environ, "PERTURBLOOP_DEVICE": "cpu"}
    env.pop("PERTURBLOOP_KILL_AT", None)
    if kill_at:
        env["PERTURBLOOP_KILL_AT"] = kill_at
    return run_campaign_process(cfg, store, data_dir, env=env)


@pytest.fixture(scope="module")
def reference_run(slice_csv, data_dir, tmp_path_factory) -> dict:
    """The same campaign run without interruption."""
    d = tmp_path_factory.mktemp("reference")
    cfg = _write_config(d / "c.toml", slice_csv, "crash")
    proc = _run_process(cfg, d / "pl.db", data_dir)
    assert proc.returncode == 0, proc.stderr
    return _snapshot(Store(str(d / "pl.db")), "crash")


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["fit:1", "propose:1", "review:1", "submit:1", "dispatch:1", "collect:1", "ingest:1"])
def test_killed_run_resumes_without_lost_or_duplicate_work(kill_at, slice_csv, data_dir, tmp_path, reference_run):
    """SIGKILL right after a node's side effects (before its checkpoint), then run again."""
    cfg = _write_config(tmp_path / "c.toml", slice_csv, "crash")
    killed = _run_process(cfg, tmp_path / "pl.db", data_dir, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = _snapshot(Store(str(tmp_path / "pl.db")), "crash")
    assert partial[0]["status"] == "ingested" and len(partial) == 2  # died inside the second round

    resumed = _run_process(cfg, tmp_path / "pl.db", data_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert "STATUS finished" in resumed.stdout
    after = _snapshot(Store(str(tmp_path / "pl.db")), "crash")
    # one lab job per round, every pick observed once, and the very same campaign as without the crash
    assert all(len(r["jobs"]) == 1 for r in after.values())
    assert after == reference_run


def _store_is_empty(path: Path) -> bool:
    return not path.exists() or Store(str(path)).list_campaigns() == []


@pytest.mark.parametrize(
    ("patch", "error", "message"),
    [
        ({"data": {"screen": "no_such_screen"}}, UnknownDatasetError, "no_such_screen"),
        ({"design": {"genes": ["VAV1", "NOTAGENE1", "CD3G", "NOTAGENE2"]}}, UnknownGeneError, "NOTAGENE1, NOTAGENE2"),
        ({"design": {"features": ["go", "screens"], "prior_screens": ["schmidt2021_il2", "schmidt2021_il2"]},
          "data": {"screen": "schmidt2021_il2"}}, ConfigError, "leak"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(patch, error, message, slice_csv, data_dir, tmp_path):
    raw = {"name": "bad", "rounds": 2, "batch_size": 8, "data": {"screen": str(slice_csv)}}
    raw.update(patch)
    store_path = tmp_path / "pl.db"
    with pytest.raises(error, match=message):
        run_campaign(parse_config(raw), str(store_path), data_dir)
    assert _store_is_empty(store_path)


def test_malformed_screen_file_is_refused_before_the_store_is_touched(data_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Gene,Score\nVAV1,-3.6\nCD3G,not-a-number\n")
    store_path = tmp_path / "pl.db"
    with pytest.raises(ScreenFormatError, match="non-numeric"):
        run_campaign(parse_config({"name": "bad", "data": {"screen": str(bad)}}), str(store_path), data_dir)
    assert _store_is_empty(store_path)


@pytest.mark.slow
def test_hit_call_target_models_the_hit_calls(slice_csv, data_dir, tmp_path):
    """`surrogate.target = 'hit_call'`: the GP is trained on 1[|value| >= threshold] of the measured genes."""
    from agent.context import build_context

    store = Store(str(tmp_path / "pl.db"))
    cfg = _config(slice_csv, name="calls", policy="greedy", surrogate={"target": "hit_call"})
    ctx = build_context(cfg, store, data_dir)
    res = run_campaign(cfg, store, data_dir, context=ctx)
    assert res.status == "finished"
    data = ctx.training_data()
    assert len(data) == ROUNDS * BATCH and set(data.values()) <= {0.0, 1.0}
    hits = {o.perturbation for o in store.observations("calls") if o.hit}
    assert {g for g, v in data.items() if v == 1.0} == hits and hits  # the calls are the screen's hits
    with pytest.raises(ConfigError, match="target_transform"):
        _config(slice_csv, surrogate={"target": "hit_call", "target_transform": "log"})
