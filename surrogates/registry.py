"""Surrogates by config name: one registry for every kind of campaign.

Each entry names the campaign kinds it serves: `screen` (one readout per gene, `Y`: `n`) and
`response` (a response vector, `Y`: `n x G`). `gp` and `mean` exist for both: an exact GP and a
mean model of the one readout, and a low-rank GP and a mean model of the response.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from perturbloop.config import SurrogateConfig
from perturbloop.design_space import SingleSpace
from perturbloop.errors import ConfigError
from surrogates.baselines import MeanSurrogate
from surrogates.gp import GPSurrogate, NetworkSpec
from surrogates.response import EnsembleResponse, LowRankGPResponse
from surrogates.response_baselines import AdditiveResponse, LinearResponse, MeanResponse

REGISTRY: dict[tuple[str, str], Callable[..., object]] = {
    ("gp", "screen"): GPSurrogate,
    ("mean", "screen"): MeanSurrogate,
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


def screen_surrogate_factory(config: SurrogateConfig, space: SingleSpace,
                             data_dir: str | os.PathLike | None = None) -> Callable[[dict | None], object]:
    """`init_params -> unfitted surrogate` for a pooled screen over `space`: the configured kind with the space's
    feature bounds, and with `config.network` the STRING network kernel (its spec built once, here)."""
    bounds = torch.stack([space.X.min(0).values, space.X.max(0).values])
    network = None
    if config.network:
        if config.kind != "gp":
            raise ConfigError(f"surrogate.network: the network kernel is a GP kernel; surrogate.kind is {config.kind!r}")
        network = NetworkSpec.for_space(space.labels, space.X, space.feature_names, bounds, data_dir=data_dir,
                                        kind=config.network_kernel)

    def make(init_params: dict | None = None):
        return make_surrogate(config.kind, bounds=bounds, max_iter=config.max_iter, init_params=init_params,
                              target_transform=config.target_transform, network=network)

    return make
