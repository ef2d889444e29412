"""Campaign summaries read from the store: per-round table, totals, decisions, round times, the pending proposal.

A round's time is its work time: `finished_at - created_at` less the hours its proposals waited for a decision
(`sum(decided_at - proposed_at)` over the round's `ProposalRecord`s), i.e. fit + propose, dispatch, the lab and
ingest. Rounds proposed before proposal records were kept estimate the wait as `decision.at - (created_at +
fit_seconds + select_seconds)` (a rejected proposal's fit time there is counted as waiting).
"""

from __future__ import annotations

from datetime import UTC, datetime

from agent.context_view import context_budget, context_spend, gene_and_context
from agent.screen_units import (
    PredictionScale,
    in_screen_units,
    prediction_scale,
    value_label,
)
from perturbloop.config import CampaignConfig, parse_config
from perturbloop.errors import PerturbloopError
from perturbloop.store import Round, Store


def naive_utc(t: datetime) -> datetime:
    """A timestamp as every store reads it back: UTC without a zone."""
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo is not None else t


def _when(t: datetime) -> str:
    return naive_utc(t).strftime("%Y-%m-%d %H:%M UTC")


def round_times(store: Store, r: Round) -> dict:
    """`seconds`: the round's work time (None until it is finished); `approval_wait_seconds`: how long its
    proposals waited for decisions (module docstring; so far, for a proposal still waiting)."""
    wait: float | None
    if records := store.proposal_records(r.id):
        now = naive_utc(datetime.now(UTC))
        wait = sum(((naive_utc(p.decided_at) if p.decided_at is not None else now) - naive_utc(p.proposed_at))
                   .total_seconds() for p in records)
    else:  # proposed before records were kept
        d, fit = store.decision(r.id), store.model_fit(r.id)
        if d is None or d.action == "auto":
            wait = 0.0 if d is not None else None
        else:
            proposed = naive_utc(r.created_at).timestamp() + (fit.fit_seconds + fit.select_seconds if fit else 0.0)
            wait = max(0.0, naive_utc(d.at).timestamp() - proposed)
    if r.finished_at is None:
        return {"seconds": None, "approval_wait_seconds": wait}
    return {"seconds": (naive_utc(r.finished_at) - naive_utc(r.created_at)).total_seconds() - (wait or 0.0),
            "approval_wait_seconds": wait}


def summarise_round(store: Store, campaign_id: str, index: int, n_hits: int | None = None) -> dict:
    r = store.get_round(campaign_id, index)
    if r is None:
        return {"round": index + 1}
    obs = store.observations(campaign_id, include_failed=True)
    this = [o for o in obs if o.round_id == r.id]
    fit, decision = store.model_fit(r.id), store.decision(r.id)
    hits_total = sum(1 for o in obs if o.round_id <= r.id and o.hit)
    return {
        "round": index + 1,
        "status": r.status,
        "picks": len(decision.final) if decision else 0,
        "failed": sum(1 for o in this if o.failed),
        "new_hits": sum(1 for o in this if o.hit),
        "hits_total": hits_total,
        "hit_ratio": (hits_total / n_hits) if n_hits else None,
        "spearman_unmeasured": (fit.metrics or {}).get("spearman_unmeasured") if fit else None,
        "metrics": dict(fit.metrics or {}) if fit else {},  # the model's scores after this round
        "fit_seconds": fit.fit_seconds if fit else None,
        "select_seconds": fit.select_seconds if fit else None,
        **round_times(store, r),
    }


def round_decisions(store: Store, r: Round) -> list[dict]:
    """Every decision on the round's proposals, oldest first: rejections, then the decision that stands; each
    with who, when, why, what it changed and how long the proposal had waited (None where unknown)."""
    records = store.proposal_records(r.id)
    waited = {naive_utc(p.decided_at): (naive_utc(p.decided_at) - naive_utc(p.proposed_at)).total_seconds()
              for p in records if p.decided_at is not None}
    vetoes = [v for v in store.vetoes(r.campaign_id) if v.round_id == r.id]

    def row(action: str, by: str, at: datetime, note: str, **changes: list) -> dict:
        vetoed = [v.perturbation for v in vetoes if naive_utc(v.at) == naive_utc(at)]
        return {"action": action, "by": by, "at": naive_utc(at).isoformat(), "when": _when(at), "note": note,
                **changes, "vetoed": vetoed, "waited_seconds": waited.get(naive_utc(at))}

    out = [row("rejected", rej.by, rej.at, rej.note, dropped=rej.perturbations, added=[])
           for rej in store.rejections(r.id)]
    d = store.decision(r.id)
    if d is not None:
        out.append(row(d.action, d.by, d.at, d.note, dropped=list(d.dropped), added=list(d.added)))
    return out


def campaign_overview(store: Store) -> list[dict]:
    """Every campaign in the store with its rounds: status, picks, observed/failed counts, hits (per round and so
    far), decisions, work time and approval wait, lab jobs; `hit_curve`: hits found so far after each measured
    round (None when the campaign calls no hits); `contexts`: measurements and cost spent per context
    (`agent.context_view.context_spend`; None unless the campaign measures (gene, context) pairs) and
    `context_budget`, its budget in cost units (None when its config sets none)."""
    out = []
    for c in store.list_campaigns():
        obs = store.observations(c.id, include_failed=True)
        rounds, so_far = [], 0
        for r in store.rounds(c.id):
            d = store.decision(r.id)
            this = [o for o in obs if o.round_id == r.id]
            hits = sum(1 for o in this if o.hit)
            so_far += hits
            rounds.append({
                "round": r.index + 1, "status": r.status, "picks": len(d.final) if d else 0,
                "observed": sum(1 for o in this if not o.failed), "failed": sum(1 for o in this if o.failed),
                "hits": hits, "hits_so_far": so_far if this else None,
                "decision": None if d is None else {"action": d.action, "by": d.by, "at": d.at.isoformat(), "note": d.note},
                "decisions": round_decisions(store, r),
                **round_times(store, r),
                "lab_jobs": [{"adapter": j.adapter, "external_id": j.external_id, "status": j.status,
                              "idempotency_key": j.idempotency_key, "n": len(j.perturbations)} for j in store.lab_jobs(r.id)],
            })
        world = c.config.get("world") or {}
        target = (c.config.get("data") or {}).get("screen") or " ".join(str(v) for v in (world.get("kind"), world.get("dataset")) if v)
        planned = c.config.get("rounds")
        if planned is not None and (world or c.config.get("initial")):
            planned += 1  # round 0 runs the initial design
        called = any(o.hit is not None for o in obs)
        out.append({"campaign": c.id, "status": c.status, "screen": target,
                    "policy": c.config.get("acquisition", {}).get("kind"), "rounds_planned": planned,
                    "rounds": rounds, "picks": sum(r["picks"] for r in rounds), "hits": sum(r["hits"] for r in rounds),
                    "hit_curve": [r["hits_so_far"] for r in rounds if r["hits_so_far"] is not None] if called else None,
                    "contexts": context_spend(c.config, obs), "context_budget": context_budget(c.config)})
    return out


def proposal_scale(store: Store, config: CampaignConfig | None, r: Round) -> PredictionScale:
    """The scale of round `r`'s current proposal: as recorded when it was made; for a proposal made before records
    were kept, rebuilt from the config and the observations of the earlier rounds (what the model was trained on)."""
    records = store.proposal_records(r.id)
    if records and records[-1].units:
        return PredictionScale.from_dict(records[-1].units)
    if config is None or config.is_response:
        return PredictionScale("campaign")
    earlier = {x.id for x in store.rounds(r.campaign_id) if x.index < r.index}
    signed = config.objective != "hits"
    observed = {o.perturbation: (o.value if signed else abs(o.value)) for o in store.observations(r.campaign_id)
                if o.round_id in earlier and o.value is not None}
    return prediction_scale(config, observed, config.data.hit_threshold)


def shown_prediction(value: float | None, low: float | None, high: float | None, scale: PredictionScale) -> str:
    """A prediction as the review shows it: `v ± sd`, or `v (low to high)` for an asymmetric interval."""
    if value is None:
        return "-"
    if scale.kind == "log":
        return f"{value:.3f} ({low:.3f} to {high:.3f})"
    return f"{value:.3f} ± {high - value:.3f}"


def pending_view(store: Store, campaign_id: str) -> dict | None:
    """The proposal awaiting approval as a scientist reads it, or None: round, proposal id, the column labels and
    each item's prediction in the screen's units (`predicted`, `predicted_low`, `predicted_high`, `p_hit`,
    `shown`) beside the model-scale `mean`/`sd` as stored; `gene` and `context` of a `GENE@@context` label (else
    None; `has_context` when any item has one)."""
    from agent.approval import pending_round, proposal_id

    r = pending_round(store, campaign_id)
    if r is None:
        return None
    props = store.proposals(r.id)
    try:
        config = parse_config(store.get_campaign(campaign_id).config, f"stored config of {campaign_id}")
    except PerturbloopError:
        config = None
    scale = proposal_scale(store, config, r)
    label = value_label(config, scale) if config is not None else "predicted ± sd"
    items = []
    for p in props:
        pred = in_screen_units(p.mean, p.sd, scale)
        gene, context = gene_and_context(p.perturbation) or (None, None)
        items.append({"rank": p.rank + 1, "perturbation": p.perturbation, "gene": gene, "context": context,
                      "mean": p.mean, "sd": p.sd,
                      "predicted": pred.value, "predicted_low": pred.low, "predicted_high": pred.high,
                      "p_hit": pred.p_hit, "shown": shown_prediction(pred.value, pred.low, pred.high, scale),
                      "acq_value": p.acq_value, "policy": p.policy, "rationale": p.rationale})
    return {"round": r.index + 1, "proposal": proposal_id(r, props), "label": label or "predicted value",
            "has_value": label is not None, "has_p_hit": scale.kind != "campaign", "scale": scale.as_dict(),
            "has_context": any(i["context"] is not None for i in items),
            "items": items}
