"""Coreset: greedy k-center in feature space, blind to the surrogate (GeneDisco / BioDiscoveryAgent
baseline; `diversity` in response campaigns). One implementation for every design space.

Each pick is the available candidate farthest from everything already covered:

    `x_j = argmax_{x available} min_{c in C_j} ||x - c||_2`,  `C_j = observed + pending + {x_1..x_{j-1}}`

(Sener & Savarese 2018, the greedy 2-approximation to k-center). Pending perturbations count as
covered: they will be measured. With nothing observed or pending, the first pick is a seeded
random candidate (seed and campaign state, as `RandomPolicy`). Distances are Euclidean on standardised
features: single-gene spaces are built standardised (perturbloop.features, perturbloop.design); a pair
space's pooled features are standardised here, over the candidates considered. Spaces with more than
`max_candidates` available candidates run on a seeded random subsample of them. Picks keep a running
vector of squared min-distances, updated with one pass per pick (`O(q n d)` in all); a duplicate of a
covered row has distance 0 and is picked only once nothing else is left uncovered. The acquisition value
of a pick is its distance to the covered set when it was picked (None for a random start); it is
non-increasing along the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from acquisition.base import Proposal, check_batch, make_items, predicted, seeded_generator, taken_mask
from perturbloop.design_space import PAIR_CHUNK, DesignSpace
from surrogates.response import Standardizer

CENTER_CHUNK = 1024  # covered rows per cdist call: n x 1024 float64 is ~150 MB on a 19k pool
MAX_CANDIDATES = 20_000  # k-center on larger spaces runs on a seeded subsample of this size


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
        >>> CoresetPolicy(seed=0).select(None, space, observed, batch_size=32, pending=[])
    """

    name = "coreset"
    uses_model = False  # the loop fits no surrogate for it

    def __init__(self, seed: int = 0, max_candidates: int = MAX_CANDIDATES, chunk: int = PAIR_CHUNK, **_: object):
        self.seed, self.max_candidates, self.chunk = seed, max_candidates, chunk

    def _rows(self, space: DesignSpace, idx: torch.Tensor) -> torch.Tensor:
        if not idx.numel():
            return torch.zeros(0, space.dim, dtype=torch.float64)
        return torch.cat([space.features(i).cpu().to(torch.float64) for i in torch.split(idx, self.chunk)])

    def select(self, surrogate, space: DesignSpace, observed: Mapping[str, object], batch_size: int,
               pending: Sequence[str] = ()) -> Proposal:
        taken = taken_mask(space, observed, pending)
        avail = (~taken).nonzero().squeeze(-1)
        q = check_batch(batch_size, avail.numel())
        gen = seeded_generator(self.seed, observed, pending)
        if avail.numel() > self.max_candidates:
            avail = avail[torch.randperm(avail.numel(), generator=gen)[:self.max_candidates]].sort().values
        X = self._rows(space, avail)
        # pooled pair features share no scale: standardise them (over the candidates considered)
        scale = Standardizer().fit(X) if space.kind == "pairs" and X.shape[0] > 1 else (lambda rows: rows)
        X = scale(X)
        covered = taken.nonzero().squeeze(-1)
        local: list[int] = []
        dist: list[float | None] = []
        if covered.numel():
            d2 = min_sq_dist(X, scale(self._rows(space, covered)))
        else:  # nothing covered yet: a seeded random start
            local, dist = [int(torch.randint(X.shape[0], (1,), generator=gen))], [None]
            d2 = (X - X[local[0]]).square().sum(dim=1)
        free = torch.ones(X.shape[0], dtype=torch.bool)
        free[local] = False
        while len(local) < q:
            i = int(d2.masked_fill(~free, -1.0).argmax())
            local.append(i)
            dist.append(float(d2[i].clamp_min(0).sqrt()))
            free[i] = False
            d2 = torch.minimum(d2, (X - X[i]).square().sum(dim=1))
        picks = avail[local].tolist()
        mean, sdv = predicted(surrogate, space, picks)
        items = make_items(space, picks, mean, sdv, dist, observed, "farthest from measured", per_pick=True)
        if not covered.numel():
            items[0].rationale = "random start (nothing measured yet)"
        return Proposal(self.name, items)
