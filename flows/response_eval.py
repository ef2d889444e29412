"""Response-campaign benchmarks (`perturbloop benchmark --config`): every policy x seed as Prefect tasks.

The protocol (IterPert-style for singles, Ahlmann-Eltze-style scoring for pairs) and the campaign
each task runs (through the LangGraph loop) are in `agent.benchmark` (`campaign_for`); results and tables in
`perturbloop.benchmark_report`.
"""

from __future__ import annotations

from agent.benchmark import campaign_for, response_sweep
from agent.parts import build_world
from flows.evaluation import run_tasks
from perturbloop.config import CampaignConfig


def run_response_sweep(config: CampaignConfig, data_dir=None, *, runner: str = "local",
                       address: str | None = None) -> list[dict]:
    """Every policy x seed as tasks of one Prefect flow (thread pool or Dask), like the screen benchmark;
    `runner="inline"`: in this process, no Prefect (quick runs)."""
    if runner == "inline":
        return response_sweep(config, data_dir)
    build_world(config, data_dir)  # fail fast on bad input, before any task starts
    return run_tasks("perturbloop-response-benchmark", "response-campaign", campaign_for,
                     [(config, p, s, data_dir) for p in config.evaluation.policies
                      for s in range(config.evaluation.seeds)], runner, address)
