"""Scheduled campaigns: one Prefect deployment per campaign config in a folder, on a cron schedule.

Each scheduled run (`advance_flow`) advances its campaign as far as it can and exits: it collects
lab results if they are ready, refits, proposes, and stops at an approval pause, at a lab that is
still working, or at the end. Every step is idempotent against the store, so overlapping or
retried runs never repeat a lab submission; each deployment also has a concurrency limit of 1.
Each run publishes the campaign's round table as a Prefect table artifact (key
`<campaign>-rounds`), so the Prefect UI shows progress round by round.

    perturbloop serve campaigns/ --cron "0 */6 * * *" --store postgresql+psycopg://...

needs a Prefect server (`prefect server start`, then `PREFECT_API_URL=http://127.0.0.1:4200/api`).
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.schemas.schedules import CronSchedule

from perturbloop.config import CampaignConfig, load_config
from perturbloop.errors import ConfigError

DEFAULT_CRON = "0 * * * *"  # hourly: a lab round takes days, a scheduled run takes seconds when nothing is ready


def artifact_key(campaign: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", campaign.lower()).strip("-") + "-rounds"


@flow(name="perturbloop-advance", retries=2, retry_delay_seconds=30, log_prints=False)
def advance_flow(config_path: str, store: str | None = None, data_dir: str | None = None) -> dict:
    """Advance one campaign to its next pause (approval, lab, end); publish its round table."""
    from agent.runner import run_campaign

    config = load_config(config_path)
    result = run_campaign(config, store, data_dir)
    rows = [{**{k: r.get(k) for k in ("round", "status", "picks", "new_hits", "hits_total", "hit_ratio",
                                      "spearman_unmeasured", "fit_seconds", "select_seconds")},
             **{k: v for k, v in r.get("metrics", {}).items() if "@" not in k}}  # response campaigns: held-out scores
            for r in result.rounds]
    create_table_artifact(rows, key=artifact_key(config.name),
                          description=f"**{config.name}**: {result.status}, {len(result.rounds)}/"
                                      f"{config.rounds + (1 if config.is_response else 0)} rounds")
    get_run_logger().info("campaign %s: %s after %d rounds", config.name, result.status, len(result.rounds))
    return {"campaign": config.name, "status": result.status, "rounds": len(result.rounds), "hit_ratio": result.hit_ratio}


def campaign_configs(folder: str | Path) -> list[tuple[Path, CampaignConfig]]:
    """Every `*.toml` campaign config in `folder` (sorted); a bad file is an error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"serve: {str(folder)!r} is not a folder of campaign configs")
    out = [(p.resolve(), load_config(p)) for p in sorted(folder.glob("*.toml"))]
    if not out:
        raise ConfigError(f"serve: no *.toml campaign configs in {str(folder)!r}")
    seen: dict[str, Path] = {}
    for path, cfg in out:
        if cfg.name in seen:
            raise ConfigError(f"serve: campaign name {cfg.name!r} is used by both {seen[cfg.name].name} and {path.name}")
        seen[cfg.name] = path
    return out


def campaign_deployments(folder: str | Path, store: str | None = None, data_dir: str | None = None,
                         cron: str = DEFAULT_CRON, timezone: str | None = None) -> list:
    """One `RunnerDeployment` of `advance_flow` per config: its `schedule` field's cron, else `cron`."""
    deployments = []
    for path, cfg in campaign_configs(folder):
        expr = cfg.schedule or cron
        try:
            schedule = CronSchedule(cron=expr, timezone=timezone) if timezone else CronSchedule(cron=expr)
        except ValueError as e:  # pydantic's ValidationError is a ValueError
            why = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
            raise ConfigError(f"{path.name}: invalid cron schedule {expr!r} ({why})") from None
        deployments.append(advance_flow.to_deployment(
            name=cfg.name, schedule=schedule, concurrency_limit=1, tags=["perturbloop"],
            parameters={"config_path": str(path), "store": store, "data_dir": data_dir},
            description=f"advance campaign {cfg.name} ({path.name})"))
    return deployments


def serve_campaigns(folder: str | Path, store: str | None = None, data_dir: str | None = None,
                    cron: str = DEFAULT_CRON, timezone: str | None = None) -> None:
    """Register the deployments with the Prefect server and run them as they come due (blocks)."""
    from prefect import serve

    serve(*campaign_deployments(folder, store, data_dir, cron, timezone))
