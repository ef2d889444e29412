"""The trained RL policy as an `AcquisitionPolicy`: greedy top-q of the network's scores.

Each round the campaign's own surrogate (refit on everything measured) gives the marginal
posterior over the whole pool; `acquisition.rl.features` turns it, the measured values and
the pool's prior-screen columns into per-candidate state features, and the batch is the `q`
available candidates with the largest network score. Round 1 (no surrogate) is scored from
the prior features alone. The round index is `(measured + pending) // batch_size`, progress
is that over the campaign's planned rounds (`rounds`, default the length it was trained for).

`RLPermutedPolicy` is the permuted-feedback control: the same network, but each round the
measured values are shuffled among the measured genes (a fresh seeded permutation per round)
and the surrogate is refit on the shuffled values before the features are computed, so the
policy sees the marginal distribution of its feedback but not which gene gave which value.
If it does as well as `RLPolicy`, the policy is not using feedback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from acquisition.base import Proposal, check_batch, make_items, seeded_generator, taken_mask, top_available
from acquisition.rl.env import log_target
from acquisition.rl.features import PoolStatic, pool_static, state_features
from acquisition.rl.network import load_policy
from perturbloop.errors import ConfigError
from perturbloop.design_space import SingleSpace
from surrogates.base import Surrogate


class RLPolicy:
    """A policy network trained by REINFORCE on simulated campaigns; greedy top-q at deployment.

    Example:
        >>> RLPolicy(policy_path="policy.pt").select(gp, pool, observed, batch_size=128, pending=[])
    """

    name = "rl"
    permute_feedback = False

    def __init__(self, policy_path: str | Path | None = None, seed: int = 0, rounds: int | None = None, **_: object):
        if not policy_path:
            raise ConfigError("acquisition.kind = 'rl' needs acquisition.policy_path "
                              "(a checkpoint from `perturbloop policy train`)")
        self.net, self.config = load_policy(policy_path)
        self.rounds = int(rounds or self.config.rounds)
        self.seed = seed
        self._static: tuple[int, int, PoolStatic] | None = None

    def _pool_static(self, pool: SingleSpace) -> PoolStatic:
        key = (id(pool.X), len(pool))
        if self._static is None or self._static[:2] != key:
            self._static = (*key, pool_static(pool.X, pool.feature_names))
        return self._static[2]

    @torch.no_grad()
    def select(self, surrogate: Surrogate | None, pool: SingleSpace, observed: Mapping[str, float],
               batch_size: int, pending: Sequence[str] = ()) -> Proposal:
        mask = ~taken_mask(pool, observed, pending)
        q = check_batch(batch_size, int(mask.sum()))
        labels = [lab for lab in observed if lab in pool.index]
        obs_idx = pool.indices(labels)
        y = torch.tensor([float(observed[lab]) for lab in labels], dtype=torch.float64)
        if self.permute_feedback and y.numel() > 1:
            y = y[torch.randperm(y.numel(), generator=seeded_generator(self.seed, observed, pending))]
            if surrogate is not None:
                with torch.enable_grad():  # hyperparameter fit
                    surrogate.fit(pool.X[obs_idx], y)
        post = None if surrogate is None else surrogate.posterior(pool.X)
        mean, sd = (None, None) if post is None else (post.mean, post.sd)
        if getattr(surrogate, "target_transform", "none") == "log" and y.numel():
            y = log_target(y)  # the scale the surrogate's posterior is on
        t = (len(observed) + len(pending)) // max(1, batch_size)
        feats = state_features(self._pool_static(pool), mask, obs_idx, y, mean, sd,
                               progress=min(t, self.rounds) / self.rounds, last_round=t >= self.rounds - 1)
        scores = self.net(feats).double()
        picks = top_available(scores, mask, q).tolist()
        note = "RL policy score" + (" (permuted feedback)" if self.permute_feedback else "")
        return Proposal(self.name, make_items(pool, picks, mean, sd, scores[picks], observed, note))

class RLPermutedPolicy(RLPolicy):
    """Permuted-feedback control of `RLPolicy` (see module docstring)."""

    name = "rl_permuted"
    permute_feedback = True
