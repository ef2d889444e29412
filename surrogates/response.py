"""Multi-output surrogates of transcriptome responses (a vector of LFCs per perturbation).

Every model here predicts a response `y` (`G` genes, log-fold-change vs control) through a
low-rank output space:

    `y = offset + c + z B + e`,  `B` = `k x G` (orthonormal rows), `z` in `R^k`

`offset` is a known prior per perturbation (for pairs: the additive prediction, the sum of the two
single-gene LFCs; None for singles), `c` and `B` are the mean and top-`k` principal directions of
the training residuals `Y - offset` (`k <= n - 1`), and the model learns `z` from perturbation
features `x`. So a model that learns nothing falls back to "mean of training residuals on top
of the prior": for singles the mean baseline, for pairs additive + mean interaction.

- `EnsembleResponse` (`"ensemble"`): a deep ensemble (Lakshminarayanan et al. 2017) of `M`
  MLPs trained in one batched torch module (CUDA when present, `perturbloop.device`), each on a
  Poisson bootstrap of the data, each with a fixed random prior network added to its output
  (Osband et al. 2018) so members disagree away from the data. Uncertainty = member disagreement.
- `LowRankGPResponse` (`"gp"`): `k` independent exact GPs (one BoTorch `SingleTaskGP` with a
  `k`-batch of outputs, RBF-ARD kernels) on the principal-component scores. Uncertainty = the
  GP posterior variance of `z`, mapped to genes through `B`.

Both return a `ResponsePosterior`, which keeps the latent mean / variance and maps them to genes
on demand (a million pair candidates never need an `m x G` matrix unless asked for).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from linear_operator.utils.cholesky import psd_safe_cholesky

from perturbloop.device import default_device
from surrogates.base import SurrogatePosterior
from perturbloop.design_space import DesignSpace

POSTERIOR_CHUNK = 4096  # rows per forward pass / GP posterior call; bounds memory at ~chunk x (hidden or n) floats
DEFAULT_RANK = 16  # output PCs; more mostly models noise with tens of training perturbations
GP_RANK = 8  # the GP fits one set of hyperparameters per PC: fewer PCs, faster fits
GP_CHUNK = 1024  # GP rows per step: the cross-covariance is k x chunk x n (8 x 1024 x 500 doubles = 33 MB)
SD_FLOOR = 1e-8


@dataclass
class ResponsePosterior:
    """Posterior over the responses of `m` perturbations to `G` genes, in a `k`-dim output space.

    `y = offset + center + z @ basis`, `z_j ~ N(latent_mean_j, latent_var_j)` independent, plus
    `gene_var` (a `G` vector of variance outside the latent space, used by the mean baseline).

    Attributes:
        latent_mean: `m x k`.
        latent_var: `m x k` (epistemic: ensemble disagreement or GP posterior variance).
        basis: `k x G`.
        center: `G`.
        offset: `m x G` prior (additive prediction for pairs) or None.
        gene_var: `G` or None.
        needs_offset: the model was fitted on `Y - offset` but no offset was given: variances are
            valid, the mean is not (asking for it raises). Lets a policy that only needs the
            variance skip building `m x G` offsets for a million pairs.
    """

    latent_mean: torch.Tensor
    latent_var: torch.Tensor
    basis: torch.Tensor
    center: torch.Tensor
    offset: torch.Tensor | None = None
    gene_var: torch.Tensor | None = None
    needs_offset: bool = False

    def __len__(self) -> int:
        return self.latent_mean.shape[0]

    def _check_mean(self) -> None:
        if self.needs_offset:
            raise ValueError("this posterior was computed without the offset (additive prior) the model was fitted "
                             "with: its mean is undefined; pass offset to posterior()")

    @property
    def mean(self) -> torch.Tensor:
        """`m x G` predicted LFC."""
        self._check_mean()
        out = self.center.expand(len(self), -1) + self.latent_mean @ self.basis
        return out + self.offset if self.offset is not None else out

    @property
    def variance(self) -> torch.Tensor:
        """`m x G` marginal variance per gene."""
        out = self.latent_var @ self.basis.square()
        return out + self.gene_var if self.gene_var is not None else out

    @property
    def total_variance(self) -> torch.Tensor:
        """`m`: the trace of the predictive covariance over genes, `sum_g var_g` (cheap: `sum_j var_j ||B_j||^2`)."""
        out = self.latent_var @ self.basis.square().sum(1)
        return out + self.gene_var.sum() if self.gene_var is not None else out

    def project(self, w: torch.Tensor, offset_score: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance (each `m`) of the program score `s = w . y` for a `G` weight vector `w`.

        `offset_score` (`m`): `offset @ w` computed by the caller (cheap for pairs: a sum of two
        singles' scores), for a posterior made without the `m x G` offset.
        """
        if offset_score is None:
            self._check_mean()
        w = w.to(self.basis)
        bw = self.basis @ w
        mean = self.center @ w + self.latent_mean @ bw
        if offset_score is not None:
            mean = mean + offset_score.to(mean)
        elif self.offset is not None:
            mean = mean + self.offset @ w
        var = self.latent_var @ bw.square()
        if self.gene_var is not None:
            var = var + self.gene_var @ w.square()
        return mean, var

    def scalarise(self, w: torch.Tensor, offset_score: torch.Tensor | None = None) -> SurrogatePosterior:
        """The posterior of the scalar `s = w . y` (mean `w^T mu`, variance `w^T Sigma w`, as BoTorch's
        `ScalarizedPosteriorTransform`): what a policy scores."""
        return SurrogatePosterior(*self.project(w, offset_score))


@runtime_checkable
class ResponseSurrogate(Protocol):
    """`fit(X, Y, offset)` then `posterior(X, offset)`: a `ResponsePosterior`, or for a model of one readout
    (`surrogates.base.OneReadout`, the `G = 1` case) a `SurrogatePosterior`; both have `scalarise(w)`.

    `X`: `n x d` perturbation features; `Y`: `n x G` responses; `offset`: `n x G` known prior
    (pairs: additive prediction) or None. All float64 on CPU in and out.
    """

    name: str

    def fit(self, X: torch.Tensor, Y: torch.Tensor, offset: torch.Tensor | None = None) -> None: ...

    def posterior(self, X: torch.Tensor, offset: torch.Tensor | None = None) -> ResponsePosterior: ...


class PCAOutput:
    """Top-`k` principal directions of training residuals: `R ~ c + Z B`."""

    def __init__(self, rank: int = DEFAULT_RANK, tol: float = 1e-6):
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.rank = rank
        self.tol = tol
        self.center: torch.Tensor | None = None
        self.basis: torch.Tensor | None = None

    def fit_transform(self, R: torch.Tensor) -> torch.Tensor:
        """`n x G` residuals -> `n x k` scores (`k <= min(rank, n - 1)`; singular values below `tol * s_1` dropped)."""
        R = R.to(torch.float64)
        self.center = R.mean(0)
        Rc = R - self.center
        _, S, Vt = torch.linalg.svd(Rc, full_matrices=False)
        keep = int((S > self.tol * S[0].clamp_min(SD_FLOOR)).sum()) if S.numel() else 0
        k = min(self.rank, R.shape[0] - 1, keep)
        self.basis = Vt[:k].contiguous()
        return Rc @ self.basis.T


class Standardizer:
    """Feature columns to mean 0 / sd 1 with training statistics (constant columns: sd 1)."""

    def fit(self, X: torch.Tensor) -> Standardizer:
        self.mean = X.mean(0)
        sd = X.std(0) if X.shape[0] > 1 else torch.ones_like(self.mean)
        self.sd = torch.where(sd > SD_FLOOR, sd, torch.ones_like(sd))
        return self

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        return (X - self.mean.to(X)) / self.sd.to(X)


def _check_xy(X: torch.Tensor, Y: torch.Tensor, offset: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X must be n x d and Y n x G with the same n, got {tuple(X.shape)} and {tuple(Y.shape)}")
    if X.shape[0] < 1:
        raise ValueError("fit needs at least one observed perturbation")
    R = Y.to(torch.float64)
    if offset is not None:
        if offset.shape != Y.shape:
            raise ValueError(f"offset must be n x G like Y, got {tuple(offset.shape)} vs {tuple(Y.shape)}")
        R = R - offset.to(torch.float64)
    return X.to(torch.float64), R


def _check_offset(X: torch.Tensor, offset: torch.Tensor | None, fitted_with: bool, name: str) -> bool:
    """Checks the offset's rows; True when the model needs an offset that was not given (mean undefined)."""
    if offset is not None and offset.shape[0] != X.shape[0]:
        raise ValueError(f"offset has {offset.shape[0]} rows for {X.shape[0]} points")
    if offset is not None and not fitted_with:
        raise ValueError(f"{name} was fitted without an offset: posterior takes none")
    return fitted_with and offset is None


class LowRankResponse:
    """Base of the models on the top-`k` PC scores of the residuals: `fit` checks `X`, `Y`, `offset`, encodes
    `Y - offset` as `Z = (R - c) B^T` and standardises `X` (`_encode`); `posterior` maps the latent mean and
    variance of `latent(X)` (each `m x k`) to genes through `B` (`ResponsePosterior`)."""

    name = "low_rank"
    pca: PCAOutput
    _with_offset = False

    def _encode(self, X: torch.Tensor, Y: torch.Tensor, offset: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`X` (float64) and the `n x k` PC scores `Z` of `Y - offset`; fits the feature standardiser."""
        X, R = _check_xy(X, Y, offset)
        self._with_offset = offset is not None
        self.std = Standardizer().fit(X)
        return X, self.pca.fit_transform(R)

    def latent(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__}.latent")

    def posterior(self, X: torch.Tensor, offset: torch.Tensor | None = None) -> ResponsePosterior:
        if self.pca.center is None:
            raise RuntimeError(f"{type(self).__name__}.posterior called before fit")
        missing = _check_offset(X, offset, self._with_offset, self.name)
        mean, var = self.latent(X)
        return ResponsePosterior(mean, var, self.pca.basis, self.pca.center,
                                 None if offset is None else offset.to(torch.float64), needs_offset=missing)


class _BatchedMLP(torch.nn.Module):
    """`M` independent MLPs `d -> hidden -> ... -> k` evaluated in one batched pass (`M x n x k`)."""

    def __init__(self, members: int, d: int, hidden: int, layers: int, k: int, generator: torch.Generator):
        super().__init__()
        sizes = [d] + [hidden] * layers + [k]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for a, b in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(a)
            self.weights.append(torch.nn.Parameter((torch.rand(members, a, b, generator=generator) * 2 - 1) * bound))
            self.biases.append(torch.nn.Parameter((torch.rand(members, 1, b, generator=generator) * 2 - 1) * bound))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        h = X.unsqueeze(0) if X.ndim == 2 else X
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h.expand(w.shape[0], -1, -1), w)
            if i < last:
                h = torch.nn.functional.silu(h)
        return h


class EnsembleResponse(LowRankResponse):
    """Deep ensemble with random priors on the PC scores of the response (see module docstring).

    Member `m` predicts `z = f_m(x) + prior_scale * p_m(x)` (`p_m` fixed, random), trained by
    AdamW on a Poisson(1)-bootstrap-weighted squared error in the (orthonormal) PC space, i.e.
    squared error over genes. Posterior: mean and variance of the members' predictions.

    Out-of-bag shrinkage (`shrink=True`): with tens of training perturbations a network happily
    predicts large responses it cannot know. Each PC's mean prediction is therefore multiplied by
    `lambda_j = clip(sum f z / sum f^2, 0, 1)` over the members' out-of-bag predictions `f` (points
    a member's bootstrap left out): the least-squares shrinkage toward the training mean that
    held-out points support. `lambda_j -> 0` reverts that PC to the mean baseline. The variance
    (member disagreement) is not shrunk: it stays the signal for where to measure next.

    Example:
        >>> m = EnsembleResponse(members=5); m.fit(X, Y); m.posterior(X_new).total_variance
    """

    name = "ensemble"

    def __init__(self, members: int = 5, hidden: int = 64, layers: int = 2, epochs: int = 300, lr: float = 5e-3,
                 weight_decay: float = 1e-2, rank: int = DEFAULT_RANK, prior_scale: float = 0.3,
                 bootstrap: bool = True, shrink: bool = True, seed: int = 0, device: torch.device | str | None = None,
                 **_: object):
        if members < 2:
            raise ValueError("an ensemble needs at least 2 members")
        self.members, self.hidden, self.layers, self.epochs = members, hidden, layers, epochs
        self.lr, self.weight_decay, self.prior_scale, self.bootstrap, self.seed = lr, weight_decay, prior_scale, bootstrap, seed
        self.shrink = shrink
        self.shrinkage: torch.Tensor | None = None  # k, after fit
        self.device = torch.device(device) if device is not None else default_device()
        self.pca = PCAOutput(rank)
        self.net: _BatchedMLP | None = None
        self.prior: _BatchedMLP | None = None

    def fit(self, X: torch.Tensor, Y: torch.Tensor, offset: torch.Tensor | None = None) -> None:
        X, Z = self._encode(X, Y, offset)
        k = Z.shape[1]
        self.net = self.prior = None
        if k == 0:
            return
        self.z_scale = float(Z.std().clamp_min(SD_FLOOR))  # k >= 1 needs n >= 2: Z has two or more entries
        gen = torch.Generator().manual_seed(self.seed)
        dev, dt = self.device, torch.float32
        net = _BatchedMLP(self.members, X.shape[1], self.hidden, self.layers, k, gen).to(dev, dt)
        prior = _BatchedMLP(self.members, X.shape[1], self.hidden, self.layers, k, gen).to(dev, dt).requires_grad_(False)
        Xs = self.std(X).to(dev, dt)
        Zs = (Z / self.z_scale).to(dev, dt)
        n = X.shape[0]
        if self.bootstrap:
            counts = torch.poisson(torch.ones(self.members, n), generator=gen)
            counts[counts.sum(1) == 0] = 1.0
        else:
            counts = torch.ones(self.members, n)
        w = (counts / counts.sum(1, keepdim=True)).to(dev, dt).unsqueeze(-1)  # M x n x 1
        with torch.no_grad():
            p = self.prior_scale * prior(Xs)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            opt.zero_grad(set_to_none=True)
            loss = ((net(Xs) + p - Zs).square() * w).sum() / self.members
            loss.backward()
            opt.step()
        net.eval()
        self.net, self.prior = net, prior
        self.shrinkage = torch.ones(k, dtype=torch.float64)
        oob = (counts == 0).to(torch.float64).unsqueeze(-1)  # M x n x 1
        if self.shrink and self.bootstrap and oob.sum() > 0:
            with torch.no_grad():
                f = (net(Xs) + p).to("cpu", torch.float64) * self.z_scale  # M x n x k
            num = (oob * f * Z.unsqueeze(0)).sum((0, 1))
            den = (oob * f.square()).sum((0, 1))
            self.shrinkage = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(den)).clamp(0.0, 1.0)

    @torch.no_grad()
    def latent(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`m x k` shrunk mean and variance over the members of their PC-score predictions (chunked)."""
        if self.net is None:  # nothing beyond the mean to model (one observation, or constant residuals)
            zero = torch.zeros(X.shape[0], 0, dtype=torch.float64)
            return zero, zero.clone()
        outs = []
        for start in range(0, X.shape[0], POSTERIOR_CHUNK):
            xs = self.std(X[start:start + POSTERIOR_CHUNK].to(torch.float64)).to(self.device, torch.float32)
            outs.append(((self.net(xs) + self.prior_scale * self.prior(xs)) * self.z_scale).to("cpu", torch.float64))
        Zm = torch.cat(outs, dim=1)  # M x m x k
        return Zm.mean(0) * self.shrinkage, Zm.var(0)


class LowRankGPResponse(LowRankResponse):
    """Independent exact GPs on the top-`k` PC scores of the response (see module docstring).

    One BoTorch `SingleTaskGP` with `n x k` targets (a `k`-batch of GPs, each with its own RBF-ARD
    length-scales, outputscale and noise), outcome `Standardize(m=k)`; features standardised with
    training statistics. Hyperparameters by L-BFGS-B on the exact marginal likelihood (capped).

    Example:
        >>> m = LowRankGPResponse(rank=8); m.fit(X, Y); m.posterior(X_new).latent_var
    """

    name = "gp"

    def __init__(self, rank: int = GP_RANK, max_iter: int = 75, device: torch.device | str | None = None, **_: object):
        self.pca = PCAOutput(rank)
        self.max_iter = max_iter
        self.device = torch.device(device) if device is not None else default_device()
        self.model = None

    def fit(self, X: torch.Tensor, Y: torch.Tensor, offset: torch.Tensor | None = None) -> None:
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms import Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood

        X, Z = self._encode(X, Y, offset)
        self.model = None
        if Z.shape[1] == 0:
            return
        Xs = self.std(X).to(self.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # standardised (not unit-cube) inputs: BoTorch's InputDataWarning
            model = SingleTaskGP(Xs, Z.to(self.device), outcome_transform=Standardize(m=Z.shape[1]))
            mll = ExactMarginalLogLikelihood(model.likelihood, model)
            try:
                fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": self.max_iter}})
            except Exception:  # noqa: BLE001 - a failed hyperparameter fit keeps the prior's values (still a valid GP)
                pass
        model.eval()
        self.model = model
        self._cache()

    @torch.no_grad()
    def _cache(self) -> None:
        """Cholesky factor and weights of the fitted GPs: `L L^T = K + s^2 I` (`k x n x n`), `alpha = K^-1 (y - c)`."""
        m = self.model
        Xtr = m.train_inputs[0]  # k x n x d (BoTorch expands the inputs over the output batch)
        ytr = m.train_targets  # k x n, standardised
        if Xtr.ndim == 2:  # one output (a pair screen's score): BoTorch keeps no output batch dimension
            Xtr, ytr = Xtr.unsqueeze(0), ytr.unsqueeze(0)
        c = m.mean_module.constant.reshape(-1, 1)
        K = m.covar_module(Xtr, Xtr).to_dense()
        eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
        L = psd_safe_cholesky(K + m.likelihood.noise.reshape(-1, 1, 1) * eye, max_tries=6)  # jitter 1e-8 .. 1e-3
        alpha = torch.cholesky_solve((ytr - c).unsqueeze(-1), L)
        tf = m.outcome_transform
        self._gp = (Xtr, L, alpha, c, tf.means.reshape(-1, 1), tf.stdvs.reshape(-1, 1))

    @torch.no_grad()
    def latent(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`m x k` posterior mean and variance of the PC scores (noise-free), chunked.

        `mu = c + K_*X alpha`, `var = k(x, x) - ||L^-1 K_X*||^2` per GP, then un-standardised;
        only the diagonal is formed, so each chunk costs `O(k c n^2)` with no `c x c` matrix. Unfitted GPs (no
        PC to model): zeros.
        """
        if self.model is None:
            zero = torch.zeros(X.shape[0], self.pca.basis.shape[0], dtype=torch.float64)
            return zero, zero.clone()
        Xtr, L, alpha, c, ymean, ystd = self._gp
        kern = self.model.covar_module
        means, variances = [], []
        for start in range(0, X.shape[0], GP_CHUNK):
            xs = self.std(X[start:start + GP_CHUNK].to(self.device, torch.float64))
            xs = xs.unsqueeze(0).expand(Xtr.shape[0], -1, -1)
            Ks = kern(xs, Xtr).to_dense()  # k x c x n
            mu = c + (Ks @ alpha).squeeze(-1)
            v = torch.linalg.solve_triangular(L, Ks.transpose(-1, -2), upper=False)
            var = (kern(xs, xs, diag=True) - v.square().sum(-2)).clamp_min(0)
            means.append((mu * ystd + ymean).T.cpu())
            variances.append((var * ystd.square()).T.cpu())
        return torch.cat(means), torch.cat(variances)


def fit_on_space(model, space: DesignSpace, observed: Mapping[str, np.ndarray | float]):
    """`model` fitted on the measured responses `observed` (label -> vector, or a number for one readout: `Y` is
    `n x G`) of `space`'s candidates, with the space's offsets (pairs: the additive prior) where it has them."""
    idx = space.indices(list(observed))
    X = space.features(idx).cpu()
    off = space.offset(idx)
    Y = torch.from_numpy(np.stack([np.atleast_1d(v) for v in observed.values()])).to(torch.float64)
    model.fit(X, Y, None if off is None else off.cpu())
    return model


def predict_on_space(model, space: DesignSpace, idx: torch.Tensor) -> np.ndarray:
    """Posterior mean responses (`len(idx) x G`) of the candidates `idx` of `space`."""
    off = space.offset(idx)
    return model.posterior(space.features(idx).cpu(), None if off is None else off.cpu()).mean.numpy()
