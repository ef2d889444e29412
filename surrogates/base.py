"""The Surrogate protocols and the scalar posterior every policy scores.

A surrogate fits features `X` (`n x d`) to what was measured: a response over `G` readouts (`Y`: `n x G`,
with the design space's offsets where it has them: `surrogates.response.ResponseSurrogate`). A pooled
screen is the `G = 1` case: a model of one readout (`Surrogate`, `Y`: `n`) speaks the same protocol through
`OneReadout`. Every posterior gives a policy a `SurrogatePosterior` through `scalarise(w)` (mean `w^T mu`,
variance `w^T Sigma w`); a one-readout posterior is one already.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class SurrogatePosterior:
    """Marginal posterior at `n` points: `mean`, `variance` (both `n` tensors, float64, CPU)."""

    mean: torch.Tensor
    variance: torch.Tensor

    @property
    def sd(self) -> torch.Tensor:
        return self.variance.clamp_min(0).sqrt()

    def scalarise(self, w: torch.Tensor | None = None, offset_score: torch.Tensor | None = None) -> SurrogatePosterior:
        """Already a one-readout posterior: `w` (length 1) scales it, `offset_score` shifts it."""
        mean, var = self.mean, self.variance
        if w is not None:
            s = float(torch.as_tensor(w).reshape(-1)[0])
            mean, var = mean * s, var * s * s
        if offset_score is not None:
            mean = mean + offset_score.to(mean)
        return SurrogatePosterior(mean, var)


@runtime_checkable
class Surrogate(Protocol):
    """A model of a scalar outcome over perturbation features.

    `fit(X, Y)`: `X` is `n x d`, `Y` is `n` (float64). `posterior(X)` returns marginal
    mean/variance at `m x d` points. Models that can also act inside BoTorch acquisition
    functions expose `model` (a BoTorch `Model`) after `fit`; others set it to None.
    """

    name: str

    def fit(self, X: torch.Tensor, Y: torch.Tensor) -> None: ...

    def posterior(self, X: torch.Tensor) -> SurrogatePosterior: ...


class OneReadout:
    """Mixin: a model of one readout (`Surrogate`) as the `G = 1` response surrogate.

    `fit(X, Y, offset)` takes `Y` as `n` or `n x 1` and learns `Y - offset`; `posterior(X, offset)` adds the
    offset back to the mean. Everything else (`name`, `model`, `params`) is the model's own.

    Example:
        >>> class ScreenGP(OneReadout, GPSurrogate): ...
        >>> gp = ScreenGP(bounds=bounds); gp.fit(X, Y); gp.posterior(X_new).scalarise(w)
    """

    def fit(self, X: torch.Tensor, Y: torch.Tensor, offset: torch.Tensor | None = None) -> None:
        if Y.ndim > 2 or (Y.ndim == 2 and Y.shape[1] != 1):
            raise ValueError(f"{type(self).__name__} models one readout: Y must be n or n x 1, got {tuple(Y.shape)}")
        Y = Y.reshape(-1)
        super().fit(X, Y if offset is None else Y - offset.reshape(-1).to(Y))  # type: ignore[misc]

    def posterior(self, X: torch.Tensor, offset: torch.Tensor | None = None) -> SurrogatePosterior:
        post = super().posterior(X)  # type: ignore[misc]
        return post if offset is None else SurrogatePosterior(post.mean + offset.reshape(-1).to(post.mean), post.variance)
