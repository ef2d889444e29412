"""In-memory simulated response campaigns for evaluation sweeps (no store, no checkpoints).

Screen benchmarks run the shipped LangGraph loop (agent.benchmark); the response benchmark still runs
this loop (kept equal to the graph by a test) until it moves to the graph too.

Response campaigns (`run_campaign`, `campaign_for`): IterPert-style learning curves for singles,
Ahlmann-Eltze-style scoring for pairs.

1. Per seed, a held-out test set (`test_fraction` of the candidates, never run) and `initial`
   random candidates; pair campaigns also measure every single gene first (the additive prior).
2. Round `t = 0..rounds`: fit the surrogate on everything observed, score it on the test set
   (perturbloop.response_metrics), and, for `t < rounds`, let the policy pick `batch_size`
   candidates, which the world then measures. Failed runs are not trained on and not re-proposed.
3. Every round the baselines (`mean`, `linear`; `additive` for pairs) are fitted on the same
   observations and scored beside the model (`<metric>@<baseline>`), so a curve that does not beat
   them shows it. Objective `maximize` adds `hit_ratio` and `best_score`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from agent.response_context import ResponseParts, response_parts
from perturbloop.errors import PerturbloopError
from perturbloop.design_space import DesignSpace
from perturbloop.config import CampaignConfig
from perturbloop.response_metrics import response_metrics
from surrogates.response import fit_on_space, predict_on_space


@dataclass
class CampaignRun:
    policy: str
    seed: int
    metrics: dict[str, list[float]] = field(default_factory=dict)
    round_seconds: list[float] = field(default_factory=list)
    n_observed: list[int] = field(default_factory=list)
    picks: list[list[str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add(self, values: Mapping[str, float], suffix: str = "") -> None:
        for k, v in values.items():
            self.metrics.setdefault(k + suffix, []).append(float(v))

    def row(self) -> dict:
        return {"policy": self.policy, "seed": self.seed, "metrics": self.metrics, "round_seconds": self.round_seconds,
                "n_observed": self.n_observed, "picks": self.picks, "failed": self.failed}


def run_campaign(parts: ResponseParts, *, rounds: int, batch_size: int, seed: int, policy_label: str | None = None,
                 on_round: Callable[[int, dict], None] | None = None) -> CampaignRun:
    """One simulated response campaign (module docstring); the world must be fresh for this campaign."""
    world, space, policy, split, ev = parts.world, parts.space, parts.policy, parts.split, parts.evaluation
    run = CampaignRun(policy_label or policy.name, seed)
    observed: dict[str, np.ndarray] = {}
    failed: list[str] = []

    def measure(labels: Sequence[str]) -> None:
        for lab, v in world.measure(labels).items():
            if v is None:
                failed.append(lab)
            else:
                observed[lab] = v

    measure(split.initial)
    run.picks.append(list(split.initial))
    for t in range(rounds + 1):
        t0 = time.perf_counter()
        model = fit_on_space(parts.make_model(seed * 1000 + t), space, observed) if observed else None
        fit_s = time.perf_counter() - t0
        if model is not None:
            run.add(response_metrics(predict_on_space(model, space, ev.test_idx), ev.truth, de_idx=ev.de,
                                     expressed_idx=ev.expressed, additive=ev.additive))
            for b in parts.baselines:
                bm = fit_on_space(parts.make_baseline(b), space, observed)
                run.add(response_metrics(predict_on_space(bm, space, ev.test_idx), ev.truth, de_idx=ev.de,
                                         expressed_idx=ev.expressed), f"@{b}")
        if ev.hits:
            run.add({"hit_ratio": len(ev.hits & set(observed)) / len(ev.hits),
                     "best_score": max((ev.scores.get(k, -np.inf) for k in observed), default=float("nan"))})
        run.n_observed.append(len(observed))
        if on_round is not None:
            on_round(t, {k: v[-1] for k, v in run.metrics.items()})
        if t == rounds:
            break
        t1 = time.perf_counter()
        proposal = policy.select(model, space, observed, batch_size, [*failed, *split.test])
        run.round_seconds.append(fit_s + time.perf_counter() - t1)
        seen = set(observed) | set(failed) | set(split.test)
        if any(lab in seen for lab in proposal.labels):
            raise PerturbloopError(f"policy {policy.name} re-proposed measured, failed or held-out perturbations")
        run.picks.append(proposal.labels)
        measure(proposal.labels)
    run.failed = failed
    return run


def campaign_for(config: CampaignConfig, policy_kind: str, seed: int, data_dir=None,
                 space: DesignSpace | None = None) -> dict:
    """One (policy, seed) campaign from a config: a fresh world, the seed's split, the results row."""
    threads = int(os.environ.get("PERTURBLOOP_TASK_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    parts = response_parts(config, seed, data_dir, policy_kind=policy_kind, space=space)
    run = run_campaign(parts, rounds=config.rounds, batch_size=config.batch_size, seed=seed, policy_label=policy_kind)
    row = run.row()
    row["n_test"] = len(parts.split.test)
    row["n_candidates"] = len(parts.space)
    return row


def response_sweep(config: CampaignConfig, data_dir=None, *, policies: Sequence[str] | None = None,
                   seeds: int | None = None) -> list[dict]:
    """Every policy x seed in this process, rows in (policy, seed) order (tests, benchmarks/)."""
    policies = list(policies or config.evaluation.policies)
    seeds = seeds or config.evaluation.seeds
    return [campaign_for(config, p, s, data_dir) for p in policies for s in range(seeds)]
