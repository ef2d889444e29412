"""Round-1 picks from prior knowledge alone (no observation of the target screen yet).

With prior-screen features in the pool, a gene's prior score is its mean |z| over the other
screens, `s(g) = mean_k |z_k(g)|`: genes that scored strongly elsewhere (pleiotropic
regulators) are likelier hits. The batch is the top `q`. Without such features, random picks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from acquisition.base import Proposal, available_mask, check_batch, make_items
from acquisition.random import RandomPolicy
from perturbloop.design_space import SingleSpace
from surrogates.base import Surrogate


class PriorScorePolicy:
    """Top-q by mean |z| over prior screens (see module docstring); random without them."""

    name = "prior"

    def __init__(self, seed: int = 0, **_: object):
        self.fallback = RandomPolicy(seed=seed)

    @staticmethod
    def columns(pool: SingleSpace) -> list[int]:
        return [i for i, n in enumerate(pool.feature_names) if n.endswith("_absz")]

    def select(self, surrogate: Surrogate | None, pool: SingleSpace, observed: Mapping[str, float],
               batch_size: int, pending: Sequence[str] = ()) -> Proposal:
        cols = self.columns(pool)
        if not cols:
            return self.fallback.select(surrogate, pool, observed, batch_size, pending)
        mask = available_mask(pool, observed, pending)
        q = check_batch(batch_size, int(mask.sum()))
        score = pool.X[:, cols].mean(dim=1)
        picks = score.masked_fill(~mask, float("-inf")).topk(q).indices.tolist()
        return Proposal(self.name, make_items(pool, picks, None, None, score[picks], observed, "strong in prior screens"))
