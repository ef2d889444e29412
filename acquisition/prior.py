"""Round-1 picks from prior knowledge alone (no observation of the target screen yet).

In order:
1. The scientist's prior (`design.phenotype`, `prior_terms`, `known_positives`;
   `perturbloop.phenotype_prior`), carried by the pool as `pool.phenotype_prior`: the batch is the top `q`
   by `p(g)`, each pick's rationale naming its matching terms; with `design.prior_share = s < 1`, the top
   `round(s q)` and the rest drawn at random (seeded), so the model's first fit also sees ordinary genes.
2. Prior-screen features in the pool: a gene's prior score is its mean |z| over the other screens,
   `s(g) = mean_k |z_k(g)|`: genes that scored strongly elsewhere (pleiotropic regulators) are likelier
   hits. The batch is the top `q`.
3. Otherwise random picks.

A warning of the scientist's prior (a phenotype that matches no term) is carried into every pick's rationale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from acquisition.base import Proposal, check_batch, make_items, taken_mask, top_available
from acquisition.random import RandomPolicy
from perturbloop.design_space import SingleSpace
from surrogates.base import Surrogate


class PriorScorePolicy:
    """Top-q by the scientist's prior, else by mean |z| over prior screens, else random (module docstring)."""

    name = "prior"

    def __init__(self, seed: int = 0, **_: object):
        self.fallback = RandomPolicy(seed=seed)

    @staticmethod
    def columns(pool: SingleSpace) -> list[int]:
        return [i for i, n in enumerate(pool.feature_names) if n.endswith("_absz")]

    def select(self, surrogate: Surrogate | None, pool: SingleSpace, observed: Mapping[str, float],
               batch_size: int, pending: Sequence[str] = ()) -> Proposal:
        prior = getattr(pool, "phenotype_prior", None)
        if prior is not None and prior.genes != pool.labels:
            prior = None  # a pool rebuilt without its prior's genes: the prior does not describe it
        notes = [f"warning: {w}" for w in (prior.warnings if prior is not None else [])]
        from_prior = prior is not None and prior.informative
        cols = self.columns(pool)
        if from_prior:
            score = torch.from_numpy(prior.score)
        elif cols:
            score = pool.X[:, cols].mean(dim=1)
        else:
            return _with_notes(self.fallback.select(surrogate, pool, observed, batch_size, pending), notes)
        mask = ~taken_mask(pool, observed, pending)
        q = check_batch(batch_size, int(mask.sum()))
        k = max(1, round(prior.round1_share * q)) if from_prior else q
        picks = top_available(score, mask, k).tolist()
        items = make_items(pool, picks, None, None, score[picks], observed, "strong in prior screens")
        if from_prior:
            for item in items:
                item.rationale = prior.rationale(item.perturbation)
        if k < q:  # design.prior_share < 1: the rest of the batch at random
            items += self.fallback.select(None, pool, observed, q - k, [*pending, *pool.labels_at(picks)]).items
        return _with_notes(Proposal(self.name, items), notes)


def _with_notes(proposal: Proposal, notes: list[str]) -> Proposal:
    for item in proposal.items:  # the notes first, then the pick's own rationale
        item.rationale = "; ".join([*notes, item.rationale] if item.rationale else notes)
    return proposal
