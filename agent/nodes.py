"""The loop's nodes: fit > propose > review > dispatch > collect > ingest.

Each node checks the store first and does nothing when its work is already recorded, so a
node re-run after a crash (or after an approval interrupt) never repeats a side effect.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from agent.approval import record_decision
from agent.context import CampaignContext
from agent.screen_units import proposal_units
from agent.state import LoopState
from lab_adapters.base import JobRef, LabError
from perturbloop.errors import LabKeyConflictError, LabResultError
from perturbloop.perturbation import CONTROL
from perturbloop.store import Decision, ModelFit, Observation


def fault_point(node: str, index: int) -> None:
    """Test hook: `PERTURBLOOP_KILL_AT=node:round` SIGKILLs this process right after `node`'s
    side effects in that round (fault-injection tests of crash-safe resume)."""
    if os.environ.get("PERTURBLOOP_KILL_AT") == f"{node}:{index}":
        os.kill(os.getpid(), signal.SIGKILL)


def round_key(campaign_id: str, index: int) -> str:
    """The idempotency key of a round's lab submission."""
    return f"{campaign_id}/round-{index}"


def excluded(ctx: CampaignContext, index: int) -> list[str]:
    """What round `index` must not propose (the policy's `pending`): failed perturbations (never re-proposed),
    those vetoed in the campaign, and those of the round's rejected proposals."""
    store = ctx.store
    failed = [o.perturbation for o in store.observations(ctx.campaign_id, include_failed=True) if o.failed]
    vetoed = [v.perturbation for v in store.vetoes(ctx.campaign_id)]
    r = store.get_round(ctx.campaign_id, index)
    rejected = [lab for rej in store.rejections(r.id) for lab in rej.perturbations] if r is not None else []
    return list(dict.fromkeys([*failed, *vetoed, *rejected]))


def left_to_propose(ctx: CampaignContext, index: int) -> int:
    """How many perturbations round `index` could still propose: the design space less what is measured,
    excluded (`excluded`) or held out for scoring (a response campaign's test set); none once the campaign's
    budget is spent."""
    if not ctx.can_spend():  # a budget in cost units is spent
        return 0
    taken = ctx.store.observed(ctx.campaign_id) | set(excluded(ctx, index)) | set(ctx.split.test)
    return sum(1 for lab in ctx.candidate_labels() if lab not in taken)


def _finished(ctx: CampaignContext) -> dict:
    """Nothing is left to propose: the campaign ends here, whatever rounds remain."""
    ctx.store.set_campaign_status(ctx.campaign_id, "finished")
    return {"status": "finished", "collected": []}


def fit(state: LoopState, runtime: Runtime[CampaignContext]) -> dict:
    ctx = runtime.context
    r = ctx.store.get_round(ctx.campaign_id, state["round"])
    if (r is None or r.status == "fitting") and not left_to_propose(ctx, state["round"]):
        return _finished(ctx)
    r = r or ctx.store.get_or_create_round(ctx.campaign_id, state["round"])
    if r.status == "fitting":  # the fit on everything measured so far, kept by the context for `propose`
        ctx.fit_model(ctx.training_data(), state["round"])
    return {"status": "running"}


def _annotate(ctx: CampaignContext, items: list) -> list:
    """`items` with the scientist's earlier word on a perturbation put first in its rationale: dropped from
    an earlier batch, or in a rejected one."""
    said: dict[str, str] = {}
    for r, d in ctx.store.decisions(ctx.campaign_id):
        for lab in d.dropped:
            said[lab] = f"dropped by {d.by} in round {r.index + 1}" + (f" ({d.note})" if d.note else "")
    for r in ctx.store.rounds(ctx.campaign_id):
        for rej in ctx.store.rejections(r.id):
            for lab in rej.perturbations:
                said.setdefault(lab, f"in the batch rejected by {rej.by} in round {r.index + 1}"
                                + (f" ({rej.note})" if rej.note else ""))
    return [replace(it, rationale="; ".join(filter(None, [said[it.perturbation], it.rationale])))
            if it.perturbation in said else it for it in items]


def _with_evidence(ctx: CampaignContext, items: list) -> list:
    """`items` with each gene's prior evidence appended to its rationale (`perturbloop.explain`: STRING neighbours
    measured as hits, pathway, literature, prior screens), where the context carries the knowledge tables
    (`ctx.cache["explain"]`, set by `agent.context.build_context` for screen campaigns)."""
    ev = ctx.cache.get("explain")
    if ev is None or not items:
        return items
    from perturbloop.explain import explain, with_evidence

    values = {o.perturbation: o.value for o in ctx.store.observations(ctx.campaign_id)}
    notes = explain([it.perturbation for it in items], ev["knowledge"](), values, ev["hit_threshold"])
    return [replace(it, rationale=r) for it, r in zip(items, with_evidence([it.rationale for it in items], notes))]


def propose(state: LoopState, runtime: Runtime[CampaignContext]) -> dict:
    ctx = runtime.context
    r = ctx.store.get_or_create_round(ctx.campaign_id, state["round"])
    if ctx.store.proposals(r.id):
        return {"status": "running"}
    if not left_to_propose(ctx, state["round"]):  # every candidate left was in a rejected batch
        return _finished(ctx)
    observed = ctx.training_data()
    model, fit_seconds = ctx.fit_model(observed, state["round"])  # the fit `fit` made, unless this process resumed
    t0 = time.perf_counter()
    proposal = ctx.select(model, observed, excluded(ctx, state["round"]), state["round"])
    select_seconds = time.perf_counter() - t0
    if not proposal.items:  # the policy can pick nothing more (a budget in cost units that affords none of its picks)
        ctx.store.drop_unused_round(r.id)  # the campaign ends before this round: no empty round in its record
        return _finished(ctx)
    record = ModelFit(round_id=r.id, surrogate=model.name if model is not None else "none", policy=proposal.policy,
                      n_train=len(observed), fit_seconds=fit_seconds, select_seconds=select_seconds,
                      params=getattr(model, "params", {}))
    ctx.store.save_proposal(r.id, _annotate(ctx, _with_evidence(ctx, proposal.items)), proposal.policy, record,
                            units=proposal_units(ctx, observed))  # the scale of its predictions, for the review
    return {"status": "running"}


def review(state: LoopState, runtime: Runtime[CampaignContext]) -> dict:
    """The approval gate. A rejection (here, or recorded by the web app before this run) sends the round
    back to `propose` (state status `rejected`); any other decision goes on to `dispatch`."""
    ctx = runtime.context
    r = ctx.store.get_or_create_round(ctx.campaign_id, state["round"])
    if ctx.store.decision(r.id) is not None:
        return {"status": "running"}
    labels = [p.perturbation for p in ctx.store.proposals(r.id)]
    if not labels:  # the proposal was rejected: propose the round again
        return {"status": "rejected"}
    if ctx.config.approval == "auto":
        ctx.store.save_decision(Decision(round_id=r.id, action="auto", by="auto", final=labels))
        return {"status": "running"}
    ctx.store.set_campaign_status(ctx.campaign_id, "awaiting_approval")
    answer = interrupt({"campaign": ctx.campaign_id, "round": state["round"], "proposal": labels})
    stored, _ = record_decision(ctx.store, r.id, answer)
    ctx.store.set_campaign_status(ctx.campaign_id, "running")
    return {"status": "rejected" if stored.action == "rejected" else "running"}


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
        try:
            ref = ctx.lab.submit(key, job.perturbations)
        except LabKeyConflictError as e:
            raise LabKeyConflictError(
                f"{e}. The lab already holds round {state['round'] + 1} of campaign {ctx.campaign_id!r} with another "
                "batch, which this store does not know (was the store deleted or replaced?). Nothing was sent: run "
                f"the campaign under a new name, or have the lab withdraw job {key!r}.") from None
        fault_point("submit", state["round"])  # the lab has the batch, the store does not know yet
        ctx.store.mark_submitted(key, ref.external_id)
    return {}


def _waiting(ctx: CampaignContext) -> dict:
    """The round waits for the lab: the campaign says so, and the graph stops until the next run."""
    c = ctx.store.get_campaign(ctx.campaign_id)
    if c is not None and c.status != "waiting_for_lab":
        ctx.store.set_campaign_status(ctx.campaign_id, "waiting_for_lab")
    return {"status": "waiting_for_lab", "collected": []}


def collect(state: LoopState, runtime: Runtime[CampaignContext]) -> dict:
    """Poll the round's lab job once; hand the results not yet stored to `ingest`.

    A `partial` job gives the results received so far (status `partial`: ingest them, keep waiting);
    a `complete` or `failed` one gives the rest, a perturbation without a result counting as failed.
    """
    ctx = runtime.context
    key = round_key(ctx.campaign_id, state["round"])
    job = ctx.store.lab_job(key)
    if job is None or job.status == "collected":
        return {"collected": []}
    ref = JobRef(job.adapter, job.external_id or "", key)
    try:
        status = ctx.lab.poll(ref)
    except KeyError:
        # a lab that forgot the job (an in-memory simulator in a restarted process): the same
        # idempotency key is the same job, so submitting it again is safe
        ref = ctx.lab.submit(key, job.perturbations)
        status = ctx.lab.poll(ref)
    if status not in ("partial", "complete", "failed"):
        return _waiting(ctx)
    results = ctx.lab.collect(ref)
    source = f"lab job {ref.external_id} ({key})"
    unknown = sorted(set(results) - set(job.perturbations) - {CONTROL})
    if unknown:
        raise LabResultError(f"{source}: results for perturbation(s) not in its batch: " + ", ".join(unknown[:20]))
    if hasattr(ctx.lab, "result_files"):  # a file drop: name the files the results came from
        source += " [" + ", ".join(str(f) for f in ctx.lab.result_files(ref)) + "]"
    results = ctx.summarise_results(results, source)  # every LabResult now has its response vector
    have = ctx.store.observed(ctx.campaign_id)
    rows, pending = [], []
    for label in job.perturbations:
        if label in have:
            continue  # ingested by an earlier run (a partial delivery): never twice
        res = results.get(label)
        if res is None and status == "partial":
            pending.append(label)
            continue
        res = res or LabError(label, "no result returned by the lab")
        if isinstance(res, LabError):
            rows.append({"perturbation": label, "value": None, "replicates": [], "error": res.reason})
        elif res.value is None:
            raise LabResultError(f"{source}: {label} came back as cells (Perturb-seq) without a readout; a screen "
                                 "campaign needs a value per perturbation (a results CSV)")
        else:
            rows.append({"perturbation": label, "value": res.value, "replicates": list(res.replicates), "error": None,
                         "response": [float(v) for v in res.response]})
    if pending and not rows:
        return _waiting(ctx)
    return {"collected": rows, "status": "partial" if pending else "running"}


def ingest(state: LoopState, runtime: Runtime[CampaignContext]) -> dict:
    """Store the collected observations; close the round once its lab job is complete, else keep waiting."""
    ctx = runtime.context
    r = ctx.store.get_or_create_round(ctx.campaign_id, state["round"])
    key = round_key(ctx.campaign_id, state["round"])
    done = r.status in ("ingested", "rejected")
    complete = done or state.get("status") != "partial"
    if not done:
        collected = state.get("collected", [])
        rows = [
            Observation(campaign_id=ctx.campaign_id, round_id=r.id, perturbation=c["perturbation"], value=c["value"],
                        replicates=c["replicates"], failed=c["error"] is not None, error=c["error"],
                        hit=None if c["error"] or not ctx.hits else c["perturbation"] in ctx.hits)
            for c in collected
        ]
        responses = {c["perturbation"]: c["response"] for c in collected if c.get("response") is not None}
        if ctx.store.lab_job(key) is not None:
            ctx.store.ingest(ctx.campaign_id, r.id, key, rows, complete=complete, responses=responses)
    if not complete:
        return _waiting(ctx)
    nxt = state["round"] + 1
    ctx.after_ingest(state["round"])
    if ctx.on_round is not None:
        ctx.on_round(ctx.summary(state["round"]))
    status = "finished" if nxt >= ctx.rounds else "running"
    c = ctx.store.get_campaign(ctx.campaign_id)
    if status == "finished" or (c is not None and c.status == "waiting_for_lab"):
        ctx.store.set_campaign_status(ctx.campaign_id, status)
    return {"round": nxt, "collected": [], "status": status}
