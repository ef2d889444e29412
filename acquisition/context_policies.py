"""Policies of a campaign across contexts: which (gene, context) pairs a round buys with its cost units.

Every policy answers `picks(post, space, measured, budget, *, observed, round_index, rng, rounds_left)`: `post` is
the model's joint posterior of every gene over the contexts (None for a model-free policy), `measured` the `G x C`
pairs measured, pending or excluded, `budget` the cost units of this round, `rounds_left` the rounds including this
one (the last round measures the target only: a screen could not be followed up).

* `cost_aware`: expected target hits per unit cost (`acquisition.cost_aware.CostAwareHitPolicy`) over the allowed
  contexts, its posterior draw seeded by the round's `rng`.
* `random`: random genes in the target context (the baseline); random pairs in the allowed contexts when a round
  may not use the target.
* `cheap_first`: the "K562 first, then T cells" heuristic: the first `max(1, R // 2)` of the `R` policy rounds buy
  random genes in the cheapest allowed other context; later rounds measure in the target the genes with the
  largest |value| measured there, then random target genes with what is left.

Learning the gene x context matrix (goal `matrix`) and finding context-specific genes (goal `specific`):

* `variance`: the free pairs of largest posterior variance per unit cost (`acquisition.cost_aware.
  variance_per_cost_picks`); `random_pairs`: random free pairs, one context per gene (its baseline).
* `specific`: expected new evidence of context specificity per unit cost (`acquisition.cost_aware.
  specificity_picks`, posterior draws seeded by the round); `random_genes`: random genes measured in every context
  still free for them (its baseline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

import torch

from acquisition.cost_aware import (ContextPick, CostAwareHitPolicy, random_gene_picks, random_pair_picks,
                                    random_target_picks, specificity_picks, variance_per_cost_picks)
from perturbloop.contexts import ContextSpace, split_label
from surrogates.multitask import ContextPosterior


class RandomContextPolicy:
    """Random target genes, or, when the round may not use the target (`allowed` without it), random free pairs in
    the allowed contexts (one context per gene), while their costs fit `budget`."""

    name = "random"
    uses_model = False

    def __init__(self, target: str, *, allowed: Sequence[str] | None = None):
        self.target = target
        self.allowed = list(allowed) if allowed else None

    def picks(self, post: ContextPosterior | None, space: ContextSpace, measured: np.ndarray, budget: float, *,
              observed: Mapping[str, float], round_index: int, rng: np.random.Generator,
              rounds_left: int | None = None) -> list[ContextPick]:
        if self.allowed is None or self.target in self.allowed:
            return random_target_picks(space, measured, budget, self.target, rng)
        barred = np.ones(len(space.contexts), dtype=bool)
        barred[space.check_allowed(self.allowed)] = False
        return random_pair_picks(space, measured | barred[None, :], budget, rng)


class CostAwareContextPolicy(RandomContextPolicy):
    name = "cost_aware"
    uses_model = True

    def __init__(self, target: str, *, hit_fraction: float, allowed: Sequence[str] | None = None):
        super().__init__(target, allowed=allowed)
        self.policy = CostAwareHitPolicy(target, hit_fraction=hit_fraction)

    def picks(self, post: ContextPosterior | None, space: ContextSpace, measured: np.ndarray, budget: float, *,
              observed: Mapping[str, float], round_index: int, rng: np.random.Generator,
              rounds_left: int | None = None) -> list[ContextPick]:
        if post is None:  # fewer than two different values measured: nothing to rank by yet
            return super().picks(post, space, measured, budget, observed=observed, round_index=round_index, rng=rng)
        # the Thompson draw seeded by the round's `rng` (campaign seed, round): every seed of a benchmark draws anew,
        # and a resumed campaign draws as an uninterrupted one
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return self.policy.select(post, space, measured, budget, allowed=self.allowed, rounds_left=rounds_left,
                                  generator=generator)


class CheapFirstPolicy(RandomContextPolicy):
    """The cheapest allowed other context first, then the target on the strongest genes there (module docstring)."""

    name = "cheap_first"

    def __init__(self, target: str, rounds: int, *, first_round: int = 1, allowed: Sequence[str] | None = None):
        super().__init__(target, allowed=allowed)
        self.first_round = first_round  # the round index of the first policy round (1 after an initial design)
        self.cheap_rounds = max(1, rounds // 2)

    def picks(self, post: ContextPosterior | None, space: ContextSpace, measured: np.ndarray, budget: float, *,
              observed: Mapping[str, float], round_index: int, rng: np.random.Generator,
              rounds_left: int | None = None) -> list[ContextPick]:
        t = space.context_index(self.target)
        others = [c for c in space.check_allowed(self.allowed) if c != t]
        if not others:
            raise ValueError(f"cheap_first needs an allowed context besides the target {self.target!r}")
        c = min(others, key=lambda c: space.costs[c])
        costs = space.costs
        if round_index - self.first_round < self.cheap_rounds:
            free = np.flatnonzero(space.offered[:, c] & ~measured[:, c] & space.offered[:, t] & ~measured[:, t])
            n = min(len(free), int(budget // costs[c]))
            return [ContextPick.at(space, g, c) for g in (rng.choice(free, size=n, replace=False) if n else [])]
        strength: dict[int, float] = {}
        for lab, v in observed.items():
            gene, ctx = split_label(lab)
            if ctx == space.contexts[c].name:
                strength[space.gene_index(gene)] = abs(float(v))
        ranked = [g for g in sorted(strength, key=lambda g: -strength[g]) if space.offered[g, t] and not measured[g, t]]
        n = min(len(ranked), int(budget // costs[t]))
        taken = measured.copy()
        taken[ranked[:n], t] = True
        out = [ContextPick.at(space, g, t) for g in ranked[:n]]
        if budget - n * costs[t] >= costs[t]:
            out += random_target_picks(space, taken, budget - n * costs[t], self.target, rng)
        return out


def _variance(post: ContextPosterior | None, space: ContextSpace, measured: np.ndarray, budget: float,
              rng: np.random.Generator) -> list[ContextPick]:
    """Largest posterior variance per unit cost, `Sigma_gc,gc / kappa_c` (random pairs before a model exists)."""
    if post is None:
        return random_pair_picks(space, measured, budget, rng)
    return variance_per_cost_picks(post, space, measured, budget)


def _specific(post: ContextPosterior | None, space: ContextSpace, measured: np.ndarray, budget: float,
              rng: np.random.Generator) -> list[ContextPick]:
    """Expected new evidence of context specificity per unit cost, posterior draws seeded from `rng` (random whole
    genes before a model exists)."""
    if post is None:
        return random_gene_picks(space, measured, budget, rng)
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return specificity_picks(post, space, measured, budget, generator=generator)


# goal policies: name -> (uses a model, picks(post, space, measured, budget, rng))
GOAL_POLICIES = {"variance": (True, _variance),
                 "random_pairs": (False, lambda post, space, measured, budget, rng:
                                  random_pair_picks(space, measured, budget, rng)),
                 "specific": (True, _specific),
                 "random_genes": (False, lambda post, space, measured, budget, rng:
                                  random_gene_picks(space, measured, budget, rng))}


class GoalPolicy:
    """A policy of goal `matrix` or `specific` (module docstring), by name."""

    def __init__(self, kind: str):
        if kind not in GOAL_POLICIES:
            raise ValueError(f"unknown goal policy {kind!r}; choose from {', '.join(GOAL_POLICIES)}")
        self.name = kind
        self.uses_model, self._picks = GOAL_POLICIES[kind]

    def picks(self, post: ContextPosterior | None, space: ContextSpace, measured: np.ndarray, budget: float, *,
              observed: Mapping[str, float], round_index: int, rng: np.random.Generator,
              rounds_left: int | None = None) -> list[ContextPick]:
        return self._picks(post, space, measured, budget, rng)
