"""Probability of being a hit: the posterior mass above a pool-wide hit threshold.

    `PH(x) = Phi((mu(x) - tau) / sigma(x))`

with `tau` the `(1 - hit_fraction)` quantile of the posterior mean over the whole pool (the
score a candidate must beat to be among the top `hit_fraction` of genes as the model sees
them now), unless a fixed `tau` is given (on the surrogate's scale: with
`target_transform="log"` that is `log(y + median(y))`). `Phi` is the standard normal CDF.
This is BoTorch's `ProbabilityOfImprovement` with `best_f = tau`. The batch is the top `q`
available candidates (ranked by the z-score `(mu - tau) / sigma`, which orders them as `PH`
does without ties where `PH` rounds to 0 or 1). In the first round (no observations) the
policy picks from priors alone (`acquisition.prior`).
"""

from __future__ import annotations

import torch

from acquisition.analytic import PosteriorPolicy
from acquisition.base import ProposedItem, make_items, top_available
from surrogates.base import SurrogatePosterior

HIT_FRACTION = 0.05  # the top 5% of a genome-wide screen: the usual size of a hit list
MIN_SD = 1e-12  # a zero posterior sd (a noiseless duplicate) must not divide by zero


class ProbHitPolicy(PosteriorPolicy):
    """Probability that a perturbation is a hit.

    `PH(x) = Phi((mu(x) - tau) / sigma(x))` under the surrogate posterior, `tau` the
    `(1 - hit_fraction)` quantile of `mu` over the pool (or fixed); top-q.

    Example:
        >>> ProbHitPolicy(hit_fraction=0.05).select(gp, pool, observed, batch_size=32, pending=[])
    """

    name = "prob_hit"

    def __init__(self, hit_fraction: float = HIT_FRACTION, tau: float | None = None, seed: int = 0, **_: object):
        if not 0.0 < hit_fraction < 1.0:
            raise ValueError(f"hit_fraction must be in (0, 1), got {hit_fraction}")
        super().__init__(seed=seed)
        self.hit_fraction = hit_fraction
        self.tau = tau

    def threshold(self, post: SurrogatePosterior) -> float:
        """`tau`: fixed, or the `(1 - hit_fraction)` quantile of the posterior mean over the pool."""
        if self.tau is not None:
            return float(self.tau)
        return float(torch.quantile(post.mean, 1.0 - self.hit_fraction))

    def pick(self, surrogate, pool, observed, pending, mask, q, post) -> list[ProposedItem]:
        tau = self.threshold(post)
        z = (post.mean - tau) / post.sd.clamp_min(MIN_SD)  # `n` z-scores: PH = Phi(z)
        picks = top_available(z, mask, q).tolist()
        return make_items(pool, picks, post.mean, post.sd, torch.special.ndtr(z[picks]), observed,
                          f"P(hit), tau={tau:.3g}")
