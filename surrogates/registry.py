"""Surrogates by config name."""

from __future__ import annotations

from collections.abc import Callable

from perturbloop.errors import ConfigError
from surrogates.baselines import MeanSurrogate
from surrogates.base import Surrogate
from surrogates.gp import GPSurrogate

SURROGATES: dict[str, Callable[..., Surrogate]] = {"gp": GPSurrogate, "mean": MeanSurrogate}


def make_surrogate(kind: str, **kwargs: object) -> Surrogate:
    try:
        factory = SURROGATES[kind]
    except KeyError:
        raise ConfigError(f"surrogate.kind: unknown surrogate {kind!r}; available: {', '.join(SURROGATES)}") from None
    return factory(**kwargs)
