"""What a scientist reads of a campaign across contexts, from the store alone (issue 12).

A context campaign stores each measured (gene, context) pair under the label `GENE@@context`
(`perturbloop.contexts.pair_label`); a campaign is read as one when any of its labels is such a pair. Nothing here
needs the campaign's runtime (design space, lab): the labels, the observations, the pending proposal and the
stored config dict are enough, so old stores and stores written by any version read the same.

- `context_order`: the contexts as columns: the order of the stored config's `contexts.contexts` list where it has
  one, then any other context in the order first seen.
- `context_spend`: per context, measurements (a failed one included: the lab ran it) and, where the stored config
  gives costs (`contexts.costs`, one per context), the cost spent `n_measured_or_failed * cost`; `context_budget`:
  the campaign's budget in cost units (`contexts.budget`).
- `context_grid`: gene x context cells of what is measured (value, hit, or failed with its reason) and what the
  pending round proposes (predicted value in the screen's units and P(hit) where the proposal carries them).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from perturbloop.context_labels import PAIR_SEP
from perturbloop.store import Observation, Store


def gene_and_context(label: str) -> tuple[str, str] | None:
    """(gene, context) of a `GENE@@context` label; None for any other label (a gene, a pair `A+B`, a malformed
    pair label)."""
    if PAIR_SEP not in label:
        return None
    from perturbloop.contexts import split_label

    try:
        return split_label(label)
    except ValueError:
        return None


def _positive(x: object) -> bool:
    """Whether a stored config value is a finite, positive number (not a bool)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _config_contexts(config: dict | None) -> tuple[list[str], dict[str, float]]:
    """(context names, cost per context) from a stored config dict's `contexts` section, read defensively: a
    section that is absent or not the expected shape gives ([], {}); costs only when there is one finite,
    positive number per context."""
    section = config.get("contexts") if isinstance(config, dict) else None
    section = {"contexts": section} if isinstance(section, list) else section
    names = section.get("contexts") if isinstance(section, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        return [], {}
    names = [n.strip() for n in names]
    costs = section.get("costs")
    ok = isinstance(costs, list) and len(costs) == len(names) and all(map(_positive, costs))
    return names, (dict(zip(names, map(float, costs))) if ok else {})


def context_budget(config: dict | None) -> float | None:
    """The campaign's budget in cost units (`contexts.budget` of the stored config), or None."""
    section = config.get("contexts") if isinstance(config, dict) else None
    budget = section.get("budget") if isinstance(section, dict) else None
    return float(budget) if _positive(budget) else None


def context_order(config: dict | None, labels: Iterable[str]) -> list[str]:
    """The contexts of a campaign as columns: the config's list first (its order), then others as first seen."""
    names, _ = _config_contexts(config)
    seen = [gc[1] for gc in map(gene_and_context, labels) if gc is not None]
    return list(dict.fromkeys([*names, *seen]))


def is_context_campaign(labels: Iterable[str]) -> bool:
    return any(gene_and_context(label) is not None for label in labels)


def context_spend(config: dict | None, observations: Sequence[Observation]) -> list[dict] | None:
    """Per context (in `context_order`): `measured`, `failed`, and with costs in the config `cost` (per
    perturbation) and `spent` (`(measured + failed) * cost`); None for a campaign without context labels."""
    labels = [o.perturbation for o in observations]
    if not is_context_campaign(labels):
        return None
    _, costs = _config_contexts(config)
    rows = {c: {"context": c, "measured": 0, "failed": 0} for c in context_order(config, labels)}
    for o in observations:
        gc = gene_and_context(o.perturbation)
        if gc is not None:
            rows[gc[1]]["failed" if o.failed else "measured"] += 1
    for c, row in rows.items() if costs else ():
        cost = costs.get(c)
        row["cost"], row["spent"] = cost, None if cost is None else (row["measured"] + row["failed"]) * cost
    return list(rows.values())


def context_grid(store: Store, campaign_id: str, pending: dict | None) -> dict | None:
    """The gene x context grid of a context campaign, or None for another campaign.

    `pending`: the pending proposal as `agent.report.pending_view` gives it (items with `perturbation`,
    `predicted`, `shown`, `p_hit`), or None. Returns `contexts` (columns, `context_order`) and `rows` (genes,
    alphabetical, each `{"gene", "cells": [cell or None per context]}`), a cell being `{"state": "measured" |
    "failed" | "proposed", "value", "hit", "error", "shown", "p_hit", "rank"}`."""
    obs = store.observations(campaign_id, include_failed=True)
    items = (pending or {}).get("items") or []
    labels = [o.perturbation for o in obs] + [i["perturbation"] for i in items]
    if not is_context_campaign(labels):
        return None
    c = store.get_campaign(campaign_id)
    contexts = context_order(c.config if c is not None else None, labels)
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for o in obs:
        gc = gene_and_context(o.perturbation)
        if gc is not None:
            cells[gc] = {"state": "failed" if o.failed else "measured", "value": o.value, "hit": o.hit,
                         "error": o.error, "label": o.perturbation}
    for i in items:
        gc = gene_and_context(i["perturbation"])
        if gc is not None and gc not in cells:
            cells[gc] = {"state": "proposed", "shown": i.get("shown") if i.get("predicted") is not None else None,
                         "p_hit": i.get("p_hit"), "rank": i.get("rank"), "label": i["perturbation"]}
    states, genes = Counter(x["state"] for x in cells.values()), sorted({g for g, _ in cells})
    return {"contexts": contexts,
            "rows": [{"gene": g, "cells": [cells.get((g, ctx)) for ctx in contexts]} for g in genes],
            **{state: states[state] for state in ("measured", "failed", "proposed")}}
