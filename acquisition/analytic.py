"""Analytic acquisitions scored over the whole discrete pool: greedy (posterior mean) and UCB.

Both are functions of the marginal posterior only, so they are computed from one chunked
posterior pass over the pool (`surrogate.posterior`), which is ~50x faster on a 19k pool than
evaluating BoTorch's analytic acquisition modules on `n x 1 x d` t-batches; the formulas are
BoTorch's (`UpperConfidenceBound`, `PosteriorMean`). The batch is the top `q` available
candidates. In the first round (no observations) the policy picks from priors alone
(`acquisition.prior`: prior-screen signal, else random).

UCB:    `alpha(x) = mu(x) + sqrt(beta) * sigma(x)`
Greedy: `alpha(x) = mu(x)`
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from acquisition.base import Proposal, make_items, pool_posterior
from acquisition.prior import PriorScorePolicy
from perturbloop.design_space import SingleSpace
from surrogates.base import Surrogate, SurrogatePosterior

UCB_BETA = 4.0  # sqrt(beta) = 2 posterior sd


def ucb(post: SurrogatePosterior, beta: float = UCB_BETA) -> torch.Tensor:
    """`mu + sqrt(beta) sigma` (BoTorch `UpperConfidenceBound`, maximize=True)."""
    return post.mean + beta**0.5 * post.sd


class _AnalyticTopQ:
    name = "analytic"

    def __init__(self, seed: int = 0, **_: object):
        self.initial = PriorScorePolicy(seed=seed)

    def score(self, post: SurrogatePosterior) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError(type(self).__name__)

    def select(self, surrogate: Surrogate | None, pool: SingleSpace, observed: Mapping[str, float],
               batch_size: int, pending: Sequence[str] = ()) -> Proposal:
        if surrogate is None:
            return Proposal(self.name, self.initial.select(None, pool, observed, batch_size, pending).items)
        mask, q, post = pool_posterior(surrogate, pool, observed, batch_size, pending)
        acq = self.score(post)
        picks = acq.masked_fill(~mask, float("-inf")).topk(q).indices.tolist()
        return Proposal(self.name, make_items(pool, picks, post.mean, post.sd, acq[picks], observed, self.name))


class UCBPolicy(_AnalyticTopQ):
    """Upper confidence bound `mu + sqrt(beta) sigma`, top-q."""

    name = "ucb"

    def __init__(self, beta: float = UCB_BETA, seed: int = 0, **_: object):
        super().__init__(seed=seed)
        self.beta = beta

    def score(self, post: SurrogatePosterior) -> torch.Tensor:
        return ucb(post, self.beta)


class GreedyPolicy(_AnalyticTopQ):
    """Posterior mean, top-q: pure exploitation."""

    name = "greedy"

    def score(self, post: SurrogatePosterior) -> torch.Tensor:
        return post.mean.clone()
