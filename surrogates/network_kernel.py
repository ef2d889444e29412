"""A GPyTorch kernel over genes from the STRING network: diffusion or regularised Laplacian, low rank.

With `L = I - D^-1/2 W D^-1/2` the normalised Laplacian of the network and `(lam_k, u_k)` its `r`
smallest non-trivial eigenpairs (Lanczos, `perturbloop.knowledge_features.string_spectrum`),

    k(i, j) = c * sum_k u_k(i) rho_t(lam_k) u_k(j),   rho_t(lam) = exp(-t lam)       (diffusion)
                                                       rho_t(lam) = 1 / (1 + t lam)   (regularised Laplacian)

the best rank-r approximation of `exp(-tL)` (or `(I + tL)^-1`) on the smooth end of the spectrum.
`c = 1 / mean_i ||u(i)||^2` (over the network's genes) puts the diagonal at O(1), so an outer
`ScaleKernel` starts on the same footing as a feature kernel. The diffusion time `t` is a kernel
hyperparameter (positive, learned with the marginal likelihood like every other one). A gene outside
the network has a zero row: it gets nothing from this kernel (sum it with a feature kernel).

Inputs, two ways of knowing which gene a row is:
- `NetworkKernel` reads one column of `X` holding each gene's row in the pool (an integer stored as
  float, `-1` for none), selected with `active_dims`. Keep that column out of input scaling
  (`Normalize(d, indices=feature_columns)`).
- `SpectralCoordinateKernel` reads the gene's eigenvector entries `u_k(g)` themselves from the design
  space's `string` feature columns (an affine map of them), so the design space's rows need no extra
  column; this is what the screen GP uses (`surrogates.gp.NetworkSpec`, `surrogate.network = true`).

Example:
    >>> net = NetworkKernel.for_genes(pool_genes, active_dims=[d])      # column d holds 0..n-1
    >>> covar = ScaleKernel(RBFKernel(active_dims=range(d))) + ScaleKernel(net)
    >>> SingleTaskGP(X, Y, covar_module=covar, input_transform=Normalize(d + 1, indices=list(range(d))))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from gpytorch.constraints import Positive
from gpytorch.kernels import Kernel

Kind = Literal["diffusion", "regularized_laplacian"]


class NetworkKernel(Kernel):
    """Low-rank graph kernel over pool genes (see module docstring).

    Args:
        eigvecs: `n_pool x r` eigenvector rows of the pool's genes (zero rows for genes outside the network).
        eigvals: `r` Laplacian eigenvalues (>= 0), matching the columns of `eigvecs`.
        kind: `diffusion` (`exp(-t lam)`) or `regularized_laplacian` (`1 / (1 + t lam)`).
        time: initial `t`; default `1 / max(eigvals)` (the slowest-decaying weights stay near 1).
    """

    has_lengthscale = False

    def __init__(self, eigvecs: torch.Tensor, eigvals: torch.Tensor, *, kind: Kind = "diffusion",
                 time: float | None = None, **kwargs):
        super().__init__(**kwargs)
        eigvecs, eigvals = torch.as_tensor(eigvecs, dtype=torch.float64), torch.as_tensor(eigvals, dtype=torch.float64)
        if eigvecs.ndim != 2 or eigvals.shape != (eigvecs.shape[1],):
            raise ValueError(f"eigvecs must be n x r and eigvals r, got {tuple(eigvecs.shape)} and {tuple(eigvals.shape)}")
        scale = mean_sq_row_norm(eigvecs)
        # row n (index -1) is the zero row of a gene outside the network
        phi = torch.cat([eigvecs / scale.sqrt(), torch.zeros(1, eigvecs.shape[1], dtype=torch.float64)])
        self.register_buffer("phi", phi)
        self._init_spectrum(eigvals, kind, time)

    def _init_spectrum(self, eigvals: torch.Tensor, kind: Kind, time: float | None) -> None:
        if kind not in ("diffusion", "regularized_laplacian"):
            raise ValueError(f"kind must be 'diffusion' or 'regularized_laplacian', got {kind!r}")
        if (eigvals < -1e-9).any():
            raise ValueError("Laplacian eigenvalues must be non-negative")
        self.register_buffer("eigvals", eigvals.clamp_min(0.0))
        self.kind = kind
        self.register_parameter("raw_time", torch.nn.Parameter(torch.zeros(*self.batch_shape, 1, dtype=torch.float64)))
        self.register_constraint("raw_time", Positive())
        t0 = time if time is not None else 1.0 / float(eigvals.max().clamp_min(1e-6))
        self.initialize(time=t0)

    @property
    def time(self) -> torch.Tensor:
        return self.raw_time_constraint.transform(self.raw_time)

    @time.setter
    def time(self, value: float | torch.Tensor) -> None:
        value = torch.as_tensor(value, dtype=self.raw_time.dtype).expand_as(self.raw_time)
        self.initialize(raw_time=self.raw_time_constraint.inverse_transform(value))

    def spectral_weights(self) -> torch.Tensor:
        """`rho_t(lam_k)` for every eigenpair (`batch_shape x r`)."""
        tl = self.time * self.eigvals
        return torch.exp(-tl) if self.kind == "diffusion" else 1.0 / (1.0 + tl)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        idx = x[..., 0].round().long()
        n = self.phi.shape[0] - 1
        if (idx >= n).any() or (idx < -1).any():
            raise IndexError(f"NetworkKernel: gene index out of range [-1, {n - 1}]")
        idx = torch.where(idx < 0, torch.full_like(idx, n), idx)
        return self.phi.to(x)[idx] * self.spectral_weights().to(x).unsqueeze(-2).sqrt()

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, last_dim_is_batch: bool = False,
                **params) -> torch.Tensor:
        if last_dim_is_batch:
            raise NotImplementedError("NetworkKernel does not support last_dim_is_batch")
        f1 = self._features(x1)
        if diag:
            f2 = f1 if x1 is x2 else self._features(x2)
            return (f1 * f2).sum(-1)
        f2 = f1 if torch.equal(x1, x2) else self._features(x2)
        return f1 @ f2.transpose(-1, -2)

    @classmethod
    def for_genes(cls, genes: Sequence[str], *, data_dir: str | os.PathLike | None = None, dims: int | None = None,
                  kind: Kind = "diffusion", **kwargs) -> NetworkKernel:
        """The STRING v12 kernel over `genes` (pool order), from the cached Lanczos eigenpairs."""
        lam, vecs = string_eigvecs(genes, data_dir, dims)
        return cls(torch.from_numpy(vecs), torch.from_numpy(lam), kind=kind, **kwargs)


def string_eigvecs(genes: Sequence[str], data_dir: str | os.PathLike | None = None,
                   dims: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The cached STRING eigenvalues (`r`) and each gene's eigenvector row (`len(genes) x r`, zero outside STRING)."""
    from perturbloop.knowledge_features import STRING_DIMS, string_spectrum

    lam, U, net_genes, _ = string_spectrum(data_dir, dims=dims or STRING_DIMS)
    rows = pd.Index(net_genes).get_indexer(list(genes))
    vecs = np.zeros((len(rows), U.shape[1]))
    vecs[rows >= 0] = U[rows[rows >= 0]]
    return lam, vecs


def mean_sq_row_norm(U: torch.Tensor) -> torch.Tensor:
    """`mean_i ||u(i)||^2` over the rows that are not zero (genes in the network); 1 when there are none."""
    norms = (U ** 2).sum(-1)
    return norms[norms > 0].mean() if (norms > 0).any() else torch.tensor(1.0, dtype=torch.float64)


class SpectralCoordinateKernel(NetworkKernel):
    """The same kernel read from each gene's STRING eigen-coordinates in its feature row.

    A design space with the `string` feature block holds, per gene, its Laplacian eigenvector entries
    `u_k(g)` up to a per-column affine map (standardisation, then the GP's `Normalize`): column `k` of the
    `active_dims` holds `x_k = (u_k - shift_k) / scale_k`. The kernel undoes it, `u = scale * x + shift`, and is

        k(x, x') = c * sum_k u_k rho_t(lam_k) u'_k,      c = 1 / mean_i ||u(i)||^2,

    i.e. `NetworkKernel` without a gene-index column: the gene is known by its place in the network. A gene
    outside the network has `u = 0` (up to rounding) and gets nothing from this kernel.

    Args:
        eigvals: `r` Laplacian eigenvalues of the columns.
        scale, shift: `r` each, the affine map from the (normalised) input columns to `u`.
        mean_sq_norm: `mean_i ||u(i)||^2` over the network's genes in the design space (sets `c`).
    """

    def __init__(self, eigvals: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *, mean_sq_norm: float,
                 kind: Kind = "diffusion", time: float | None = None, **kwargs):
        Kernel.__init__(self, **kwargs)
        eigvals = torch.as_tensor(eigvals, dtype=torch.float64)
        scale, shift = (torch.as_tensor(v, dtype=torch.float64) for v in (scale, shift))
        if eigvals.ndim != 1 or scale.shape != eigvals.shape or shift.shape != eigvals.shape:
            raise ValueError(f"eigvals, scale and shift must all be r vectors, got {tuple(eigvals.shape)}, "
                             f"{tuple(scale.shape)}, {tuple(shift.shape)}")
        if not mean_sq_norm > 0:
            raise ValueError(f"mean_sq_norm must be positive, got {mean_sq_norm}")
        c = 1.0 / float(mean_sq_norm) ** 0.5
        self.register_buffer("coord_scale", scale * c)
        self.register_buffer("coord_shift", shift * c)
        self._init_spectrum(eigvals, kind, time)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.eigvals.shape[0]:
            raise ValueError(f"SpectralCoordinateKernel: {x.shape[-1]} input columns for {self.eigvals.shape[0]} eigenpairs")
        u = x * self.coord_scale.to(x) + self.coord_shift.to(x)
        return u * self.spectral_weights().to(x).unsqueeze(-2).sqrt()
