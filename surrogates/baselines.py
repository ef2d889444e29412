"""Deliberately simple baselines, reported beside every model."""

from __future__ import annotations

import torch

from surrogates.base import SurrogatePosterior


class MeanSurrogate:
    """Predicts the mean of the observed outcomes everywhere, with their variance as uncertainty.

    `mu(x) = mean(Y)`, `sigma^2(x) = var(Y) (1 + 1/n)` (the predictive variance of a new draw).
    With no data: mean 0, variance 1.
    """

    name = "mean"
    model = None

    def __init__(self, **_: object):
        self._mean = 0.0
        self._var = 1.0

    @property
    def params(self) -> dict[str, list]:
        return {"mean": [self._mean], "var": [self._var]}

    def fit(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        Y = Y.reshape(-1).to(torch.float64)
        n = Y.numel()
        self._mean = float(Y.mean()) if n else 0.0
        self._var = float(Y.var() * (1 + 1 / n)) if n > 1 else 1.0

    def posterior(self, X: torch.Tensor) -> SurrogatePosterior:
        n = X.shape[0]
        return SurrogatePosterior(torch.full((n,), self._mean, dtype=torch.float64), torch.full((n,), self._var, dtype=torch.float64))
