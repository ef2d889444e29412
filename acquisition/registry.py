"""Acquisition policies by config name."""

from __future__ import annotations

from collections.abc import Callable

from acquisition.analytic import GreedyPolicy, UCBPolicy
from acquisition.base import AcquisitionPolicy
from acquisition.batch_ucb import BatchUCBPolicy
from acquisition.coreset import CoresetPolicy
from acquisition.prob_hit import ProbHitPolicy
from acquisition.qlognei import QLogNEIPolicy
from acquisition.random import RandomPolicy
from acquisition.rl import RLPermutedPolicy, RLPolicy
from acquisition.thompson import ThompsonPolicy
from perturbloop.errors import ConfigError

POLICIES: dict[str, Callable[..., AcquisitionPolicy]] = {
    "random": RandomPolicy,
    "greedy": GreedyPolicy,
    "ucb": UCBPolicy,
    "qlognei": QLogNEIPolicy,
    "thompson": ThompsonPolicy,
    "prob_hit": ProbHitPolicy,
    "coreset": CoresetPolicy,
    "ucb_batch": BatchUCBPolicy,
    "rl": RLPolicy,  # needs policy_path: a checkpoint from `perturbloop policy train`
    "rl_permuted": RLPermutedPolicy,  # benchmark control: the RL policy with shuffled feedback
}


def make_policy(kind: str, **kwargs: object) -> AcquisitionPolicy:
    try:
        factory = POLICIES[kind]
    except KeyError:
        raise ConfigError(f"acquisition.kind: unknown policy {kind!r}; available: {', '.join(POLICIES)}") from None
    return factory(**kwargs)
