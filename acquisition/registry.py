"""Acquisition policies by config name: one registry for every kind of campaign.

Each policy is registered once, with the campaign kinds it serves: `screen` (one readout per gene,
a screen surrogate) and `response` (a response vector, a response surrogate). `random` and `coreset`
serve both; `diversity` is the response campaigns' name for `coreset` (an alias).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from acquisition.analytic import GreedyPolicy, UCBPolicy
from acquisition.base import AcquisitionPolicy
from acquisition.batch_ucb import BatchUCBPolicy
from acquisition.coreset import CoresetPolicy
from acquisition.prob_hit import ProbHitPolicy
from acquisition.qlognei import QLogNEIPolicy
from acquisition.random import RandomPolicy
from acquisition.response import ProgramPolicy, UncertaintyPolicy
from acquisition.rl import RLPermutedPolicy, RLPolicy
from acquisition.thompson import ThompsonPolicy
from perturbloop.errors import ConfigError

BOTH = ("screen", "response")


@dataclass(frozen=True)
class PolicyEntry:
    factory: Callable[..., AcquisitionPolicy]
    campaigns: tuple[str, ...]


REGISTRY: dict[str, PolicyEntry] = {
    "random": PolicyEntry(RandomPolicy, BOTH),
    "coreset": PolicyEntry(CoresetPolicy, BOTH),
    "greedy": PolicyEntry(GreedyPolicy, ("screen",)),
    "ucb": PolicyEntry(UCBPolicy, ("screen",)),
    "qlognei": PolicyEntry(QLogNEIPolicy, ("screen",)),
    "thompson": PolicyEntry(ThompsonPolicy, ("screen",)),
    "prob_hit": PolicyEntry(ProbHitPolicy, ("screen",)),
    "ucb_batch": PolicyEntry(BatchUCBPolicy, ("screen",)),
    "rl": PolicyEntry(RLPolicy, ("screen",)),  # needs policy_path: a checkpoint from `perturbloop policy train`
    "rl_permuted": PolicyEntry(RLPermutedPolicy, ("screen",)),  # benchmark control: shuffled feedback
    "uncertainty": PolicyEntry(UncertaintyPolicy, ("response",)),
    "program": PolicyEntry(ProgramPolicy, ("response",)),
}
ALIASES = {"diversity": "coreset"}
# screen policy names (the screen benchmark's --policy choices)
POLICIES: dict[str, Callable[..., AcquisitionPolicy]] = {
    name: e.factory for name, e in REGISTRY.items() if "screen" in e.campaigns}


def policy_names(campaign: str) -> list[str]:
    """The policy names (aliases included) a campaign kind can use."""
    names = [n for n, e in REGISTRY.items() if campaign in e.campaigns]
    return names + [a for a, n in ALIASES.items() if n in names]


def make_policy(kind: str, campaign: str = "screen", **kwargs: object) -> AcquisitionPolicy:
    """The policy `kind` (or an alias of it) for a `campaign` kind (`screen` | `response`)."""
    entry = REGISTRY.get(ALIASES.get(kind, kind))
    if entry is None or campaign not in entry.campaigns:
        raise ConfigError(f"acquisition.kind: unknown {campaign} policy {kind!r}; "
                          f"available: {', '.join(policy_names(campaign))}")
    return entry.factory(**kwargs)
