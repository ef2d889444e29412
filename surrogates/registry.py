"""Surrogates by config name."""

from __future__ import annotations

from collections.abc import Callable

from perturbloop.errors import ConfigError
from surrogates.baselines import MeanSurrogate
from surrogates.base import Surrogate
from surrogates.gp import GPSurrogate
from surrogates.response import EnsembleResponse, LowRankGPResponse, ResponseSurrogate
from surrogates.response_baselines import AdditiveResponse, LinearResponse, MeanResponse

SURROGATES: dict[str, Callable[..., Surrogate]] = {"gp": GPSurrogate, "mean": MeanSurrogate}


# multi-output (transcriptome response) surrogates: objective learn_response, pair campaigns
RESPONSE_SURROGATES: dict[str, Callable[..., ResponseSurrogate]] = {
    "ensemble": EnsembleResponse, "gp": LowRankGPResponse, "linear": LinearResponse,
    "mean": MeanResponse, "additive": AdditiveResponse,
}


def make_surrogate(kind: str, **kwargs: object) -> Surrogate:
    try:
        factory = SURROGATES[kind]
    except KeyError:
        raise ConfigError(f"surrogate.kind: unknown surrogate {kind!r}; available: {', '.join(SURROGATES)}") from None
    return factory(**kwargs)


def make_response_surrogate(kind: str, **kwargs: object) -> ResponseSurrogate:
    """A `ResponseSurrogate` (surrogates.response) by name: ensemble, gp (low-rank), linear, mean, additive."""
    try:
        factory = RESPONSE_SURROGATES[kind]
    except KeyError:
        raise ConfigError(f"surrogate.kind: unknown response surrogate {kind!r}; "
                          f"available: {', '.join(RESPONSE_SURROGATES)}") from None
    return factory(**kwargs)
