"""Coreset: greedy k-center in feature space, blind to the surrogate (GeneDisco / BioDiscoveryAgent baseline).

Each pick is the available candidate farthest from everything already covered:

    `x_j = argmax_{x available} min_{c in C_j} ||x - c||_2`,  `C_j = observed + pending + {x_1..x_{j-1}}`

(Sener & Savarese 2018, the greedy 2-approximation to k-center). Pending perturbations count as
covered: they will be measured. With nothing observed or pending, the first pick is a seeded
random candidate (seed and campaign state, as `RandomPolicy`). Distances are Euclidean on the
pool's feature rows as built (`pool.X`). Picks keep a running `n` vector of squared
min-distances, updated with one `n x d` pass per pick (`O(q n d)` in all); a duplicate of a
covered row has distance 0 and is picked only once nothing else is left uncovered.
The acquisition value of a pick is its distance to the covered set when it was picked (None for a
random start); it is non-increasing along the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from acquisition.base import Proposal, available_mask, check_batch, make_items
from perturbloop.design_space import SingleSpace
from surrogates.base import Surrogate

CENTER_CHUNK = 1024  # covered rows per cdist call: n x 1024 float64 is ~150 MB on a 19k pool


def min_sq_dist(X: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """`n` squared Euclidean distances from each row of `X` (`n x d`) to its nearest row of `C` (`m x d`)."""
    out = torch.full((X.shape[0],), float("inf"), dtype=X.dtype)
    for start in range(0, C.shape[0], CENTER_CHUNK):
        d2 = torch.cdist(X, C[start:start + CENTER_CHUNK]).min(dim=1).values.square()  # matmul form: ~5x faster
        out = torch.minimum(out, d2)
    return out


class CoresetPolicy:
    """Greedy k-center: each pick maximises its min distance to observed + pending + earlier picks.

    `x_j = argmax_x min_{c in C_j} ||x - c||_2` (see module docstring).

    Example:
        >>> CoresetPolicy(seed=0).select(None, pool, observed, batch_size=32, pending=[])
    """

    name = "coreset"

    def __init__(self, seed: int = 0, **_: object):
        self.seed = seed

    def select(self, surrogate: Surrogate | None, pool: SingleSpace, observed: Mapping[str, float],
               batch_size: int, pending: Sequence[str] = ()) -> Proposal:
        mask = available_mask(pool, observed, pending)
        q = check_batch(batch_size, int(mask.sum()))
        X = pool.X.to(torch.float64)
        covered = [pool.index[lab] for lab in (*observed.keys(), *pending) if lab in pool.index]
        picks: list[int] = []
        dist: list[float] = []
        if covered:
            d2 = min_sq_dist(X, X[covered])
        else:  # nothing covered yet: a seeded random start
            avail = mask.nonzero().squeeze(-1)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + len(observed) + len(pending))
            first = int(avail[torch.randint(avail.numel(), (1,), generator=gen)])
            picks.append(first)
            dist.append(float("nan"))
            mask[first] = False
            d2 = (X - X[first]).square().sum(dim=1)
        while len(picks) < q:
            i = int(d2.masked_fill(~mask, -1.0).argmax())
            picks.append(i)
            dist.append(float(d2[i].sqrt()))
            mask[i] = False
            d2 = torch.minimum(d2, (X - X[i]).square().sum(dim=1))
        mean = sd = None
        if surrogate is not None:
            post = surrogate.posterior(pool.X)
            mean, sd = post.mean, post.sd
        items = make_items(pool, picks, mean, sd, torch.tensor(dist, dtype=torch.float64), observed, "farthest from measured")
        if not covered:
            items[0].acq_value = None
            items[0].rationale = "random start (nothing measured yet)"
        return Proposal(self.name, items)
