"""Surrogates by config name: one registry for every kind of campaign.

Each entry names the campaign kinds it serves: `screen` (one readout per gene, `Y`: `n`) and
`response` (a response vector, `Y`: `n x G`). `gp` and `mean` exist for both: an exact GP and a
mean model of the one readout, and a low-rank GP and a mean model of the response.
"""

from __future__ import annotations

from collections.abc import Callable

from perturbloop.errors import ConfigError
from surrogates.baselines import MeanSurrogate
from surrogates.gp import GPSurrogate
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
