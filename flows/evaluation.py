"""Evaluation sweeps (`perturbloop benchmark`): many simulated campaigns (policies x seeds) as parallel Prefect tasks.

The BioDiscoveryAgent protocol: `rounds` x `batch` genes; hits = the given hit list, else
the top 5% of genes by |score|; hit ratio = distinct hits picked over all rounds / all hits;
round 1 is chosen from priors alone; `nonessential` drops core-essential genes (CEGv2) from
hits and picks. Tasks run on Prefect's thread pool, or on a Dask cluster via prefect-dask
(`runner="dask"`: a local cluster, or `address` of an existing scheduler).

Each task rebuilds its world from plain parameters (`agent.benchmark`, cached per process), so it
can run in any worker process without shipping tensors. A response campaign's task (`--config`) is
`agent.benchmark.campaign_for`, which holds its protocol; results and tables in `perturbloop.benchmark_report`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from agent.benchmark import (PolicySpec, WorldSpec, build_screen_world, campaign_for, response_sweep,
                             simulated_campaign_row)
from agent.parts import build_world
from flows.prefect_server import shared_api
from perturbloop.config import CampaignConfig
from perturbloop.errors import ConfigError


def task_runner(runner: str, address: str | None):
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": int(os.environ.get("PERTURBLOOP_DASK_WORKERS", "2")),
                                              "threads_per_worker": 1, "processes": True})
    if runner == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=int(os.environ.get("PERTURBLOOP_THREADS", "1")))
    raise ConfigError(f"--runner: unknown runner {runner!r}; choose local or dask")


def run_tasks(flow_name: str, task_name: str, fn: Callable, jobs: Sequence[tuple], runner: str = "local",
              address: str | None = None) -> list:
    """`fn(*args)` for every `args` of `jobs` as tasks of one Prefect flow (thread pool or Dask), results in order."""
    job = task(name=task_name, cache_policy=NO_CACHE)(fn)

    @flow(name=flow_name, task_runner=task_runner(runner, address), log_prints=False)
    def sweep() -> list:
        futures = [job.submit(*args) for args in jobs]
        return [f.result() for f in futures]

    with shared_api():  # one Prefect server for every process (flows/prefect_server.py)
        return sweep()


def run_sweep(world_spec: WorldSpec, policies: list[PolicySpec], seeds: int, rounds: int, batch: int,
              runner: str = "local", address: str | None = None) -> list[dict]:
    """Run every policy x seed (`simulated_campaign_row`) as tasks of one Prefect flow; rows in (policy, seed) order."""
    build_screen_world(world_spec)  # fail fast on bad input, before any task starts
    return run_tasks("perturbloop-benchmark", "simulated-campaign", simulated_campaign_row,
                     [(world_spec, p, s, rounds, batch) for p in policies for s in range(seeds)], runner, address)


def run_response_sweep(config: CampaignConfig, data_dir=None, *, runner: str = "local",
                       address: str | None = None) -> list[dict]:
    """Every policy x seed of a response campaign (`campaign_for`) as tasks of one Prefect flow, like the screen
    benchmark; `runner="inline"`: in this process, no Prefect (quick runs)."""
    if runner == "inline":
        return response_sweep(config, data_dir)
    build_world(config, data_dir)  # fail fast on bad input, before any task starts
    return run_tasks("perturbloop-response-benchmark", "response-campaign", campaign_for,
                     [(config, p, s, data_dir) for p in config.evaluation.policies
                      for s in range(config.evaluation.seeds)], runner, address)
