"""Batch qLogNEI (BoTorch `qLogNoisyExpectedImprovement`) over a shortlist of the pool.

`optimize_acqf_discrete` builds the batch by sequential greedy selection, each step scoring
the remaining choices jointly with the already-chosen ones (`X_pending`). Scoring all ~19k
genes jointly at every one of `q` steps takes minutes, so the choices are pre-screened to the
`shortlist` best candidates by analytic UCB (the candidates outside it have both low mean and
low uncertainty, so their joint qLogNEI contribution is negligible).
"""

from __future__ import annotations

import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.optim import optimize_acqf_discrete
from botorch.sampling import SobolQMCNormalSampler

from acquisition.analytic import PosteriorPolicy, ucb
from acquisition.base import ProposedItem, make_items, top_available

SHORTLIST_PER_PICK = 4  # shortlist = 4 x batch size
MC_SAMPLES = 128


class QLogNEIPolicy(PosteriorPolicy):
    """Sequential-greedy batch qLogNEI on a UCB-pre-screened shortlist (see module docstring)."""

    name = "qlognei"
    needs_model = True  # no BoTorch model (a baseline): the round-1 picks

    def __init__(self, seed: int = 0, shortlist_per_pick: int = SHORTLIST_PER_PICK, mc_samples: int = MC_SAMPLES,
                 **_: object):
        super().__init__(seed=seed)
        self.shortlist_per_pick = shortlist_per_pick
        self.mc_samples = mc_samples

    def pick(self, surrogate, pool, observed, pending, mask, q, post) -> list[ProposedItem]:
        model = surrogate.model
        device = next(model.parameters()).device
        k = min(int(mask.sum()), max(q, self.shortlist_per_pick * q))
        short = top_available(ucb(post), mask, k)
        X_obs = pool.X[pool.indices(list(observed))].to(device, torch.float64)
        acqf = qLogNoisyExpectedImprovement(
            model, X_baseline=X_obs, prune_baseline=True,
            sampler=SobolQMCNormalSampler(torch.Size([self.mc_samples]), seed=self.seed),
        )
        choices = pool.X[short].to(device, torch.float64)
        cand, values = optimize_acqf_discrete(acqf, q=q, choices=choices, unique=True)
        picks = _match_rows(cand.cpu(), pool.X[short], short)
        return make_items(pool, picks, post.mean, post.sd, values.reshape(-1).cpu(), observed, "qLogNEI")


def _match_rows(chosen: torch.Tensor, choices: torch.Tensor, index: torch.Tensor) -> list[int]:
    """Pool indices of the `chosen` rows; identical feature rows (e.g. genes without annotation)
    are matched to distinct candidates, in order."""
    used: list[int] = []
    for row in torch.cdist(chosen, choices):
        used.append(next(j for j in row.argsort().tolist() if j not in used))
    return index[used].tolist()
