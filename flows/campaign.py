"""Prefect flow that runs (or resumes) a campaign and, optionally, its random-picks baseline.

Works without a configured Prefect server: the CLI runs it inside `flows.prefect_server.shared_api()`, one API
server that every campaign running at the same time shares. The task is retried: every loop step is
idempotent against the store, so a retry resumes where the failure happened.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from agent.runner import CampaignResult, run_campaign
from perturbloop.config import CampaignConfig, LabConfig
from perturbloop.errors import (ConfigError, DataIntegrityError, LabResultError, LabSubmissionError, ScreenFormatError,
                                StoreError, UnknownDatasetError, UnknownGeneError)


def baseline_config(config: CampaignConfig) -> CampaignConfig:
    """The same campaign with random picks (same data, rounds, batch and seed), always in the simulator:
    a baseline never sends orders to a real lab."""
    return config.model_copy(update={
        "name": f"{config.name}-random",
        "acquisition": config.acquisition.model_copy(update={"kind": "random"}),
        "approval": "auto",
        "lab": LabConfig(kind="simulator", noise=config.lab.noise),
    })


BAD_INPUT = (ConfigError, UnknownDatasetError, UnknownGeneError, ScreenFormatError, DataIntegrityError, StoreError,
             LabSubmissionError, LabResultError)


def retryable(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn signature
    """Transient failures (a lab unreachable, a crash) are retried; bad input fails the same way every time."""
    return not isinstance(state.result(raise_on_failure=False), BAD_INPUT)


@task(name="advance-campaign", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retryable,
      cache_policy=NO_CACHE)
def advance_campaign(config: CampaignConfig, store: str | None, data_dir: str | None,
                     on_round: Callable[[dict], None] | None = None) -> CampaignResult:
    return run_campaign(config, store, data_dir, on_round=on_round)


@flow(name="perturbloop-campaign", log_prints=False)
def campaign_flow(config: CampaignConfig, store: str | None = None, data_dir: str | None = None,
                  baseline: bool = True, on_round: Callable[[dict], None] | None = None,
                  on_baseline_round: Callable[[dict], None] | None = None) -> dict[str, CampaignResult]:
    """Run `config` to completion (or to an approval pause); then its random baseline if asked."""
    results = {"campaign": advance_campaign(config, store, data_dir, on_round)}
    if baseline and config.acquisition.kind != "random":
        results["baseline"] = advance_campaign(baseline_config(config), store, data_dir, on_baseline_round)
    return results
