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
        "metrics": dict(fit.metrics or {}) if fit else {},  # the model's scores after this round
        "fit_seconds": fit.fit_seconds if fit else None,
        "select_seconds": fit.select_seconds if fit else None,
        "seconds": seconds,
    }


def campaign_overview(store: Store) -> list[dict]:
    """Every campaign in the store with its rounds: status, picks, observed/failed counts, hits, lab jobs."""
    out = []
    for c in store.list_campaigns():
        obs = store.observations(c.id, include_failed=True)
        rounds = []
        for r in store.rounds(c.id):
            d = store.decision(r.id)
            this = [o for o in obs if o.round_id == r.id]
            rounds.append({
                "round": r.index + 1, "status": r.status, "picks": len(d.final) if d else 0,
                "observed": sum(1 for o in this if not o.failed), "failed": sum(1 for o in this if o.failed),
                "hits": sum(1 for o in this if o.hit),
                "decision": None if d is None else {"action": d.action, "by": d.by, "at": d.at.isoformat(), "note": d.note},
                "lab_jobs": [{"adapter": j.adapter, "external_id": j.external_id, "status": j.status,
                              "idempotency_key": j.idempotency_key, "n": len(j.perturbations)} for j in store.lab_jobs(r.id)],
            })
        world = c.config.get("world") or {}
        target = (c.config.get("data") or {}).get("screen") or " ".join(str(v) for v in (world.get("kind"), world.get("dataset")) if v)
        planned = c.config.get("rounds")
        if planned is not None and (world or c.config.get("initial")):
            planned += 1  # round 0 runs the initial design
        out.append({"campaign": c.id, "status": c.status, "screen": target,
                    "policy": c.config.get("acquisition", {}).get("kind"), "rounds_planned": planned,
                    "rounds": rounds, "picks": sum(r["picks"] for r in rounds), "hits": sum(r["hits"] for r in rounds)})
    return out
