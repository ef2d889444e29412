"""Shared fixtures: the real data directory, an isolated cache, and small real slices.

The data directory is `../shared/data` beside the repository (override with
PERTURBLOOP_TEST_DATA_DIR). Tests never download anything and never write into it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL_POOL_TOP = 300
SMALL_POOL_OTHERS = 300
SMALL_POOL_SEED = 20240601
PREFECT_IDLE_SECONDS = 300  # also the longest a server lingers after a session that was killed


def _set_env(mp: pytest.MonkeyPatch, cache: Path) -> None:
    mp.setenv("PERTURBLOOP_CACHE_DIR", str(cache))
    mp.setenv("PERTURBLOOP_DEVICE", "cpu")
    mp.delenv("PERTURBLOOP_DATA_DIR", raising=False)
    mp.delenv("PERTURBLOOP_KILL_AT", raising=False)
    # Prefect: a private home, quiet, no telemetry (flows run in ephemeral mode)
    mp.setenv("PREFECT_HOME", str(cache / "prefect"))
    mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    mp.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    # the shared Prefect API server (flows/prefect_server.py) outlives the gaps between the tests that run flows
    # (the default 5 s would start a new server, seconds of imports, for most of them); stopped at the session's end
    mp.setenv("PERTURBLOOP_PREFECT_IDLE_SECONDS", str(PREFECT_IDLE_SECONDS))


@pytest.fixture(scope="session")
def perturbloop_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session (the GO embedding is cached there; building it takes seconds)."""
    return tmp_path_factory.mktemp("perturbloop-cache")


@pytest.fixture(scope="session", autouse=True)
def _session_env(perturbloop_cache_dir: Path):
    """Session-scoped fixtures (il2_screen, small_pool) are set up before function-scoped ones,
    so the environment is also set for the whole session, not only per test."""
    with pytest.MonkeyPatch.context() as mp:
        _set_env(mp, perturbloop_cache_dir)
        yield
    _stop_prefect_server(perturbloop_cache_dir / "prefect" / "perturbloop-server")


def _stop_prefect_server(d: Path) -> None:
    """Stop the session's shared Prefect server (SIGTERM: uvicorn shuts down) if one runs from `d`."""
    import json

    import psutil

    try:
        pid = json.loads((d / "server.json").read_text())["pid"]
        server = psutil.Process(pid)
        if "flows.prefect_server" not in " ".join(server.cmdline()):
            return  # the pid is some other process now
        server.terminate()
        server.wait(30)
    except (OSError, ValueError, KeyError, psutil.Error):
        pass  # none runs (never started, or already stopped)


@pytest.fixture(autouse=True)
def _test_env(monkeypatch: pytest.MonkeyPatch, perturbloop_cache_dir: Path) -> None:
    """Per test: the session cache, CPU only, no PERTURBLOOP_DATA_DIR (restored after each test)."""
    _set_env(monkeypatch, perturbloop_cache_dir)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real published data (read-only). Missing data is a failure, not a skip."""
    override = os.environ.get("PERTURBLOOP_TEST_DATA_DIR")
    path = Path(override).expanduser() if override else DEFAULT_DATA_DIR
    if not (path / "screens" / "genedisco").is_dir() or not (path / "annotations").is_dir():
        pytest.fail(
            f"test data directory {str(path)!r} is missing or incomplete (needs screens/genedisco/ and annotations/); "
            "the tests run on the real published data: put it at ../shared/data beside the repository "
            "or set PERTURBLOOP_TEST_DATA_DIR to a directory that holds it",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def il2_screen(data_dir: Path, _session_env):
    """The Schmidt 2021 IL2 CRISPRi screen (2 donors, ~18.9k genes)."""
    from perturbloop.data import load_screen

    return load_screen("schmidt2021_il2", data_dir)


@pytest.fixture(scope="session")
def small_pool_genes(il2_screen) -> list[str]:
    """600 real IL2 genes: the 300 with largest |score| and 300 others drawn with a fixed seed."""
    order = il2_screen.scores.abs().sort_values(ascending=False, kind="stable").index
    top = list(order[:SMALL_POOL_TOP])
    rest = sorted(set(order[SMALL_POOL_TOP:]))
    rng = np.random.default_rng(SMALL_POOL_SEED)
    others = [rest[i] for i in sorted(rng.choice(len(rest), SMALL_POOL_OTHERS, replace=False))]
    return top + others


@pytest.fixture(scope="session")
def small_pool(small_pool_genes: list[str], data_dir: Path, _session_env):
    """SingleSpace of the 600 small-pool genes with GO features (65 columns)."""
    from perturbloop.features import build_gene_pool

    return build_gene_pool(small_pool_genes, features=["go"], data_dir=data_dir)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server for the store tests (see tests/pg_server.py); skipped where none can run."""
    from pg_server import Unavailable, postgres_server

    try:
        with postgres_server() as url:
            yield url
    except Unavailable as e:
        pytest.skip(f"PostgreSQL store tests: {e}")


@pytest.fixture
def fresh_postgres_url(postgres_url: str):
    """A new, empty database on the test server for one test (dropped afterwards)."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(postgres_url)
    name = f"pl_{uuid.uuid4().hex[:12]}"
    admin = f"host={u.host} port={u.port} user={u.username} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield u.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def slice_csv(tmp_path_factory, il2_screen) -> Path:
    """A small real `Gene,Score` CSV for approval / web / serving tests: the 60 strongest IL2
    genes plus every 40th gene (about 530 genes)."""
    import pandas as pd

    s = il2_screen
    genes = list(dict.fromkeys(list(s.scores.abs().sort_values(ascending=False).index[:60]) + sorted(s.genes)[::40]))
    p = tmp_path_factory.mktemp("slice") / "slice.csv"
    pd.DataFrame({"Gene": genes, "Score": s.scores.loc[genes].to_numpy()}).to_csv(p, index=False)
    return p


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of small models (two shared cores spin-wait badly on tiny matmuls)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fresh_python() -> Callable[..., subprocess.CompletedProcess]:
    """`run(code, cwd=None)`: Python code in a new interpreter with this checkout first on its path (what a later
    `perturbloop` process imports), the finished process returned (returncode, stdout, stderr)."""
    root = str(Path(__file__).resolve().parents[1])

    def run(code: str, *, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": root}, cwd=cwd,
                              capture_output=True, text=True, timeout=120, check=False)

    return run


@pytest.fixture(scope="session")
def il2_slice_1500(tmp_path_factory, il2_screen) -> Path:
    """1,500 real IL2 genes (the 150 strongest plus 1,350 drawn at random) as a `Gene,Score` CSV:
    the campaign, lab-campaign and RL tests' slice."""
    import numpy as np
    import pandas as pd

    s = il2_screen
    rng = np.random.default_rng(0)
    top = list(s.scores.abs().sort_values(ascending=False).index[:150])
    rest = sorted(set(s.genes) - set(top))
    genes = top + list(rng.choice(rest, 1350, replace=False))
    path = tmp_path_factory.mktemp("slice1500") / "il2_slice.csv"
    pd.DataFrame({"Gene": genes, "Score": s.scores.loc[genes].to_numpy()}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def gwt_activation_slice_csv(tmp_path_factory, data_dir, _session_env) -> Path:
    """A long `gene,context,score,se` CSV of the GWT T-cell activation coefficients at Rest / Stim8hr / Stim48hr:
    the 8 strongest regulators at 48 h, 72 drawn at random among those measured at every timepoint, and the first
    4 (alphabetically) the study did not measure at every timepoint (their missing pairs stay missing)."""
    import numpy as np

    from perturbloop.contexts import load_gwt

    s = load_gwt("polarization", signature="activation", data_dir=data_dir)
    n = s.table.groupby("gene")["context"].nunique()
    full, partial = sorted(n.index[n == 3]), sorted(n.index[n < 3])
    t48 = s.scores("Stim48hr").abs().sort_values(ascending=False)
    top = [g for g in t48.index if g in set(full)][:8]
    rng = np.random.default_rng(7)
    genes = top + list(rng.choice(sorted(set(full) - set(top)), 72, replace=False)) + partial[:4]
    path = tmp_path_factory.mktemp("gwt") / "gwt_activation_slice.csv"
    s.restrict(["Rest", "Stim8hr", "Stim48hr"], genes).write_long(path)
    return path


PAPALEXI_KNOCKOUTS = ["STAT1", "IFNGR1", "JAK2", "IRF1", "CD86", "ATF2", "CAV1", "ETV7", "MYC", "NFKBIA"]


@pytest.fixture(scope="session")
def papalexi_slice(tmp_path_factory, data_dir, _session_env):
    """10 real knockouts (<= 80 cells each) and 400 non-targeting cells, in the source's own labels."""
    import anndata as ad
    import numpy as np

    a = ad.read_h5ad(data_dir / "perturbseq" / "papalexi2021" / "papalexi2021_lowmoi.h5ad")
    rng = np.random.default_rng(0)
    keep = []
    for t, n in [*((t, 80) for t in PAPALEXI_KNOCKOUTS), ("non-targeting", 400)]:
        idx = np.flatnonzero(a.obs["target"].to_numpy() == t)
        keep += sorted(rng.choice(idx, min(n, len(idx)), replace=False).tolist())
    p = tmp_path_factory.mktemp("papalexi") / "papalexi_slice.h5ad"
    a[sorted(keep)].copy().write_h5ad(p)
    return p


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@contextmanager
def serve_app(app) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free port of 127.0.0.1 (a thread); yields its base URL once it is up."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)


@pytest.fixture
def browser(tmp_path):
    """Debian's headless Chromium driven through chromedriver (skips where they are not installed)."""
    import shutil

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
