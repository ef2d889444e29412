"""Uniform random picks: the baseline every policy is reported beside."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from acquisition.base import Proposal, available_mask, check_batch, make_items
from perturbloop.design_space import SingleSpace
from surrogates.base import Surrogate


class RandomPolicy:
    """Draws `batch_size` available candidates uniformly without replacement.

    The draw is seeded by `(seed, number of measured + pending perturbations)`, so the same
    campaign state always gives the same batch, also after a restart.
    """

    name = "random"

    def __init__(self, seed: int = 0, **_: object):
        self.seed = seed

    def select(self, surrogate: Surrogate | None, pool: SingleSpace, observed: Mapping[str, float],
               batch_size: int, pending: Sequence[str] = ()) -> Proposal:
        avail = available_mask(pool, observed, pending).nonzero().squeeze(-1)
        q = check_batch(batch_size, avail.numel())
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + len(observed) + len(pending))
        picks = avail[torch.randperm(avail.numel(), generator=gen)[:q]].tolist()
        mean = sd = None
        if surrogate is not None:
            post = surrogate.posterior(pool.X)
            mean, sd = post.mean, post.sd
        return Proposal(self.name, make_items(pool, picks, mean, sd, None, observed, "random pick"))
