"""Surrogates by config name: one registry for every kind of campaign, one protocol.

Each entry names the campaign kind it serves: `screen` (one readout per gene, the `G = 1` case) and
`response` (a response vector over `G` readouts). Every entry is fitted as `fit(X, Y, offset)` with `Y`
`n x G` and answers `posterior(X, offset)` with a posterior that has `scalarise(w)`
(`surrogates.response.ResponseSurrogate`). `gp` and `mean` exist for both: an exact GP and a mean model of
the one readout (`OneReadout`), and a low-rank GP and a mean model of the response.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from perturbloop.config import SurrogateConfig
from perturbloop.design_space import SingleSpace
from perturbloop.errors import ConfigError
from surrogates.base import OneReadout
from surrogates.baselines import MeanSurrogate
from surrogates.gp import GPSurrogate, NetworkSpec
from surrogates.response import EnsembleResponse, LowRankGPResponse
from surrogates.response_baselines import AdditiveResponse, LinearResponse, MeanResponse


class ScreenGP(OneReadout, GPSurrogate):
    """The exact GP of one readout (surrogates.gp) as the `G = 1` response surrogate."""


class ScreenMean(OneReadout, MeanSurrogate):
    """The mean model of one readout (surrogates.baselines) as the `G = 1` response surrogate."""


REGISTRY: dict[tuple[str, str], Callable[..., object]] = {
    ("gp", "screen"): ScreenGP,
    ("mean", "screen"): ScreenMean,
    ("ensemble", "response"): EnsembleResponse,
    ("gp", "response"): LowRankGPResponse,
    ("linear", "response"): LinearResponse,
    ("mean", "response"): MeanResponse,
    ("additive", "response"): AdditiveResponse,
}


def surrogate_names(campaign: str) -> list[str]:
    return [name for name, c in REGISTRY if c == campaign]


def make_surrogate(kind: str, campaign: str = "screen", **kwargs: object):
    """The surrogate `kind` for a `campaign` kind (`screen` | `response`), unfitted."""
    try:
        factory = REGISTRY[(kind, campaign)]
    except KeyError:
        raise ConfigError(f"surrogate.kind: unknown {campaign} surrogate {kind!r}; "
                          f"available: {', '.join(surrogate_names(campaign))}") from None
    return factory(**kwargs)


def network_spec(config: SurrogateConfig, space: SingleSpace,
                 data_dir: str | os.PathLike | None = None) -> NetworkSpec | None:
    """The STRING network kernel's spec for the genes of `space` (`config.network`), or None when it is off."""
    if not config.network:
        return None
    if config.kind != "gp":
        raise ConfigError(f"surrogate.network: the network kernel is a GP kernel; surrogate.kind is {config.kind!r}")
    bounds = torch.stack([space.X.min(0).values, space.X.max(0).values])
    return NetworkSpec.for_space(space.labels, space.X, space.feature_names, bounds, data_dir=data_dir,
                                 kind=config.network_kernel)

