"""A Perturb-seq campaign with the file-drop lab survives SIGKILL after every node: a slice of the real
Papalexi 2021 data as reference, approval `auto`, the lab's `.h5ad` cells dropped in the inbox by the
test between runs. The campaign is run in subprocesses, each killed (`PERTURBLOOP_KILL_AT`) right
after the next node's side effects in round 1 (a fitted model, a round after an ingested one, and one
before another), in turn; the last runs finish it. Every perturbation is
then ordered exactly once (order sheets) and ingested exactly once (store), and the picks are the
uninterrupted campaign's."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
from pathlib import Path

import pytest
from forked import run_campaign_process
from test_perturbseq_lab import _config, _delivery, _drop
from test_response_campaign import _toml

from agent.runner import run_campaign
from lab_adapters.filedrop import job_id
from perturbloop.config import parse_config
from perturbloop.store import Store

ROOT = Path(__file__).resolve().parent.parent
NODES = ("fit", "propose", "review", "submit", "dispatch", "collect", "ingest")  # submit: inside dispatch


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Small models: one thread (as the subprocesses, OMP_NUM_THREADS=1)."""


def _crash_config(reference: Path, tmp: Path) -> dict:
    cfg = _config(reference, tmp)
    return {**cfg, "name": "papalexi-crash", "approval": "auto", "rounds": 2,
            "surrogate": {**cfg["surrogate"], "epochs": 30, "members": 2}}


def _ordered(outbox: Path) -> list[str]:
    """Every perturbation on every order sheet in the outbox (one sheet per round)."""
    out = []
    for sheet in sorted(outbox.glob("*.order.csv")):
        with sheet.open(newline="") as f:
            out += [row["perturbation"] for row in csv.DictReader(f)]
    return out


class Lab:
    """The lab's side: cells for each order sheet that has no delivery yet (real held-out Papalexi cells)."""

    def __init__(self, data_dir: Path, reference: Path, tmp: Path, campaign: str, rounds: int):
        self.data_dir, self.reference, self.tmp, self.campaign, self.rounds = data_dir, reference, tmp, campaign, rounds

    def deliver(self) -> list[int]:
        done = []
        for index in range(self.rounds):
            stem = job_id(f"{self.campaign}/round-{index}")
            sheet = self.tmp / "outbox" / f"{stem}.order.csv"
            if sheet.exists() and not (self.tmp / "inbox" / f"{stem}.results.h5ad").exists():
                with sheet.open(newline="") as f:
                    labels = [row["perturbation"] for row in csv.DictReader(f)]
                _drop(_delivery(self.data_dir, self.reference, labels), self.tmp / "inbox", self.campaign, index)
                done.append(index)
        return done


def _run(cfg: Path, db: Path, data_dir: Path, kill_at: str | None) -> subprocess.CompletedProcess:
    """The campaign in a process of its own (a fork of a preloaded forkserver: tests/forked.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PERTURBLOOP_KILL_AT", None)
    if kill_at:
        env["PERTURBLOOP_KILL_AT"] = kill_at
    return run_campaign_process(cfg, db, data_dir, env=env, cwd=ROOT)


def _exactly_once(store: Store, name: str, outbox: Path) -> list[str]:
    """No perturbation ordered or ingested twice; one lab job per round. Returns the ordered ones."""
    ordered = _ordered(outbox)
    assert len(ordered) == len(set(ordered)), f"ordered twice: {ordered}"
    ledger = [p for p in _ordered(outbox / ".perturbloop")]
    assert sorted(ledger) == sorted(ordered)  # no sheet written but lost, none written twice
    obs = [o.perturbation for o in store.observations(name, include_failed=True)]
    assert len(obs) == len(set(obs)), f"ingested twice: {obs}"
    assert set(obs) <= set(ordered)
    assert all(len(store.lab_jobs(r.id)) <= 1 for r in store.rounds(name))
    return ordered


@pytest.mark.slow
def test_sigkill_after_every_node_loses_and_duplicates_nothing(tmp_path, data_dir, papalexi_slice):
    raw = _crash_config(papalexi_slice, tmp_path)
    config = parse_config(raw)
    cfg_path = tmp_path / "campaign.toml"
    cfg_path.write_text(_toml(raw))
    db = tmp_path / "store.db"
    rounds = config.rounds + 1  # the initial design is round 0
    lab = Lab(data_dir, papalexi_slice, tmp_path, config.name, rounds)

    first = _run(cfg_path, db, data_dir, None)  # round 0 (the initial design) to the wait for the lab
    assert "STATUS waiting_for_lab" in first.stdout, first.stderr[-3000:]
    assert lab.deliver() == [0]
    for kill_at in [f"{node}:1" for node in NODES]:
        if kill_at.startswith("collect:"):
            # kill the collect that has the lab's cells in hand (not one that only finds the lab still working)
            assert lab.deliver() == [int(kill_at.split(":")[1])]
        proc = _run(cfg_path, db, data_dir, kill_at)
        assert proc.returncode == -signal.SIGKILL, f"{kill_at}: not killed\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        _exactly_once(Store(str(db)), config.name, tmp_path / "outbox")
    while (done := _run(cfg_path, db, data_dir, None)).returncode == 0 and "STATUS finished" not in done.stdout:
        assert "STATUS waiting_for_lab" in done.stdout and lab.deliver(), done.stdout[-2000:]
    assert "STATUS finished" in done.stdout, done.stderr[-3000:]

    store = Store(str(db))
    ordered = _exactly_once(store, config.name, tmp_path / "outbox")
    assert len(ordered) == config.initial + config.rounds * config.batch_size
    obs = store.observations(config.name, include_failed=True)
    assert sorted(o.perturbation for o in obs) == sorted(ordered) and not any(o.failed for o in obs)
    responses = store.responses(config.name)
    assert set(responses) == set(ordered) and all(len(v) == 299 for v in responses.values())
    assert [r.status for r in store.rounds(config.name)] == ["ingested"] * rounds
    assert all(len(store.lab_jobs(r.id)) == 1 for r in store.rounds(config.name))
    picks = [list(store.decision(r.id).final) for r in store.rounds(config.name)]

    # the same campaign without a crash (in this process, same deliveries) picks the same batches
    ref = tmp_path / "reference"
    ref_lab = Lab(data_dir, papalexi_slice, ref, config.name, rounds)
    ref_config = parse_config(_crash_config(papalexi_slice, ref))
    ref_store = Store(str(ref / "store.db"))
    while run_campaign(ref_config, ref_store, data_dir).status != "finished":
        assert ref_lab.deliver(), "the campaign waits for a lab that has every delivery"
    assert [list(ref_store.decision(r.id).final) for r in ref_store.rounds(config.name)] == picks
