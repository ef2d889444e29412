"""Acquisition policies by config name."""

from __future__ import annotations

from collections.abc import Callable

from acquisition.analytic import GreedyPolicy, UCBPolicy
from acquisition.base import AcquisitionPolicy
from acquisition.qlognei import QLogNEIPolicy
from acquisition.random import RandomPolicy
from perturbloop.errors import ConfigError

POLICIES: dict[str, Callable[..., AcquisitionPolicy]] = {
    "random": RandomPolicy,
    "greedy": GreedyPolicy,
    "ucb": UCBPolicy,
    "qlognei": QLogNEIPolicy,
}


def make_policy(kind: str, **kwargs: object) -> AcquisitionPolicy:
    try:
        factory = POLICIES[kind]
    except KeyError:
        raise ConfigError(f"acquisition.kind: unknown policy {kind!r}; available: {', '.join(POLICIES)}") from None
    return factory(**kwargs)
