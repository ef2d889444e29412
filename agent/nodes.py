"""The loop's nodes: fit > propose > review > dispatch > collect > ingest.

Each node checks the store first and does nothing when its work is already recorded, so a
node re-run after a crash (or after an approval interrupt) never repeats a side effect.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
import torch
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from scipy.stats import spearmanr

from agent.context import CampaignContext
from agent.state import LoopState
from lab_adapters.base import JobRef, LabError
from perturbloop.store import Decision, ModelFit, Observation


def fault_point(node: str, index: int) -> None:
    """Test hook: `PERTURBLOOP_KILL_AT=node:round` SIGKILLs this process right after `node`'s
    side effects in that round (fault-injection tests of crash-safe resume)."""
    target = os.environ.get("PERTURBLOOP_KILL_AT")
    if target and target == f"{node}:{index}":
        os.kill(os.getpid(), signal.SIGKILL)


def round_key(campaign_id: str, index: int) -> str:
    """The idempotency key of a round's lab submission."""
    return f"{campaign_id}/round-{index}"


def _training_data(ctx: CampaignContext) -> dict[str, float]:
    obs = ctx.store.observations(ctx.campaign_id)
    return {o.perturbation: ctx.objective(o.value) for o in obs if o.value is not None and o.perturbation in ctx.pool.index}


def fit_surrogate(ctx: CampaignContext, index: int) -> dict[str, Any]:
    """Fit the surrogate on everything measured so far; cache it for `propose`."""
    observed = _training_data(ctx)
    t0 = time.perf_counter()
    surrogate = None
    metrics: dict[str, float] = {}
    if len(observed) >= 2:
        surrogate = ctx.make_surrogate(ctx.store.latest_params(ctx.campaign_id, ctx.config.surrogate.kind))
        idx = ctx.pool.indices(list(observed))
        surrogate.fit(ctx.pool.X[idx], torch.tensor(list(observed.values()), dtype=torch.float64))
    fit_seconds = time.perf_counter() - t0
    if surrogate is not None and ctx.world is not None:
        # evaluation only: how well the model ranks the genes not yet measured
        unmeasured = [lab for lab in ctx.pool.labels if lab not in observed]
        post = surrogate.posterior(ctx.pool.X[ctx.pool.indices(unmeasured)])
        truth = ctx.world.truth(unmeasured).map(ctx.objective).to_numpy()
        ok = ~np.isnan(truth)
        metrics["spearman_unmeasured"] = float(spearmanr(post.mean.numpy()[ok], truth[ok]).statistic)
    fit = {"round": index, "surrogate": surrogate, "observed": observed, "fit_seconds": fit_seconds, "metrics": metrics}
    ctx.cache["fit"] = fit
    return fit


def fit(state: LoopState, runtime: Runtime[CampaignContext]) -> dict:
    ctx = runtime.context
    r = ctx.store.get_or_create_round(ctx.campaign_id, state["round"])
    if r.status == "fitting":
        fit_surrogate(ctx, state["round"])
    return {"status": "running"}


def propose(state: LoopState, runtime: Runtime[CampaignContext]) -> dict:
    ctx = runtime.context
    r = ctx.store.get_or_create_round(ctx.campaign_id, state["round"])
    if ctx.store.proposals(r.id):
        return {}
    cached = ctx.cache.get("fit")
    if cached is None or cached["round"] != state["round"]:
        cached = fit_surrogate(ctx, state["round"])
    observed = cached["observed"]
    pending = [o.perturbation for o in ctx.store.observations(ctx.campaign_id, include_failed=True) if o.failed]
    t0 = time.perf_counter()
    proposal = ctx.policy.select(cached["surrogate"], ctx.pool, observed, ctx.config.batch_size, pending)
    select_seconds = time.perf_counter() - t0
    surrogate_name = cached["surrogate"].name if cached["surrogate"] is not None else "none"
    params = cached["surrogate"].params if cached["surrogate"] is not None else {}
    record = ModelFit(round_id=r.id, surrogate=surrogate_name, policy=proposal.policy, n_train=len(observed),
                      fit_seconds=cached["fit_seconds"], select_seconds=select_seconds, metrics=cached["metrics"],
                      params=params)
    ctx.store.save_proposal(r.id, proposal.items, proposal.policy, record)
    return {}


def review(state: LoopState, runtime: Runtime[CampaignContext]) -> dict:
    ctx = runtime.context
    r = ctx.store.get_or_create_round(ctx.campaign_id, state["round"])
    if ctx.store.decision(r.id) is not None:
        return {}
    labels = [p.perturbation for p in ctx.store.proposals(r.id)]
    if ctx.config.approval == "auto":
        ctx.store.save_decision(Decision(round_id=r.id, action="auto", by="auto", final=labels))
        return {}
    ctx.store.set_campaign_status(ctx.campaign_id, "awaiting_approval")
    answer = interrupt({"campaign": ctx.campaign_id, "round": state["round"], "proposal": labels})
    ctx.store.save_decision(Decision(round_id=r.id, **answer))
    ctx.store.set_campaign_status(ctx.campaign_id, "running")
    return {}


def dispatch(state: LoopState, runtime: Runtime[CampaignContext]) -> dict:
    ctx = runtime.context
    r = ctx.store.get_or_create_round(ctx.campaign_id, state["round"])
    decision = ctx.store.decision(r.id)
    if decision is None or decision.action == "rejected":
        return {}
    key = round_key(ctx.campaign_id, state["round"])
    job = ctx.store.begin_lab_job(r.id, ctx.lab.name, key, list(decision.final))
    if job.status in ("submitting", "submitted"):
        # resubmitting an idempotency key returns the lab's existing job, never a new one
        ref = ctx.lab.submit(key, job.perturbations)
        fault_point("submit", state["round"])  # the lab has the batch, the store does not know yet
        ctx.store.mark_submitted(key, ref.external_id)
    return {}


def collect(state: LoopState, runtime: Runtime[CampaignContext]) -> dict:
    ctx = runtime.context
    key = round_key(ctx.campaign_id, state["round"])
    job = ctx.store.lab_job(key)
    if job is None or job.status == "collected":
        return {"collected": []}
    ref = JobRef(job.adapter, job.external_id or "", key)
    status = ctx.lab.poll(ref)
    if status != "complete" and status != "failed":
        return {"status": "waiting_for_lab", "collected": []}
    results = ctx.lab.collect(ref)
    rows = []
    for label in job.perturbations:
        res = results.get(label, LabError(label, "no result returned by the lab"))
        if isinstance(res, LabError):
            rows.append({"perturbation": label, "value": None, "replicates": [], "error": res.reason})
        else:
            rows.append({"perturbation": label, "value": res.value, "replicates": list(res.replicates), "error": None})
    return {"collected": rows}


def ingest(state: LoopState, runtime: Runtime[CampaignContext]) -> dict:
    ctx = runtime.context
    r = ctx.store.get_or_create_round(ctx.campaign_id, state["round"])
    key = round_key(ctx.campaign_id, state["round"])
    if r.status not in ("ingested", "rejected"):
        rows = [
            Observation(campaign_id=ctx.campaign_id, round_id=r.id, perturbation=c["perturbation"], value=c["value"],
                        replicates=c["replicates"], failed=c["error"] is not None, error=c["error"],
                        hit=None if c["error"] else ctx.is_hit(c["perturbation"], c["value"]))
            for c in state.get("collected", [])
        ]
        if ctx.store.lab_job(key) is not None:
            ctx.store.ingest(ctx.campaign_id, r.id, key, rows)
    nxt = state["round"] + 1
    if ctx.on_round is not None:
        ctx.on_round(round_summary(ctx, state["round"]))
    if nxt >= ctx.config.rounds:
        ctx.store.set_campaign_status(ctx.campaign_id, "finished")
        return {"round": nxt, "collected": [], "status": "finished"}
    return {"round": nxt, "collected": []}


def round_summary(ctx: CampaignContext, index: int) -> dict:
    """One row of the per-round table, read back from the store."""
    from agent.report import summarise_round

    return summarise_round(ctx.store, ctx.campaign_id, index, n_hits=len(ctx.world.hits) if ctx.world else None)
