"""Today's picks on a real IL2 slice stay the picks: a refactor of design spaces, policies or surrogates must
not change what the shipped loop proposes. The expected picks (tests/data/il2_slice_picks.json) were recorded
by this test with `PERTURBLOOP_RECORD_PICKS=1` before the design space and the policies were unified."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.runner import run_campaign
from perturbloop.config import parse_config
from perturbloop.store import Store

EXPECTED = Path(__file__).parent / "data" / "il2_slice_picks.json"
POLICIES = ("random", "coreset", "greedy", "ucb")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """One thread: the GP fits (and so the model-based picks) are then the same on every run."""


def _picks(policy: str, slice_csv: Path, data_dir: Path, tmp_path: Path) -> list[list[str]]:
    config = parse_config({"name": f"picks-{policy}", "rounds": 3, "batch_size": 24, "seed": 0,
                           "data": {"screen": str(slice_csv)}, "design": {"features": ["go"], "go_dims": 16},
                           "acquisition": {"kind": policy}})
    store = Store(str(tmp_path / f"{policy}.db"))
    assert run_campaign(config, store, data_dir).status == "finished"
    return [[p.perturbation for p in store.proposals(r.id)] for r in store.rounds(config.name)]


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_il2_slice_picks_do_not_change(policy, slice_csv, data_dir, tmp_path):
    got = _picks(policy, slice_csv, data_dir, tmp_path)
    if os.environ.get("PERTURBLOOP_RECORD_PICKS") == "1":
        recorded = json.loads(EXPECTED.read_text()) if EXPECTED.is_file() else {}
        recorded[policy] = got
        EXPECTED.write_text(json.dumps(recorded, indent=1) + "\n")
    expected = json.loads(EXPECTED.read_text())[policy]
    assert got == expected
