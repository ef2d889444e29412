"""Uniform random picks: the baseline every policy is reported beside (any design space, any campaign)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from acquisition.base import Proposal, check_batch, make_items, predicted, seeded_generator, taken_mask
from perturbloop.design_space import DesignSpace


class RandomPolicy:
    """Draws `batch_size` available candidates uniformly without replacement.

    The draw is seeded by `(seed, number of measured + pending perturbations)`, so the same
    campaign state always gives the same batch, also after a restart.
    """

    name = "random"
    uses_model = False  # the loop fits no surrogate for it

    def __init__(self, seed: int = 0, **_: object):
        self.seed = seed

    def select(self, surrogate, space: DesignSpace, observed: Mapping[str, object], batch_size: int,
               pending: Sequence[str] = ()) -> Proposal:
        avail = (~taken_mask(space, observed, pending)).nonzero().squeeze(-1)
        q = check_batch(batch_size, avail.numel())
        gen = seeded_generator(self.seed, observed, pending)
        picks = avail[torch.randperm(avail.numel(), generator=gen)[:q]].tolist()
        mean, sd = predicted(surrogate, space, picks)
        return Proposal(self.name, make_items(space, picks, mean, sd, None, observed, "random pick", per_pick=True))
