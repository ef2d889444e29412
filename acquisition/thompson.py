"""Batch Thompson sampling over a UCB-pre-screened shortlist of the pool.

Each of the `q` picks is the argmax of its own joint posterior draw:

    `f^(j) ~ p(f(X_s) | D)`  (joint over the shortlist `X_s`, `j = 1..q`)
    `x_j = argmax_{x in X_s \\ {x_1..x_{j-1}}} f^(j)(x)`

(Kandasamy et al. 2018, "Parallelised Bayesian optimisation via Thompson sampling"; BoTorch's
`MaxPosteriorSampling` with `replacement=False`.) Batch diversity comes from the posterior:
draws disagree where it is uncertain. Draws are of the latent `f` (no observation noise).

Drawing jointly over all ~19k genes needs a 19k x 19k covariance, so the draws are over the
`max(SHORTLIST_PER_PICK * q, SHORTLIST_MIN)` available candidates with the largest UCB
`mu + 2 sigma`; a candidate outside it has both a low mean and a low sd, so its chance of being
a draw's argmax is negligible. Candidates with identical feature rows (genes without
annotation share one) are one point of the GP: the draw is made over unique rows (a singular
joint covariance otherwise) and each row's value is given to all of its candidates, the first
not yet picked taking it.

The draws use a `torch.Generator` seeded by `(seed, number of measured + pending
perturbations)`, so the same campaign state gives the same batch. A surrogate without a
BoTorch model (`model is None`, e.g. the mean baseline) gives independent draws from its
marginals, `f^(j)(x) = mu(x) + sigma(x) z`. In the first round (no observations) the policy
picks from priors alone (`acquisition.prior`).
"""

from __future__ import annotations

import torch
from linear_operator.utils.cholesky import psd_safe_cholesky

from acquisition.analytic import PosteriorPolicy, ucb
from acquisition.base import ProposedItem, make_items, top_available, seeded_generator

SHORTLIST_PER_PICK = 4
SHORTLIST_MIN = 1000  # a 1000 x 1000 joint covariance: ~0.1 s to build and factor on a CPU


class ThompsonPolicy(PosteriorPolicy):
    """Batch Thompson sampling: pick `j` is the argmax of joint posterior draw `j` (see module docstring).

    `x_j = argmax_{x in X_s \\ {x_1..x_{j-1}}} f^(j)(x)`,  `f^(j) ~ p(f(X_s) | D)`.

    Example:
        >>> ThompsonPolicy(seed=0).select(gp, pool, observed, batch_size=32, pending=[])
    """

    name = "thompson"

    def __init__(self, seed: int = 0, shortlist_per_pick: int = SHORTLIST_PER_PICK,
                 shortlist_min: int = SHORTLIST_MIN, **_: object):
        super().__init__(seed=seed)
        self.shortlist_per_pick = shortlist_per_pick
        self.shortlist_min = shortlist_min

    def pick(self, surrogate, pool, observed, pending, mask, q, post) -> list[ProposedItem]:
        n_avail = int(mask.sum())
        k = min(n_avail, max(q, self.shortlist_per_pick * q, self.shortlist_min))
        short = top_available(ucb(post), mask, k)  # k pool indices
        X_u, inverse = torch.unique(pool.X[short], dim=0, return_inverse=True)  # u x d unique rows; k -> u
        gen = seeded_generator(self.seed, observed, pending)
        z = torch.randn(X_u.shape[0], q, generator=gen, dtype=torch.float64)  # u x q base samples
        model = getattr(surrogate, "model", None)
        if model is None:
            first = torch.full((X_u.shape[0],), k).scatter_reduce_(0, inverse, torch.arange(k), "amin")
            rep = short[first]  # a candidate per row
            draws = post.mean[rep, None] + post.sd[rep, None] * z  # u x q, independent marginals
        else:
            draws = _joint_draws(model, X_u, z)
        draws = draws[inverse]  # k x q: a row's draw shared by its identical candidates
        taken = torch.zeros(k, dtype=torch.bool)
        picks, values = [], []
        for j in range(q):
            col = draws[:, j].masked_fill(taken, float("-inf"))
            best = int(col.argmax())
            taken[best] = True
            picks.append(int(short[best]))
            values.append(float(col[best]))
        return make_items(pool, picks, post.mean, post.sd, torch.tensor(values, dtype=torch.float64), observed,
                          "Thompson draw argmax")


@torch.no_grad()
def _joint_draws(model: torch.nn.Module, X: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """`u x q` joint draws of the latent `f` at `X` (`u x d`): `mu + L z`, `L L^T = Sigma` (+ jitter as needed).

    `z` (`u x q`) are standard normal base samples, drawn by the caller from a seeded generator.
    """
    device = next(model.parameters()).device
    mvn = model.posterior(X.to(device, torch.float64)).distribution
    mean = mvn.mean.reshape(-1)
    cov = mvn.covariance_matrix.reshape(mean.numel(), mean.numel())
    L = psd_safe_cholesky(cov)
    return (mean[:, None] + L @ z.to(L)).cpu()
