"""Campaigns side by side (issue 13): `perturbloop run` started several times at once on one machine, without a
configured Prefect server, shares one API server (flows/prefect_server.py) instead of starting one per process
on the same database; and a run killed with SIGKILL leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from forked import perturbloop, start_perturbloop

from flows.prefect_server import _open, _watch, shared_api


def _env(tmp_path: Path, idle_seconds: float) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PERTURBLOOP_PREFECT_IDLE_SECONDS": str(idle_seconds), "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)  # no configured server: the case that raced
    return env


def _config(tmp_path: Path, slice_csv: Path, name: str, rounds: int, batch: int) -> Path:
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(f'name = "{name}"\nrounds = {rounds}\nbatch_size = {batch}\n[data]\nscreen = "{slice_csv}"\n'
                   f'[acquisition]\nkind = "ucb"\n')
    return cfg


def _run(cfg: Path, store: Path, data_dir: Path, env: dict, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "perturbloop.cli", "run", str(cfg), "--store", str(store),
                             "--data-dir", str(data_dir), *extra], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _server(tmp_path: Path) -> dict | None:
    try:
        return json.loads((tmp_path / "prefect" / "perturbloop-server" / "server.json").read_text())
    except (OSError, ValueError):
        return None


def _wait(cond, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (got := cond()):
            return got
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"exited with {p.returncode} while waiting for {what}:\n{p.stdout.read()}")
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slow
def test_three_campaigns_started_together_all_finish_on_one_server(slice_csv, data_dir, tmp_path):
    # a long idle time keeps the first server up for all three runs, however their start-ups interleave
    env = _env(tmp_path, idle_seconds=600)
    store = tmp_path / "runs" / "pl.db"  # one store, as three campaigns run from one folder would have
    names = ["side-a", "side-b", "side-c"]
    cfgs = [_config(tmp_path, slice_csv, n, rounds=2, batch=4) for n in names]
    # three processes of their own started at once (forked from a preloaded forkserver: tests/forked.py)
    procs = [start_perturbloop("run", str(cfg), "--store", str(store), "--data-dir", str(data_dir), "--no-baseline",
                               env=env, cwd=tmp_path) for cfg in cfgs]
    try:
        for n, done in zip(names, [p.wait(timeout=900) for p in procs]):
            out = done.stdout + done.stderr
            assert done.returncode == 0, f"{n}:\n{out}"
            assert "Timed out" not in out and f"{n}: ucb" in done.stdout, out
        status = perturbloop("status", "--json", "--store", str(store), env=env, cwd=tmp_path, timeout=120)
        by_name = {c["campaign"]: c for c in json.loads(status.stdout)["campaigns"]}
        assert {n: (by_name[n]["status"], by_name[n]["picks"]) for n in names} == {n: ("finished", 8) for n in names}
        log = (tmp_path / "prefect" / "perturbloop-server" / "server.log").read_text()
        assert log.count("perturbloop: Prefect API server") == 1, log  # started once, used by all three
    finally:
        for p in procs:
            p.kill()
        info = _server(tmp_path)
        if info is not None:
            server = psutil.Process(info["pid"])
            server.terminate()
            server.wait(60)


def _serving_child(pid: int):
    """A descendant of `pid` listening on 127.0.0.1 whose `/api/health` answers (a Prefect API server), else None."""
    import httpx

    for child in psutil.Process(pid).children(recursive=True):
        try:
            ports = [c.laddr.port for c in child.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
        for port in ports:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    return child, port
            except httpx.HTTPError:
                pass
    return None


@pytest.mark.slow
def test_a_killed_run_leaves_no_process_behind(slice_csv, data_dir, tmp_path):
    env = _env(tmp_path, idle_seconds=1)
    cfg = _config(tmp_path, slice_csv, "killed", rounds=4, batch=8)
    run = _run(cfg, tmp_path / "pl.db", data_dir, env, tmp_path)
    try:
        server, port = _wait(lambda: _serving_child(run.pid), 600, "the run's Prefect API server", [run])
        family = psutil.Process(run.pid).children(recursive=True)
        assert server in family
        assert run.poll() is None, "the run finished before it could be killed"
    finally:
        run.kill()
        run.wait(60)
    gone, alive = psutil.wait_procs(family, timeout=90)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]
    import socket

    with socket.socket() as s:  # nothing holds the server's port any more
        s.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_the_server_stops_only_once_nobody_holds_the_users_lock(tmp_path):
    """The watchdog of `flows/prefect_server.py` on a stand-in server: it keeps running while a process holds
    `users.lock` (shared), and stops, removing its address, once the lock is free for the idle time."""
    import fcntl
    import threading
    from types import SimpleNamespace

    (tmp_path / "server.json").write_text("{}")
    server, held = SimpleNamespace(should_exit=False), []
    user = _open(tmp_path / "users.lock")
    fcntl.flock(user, fcntl.LOCK_SH)  # a run using the server
    watcher = threading.Thread(target=_watch, args=(server, tmp_path, 0.3, held), daemon=True)
    watcher.start()
    watcher.join(2.0)
    assert watcher.is_alive() and not server.should_exit and (tmp_path / "server.json").exists()
    user.close()  # the run ends (a SIGKILL drops the lock the same way)
    watcher.join(10)
    assert not watcher.is_alive() and server.should_exit and not (tmp_path / "server.json").exists()
    newcomer = _open(tmp_path / "users.lock")  # a run arriving while the server stops waits for it to be gone
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(newcomer, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        newcomer.close()
        for f in held:
            f.close()


def test_a_configured_server_is_used_as_it_is(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with shared_api(tmp_path / "server") as url:
            assert url == "http://127.0.0.1:9/api"
    assert not (tmp_path / "server").exists()  # nothing started, nothing written


def _released(fn, barrier, errors) -> None:
    barrier.wait()
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - reported to the parent
        errors.put(f"{type(e).__name__}: {e}")


def _at_once(fn, n: int = 6) -> list[str]:
    """Call `fn()` in `n` forked processes released together; the errors they raised."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    barrier, errors = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_released, args=(fn, barrier, errors)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    found = []
    while not errors.empty():
        found.append(errors.get())
    return found + [f"exit status {p.exitcode}" for p in procs if p.exitcode != 0]


def test_processes_creating_one_new_store_at_once_all_open_it(tmp_path):
    """Campaigns started together from one folder create its store at the same moment: every one opens it
    (before: `table campaign already exists` for all but one)."""
    from perturbloop.store import Store

    for attempt in range(3):  # a race: a few fresh stores
        assert _at_once(lambda: Store(str(tmp_path / f"s{attempt}.db"))) == []


def test_processes_writing_one_feature_cache_file_at_once_all_succeed(tmp_path):
    """Campaigns started together with a cold cache build the same feature block at the same moment: every
    writer succeeds and the file is whole (before: one writer's temporary file was moved away under another,
    `cache folder ... is not writable (No such file or directory)`)."""
    import numpy as np

    from perturbloop.features import save_array

    block = np.arange(400_000, dtype=float).reshape(-1, 50)
    for attempt in range(4):
        path = tmp_path / "features" / f"go_{attempt}.npy"
        assert _at_once(lambda: save_array(path, block)) == []
        assert np.array_equal(np.load(path), block) and not list(path.parent.glob("*.tmp*"))


def test_processes_writing_the_string_spectrum_cache_at_once_all_succeed(tmp_path, monkeypatch):
    """The STRING spectrum is cached like the feature blocks: campaigns started together with a cold cache
    write it at the same moment; every writer succeeds and the file is whole (before: a fixed
    `string_spectrum_*.tmp.npz` moved away under another writer, FileNotFoundError)."""
    import numpy as np

    from perturbloop import knowledge_features as kf

    n, dims = 40_000, 8
    src = tmp_path / "string.tsv"
    src.write_text("a\tb\t1\n")
    lam, U, degree = np.linspace(0, 1, dims), np.arange(n * dims, dtype=float).reshape(n, dims), np.ones(n)
    net_genes = [f"G{i}" for i in range(n)]
    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(kf.kn, "knowledge_paths", lambda name, data_dir=None: [src])
    monkeypatch.setattr(kf.kn, "string_adjacency", lambda data_dir=None: (None, net_genes))
    monkeypatch.setattr(kf, "laplacian_eigenpairs", lambda W, d: (lam, U, degree))
    for attempt in range(4):
        src.write_text(f"a\tb\t{attempt}\n")  # a new source: a cold cache each attempt
        assert _at_once(lambda: kf.string_spectrum(dims=dims)) == []
        got = kf.string_spectrum(dims=dims)
        assert np.array_equal(got[1], U) and got[2] == net_genes
    assert not list((tmp_path / "cache" / "features").glob("*.tmp*"))
    assert len(list((tmp_path / "cache" / "features").glob("string_spectrum_*.npz"))) == 4
