"""`perturbloop serve`: a cron deployment per campaign config, advanced by a real Prefect server."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from flows.schedule import artifact_key, campaign_configs, campaign_deployments
from perturbloop.errors import ConfigError
from perturbloop.store import Store


def _write(folder: Path, name: str, slice_csv: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{name}.toml"
    p.write_text(textwrap.dedent(f"""\
        name = "{name}"
        rounds = 2
        batch_size = 8
        {extra}
        [data]
        screen = "{slice_csv}"
    """))
    return p


def test_deployments_one_per_config_with_cron(slice_csv, tmp_path):
    folder = tmp_path / "campaigns"
    _write(folder, "alpha", slice_csv)
    _write(folder, "beta", slice_csv, 'schedule = "30 6 * * 1"\napproval = "required"')
    deps = campaign_deployments(folder, store="sqlite:////tmp/x.db", cron="*/15 * * * *")
    assert [d.name for d in deps] == ["alpha", "beta"]
    assert [d.schedules[0].schedule.cron for d in deps] == ["*/15 * * * *", "30 6 * * 1"]
    assert deps[0].parameters == {"config_path": str((folder / "alpha.toml").resolve()), "store": "sqlite:////tmp/x.db",
                                  "data_dir": None}
    assert deps[0].concurrency_limit == 1


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no \\*.toml campaign configs"),
        ({"a": "", "b": None}, "'a' is used by both a.toml and b.toml"),
        ({"a": 'schedule = "every tuesday"'}, "a.toml: invalid cron schedule 'every tuesday'"),
        ({"a": "bogus = 1"}, "bogus: unknown field"),
    ],
)
def test_bad_folder_or_config_is_a_clear_error(files, message, slice_csv, tmp_path):
    folder = tmp_path / "campaigns"
    folder.mkdir()
    for fname, extra in files.items():
        if extra is None:  # a second file that reuses the first one's campaign name
            (folder / f"{fname}.toml").write_text((folder / "a.toml").read_text())
        else:
            _write(folder, fname, slice_csv, extra)
    with pytest.raises(ConfigError, match=message):
        campaign_deployments(folder)
    with pytest.raises(ConfigError, match="not a folder"):
        campaign_configs(tmp_path / "missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float, what: str, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: a process exited early:\n{p.stdout.read() if p.stdout else ''}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(api + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_serve_registers_cron_deployments_and_scheduled_runs_advance(slice_csv, data_dir, tmp_path):
    """A real `prefect server`, `perturbloop serve` in a subprocess; a run of the deployment advances
    the campaign to its approval pause and publishes the round table as an artifact."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2", "PREFECT_UI_ENABLED": "false"}
    folder = tmp_path / "campaigns"
    _write(folder, "nightly", slice_csv, 'approval = "required"\nschedule = "0 2 * * *"')
    store = tmp_path / "pl.db"
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    serve = None
    try:
        _wait(lambda: _healthy(api), 90, "the Prefect server", [server])
        serve = subprocess.Popen([str(bin_dir / "perturbloop"), "serve", str(folder), "--store", str(store),
                                  "--data-dir", str(data_dir)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api}):  # the client calls below talk to that server
            from prefect.client.orchestration import get_client
            from prefect.deployments import run_deployment

            async def deployment():
                async with get_client() as client:
                    try:
                        return await client.read_deployment_by_name("perturbloop-advance/nightly")
                    except Exception:
                        return None

            _wait(lambda: asyncio.run(deployment()) is not None, 90, "the deployment", [server, serve])
            dep = asyncio.run(deployment())
            assert dep.schedules[0].schedule.cron == "0 2 * * *" and dep.schedules[0].active

            async def scheduled():
                from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
                async with get_client() as client:
                    return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))

            _wait(lambda: any(r.state_name == "Scheduled" for r in asyncio.run(scheduled())), 60,
                  "cron runs scheduled by the server", [server, serve])
            assert all(r.expected_start_time.hour == 2 and r.expected_start_time.minute == 0
                       for r in asyncio.run(scheduled()) if r.state_name == "Scheduled")

            run = run_deployment("perturbloop-advance/nightly", timeout=240)  # what the 02:00 run does, now
            assert run.state.is_completed(), run.state
            st = Store(str(store))
            assert st.get_campaign("nightly").status == "awaiting_approval"

            async def artifact():
                async with get_client() as client:
                    return await client.read_latest_artifacts()

            keys = [a.key for a in asyncio.run(artifact())]
            assert artifact_key("nightly") in keys
    finally:
        for p in (serve, server):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
