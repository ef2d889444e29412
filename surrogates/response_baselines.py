"""Baselines for response prediction, reported beside every response model.

- `MeanResponse` (`"mean"`): the mean LFC of the training perturbations, for every perturbation
  (GEARS / IterPert's "mean" baseline; it ignores any prior offset).
- `AdditiveResponse` (`"additive"`): for pairs, the sum of the two single-gene LFCs (the offset the
  design space supplies), nothing learnt. The baseline to beat for pairs (Ahlmann-Eltze et al. 2025).
- `LinearResponse` (`"linear"`): ridge regression from the perturbation features (GO / expression
  PCA embeddings of the perturbed genes, pooled for pairs) to the PC scores of the training
  residuals `Y - offset` (Ahlmann-Eltze et al.'s linear model `Y ~ G W P^T + b` with `G` the
  output PCs and `P` the perturbation embedding). The ridge penalty is chosen by exact
  leave-one-out error over a grid; the posterior is the Bayesian-ridge one,
  `var_j(x) = s_j^2 x^T (X^T X + a I)^-1 x` with `s_j^2` the leave-one-out residual variance of PC `j`.

All share the `ResponseSurrogate` protocol and return a `ResponsePosterior`.
"""

from __future__ import annotations

import torch

from surrogates.response import DEFAULT_RANK, LowRankResponse, PCAOutput, ResponsePosterior, _check_offset, _check_xy

RIDGE_GRID = tuple(10.0 ** e for e in range(-2, 5))  # penalties tried by leave-one-out


class MeanResponse:
    """`y(x) = mean of training Y`; variance = per-gene variance of the training rows."""

    name = "mean"

    def __init__(self, **_: object):
        self.center: torch.Tensor | None = None

    def fit(self, X: torch.Tensor, Y: torch.Tensor, offset: torch.Tensor | None = None) -> None:
        _, Y = _check_xy(X, Y, None)
        self.center = Y.mean(0)
        self.var = Y.var(0) if Y.shape[0] > 1 else torch.zeros_like(self.center)

    def posterior(self, X: torch.Tensor, offset: torch.Tensor | None = None) -> ResponsePosterior:
        if self.center is None:
            raise RuntimeError("MeanResponse.posterior called before fit")
        empty = torch.zeros(X.shape[0], 0, dtype=torch.float64)
        return ResponsePosterior(empty, empty.clone(), torch.zeros(0, self.center.numel(), dtype=torch.float64),
                                 self.center, None, self.var)


class AdditiveResponse:
    """`y(a+b) = y(a) + y(b)`: returns the offset (the additive prediction the pair space supplies).

    Variance: per-gene variance of the training residuals `Y - offset` (0 with under two rows).
    """

    name = "additive"

    def __init__(self, **_: object):
        self.var: torch.Tensor | None = None

    def fit(self, X: torch.Tensor, Y: torch.Tensor, offset: torch.Tensor | None = None) -> None:
        if offset is None:
            raise ValueError("the additive baseline needs the single-gene prior (offset): it applies to pairs only")
        _, R = _check_xy(X, Y, offset)
        self.var = R.var(0) if R.shape[0] > 1 else torch.zeros(R.shape[1], dtype=torch.float64)

    def posterior(self, X: torch.Tensor, offset: torch.Tensor | None = None) -> ResponsePosterior:
        if self.var is None:
            raise RuntimeError("AdditiveResponse.posterior called before fit")
        missing = _check_offset(X, offset, True, self.name)
        G = self.var.numel()
        empty = torch.zeros(X.shape[0], 0, dtype=torch.float64)
        return ResponsePosterior(empty, empty.clone(), torch.zeros(0, G, dtype=torch.float64),
                                 torch.zeros(G, dtype=torch.float64), None if offset is None else offset.to(torch.float64),
                                 self.var, needs_offset=missing)


class LinearResponse(LowRankResponse):
    """Ridge regression features -> output PC scores, penalty by leave-one-out (see module docstring)."""

    name = "linear"

    def __init__(self, rank: int = DEFAULT_RANK, alphas: tuple[float, ...] = RIDGE_GRID, **_: object):
        self.pca = PCAOutput(rank)
        self.alphas = alphas

    def fit(self, X: torch.Tensor, Y: torch.Tensor, offset: torch.Tensor | None = None) -> None:
        X, Z = self._encode(X, Y, offset)
        Xs = self.std(X)
        n = Z.shape[0]
        U, s, Vt = torch.linalg.svd(Xs, full_matrices=False)
        UtZ = U.T @ Z
        best = None
        for a in self.alphas:
            f = s.square() / (s.square() + a)  # shrinkage per singular direction
            H = (U * f) @ U.T  # hat matrix (X centred; Z centred by the PCA)
            resid = (Z - (U * f) @ UtZ) / (1 - H.diagonal() - 1.0 / n).clamp_min(1e-6).unsqueeze(1)
            loo = resid.square().mean(0)  # k
            if best is None or loo.sum() < best[1].sum():
                best = (a, loo)
        self.alpha, self.noise = best
        f = s / (s.square() + self.alpha)
        self.coef = Vt.T @ (f.unsqueeze(1) * UtZ)  # d x k
        self._V, self._s2 = Vt.T, s.square()

    def latent(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ridge mean `x W` and Bayesian-ridge variance `s_j^2 x^T (X^T X + a I)^-1 x` of the PC scores."""
        Xs = self.std(X.to(torch.float64))
        mean = Xs @ self.coef
        proj = Xs @ self._V  # m x r
        quad = (proj.square() / (self._s2 + self.alpha)).sum(1) + (Xs.square().sum(1) - proj.square().sum(1)).clamp_min(0) / self.alpha
        return mean, quad.unsqueeze(1) * self.noise.unsqueeze(0)
