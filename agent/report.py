"""Campaign summaries read from the store (per-round table, totals)."""

from __future__ import annotations

from perturbloop.store import Store


def summarise_round(store: Store, campaign_id: str, index: int, n_hits: int | None = None) -> dict:
    r = store.get_round(campaign_id, index)
    if r is None:
        return {"round": index + 1}
    obs = store.observations(campaign_id, include_failed=True)
    this = [o for o in obs if o.round_id == r.id]
    upto = [o for o in obs if o.round_id <= r.id]
    fit = store.model_fit(r.id)
    decision = store.decision(r.id)
    hits_total = sum(1 for o in upto if o.hit)
    seconds = None
    if r.finished_at is not None:
        seconds = (r.finished_at - r.created_at).total_seconds()
    return {
        "round": index + 1,
        "status": r.status,
        "picks": len(decision.final) if decision else 0,
        "failed": sum(1 for o in this if o.failed),
        "new_hits": sum(1 for o in this if o.hit),
        "hits_total": hits_total,
        "hit_ratio": (hits_total / n_hits) if n_hits else None,
        "spearman_unmeasured": (fit.metrics or {}).get("spearman_unmeasured") if fit else None,
        "fit_seconds": fit.fit_seconds if fit else None,
        "select_seconds": fit.select_seconds if fit else None,
        "seconds": seconds,
    }
