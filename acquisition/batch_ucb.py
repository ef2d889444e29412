"""Batch-aware UCB: sequential greedy UCB whose exploration bonus is locally penalised around each pick.

Top-q UCB spends a batch on near-duplicates: neighbours of an uncertain, promising gene all
have a large bonus, but measuring one of them already removes most of the uncertainty of the
others. Here the picks are made one at a time; after pick `x_j` the bonus of every candidate
`x` is discounted by the feature-space similarity `k(x, x_j)`:

    `alpha_t(x) = mu(x) + sqrt(beta) sigma(x) prod_{j < t} (1 - lam k(x, x_j))`
    `k(x, x') = exp(-||x - x'||^2 / (2 l^2))`,  `x_t = argmax_{x not picked} alpha_t(x)`

For a single earlier pick this is the subtractive local penalty
`alpha(x) - lam sqrt(beta) sigma(x) k(x, x_j)`: the expected fall of `x`'s UCB once `x_j` is
measured (its posterior sd shrinks, its mean is unchanged in expectation), as in GP-BUCB
(Desautels et al. 2014), with the RBF `k` standing in for the posterior correlation. With
`lam = 1` a duplicate of a pick (identical feature row, `k = 1`) keeps only its mean; the
product keeps the bonus non-negative however many picks are near. With `beta = 0` there is
no bonus to penalise and the policy is greedy.

The length-scale `l` is the median distance from each shortlist candidate to its nearest
distinct neighbour in the shortlist (the scale at which candidates are "near"). The work is
on a shortlist, the `SHORTLIST_PER_PICK * q` available candidates with the largest UCB: a
discount only lowers scores, so a candidate outside it can only be picked in place of a
penalised one. In the first round (no observations) the policy picks from priors alone
(`acquisition.prior`).
"""

from __future__ import annotations

import torch

from acquisition.analytic import UCB_BETA, PosteriorPolicy
from acquisition.base import ProposedItem, make_items, top_available

SHORTLIST_PER_PICK = 4
PENALTY = 1.0  # lam: a duplicate of a pick loses its whole exploration bonus


def nn_length_scale(X: torch.Tensor) -> float:
    """Median nearest-distinct-neighbour distance among the rows of `X` (`k x d`); 1 if all rows are equal."""
    d = torch.cdist(X, X, compute_mode="donot_use_mm_for_euclid_dist")
    d = d.masked_fill(d <= 1e-12, float("inf"))  # self and identical rows
    nn = d.min(dim=1).values
    nn = nn[torch.isfinite(nn)]
    return float(nn.median()) if nn.numel() else 1.0


class BatchUCBPolicy(PosteriorPolicy):
    """UCB with a local penalty on the exploration bonus around earlier picks (see module docstring).

    `alpha_t(x) = mu(x) + sqrt(beta) sigma(x) prod_{j < t} (1 - lam exp(-||x - x_j||^2 / (2 l^2)))`

    Example:
        >>> BatchUCBPolicy(beta=4.0).select(gp, pool, observed, batch_size=32, pending=[])
    """

    name = "ucb_batch"

    def __init__(self, beta: float = UCB_BETA, penalty: float = PENALTY, seed: int = 0,
                 shortlist_per_pick: int = SHORTLIST_PER_PICK, **_: object):
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0.0 <= penalty <= 1.0:
            raise ValueError(f"penalty must be in [0, 1], got {penalty}")
        super().__init__(seed=seed)
        self.beta = beta
        self.penalty = penalty
        self.shortlist_per_pick = shortlist_per_pick

    def pick(self, surrogate, pool, observed, pending, mask, q, post) -> list[ProposedItem]:
        bonus_all = self.beta**0.5 * post.sd
        k = min(int(mask.sum()), max(q, self.shortlist_per_pick * q))
        short = top_available(post.mean + bonus_all, mask, k)  # k pool indices
        X = pool.X[short].to(torch.float64)
        mu, bonus = post.mean[short], bonus_all[short].clone()
        ell = nn_length_scale(X)
        taken = torch.zeros(k, dtype=torch.bool)
        picks, values = [], []
        for _ in range(q):
            score = (mu + bonus).masked_fill(taken, float("-inf"))
            best = int(score.argmax())
            taken[best] = True
            picks.append(int(short[best]))
            values.append(float(score[best]))
            sim = torch.exp(-(X - X[best]).square().sum(dim=1) / (2 * ell**2))
            bonus = bonus * (1 - self.penalty * sim)
        return make_items(pool, picks, post.mean, post.sd, torch.tensor(values, dtype=torch.float64), observed,
                          f"UCB, penalised near earlier picks (l={ell:.3g})")
