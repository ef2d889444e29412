"""The Surrogate protocol: `fit(X, Y)` then `posterior(X)` -> mean and variance."""

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
