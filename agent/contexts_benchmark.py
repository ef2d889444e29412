"""Hit discovery in a target context with other contexts at their cost: a small evaluation loop.

One simulated campaign per (policy, seed) against a `ContextReplay` world:

1. initial design: `initial` random genes measured in every context (drawn among genes every context measured, when
   there are enough), the same for every policy of a seed, its cost counted;
2. `rounds` rounds, each allowed `(budget - spent) / rounds left` cost units: the policy picks (gene, context)
   pairs, the world measures them (a failure costs as much and is not retried);
3. score: hits (the world's target hit list) found = hit genes measured in the target; recorded after every
   round with the cost spent so far and the spend per context.

Policies: `multitask` (ICM multi-task GP, with the kernel over time for contexts with hours, + cost-aware rates over
the allowed contexts), `multitask_target` (the same
model, target context only: what the other contexts' data alone adds), `independent` (a GP per context + the
cost-aware rates: no transfer, so other contexts are never worth their cost), `target_gp` (a GP on target data,
target only), `pooled` (one GP ignoring context + cost-aware rates), `random` (random genes in the target).

This loop runs in memory, not through the LangGraph campaign graph (agent/graph.py): the store does not yet keep a
proposal's context.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from acquisition.cost_aware import CostAwareHitPolicy, ContextPick, random_target_picks
from perturbloop.contexts import ContextScreen, ContextSpace
from simulators.context_replay import ContextReplay
from surrogates.multitask import IndependentContextGP, MultiTaskContextGP, PooledContextGP

POLICIES = ("multitask", "multitask_target", "independent", "target_gp", "pooled", "random")
DEFAULT_POLICIES = ("multitask", "target_gp", "pooled", "random")


@dataclass(frozen=True)
class ContextProtocol:
    target: str
    budget: float
    rounds: int
    initial: int = 16
    hit_fraction: float = 0.05
    allowed: tuple[str, ...] | None = None
    max_iter: int = 15


def _model(policy: str, space: ContextSpace, protocol: ContextProtocol):
    C, t = len(space.contexts), space.context_index(protocol.target)
    common = {"bounds": torch.stack([space.gene_X.min(0).values, space.gene_X.max(0).values]),
              "max_iter": protocol.max_iter}
    if policy in ("multitask", "multitask_target"):
        return MultiTaskContextGP(C, hours=[c.hours for c in space.contexts], **common)
    if policy == "independent":
        return IndependentContextGP(C, **common)
    if policy == "target_gp":
        return IndependentContextGP(C, fit_contexts=[t], **common)
    if policy == "pooled":
        return PooledContextGP(C, **common)
    return None


def run_campaign(space: ContextSpace, screen: ContextScreen, protocol: ContextProtocol, policy: str, seed: int,
                 hits: set[str] | None = None) -> dict:
    """One simulated campaign (module docstring); a results row."""
    if policy not in POLICIES:
        raise ValueError(f"unknown context policy {policy!r}; choose from {', '.join(POLICIES)}")
    names = space.context_names
    world = ContextReplay(screen, names, protocol.target, seed=seed, hit_fraction=protocol.hit_fraction, hits=hits)
    t = space.context_index(protocol.target)
    costs = space.costs
    measured = np.zeros((len(space.genes), len(names)), bool)
    obs_g: list[int] = []
    obs_c: list[int] = []
    obs_y: list[float] = []
    spend = dict.fromkeys(names, 0.0)
    found: set[str] = set()
    failures = 0

    def run(picks: Sequence[ContextPick]) -> None:
        nonlocal failures
        results = world.measure([p.label for p in picks])
        for p in picks:
            g, c = space.parse(p.label)
            measured[g, c] = True
            spend[p.context] += p.cost
            m = results[p.label]
            if not m.ok:
                failures += 1
                continue
            obs_g.append(g)
            obs_c.append(c)
            obs_y.append(float(m.response[0]))
            if c == t and p.gene in world.hits:
                found.add(p.gene)

    rng = np.random.default_rng(seed)
    everywhere = np.flatnonzero(space.offered.all(1))  # the initial genes are measured in every context if possible
    pool = everywhere if len(everywhere) >= protocol.initial else np.flatnonzero(space.offered[:, t])
    init = rng.choice(pool, size=min(protocol.initial, len(pool)), replace=False)
    run([ContextPick(space.genes[g], names[c], float(costs[c]), float("nan"), float("nan"), space.label(g, c))
         for g in init for c in range(len(names)) if space.offered[g, c]])
    curve = [{"round": 0, "cost": sum(spend.values()), "hits_found": len(found), "spend": dict(spend)}]
    model = _model(policy, space, protocol)
    allowed = [protocol.target] if policy in ("multitask_target", "target_gp") else protocol.allowed
    selector = CostAwareHitPolicy(protocol.target, hit_fraction=protocol.hit_fraction, seed=seed)
    seconds: list[float] = []
    for r in range(1, protocol.rounds + 1):
        t0 = time.perf_counter()
        round_budget = (protocol.budget - sum(spend.values())) / (protocol.rounds - r + 1)
        cheapest = costs[space.check_allowed(allowed)].min() if policy != "random" else costs[t]
        if round_budget < cheapest:
            picks: list[ContextPick] = []
        elif model is None:
            picks = random_target_picks(space, measured, round_budget, protocol.target, rng)
        else:
            gi = torch.as_tensor(obs_g)
            model.fit(space.gene_X[gi], torch.as_tensor(obs_c), torch.as_tensor(obs_y, dtype=torch.float64), gi)
            post = model.joint(space.gene_X, torch.arange(len(space.genes)))
            picks = selector.select(post, space, measured, round_budget, allowed=allowed,
                                    rounds_left=protocol.rounds - r + 1)
        seconds.append(time.perf_counter() - t0)
        run(picks)
        curve.append({"round": r, "cost": sum(spend.values()), "hits_found": len(found), "spend": dict(spend),
                      "picks": {c: sum(p.context == c for p in picks) for c in names}})
    total = sum(spend.values())
    row = {"policy": policy, "seed": seed, "n_hits": len(world.hits), "hits_found": len(found),
           "hit_ratio": len(found) / max(1, len(world.hits)), "cost": total,
           "hits_per_100_cost": 100 * len(found) / total if total else 0.0, "spend": spend, "failures": failures,
           "curve": curve, "round_seconds": seconds}
    if isinstance(model, MultiTaskContextGP) and model.model is not None:
        row["task_correlation"] = model.task_correlation().tolist()
    return row


def run_benchmark(space: ContextSpace, screen: ContextScreen, protocol: ContextProtocol, policies: Sequence[str],
                  seeds: int, hits: set[str] | None = None) -> list[dict]:
    """Every policy x seed (seeds 0..seeds-1), rows in that order."""
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown context policy {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    return [run_campaign(space, screen, protocol, p, s, hits) for p in policies for s in range(seeds)]


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Per policy: hits found, hit ratio and hits per 100 cost units (mean, sd over seeds), mean spend per context."""
    out = []
    for p in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == p]
        hf = np.array([r["hits_found"] for r in rs], float)
        hpc = np.array([r["hits_per_100_cost"] for r in rs], float)
        out.append({"policy": p, "seeds": len(rs), "hits_found_mean": float(hf.mean()), "hits_found_sd": float(hf.std()),
                    "hit_ratio_mean": float(np.mean([r["hit_ratio"] for r in rs])),
                    "hits_per_100_cost_mean": float(hpc.mean()), "hits_per_100_cost_sd": float(hpc.std()),
                    "cost_mean": float(np.mean([r["cost"] for r in rs])),
                    "spend_mean": {c: float(np.mean([r["spend"][c] for r in rs])) for c in rs[0]["spend"]},
                    "round_seconds_max": float(max((s for r in rs for s in r["round_seconds"]), default=0.0))})
    return out


def write_results(path, protocol: dict, screen: str, rows: list[dict]):
    """`path` (JSON: protocol, screen, summary, results) and a PNG beside it: hits found in the target against
    cost spent, mean over seeds per policy."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    path.write_text(json.dumps({"protocol": protocol, "screen": screen, "summary": summary, "results": rows}, indent=1))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for p in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == p]
        cost = np.mean([[pt["cost"] for pt in r["curve"]] for r in rs], 0)
        found = np.array([[pt["hits_found"] for pt in r["curve"]] for r in rs], float)
        ax.errorbar(cost, found.mean(0), yerr=found.std(0), marker="o", capsize=3, label=p)
    ax.set(xlabel="cost spent", ylabel=f"hits found in {protocol['target']}",
           title=f"{screen}: budget {protocol['budget']:g}, {protocol['rounds']} rounds, {protocol['seeds']} seeds")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"))
    plt.close(fig)
    return path, path.with_suffix(".png")
