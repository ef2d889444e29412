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

from test_contexts_campaign import _config as _contexts_config
from test_perturbseq_lab import _config as _perturbseq_config
from test_response_campaign import _toml

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


def _write_perturbseq(folder: Path, name: str, reference: Path, lab_dir: Path, schedule: str) -> Path:
    """A Perturb-seq campaign (the Papalexi slice as reference) with a file-drop lab and approval `auto`."""
    folder.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)  # the lab's share; outbox and inbox are made inside it
    cfg = {**_perturbseq_config(reference, lab_dir), "name": name, "approval": "auto", "schedule": schedule}
    p = folder / f"{name}.toml"
    p.write_text(_toml(cfg))
    return p


def _write_contexts(folder: Path, name: str, screen: Path, lab_dir: Path, schedule: str) -> Path:
    """A campaign across contexts (the GWT activation slice) with a file-drop lab and approval `auto`."""
    folder.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)  # the lab's share; outbox and inbox are made inside it
    cfg = {**_contexts_config(screen), "name": name, "approval": "auto", "schedule": schedule,
           "lab": {"kind": "filedrop", "outbox": str(lab_dir / "outbox"), "inbox": str(lab_dir / "inbox")}}
    p = folder / f"{name}.toml"
    p.write_text(_toml(cfg))
    return p


def test_a_perturbseq_config_gets_a_deployment_beside_a_screen(slice_csv, papalexi_slice, tmp_path):
    folder = tmp_path / "campaigns"
    _write(folder, "screen", slice_csv)
    _write_perturbseq(folder, "perturbseq", papalexi_slice, tmp_path / "lab", "15 3 * * *")
    (path, perturbseq), (_, screen) = campaign_configs(folder)
    assert perturbseq.is_response and perturbseq.lab.kind == "filedrop" and not screen.is_response
    deps = campaign_deployments(folder, store="sqlite:////tmp/x.db", cron="*/15 * * * *")
    assert [d.name for d in deps] == ["perturbseq", "screen"]
    dep = deps[0]
    assert dep.schedules[0].schedule.cron == "15 3 * * *" and dep.concurrency_limit == 1
    assert dep.parameters["config_path"] == str(path)


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
def test_serve_registers_cron_deployments_and_scheduled_runs_advance(slice_csv, papalexi_slice, gwt_activation_slice_csv,
                                                                     data_dir, tmp_path):
    """A real `prefect server`, `perturbloop serve` in a subprocess, a folder with a screen config, a
    Perturb-seq config and a campaign across contexts (both file-drop labs): a run of each deployment advances
    its campaign (the screen to its approval pause, the others to their order sheets and the wait for the lab;
    the contexts one's sheet names each pair's gene and context) and publishes the round table as an artifact."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2", "PREFECT_UI_ENABLED": "false"}
    folder = tmp_path / "campaigns"
    _write(folder, "nightly", slice_csv, 'approval = "required"\nschedule = "0 2 * * *"')
    _write_perturbseq(folder, "perturbseq-nightly", papalexi_slice, tmp_path / "lab", "30 3 * * *")
    _write_contexts(folder, "contexts-nightly", gwt_activation_slice_csv, tmp_path / "ctxlab", "45 3 * * *")
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

            async def deployment(name: str = "nightly"):
                async with get_client() as client:
                    try:
                        return await client.read_deployment_by_name(f"perturbloop-advance/{name}")
                    except Exception:
                        return None

            # serve registers the folder's deployments one after another: wait for both
            _wait(lambda: all(asyncio.run(deployment(n)) is not None for n in ("nightly", "perturbseq-nightly", "contexts-nightly")), 90,
                  "the three deployments", [server, serve])
            dep = asyncio.run(deployment())
            assert dep.schedules[0].schedule.cron == "0 2 * * *" and dep.schedules[0].active
            ps_dep = asyncio.run(deployment("perturbseq-nightly"))
            assert ps_dep is not None and ps_dep.schedules[0].schedule.cron == "30 3 * * *" and ps_dep.schedules[0].active

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

            ps_run = run_deployment("perturbloop-advance/perturbseq-nightly", timeout=240)
            assert ps_run.state.is_completed(), ps_run.state
            assert st.get_campaign("perturbseq-nightly").status == "waiting_for_lab"
            sheets = list((tmp_path / "lab" / "outbox").glob("*.order.csv"))
            assert len(sheets) == 1 and len(sheets[0].read_text().splitlines()) == 1 + 3  # the initial design

            ctx_run = run_deployment("perturbloop-advance/contexts-nightly", timeout=240)
            assert ctx_run.state.is_completed(), ctx_run.state
            assert st.get_campaign("contexts-nightly").status == "waiting_for_lab"
            (sheet,) = (tmp_path / "ctxlab" / "outbox").glob("*.order.csv")
            header, *rows = sheet.read_text().splitlines()
            assert header.split(",")[:4] == ["round", "perturbation", "gene", "context"]
            assert len(rows) == 9 and all(r.split(",")[1] == f"{r.split(',')[2]}@@{r.split(',')[3]}" for r in rows)

            described = {a.key: a.description for a in asyncio.run(artifact())}
            assert described[artifact_key("nightly")].endswith("awaiting_approval, 1/2 rounds")
            # a Perturb-seq campaign's initial design is a round of its own: 1 + rounds
            assert described[artifact_key("perturbseq-nightly")].endswith("waiting_for_lab, 1/2 rounds")
    finally:
        for p in (serve, server):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
