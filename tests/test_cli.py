"""The command line as a user meets it: run a campaign from a config (through the Prefect flow,
ephemeral server), read the store back, list and fetch datasets, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from forked import perturbloop

from perturbloop.config import load_config
from perturbloop.data import load_screen
from perturbloop.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    """`perturbloop ARGS` in a process of its own, forked from a preloaded forkserver (tests/forked.py)."""
    return perturbloop(*args, cwd=cwd, env=dict(os.environ), timeout=timeout)


@pytest.fixture(scope="module")
def small_config(tmp_path_factory, data_dir) -> Path:
    d = tmp_path_factory.mktemp("cli")
    s = load_screen("schmidt2021_il2", data_dir)
    genes = list(s.scores.abs().sort_values(ascending=False).index[:60]) + sorted(s.genes)[::40]
    genes = list(dict.fromkeys(genes))
    pd.DataFrame({"Gene": genes, "Score": s.scores.loc[genes].to_numpy()}).to_csv(d / "slice.csv", index=False)
    cfg = d / "small.toml"
    cfg.write_text(textwrap.dedent(f"""
        name = "cli-small"
        rounds = 2
        batch_size = 16
        [data]
        screen = "{d / 'slice.csv'}"
        [acquisition]
        kind = "ucb"
    """))
    return cfg


@pytest.mark.slow
def test_run_then_status(small_config, data_dir, tmp_path):
    store = tmp_path / "runs" / "pl.db"
    proc = _cli("run", str(small_config), "--store", str(store), "--data-dir", str(data_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "cli-small: ucb" in out and "cli-small-random: random picks" in out
    assert "hit ratio after 2 rounds: ucb" in out and "vs random" in out
    png = tmp_path / "runs" / "cli-small.hit_curve.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"

    st = _cli("status", "--json", "--store", str(store), cwd=tmp_path)
    assert st.returncode == 0, st.stderr
    report = json.loads(st.stdout)
    by_name = {c["campaign"]: c for c in report["campaigns"]}
    assert set(by_name) == {"cli-small", "cli-small-random"}
    for c in by_name.values():
        assert c["status"] == "finished" and c["picks"] == 32
        assert [r["status"] for r in c["rounds"]] == ["ingested", "ingested"]
        assert all(len(r["lab_jobs"]) == 1 and r["lab_jobs"][0]["status"] == "collected" for r in c["rounds"])
    # the JSON agrees with the store
    obs = Store(str(store)).observations("cli-small")
    assert by_name["cli-small"]["hits"] == sum(o.hit for o in obs)

    table = _cli("status", "--store", str(store), cwd=tmp_path)
    assert table.returncode == 0 and "cli-small" in table.stdout and "simulator:sim-" in table.stdout


def test_bad_config_field_is_named_and_nothing_is_written(small_config, data_dir, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(small_config.read_text().replace('kind = "ucb"', 'kind = "ucbx"\nbogus = 1'))
    store = tmp_path / "pl.db"
    proc = _cli("run", str(bad), "--store", str(store), "--data-dir", str(data_dir), cwd=tmp_path)
    assert proc.returncode == 2
    assert "acquisition.kind" in proc.stderr and "acquisition.bogus: unknown field" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not store.exists()


@pytest.mark.slow
def test_unknown_dataset_on_the_command_line(tmp_path, data_dir):
    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "x"\n[data]\nscreen = "schmidt2099_il2"\n')
    proc = _cli("run", str(cfg), "--store", str(tmp_path / "pl.db"), "--data-dir", str(data_dir), cwd=tmp_path)
    assert proc.returncode == 2 and "unknown dataset 'schmidt2099_il2'" in proc.stderr


def test_data_list_names_the_registry(data_dir, tmp_path):
    proc = _cli("data", "list", "--data-dir", str(data_dir), cwd=tmp_path)
    assert proc.returncode == 0
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert {"schmidt2021_il2", "schmidt2021_ifng", "zhuang2019_nk", "zhu2021_sarscov2", "gene_go"} <= set(lines)
    assert "local" in lines["schmidt2021_il2"]


def test_demo_config_is_the_il2_campaign():
    cfg = load_config(ROOT / "examples" / "il2_demo.toml")
    assert (cfg.data.screen, cfg.rounds, cfg.batch_size, cfg.objective) == ("schmidt2021_il2", 5, 128, "hits")


@pytest.mark.skipif(os.environ.get("PERTURBLOOP_OFFLINE") == "1", reason="PERTURBLOOP_OFFLINE=1: no package registry")
def test_fetch_reads_the_screen_out_of_the_genedisco_wheel(tmp_path):
    """`data fetch` downloads genedisco==1.0.5 with pip (never installed), checks sha256, extracts the files."""
    env = {**os.environ, "PERTURBLOOP_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "perturbloop.cli", "data", "fetch", "schmidt2021_il2"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = [Path(p) for p in proc.stdout.split()]
    assert [p.name for p in got] == ["schmidt_il2_d1.gene_summary.txt", "schmidt_il2_d2.gene_summary.txt"]
    assert all(p.is_file() and str(p).startswith(str(tmp_path / "cache")) for p in got)


@pytest.mark.slow
def test_store_password_is_never_printed(fresh_postgres_url, data_dir, tmp_path):
    """`status`, `status --json`, `run` and `web`'s start line show the store URL with its password masked."""
    import socket

    from sqlalchemy.engine import make_url

    secret = "pw-SECRET-42"
    url = make_url(fresh_postgres_url).set(password=secret).render_as_string(hide_password=False)
    s = load_screen("schmidt2021_il2", data_dir)
    genes = list(s.scores.abs().sort_values(ascending=False).index[:40])
    pd.DataFrame({"Gene": genes, "Score": s.scores.loc[genes].to_numpy()}).to_csv(tmp_path / "slice.csv", index=False)
    cfg = tmp_path / "pw.toml"
    cfg.write_text(f'name = "pw"\nrounds = 1\nbatch_size = 4\napproval = "required"\n'
                   f'[data]\nscreen = "{tmp_path / "slice.csv"}"\n')

    empty = _cli("status", "--store", url, cwd=tmp_path)
    assert empty.returncode == 0 and "no campaigns in" in empty.stdout, empty.stdout + empty.stderr
    run = _cli("run", str(cfg), "--no-baseline", "--store", url, "--data-dir", str(data_dir), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    st = _cli("status", "--json", "--store", url, cwd=tmp_path)
    assert st.returncode == 0 and json.loads(st.stdout)["campaigns"][0]["campaign"] == "pw", st.stderr
    for proc in (empty, run, st):
        out = "".join((proc.stdout + proc.stderr).split())  # rich may fold a long URL over lines
        assert secret not in out and ":***@" in out, proc.stdout

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PERTURBLOOP_WEB_TOKEN": "s3cret-review-token", "PYTHONUNBUFFERED": "1"}
    web = subprocess.Popen([sys.executable, "-m", "perturbloop.cli", "web", "--store", url, "--port", str(port)],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = web.stdout.readline()  # the start line comes before the server starts (EOF if it died)
    finally:
        web.terminate()
        web.wait(30)
    assert line.startswith("perturbloop review on") and ":***@" in line and secret not in line, line


@pytest.fixture
def read_only():
    """`read_only(path)` makes a file or folder read-only even for root (chmod, and `chattr +i` as root);
    undone after the test."""
    done: list[tuple[Path, int]] = []

    def make(path: Path) -> Path:
        done.append((path, path.stat().st_mode))
        path.chmod(0o555 if path.is_dir() else 0o444)
        if os.geteuid() == 0:
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
                pytest.skip("running as root where `chattr +i` is not available: nothing can be made read-only")
        return path

    yield make
    for path, mode in reversed(done):
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(mode)


def _one_error_line(proc: subprocess.CompletedProcess, *names: str) -> str:
    """The command failed with exit status 2 and one `error:` line (no traceback) naming each of `names`."""
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error: ") and "Traceback" not in err, proc.stdout + proc.stderr
    assert len([line for line in err.splitlines() if not line.startswith("  ")]) == 1, err
    assert all(n in err for n in names), err
    return err


def _write_cfg(tmp_path: Path, slice_csv: Path, extra: str = "", name: str = "c.toml") -> Path:
    cfg = tmp_path / name
    cfg.write_text(f'name = "e"\nrounds = 1\nbatch_size = 4\n[data]\nscreen = "{slice_csv}"\n[design]\n{extra}')
    return cfg


@pytest.mark.parametrize("case", ["binary", "latin1", "gaf", "embeddings"])
def test_unusable_config_files_are_one_error_line(case, slice_csv, data_dir, tmp_path):
    """Issue 13 (10): a config that is not UTF-8 text, or names a file that is not there, is one `error:` line
    naming the file (exit 2), and nothing is written."""
    if case == "binary":
        cfg = tmp_path / "c.toml"
        cfg.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
        names = ("c.toml", "UTF-8")
    elif case == "latin1":
        cfg = tmp_path / "c.toml"
        cfg.write_bytes('name = "caf\xe9"\n[data]\nscreen = "schmidt2021_il2"\n'.encode("latin-1"))
        names = ("c.toml", "UTF-8")
    elif case == "gaf":
        cfg = _write_cfg(tmp_path, slice_csv, f'gaf = "{tmp_path / "nope.gaf"}"\n')
        names = ("design.gaf", "nope.gaf", "does not exist")
    else:
        cfg = _write_cfg(tmp_path, slice_csv, f'features = ["go", "embedding"]\nembeddings = "{tmp_path / "nope.csv"}"\n')
        names = ("design.embeddings", "nope.csv", "does not exist")
    store = tmp_path / "pl.db"
    _one_error_line(_cli("run", str(cfg), "--no-baseline", "--store", str(store), "--data-dir", str(data_dir),
                         cwd=tmp_path), *names)
    assert not store.exists()


def test_unusable_stores_are_one_error_line(tmp_path):
    """Issue 13 (10): a store that is a folder, a URL of an unknown scheme, a server that does not answer."""
    (tmp_path / "folder.db").mkdir()
    _one_error_line(_cli("status", "--store", str(tmp_path / "folder.db"), cwd=tmp_path), "folder.db", "folder")
    _one_error_line(_cli("status", "--store", "nosuchdb://host/x", cwd=tmp_path), "nosuchdb://host/x")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _one_error_line(_cli("status", "--store", f"postgresql://ada@127.0.0.1:{port}/pl", cwd=tmp_path),
                    f"127.0.0.1:{port}", "cannot connect")


def test_a_read_only_store_is_read_by_status_and_refused_by_run(slice_csv, data_dir, tmp_path, read_only):
    """Issue 13 (10): `status` reads a store it cannot write; `run` says the store is read-only, up front."""
    store = tmp_path / "ro" / "pl.db"
    st = Store(str(store))
    st.create_or_check_campaign("kept", {"name": "kept", "rounds": 2})
    st.engine.dispose()
    read_only(store)
    read_only(store.parent)
    shown = _cli("status", "--json", "--store", str(store), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert [c["campaign"] for c in json.loads(shown.stdout)["campaigns"]] == ["kept"]
    cfg = _write_cfg(tmp_path, slice_csv)
    _one_error_line(_cli("run", str(cfg), "--no-baseline", "--store", str(store), "--data-dir", str(data_dir),
                         cwd=tmp_path), str(store), "read-only")


def test_a_corrupt_checkpoint_file_and_an_unwritable_cache_are_one_error_line(slice_csv, data_dir, tmp_path,
                                                                              read_only):
    """Issue 13 (10): `run` names the checkpoint file that is not a database, and the cache it cannot write,
    before it opens the store."""
    cfg = _write_cfg(tmp_path, slice_csv)
    store = tmp_path / "pl.db"
    (tmp_path / "pl.checkpoints.sqlite").write_bytes(b"this is not a SQLite database" * 40)
    _one_error_line(_cli("run", str(cfg), "--no-baseline", "--store", str(store), "--data-dir", str(data_dir),
                         cwd=tmp_path), "pl.checkpoints.sqlite", "not a readable SQLite database")
    assert not store.exists()

    cache = read_only(Path(tempfile.mkdtemp(dir=tmp_path)))
    env = {**os.environ, "PERTURBLOOP_CACHE_DIR": str(cache)}
    proc = perturbloop("run", str(cfg), "--no-baseline", "--store", str(tmp_path / "other.db"), "--data-dir",
                       str(data_dir), cwd=tmp_path, env=env, timeout=300)
    _one_error_line(proc, str(cache), "not writable", "PERTURBLOOP_CACHE_DIR")
    assert not (tmp_path / "other.db").exists()


def test_data_fetch_without_network_is_one_error_line(tmp_path):
    """Issue 13 (10): no network (every connection refused: a proxy on a closed port) during `data fetch`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proxy = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PERTURBLOOP_CACHE_DIR": str(tmp_path / "cache"), "https_proxy": proxy, "HTTPS_PROXY": proxy,
           "http_proxy": proxy, "HTTP_PROXY": proxy, "no_proxy": "", "NO_PROXY": ""}
    proc = perturbloop("data", "fetch", "cegv2", cwd=tmp_path, env=env, timeout=120)
    _one_error_line(proc, "cegv2", "could not download", "CEGv2.txt")
    assert not list((tmp_path / "cache").rglob("*.part"))
