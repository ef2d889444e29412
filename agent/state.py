"""The loop's checkpointed state: plain values only (the store holds the rest)."""

from __future__ import annotations

from typing import TypedDict


class LoopState(TypedDict, total=False):
    campaign_id: str
    round: int  # index of the round in progress (0-based)
    collected: list[dict]  # lab results awaiting ingestion: {perturbation, value, replicates, error}
    status: str  # running | partial (collect -> ingest: more results to come) | waiting_for_lab | finished
    store_id: str  # the store's campaign these checkpoints belong to (its creation time): stale checkpoints are dropped
