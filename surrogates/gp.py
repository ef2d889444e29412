"""Exact GP surrogate (BoTorch SingleTaskGP) over gene features, refit every round.

Model: `y = f(x) + eps`, `f ~ GP(c, k)`, `k` = BoTorch's default RBF-ARD kernel with the
dimension-scaled log-normal length-scale prior (Hvarfner et al. 2024), Gaussian noise learned.
With `target_transform="log"` the GP models `log(y + median(y))` (median over the observed
targets): |score| is heavy-tailed, and the monotone transform keeps the ranking while letting
the GP fit the bulk instead of a few extreme genes; posteriors are on that scale.
Inputs are mapped to the unit cube with fixed bounds from the whole pool (`Normalize`);
outcomes standardised (`Standardize`). Hyperparameters are fit by L-BFGS-B on the exact
marginal log likelihood, warm-started from the previous round's values (kept in the store), with a capped number
of iterations so a round stays within seconds.

With a `NetworkSpec` (`surrogate.network = true`) the covariance is `k = k_RBF(x, x') + s * k_net(g, g')`: the
feature kernel plus a scaled low-rank STRING diffusion (or regularised-Laplacian) kernel
(`surrogates.network_kernel.SpectralCoordinateKernel`) that knows each gene by its eigenvector entries in the
design space's `string` feature columns. `s` and the diffusion time `t` are fitted with the other hyperparameters;
a measured hit then raises the posterior of its network neighbours; a gene outside STRING gets only `k_RBF`.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms import Normalize, Standardize
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from gpytorch.kernels import ScaleKernel
from gpytorch.mlls import ExactMarginalLogLikelihood

from perturbloop.device import default_device
from perturbloop.errors import ConfigError
from surrogates.base import SurrogatePosterior
from surrogates.network_kernel import SpectralCoordinateKernel, mean_sq_row_norm, string_eigvecs

# L-BFGS-B iterations per fit. A round adds 128 genes to a few hundred: 10 warm-started steps keep the
# fit near the previous round's (and, at the first fit, the length-scale prior's) mode. On the six
# real screens (benchmarks/RESULTS.md) 10 is 2-3x faster than 75 (rounds <= 1.2 s over 19k genes on
# 2 cores) with hit ratios better on 3 of 6, within a hit on 2, 3 hits worse on tau up (the early stop
# regularises the fit).
MAX_FIT_ITER = 10
POSTERIOR_CHUNK = 256  # rows per posterior call: gpytorch builds the chunk's dense covariance, so cost ~ n * chunk


STRING_COLUMN = re.compile(r"^string_eig(\d+)$")  # the design space's STRING eigen-coordinates (feature `string`)
AFFINE_TOL = 1e-6  # relative error allowed when mapping the string columns back to the cached eigenvectors


def unit_bounds(bounds: torch.Tensor) -> torch.Tensor:
    """`2 x d` bounds for `Normalize`, a constant column widened to width 1 (no 0/0)."""
    lo, hi = bounds
    return torch.stack([lo, torch.where(hi - lo > 1e-8, hi, lo + 1.0)])


@dataclass(frozen=True)
class NetworkSpec:
    """What the GP needs for its STRING kernel: which `X` columns hold the genes' eigen-coordinates and the map
    back to the eigenvectors (`u = scale * x_normalised + shift`), the eigenvalues and the kernel kind."""

    columns: tuple[int, ...]
    eigvals: torch.Tensor  # r
    scale: torch.Tensor  # r
    shift: torch.Tensor  # r
    mean_sq_norm: float
    kind: Literal["diffusion", "regularized_laplacian"] = "diffusion"

    @classmethod
    def for_space(cls, genes: list[str], X: torch.Tensor, feature_names: list[str], bounds: torch.Tensor, *,
                  data_dir: str | os.PathLike | None = None,
                  kind: Literal["diffusion", "regularized_laplacian"] = "diffusion") -> NetworkSpec:
        """The spec for a design space (`genes`, `n x d` features `X` named `feature_names`, the GP's `bounds`).

        The eigenpairs are the cached Lanczos solve (`perturbloop.knowledge_features.string_spectrum`, on disk);
        the affine map per column is fitted by least squares over the design space's genes and must be exact.
        """
        cols = sorted((int(m.group(1)), j) for j, name in enumerate(feature_names) if (m := STRING_COLUMN.match(name)))
        if not cols:
            raise ConfigError("surrogate.network needs the STRING feature columns: add 'string' (or 'knowledge') "
                              "to design.features")
        dims = len(cols)
        if [k for k, _ in cols] != list(range(dims)):
            raise ConfigError(f"surrogate.network: the string feature columns are not string_eig0..{dims - 1}")
        lam, u = string_eigvecs(genes, data_dir, dims)
        lo, hi = unit_bounds(bounds.to(torch.float64))
        idx = [j for _, j in cols]
        xn = ((X[:, idx].to(torch.float64) - lo[idx]) / (hi[idx] - lo[idx])).numpy()
        xc = xn - xn.mean(0)
        scale = (xc * (u - u.mean(0))).sum(0) / np.maximum((xc * xc).sum(0), 1e-300)
        shift = u.mean(0) - scale * xn.mean(0)
        err = np.abs(xn * scale + shift - u).max() if len(genes) else 0.0
        if err > AFFINE_TOL * max(np.abs(u).max(), 1e-12):
            raise ConfigError("surrogate.network: the design space's string features do not match the cached STRING "
                              f"eigenvectors (max error {err:.2g}); rebuild the feature cache")
        return cls(tuple(idx), torch.from_numpy(np.asarray(lam, dtype=np.float64)), torch.from_numpy(scale),
                   torch.from_numpy(shift), float(mean_sq_row_norm(torch.from_numpy(u))), kind)

    def kernel(self) -> ScaleKernel:
        """`s * k_net`, reading the string columns of the (normalised) inputs."""
        return ScaleKernel(SpectralCoordinateKernel(self.eigvals, self.scale, self.shift, kind=self.kind,
                                                    mean_sq_norm=self.mean_sq_norm, active_dims=list(self.columns)))


class GPSurrogate:
    """BoTorch SingleTaskGP on pool features (see module docstring)."""

    name = "gp"

    def __init__(self, bounds: torch.Tensor | None = None, max_iter: int = MAX_FIT_ITER,
                 init_params: dict[str, list] | None = None, target_transform: str = "none",
                 device: torch.device | None = None, network: NetworkSpec | None = None, **_: object):
        if target_transform not in ("none", "log"):
            raise ValueError(f"target_transform must be 'none' or 'log', got {target_transform!r}")
        self.target_transform = target_transform
        self.bounds = bounds  # 2 x d, from the pool
        self.max_iter = max_iter
        self.device = device or default_device()
        self.model: SingleTaskGP | None = None
        self._init = init_params  # hyperparameters of an earlier fit (warm start), from the store
        self.network = network  # None: the feature kernel alone

    @property
    def params(self) -> dict[str, list]:
        """Fitted hyperparameters (raw values), JSON-serialisable, for warm starts after a restart."""
        return {} if self.model is None else {k: v.detach().cpu().tolist() for k, v in self.model.named_parameters()}

    def fit(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        if X.shape[0] < 2:
            raise ValueError("a GP needs at least 2 observations")
        X = X.to(self.device, torch.float64)
        Y = Y.reshape(-1, 1).to(self.device, torch.float64)
        if self.target_transform == "log":
            if (Y < 0).any():
                raise ValueError("target_transform='log' needs non-negative targets (objective 'hits' models |score|)")
            Y = torch.log(Y + Y.median().clamp_min(1e-8))
        bounds = None if self.bounds is None else unit_bounds(self.bounds.to(X))
        covar = None
        if self.network is not None:
            if bounds is None:
                raise ValueError("a GP with the network kernel needs the design space's bounds")
            covar = get_covar_module_with_dim_scaled_prior(ard_num_dims=X.shape[-1]) + self.network.kernel().to(X)
        model = SingleTaskGP(X, Y, covar_module=covar, input_transform=Normalize(d=X.shape[-1], bounds=bounds),
                             outcome_transform=Standardize(m=1))
        if self._init:
            with torch.no_grad():
                for k, p in model.named_parameters():
                    if k in self._init and torch.tensor(self._init[k]).shape == p.shape:
                        p.copy_(torch.tensor(self._init[k], dtype=p.dtype))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model),
                             optimizer_kwargs={"options": {"maxiter": self.max_iter}})
        model.eval()
        self.model = model

    @torch.no_grad()
    def posterior(self, X: torch.Tensor) -> SurrogatePosterior:
        if self.model is None:
            raise RuntimeError("GPSurrogate.posterior called before fit")
        means, variances = [], []
        for start in range(0, X.shape[0], POSTERIOR_CHUNK):
            post = self.model.posterior(X[start:start + POSTERIOR_CHUNK].to(self.device, torch.float64))
            means.append(post.mean.squeeze(-1).cpu())
            variances.append(post.variance.squeeze(-1).cpu())
        return SurrogatePosterior(torch.cat(means), torch.cat(variances))
