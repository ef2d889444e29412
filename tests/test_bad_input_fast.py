"""Bad input fails before any Prefect machinery starts, and a failed campaign task retries only what may be
transient (a lab unreachable), never bad input."""

from __future__ import annotations

import os

import pytest
from forked import perturbloop
from prefect.states import Failed

from flows.campaign import retryable
from perturbloop.errors import ConfigError, LabUnavailableError, UnknownDatasetError


def test_bad_input_is_not_retried():
    assert not retryable(None, None, Failed(data=ConfigError("design.genes: file 'x' does not exist")))
    assert not retryable(None, None, Failed(data=UnknownDatasetError("nope", ["schmidt2021_il2"])))
    assert retryable(None, None, Failed(data=LabUnavailableError("lab at http://127.0.0.1:9 unreachable")))
    assert retryable(None, None, Failed(data=RuntimeError("killed")))


@pytest.mark.slow
def test_run_with_an_unknown_screen_fails_before_the_flow(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "bad"\nrounds = 2\nbatch_size = 4\n[data]\nscreen = "no_such_screen_2026"\n')
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    out = perturbloop("run", str(cfg), "--store", str(tmp_path / "s.db"), env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no_such_screen_2026" in out.stderr
    # one error line: no traceback, no retries, no Prefect server started for it
    assert "Traceback" not in out.stderr and "Retry" not in out.stdout + out.stderr
    assert not (tmp_path / "prefect").exists() or not any((tmp_path / "prefect").rglob("*.db"))
