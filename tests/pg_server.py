"""A throw-away PostgreSQL server for the store tests (Debian's `postgresql` package).

`PERTURBLOOP_TEST_PG_URL` names an existing server instead (a SQLAlchemy URL). Otherwise, when
`initdb` and `pg_ctl` are installed and the tests run as root (CI), a cluster owned by the
`postgres` user is created in a temporary directory, started on a free 127.0.0.1 port with
trust authentication, and stopped at the end of the session. `.ci/run` installs the package.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Unavailable(RuntimeError):
    """No PostgreSQL server can be had on this machine (the reason says why)."""


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise Unavailable(f"{name} not found (install Debian's postgresql package)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True, timeout=120)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the SQLAlchemy URL of a running server (database `perturbloop_test`), or raise Unavailable."""
    url = os.environ.get("PERTURBLOOP_TEST_PG_URL")
    if url:
        yield url
        return
    if os.geteuid() != 0:
        raise Unavailable("not root: cannot create a cluster owned by the postgres user (set PERTURBLOOP_TEST_PG_URL)")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        raise Unavailable("no 'postgres' system user")
    root = Path(tempfile.mkdtemp(prefix="perturbloop-pg-"))
    shutil.chown(root, "postgres")
    data = root / "data"
    proc = _as_postgres(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    if proc.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise Unavailable(f"initdb failed: {proc.stderr.strip()[-300:]}")
    port = _free_port()
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    proc = _as_postgres(pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start")
    if proc.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise Unavailable(f"pg_ctl start failed: {proc.stderr.strip()[-300:]}")
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE perturbloop_test")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/perturbloop_test"
    finally:
        _as_postgres(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
