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

from acquisition.base import Proposal, ProposedItem, check_batch, make_items, taken_mask, top_available
from acquisition.prior import PriorScorePolicy
from perturbloop.design_space import SingleSpace
from surrogates.base import Surrogate, SurrogatePosterior

UCB_BETA = 4.0  # sqrt(beta) = 2 posterior sd


def ucb(post: SurrogatePosterior, beta: float = UCB_BETA) -> torch.Tensor:
    """`mu + sqrt(beta) sigma` (BoTorch `UpperConfidenceBound`, maximize=True)."""
    return post.mean + beta**0.5 * post.sd


class PosteriorPolicy:
    """Base of the screen policies: round 1 (no surrogate) from priors alone (`acquisition.prior`), then
    `pick(surrogate, pool, observed, pending, mask, q, post)` on the availability mask, the capped batch size and the
    marginal posterior over the pool; by default the top `q` available by `score(post)`."""

    name = "posterior"
    needs_model = False  # True: a surrogate without a BoTorch `model` (a baseline) also gets the round-1 picks

    def __init__(self, seed: int = 0, **_: object):
        self.seed = seed
        self.initial = PriorScorePolicy(seed=seed)

    def score(self, post: SurrogatePosterior) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__}.score")

    def pick(self, surrogate: Surrogate, pool: SingleSpace, observed: Mapping[str, float], pending: Sequence[str],
             mask: torch.Tensor, q: int, post: SurrogatePosterior) -> list[ProposedItem]:
        acq = self.score(post)
        picks = top_available(acq, mask, q).tolist()
        return make_items(pool, picks, post.mean, post.sd, acq[picks], observed, self.name)

    def select(self, surrogate: Surrogate | None, pool: SingleSpace, observed: Mapping[str, float],
               batch_size: int, pending: Sequence[str] = ()) -> Proposal:
        if surrogate is None or (self.needs_model and getattr(surrogate, "model", None) is None):
            return Proposal(self.name, self.initial.select(surrogate, pool, observed, batch_size, pending).items)
        mask = ~taken_mask(pool, observed, pending)
        q = check_batch(batch_size, int(mask.sum()))
        return Proposal(self.name, self.pick(surrogate, pool, observed, pending, mask, q, surrogate.posterior(pool.X)))


class UCBPolicy(PosteriorPolicy):
    """Upper confidence bound `mu + sqrt(beta) sigma`, top-q."""

    name = "ucb"

    def __init__(self, beta: float = UCB_BETA, seed: int = 0, **_: object):
        super().__init__(seed=seed)
        self.beta = beta

    def score(self, post: SurrogatePosterior) -> torch.Tensor:
        return ucb(post, self.beta)


class GreedyPolicy(PosteriorPolicy):
    """Posterior mean, top-q: pure exploitation."""

    name = "greedy"

    def score(self, post: SurrogatePosterior) -> torch.Tensor:
        return post.mean.clone()
