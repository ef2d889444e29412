"""One Prefect API server per Prefect home, shared by every perturbloop process that runs a flow.

Without `PREFECT_API_URL`, Prefect starts a temporary API server (uvicorn in a subprocess) in every process
that runs a flow. Several campaigns started together then start several servers on one SQLite database
(`$PREFECT_HOME/prefect.db`), which race through its migrations and locks ("Timed out while attempting to
connect to ephemeral Prefect API server"); and a process killed with SIGKILL never stops its server, which
keeps running and holding its port. Prefect's advice for more than one process is one server
(`prefect server start`) that they all talk to; `shared_api()` gives them one without asking the user:

- the first process starts the server (`python -m flows.prefect_server DIR`, in its own session) while it
  holds `DIR/start.lock`; the server binds a free port of 127.0.0.1 and writes its address to
  `DIR/server.json`; later processes find it there and use it;
- every process using the server holds a shared `flock` on `DIR/users.lock`; the kernel drops it when the
  process ends, however it ends (SIGKILL included);
- the server holds `DIR/server.lock` for as long as it runs (so a stale `server.json` is recognised) and
  stops itself once it has held `users.lock` exclusively for `idle_seconds`: nobody uses it.

`DIR` is `$PREFECT_HOME/perturbloop-server` (one per user with Prefect's default home). The database and
the services are those of Prefect's own temporary server (no UI). With `PREFECT_API_URL` set, that server
is used and nothing is started.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

IDLE_SECONDS = 5.0  # a server nobody uses stops after this long (another campaign started soon after reuses it)
POLL_SECONDS = 0.5
STARTUP_SECONDS = 120  # first start on a loaded machine: imports and database migrations


class PrefectServerError(RuntimeError):
    """The shared Prefect server could not be started or reached."""


def _try_lock(f, mode: int) -> bool:
    try:
        fcntl.flock(f, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _open(path: Path):
    return open(path, "a+")  # noqa: SIM115 - a lock file, held open by the caller


def _running(d: Path) -> dict | None:
    """`server.json` of the live server, or None where no server holds `server.lock`."""
    with _open(d / "server.lock") as f:
        if _try_lock(f, fcntl.LOCK_SH):
            return None  # no server: its exclusive lock would have refused ours
    try:
        return json.loads((d / "server.json").read_text())
    except (OSError, ValueError):
        return None  # starting: the address is not written yet


def _log_tail(d: Path, n: int = 2000) -> str:
    try:
        return (d / "server.log").read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _start(d: Path) -> dict:
    """Start the server and wait for its address; the caller holds `start.lock`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                                                 os.environ.get("PYTHONPATH")) if p)}
    env.pop("PREFECT_API_URL", None)
    with open(d / "server.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flows.prefect_server", str(d)], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        info = _running(d)
        if info is not None and info.get("pid") == proc.pid:
            return info
        if proc.poll() is not None:
            raise PrefectServerError(f"the Prefect server exited with status {proc.returncode} before it listened "
                                     f"(log {d / 'server.log'}):\n{_log_tail(d)}")
        time.sleep(0.05)
    proc.kill()
    raise PrefectServerError(f"the Prefect server did not listen within {STARTUP_SECONDS} s (log {d / 'server.log'})")


def _wait_healthy(url: str, d: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if _running(d) is None:
                raise PrefectServerError(f"the Prefect server at {url} stopped while starting (log {d / 'server.log'}):"
                                         f"\n{_log_tail(d)}")
            time.sleep(0.1)
    raise PrefectServerError(f"the Prefect server at {url} did not answer within {timeout:.0f} s "
                             f"(log {d / 'server.log'})")


@contextmanager
def shared_api(directory: Path | None = None) -> Iterator[str | None]:
    """The Prefect API the flows run inside this block use: `PREFECT_API_URL` where one is configured, else
    the shared server (started if none runs). Yields its URL (None where Prefect's temporary servers are
    switched off and no URL is set: Prefect then raises its own error)."""
    from prefect.settings import (PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_ENABLED,
                                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings)

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield PREFECT_API_URL.value()
        return
    d = directory or Path(PREFECT_HOME.value()).expanduser() / "perturbloop-server"
    d.mkdir(parents=True, exist_ok=True)
    users = _open(d / "users.lock")
    try:
        fcntl.flock(users, fcntl.LOCK_SH)  # waits while a server is stopping (it holds this lock exclusively)
        with _open(d / "start.lock") as start:
            fcntl.flock(start, fcntl.LOCK_EX)
            info = _running(d) or _start(d)
        url = info["url"]
        _wait_healthy(url, d, max(STARTUP_SECONDS, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
        before = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # worker processes (Dask) started inside the block inherit it
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                yield url
        finally:
            if before is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = before
    finally:
        users.close()  # releases the shared lock: the server may stop once nobody else holds it


def _watch(server, d: Path, idle_seconds: float, held: list) -> None:
    """Stop `server` (a uvicorn.Server) once nobody has used it for `idle_seconds`."""
    idle_since = None
    start, users = _open(d / "start.lock"), _open(d / "users.lock")
    held += [start, users]  # kept open (and locked) until the process exits
    while not server.should_exit:
        time.sleep(POLL_SECONDS)
        if not _try_lock(start, fcntl.LOCK_EX):
            idle_since = None  # a process is finding or starting the server
            continue
        if _try_lock(users, fcntl.LOCK_EX):
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= idle_seconds:
                (d / "server.json").unlink(missing_ok=True)
                server.should_exit = True  # both locks stay held until exit: newcomers wait, then start anew
                return
            fcntl.flock(users, fcntl.LOCK_UN)
        else:
            idle_since = None
        fcntl.flock(start, fcntl.LOCK_UN)


def serve(d: Path, idle_seconds: float = IDLE_SECONDS) -> None:
    """Run the shared server until it is idle (`python -m flows.prefect_server DIR`)."""
    import uvicorn

    lock = _open(d / "server.lock")
    if not _try_lock(lock, fcntl.LOCK_EX):
        return  # another server runs
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    tmp = d / f"server.json.{os.getpid()}"
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    tmp.replace(d / "server.json")
    print(f"perturbloop: Prefect API server pid {os.getpid()} on {url}", flush=True)  # into server.log
    # what Prefect's own temporary server runs: the API and the ephemeral services, no UI
    os.environ.update({"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"})
    server = uvicorn.Server(uvicorn.Config("prefect.server.api.server:create_app", factory=True, lifespan="on",
                                           log_level="error", timeout_graceful_shutdown=5))
    held: list = []
    threading.Thread(target=_watch, args=(server, d, idle_seconds, held), daemon=True).start()
    server.run(sockets=[sock])


if __name__ == "__main__":
    serve(Path(sys.argv[1]), float(os.environ.get("PERTURBLOOP_PREFECT_IDLE_SECONDS", IDLE_SECONDS)))
