"""`perturbloop benchmark --runner dask`: the sweep's tasks on a `distributed.LocalCluster` (2 worker
processes, 1 thread each, as `flows.evaluation.task_runner` makes it) make the same picks, hit ratios
and metrics for the same seeds as the local (thread pool) runner, for screens and response configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_response_campaign import GRN, _toml

pytestmark = pytest.mark.slow

# the small synthetic GRN (pairs) campaign of the response-loop tests, one round, two policies (one task each)
GRN_SWEEP = {**GRN, "name": "grn-dask", "rounds": 1, "surrogate": {**GRN["surrogate"], "epochs": 40, "members": 2},
             "evaluation": {**GRN["evaluation"], "policies": ["uncertainty", "random"]}}


@pytest.fixture(scope="module")
def cluster():
    """A real multi-process Dask cluster in this process; the CLI subprocesses submit to its scheduler.
    Worker processes inherit this process's environment (cache dir, PYTHONPATH) when they start."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        yield cluster


def _tasks_done(cluster) -> int:
    """Tasks the cluster's scheduler has seen finish (cumulative over its life)."""
    return sum(tp.state_counts.get("memory", 0) for tp in cluster.scheduler.task_prefixes.values())


def _benchmarks(args: list[str], address: str, tmp: Path) -> tuple[dict, dict]:
    """The same benchmark with the local runner and on the cluster, run side by side; both results files."""
    procs = {runner: subprocess.Popen([sys.executable, "-m", "perturbloop.cli", "benchmark", *args, *extra,
                                       "--out", str(tmp / f"{runner}.json")],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp,
                                      env={**os.environ, "COLUMNS": "200"})  # one Prefect server for both (shared_api)
             for runner, extra in (("local", ["--runner", "local"]), ("dask", ["--runner", "dask", "--address", address]))}
    for runner, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{runner} runner:\n{out[-4000:]}"
    return tuple(json.loads((tmp / f"{runner}.json").read_text()) for runner in procs)


def _same_campaigns(local: dict, dask: dict, keys: tuple[str, ...]) -> None:
    assert [(r["policy"], r["seed"]) for r in dask["results"]] == [(r["policy"], r["seed"]) for r in local["results"]]
    for a, b in zip(local["results"], dask["results"]):
        for k in keys:
            assert b[k] == a[k], f"{a['policy']} seed {a['seed']}: {k} differs between the local and dask runners"


def test_screen_benchmark_on_a_dask_cluster_matches_the_local_runner(slice_csv, data_dir, tmp_path, cluster):
    args = ["--screen", str(slice_csv), "--rounds", "3", "--batch", "12", "--seeds", "2", "--policy", "ucb,random",
            "--features", "go", "--fit-iter", "5", "--data-dir", str(data_dir)]
    before = _tasks_done(cluster)
    local, dask = _benchmarks(args, cluster.scheduler_address, tmp_path)
    assert _tasks_done(cluster) - before == len(local["results"])  # every campaign ran on the cluster
    _same_campaigns(local, dask, ("picks", "per_round", "hit_ratio"))
    for r in local["results"]:
        assert len(r["picks"]) == 3 and all(len(b) == 12 for b in r["picks"])
    # the seeds and policies really differ: the comparison is not between identical campaigns
    assert local["results"][0]["picks"] != local["results"][1]["picks"] != local["results"][2]["picks"]


def test_response_benchmark_on_a_dask_cluster_matches_the_local_runner(data_dir, tmp_path, cluster):
    cfg = tmp_path / "grn.toml"
    cfg.write_text(_toml(GRN_SWEEP))
    args = ["--config", str(cfg), "--data-dir", str(data_dir)]
    before = _tasks_done(cluster)
    local, dask = _benchmarks(args, cluster.scheduler_address, tmp_path)
    assert _tasks_done(cluster) - before == len(local["results"])  # every campaign ran on the cluster
    _same_campaigns(local, dask, ("picks", "metrics", "n_observed", "failed"))
    assert len(local["results"][0]["picks"]) == 2  # the initial design and one round
    assert local["results"][0]["picks"][1] != local["results"][1]["picks"][1]  # the policies differ
