"""The Surrogate protocols and the scalar posterior every policy scores.

A surrogate fits features `X` (`n x d`) to what was measured: a pooled screen's one readout (`Y`: `n`,
the `G = 1` case: `Surrogate`) or a response vector over `G` readouts (`Y`: `n x G`, with the design
space's offsets where it has them: `surrogates.response.ResponseSurrogate`). Either posterior gives a
`SurrogatePosterior` for a policy: a screen model's directly, a response model's through
`scalarise(w)` (mean `w^T mu`, variance `w^T Sigma w`).
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
