"""The command line as a user meets it: run a campaign from a config (through the Prefect flow,
ephemeral server), read the store back, list and fetch datasets, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from perturbloop.config import load_config
from perturbloop.data import load_screen
from perturbloop.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perturbloop.cli", *args], cwd=cwd, env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


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
