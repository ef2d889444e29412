"""Run or resume a campaign: build its context, then drive the checkpointed graph.

Resuming is the same call as starting: the store says which rounds are done, the
checkpointer says where inside a round the graph stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from langgraph.types import Command

from agent.context import CampaignContext, build_context
from agent.graph import build_graph, open_checkpointer
from agent.report import naive_utc
from perturbloop.config import CampaignConfig, stored_config_as_today, with_campaign_defaults
from perturbloop.store import Campaign, Store, sqlite_path

RECURSION_LIMIT_PER_ROUND = 8


@dataclass
class CampaignResult:
    campaign_id: str
    status: str  # finished | awaiting_approval | waiting_for_lab
    rounds: list[dict]
    n_hits: int | None

    @property
    def hit_ratio(self) -> float | None:
        return self.rounds[-1]["hit_ratio"] if self.rounds else None


def checkpoint_path(store: Store | str) -> Path | str:
    """Where the graph's checkpoints live: beside a SQLite store (`<store>.checkpoints.sqlite`), in the
    same database for a PostgreSQL store, else `$PERTURBLOOP_CHECKPOINTS` (default `runs/checkpoints.sqlite`).
    `store`: the store, or its URL."""
    url = store if isinstance(store, str) else store.url
    db = sqlite_path(url)
    if db is not None:
        return db.with_name(db.stem + ".checkpoints.sqlite")
    if url.startswith(("postgresql", "postgres://")):
        return url
    return Path(os.environ.get("PERTURBLOOP_CHECKPOINTS", "runs/checkpoints.sqlite"))


def check_stored_campaign(config: CampaignConfig, store: Store) -> Campaign:
    """The campaign in the store (created if new): a different config, or a file the config names changed since
    the campaign started, is a StoreError naming it."""
    campaign = store.create_or_check_campaign(config.name, config.model_dump(mode="json"),
                                              normalise=stored_config_as_today)
    store.check_files(config.name, config.named_files())
    return campaign


def with_stored_defaults(config: CampaignConfig, store: Store) -> CampaignConfig:
    """The config a stored campaign runs under: fields its file leaves to today's defaults keep the values the
    campaign started with (`perturbloop.config.with_campaign_defaults`); a new campaign takes today's."""
    campaign = store.get_campaign(config.name)
    return config if campaign is None else with_campaign_defaults(config, stored_config_as_today(campaign.config))


def stale_checkpoint(values: dict, paused: bool, store_id: str, start: int) -> bool:
    """Whether a campaign's checkpointed state disagrees with the store: it names another store's campaign
    (`store_id`, the campaign's creation time; checkpoints written before it was recorded name none), or it is
    paused inside a round other than the first one the store has not ingested (`start`)."""
    if not values:
        return False
    if values.get("store_id") not in (None, store_id):
        return True
    return paused and values.get("round", -1) != start


def next_round(store: Store, campaign_id: str) -> int:
    """Index of the first round not yet ingested. A rejected proposal does not use up its round (the round is
    proposed again); `rejected` rounds are those an earlier version gave up on a rejection."""
    done = [r.index for r in store.rounds(campaign_id) if r.status in ("ingested", "rejected")]
    return max(done) + 1 if done else 0


def run_campaign(config: CampaignConfig, store: Store | str | None = None, data_dir: str | os.PathLike | None = None,
                 on_round: Callable[[dict], None] | None = None, resume: dict | None = None,
                 context: CampaignContext | None = None) -> CampaignResult:
    """Run a campaign to its end (or to an approval pause), resuming from the store if it exists.

    `resume` is a decision to hand to a paused approval step.
    """
    store = store if isinstance(store, Store) else Store(store)
    config = with_stored_defaults(config, store)
    ctx = context or build_context(config, store, data_dir, on_round)
    store_id = naive_utc(check_stored_campaign(config, store).created_at).isoformat(timespec="microseconds")
    cfg = {"configurable": {"thread_id": config.name},
           "recursion_limit": RECURSION_LIMIT_PER_ROUND * (ctx.rounds + 1)}
    with open_checkpointer(checkpoint_path(store)) as saver:
        graph = build_graph(saver)
        snapshot = graph.get_state(cfg)
        start = next_round(store, config.name)
        fresh = {"campaign_id": config.name, "round": start, "collected": [], "status": "running", "store_id": store_id}
        if stale_checkpoint(snapshot.values, bool(snapshot.next), store_id, start):
            # the store is the source of truth: checkpoints of another store's campaign (a store deleted or
            # restored from a backup) or of a round the store has not reached are dropped, never followed
            saver.delete_thread(config.name)
            snapshot = graph.get_state(cfg)
        if resume is not None and not snapshot.interrupts and start < ctx.rounds:
            graph.invoke(fresh, cfg, context=ctx)  # walk back to the store's pause, then decide there
            snapshot = graph.get_state(cfg)
        if resume is not None:
            inp = Command(resume=resume) if snapshot.interrupts else False
        elif snapshot.next and snapshot.values.get("round", -1) == start:
            inp = None  # continue the interrupted step
        elif start >= ctx.rounds:
            inp = False
        else:
            inp = fresh
        if inp is not False:
            graph.invoke(inp, cfg, context=ctx)
        snapshot = graph.get_state(cfg)
    rounds = [ctx.summary(r.index) for r in store.rounds(config.name)]
    status = "finished"
    if snapshot.interrupts:
        status = "awaiting_approval"
    elif snapshot.values.get("status") == "waiting_for_lab":
        status = "waiting_for_lab"
    elif next_round(store, config.name) < ctx.rounds and store.get_campaign(config.name).status != "finished":
        status = "running"  # (a campaign with nothing left to propose finishes before its last round)
    return CampaignResult(config.name, status, rounds, ctx.n_hits)
