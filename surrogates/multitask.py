"""Models of a screen measured in several contexts: the joint posterior of one gene across contexts.

Every model here fits observations `y_i` of gene `g_i` (features `x_i`, `n x d`) in context `c_i` and answers
`joint(X, genes)`: per query gene its posterior mean over the `C` contexts (`m x C`) and their covariance
(`m x C x C`), plus each context's observation-noise variance (`C`): what a cost-aware policy needs to
know how much a measurement in context `c` tells about the same gene in the target.

* `MultiTaskContextGP`: BoTorch `MultiTaskGP`, an intrinsic coregionalisation model (ICM):
  `k((g, c), (g', c')) = [s1 k_rbf(x_g, x_g') + s2 1(g = g')] B[c, c']`, `k_rbf` RBF-ARD over the gene features
  (mapped to the unit cube with the pool's bounds), `1(g = g')` the gene's own effect (`SameGeneKernel`), `B` a
  learned positive task covariance (BoTorch's `PositiveIndexKernel`, full rank unless `rank` is given), a
  constant mean and a noise variance per context;
  hyperparameters by `fit_gpytorch_mll`. `B` is how contexts relate,
  learned from the data (`task_correlation()`). Prior on the correlations (`task_prior`): `"weak"` (default),
  `Beta(1, 3)` (mode 0, mean 0.25: transfer must be shown by the data); `"botorch"`, BoTorch's default
  `Beta(2.5, 1.5)` (mean 0.63); `"none"`. On 40 genes in two uncorrelated contexts (sample correlation -0.06)
  BoTorch's prior gave 0.47, none 0.13 (0.93 for contexts correlated 0.95 either way). With the gene term and
  no prior, 16 genes gave 0.41 and 0.67 for contexts correlated 0 and 0.3 (sample 0.35, 0.66), which sent the
  cost-aware policy to the cheap contexts of the GWT table, correlated only 0.13-0.31 with 48 h; `"weak"` gave
  0.34 and 0.62 there, and 0.04 / 0.29 / 0.92 on 40 genes correlated 0 / 0.3 / 0.95 (these numbers with BoTorch's
  random start of `B`; a fit now starts near zero correlation, `INIT_TASK_FACTOR`).
  With `hours` (one entry per context, `None` for a context that is not a timepoint, e.g. K562), `B` gets a smooth
  part over time (`TimeIndexKernel`): `B = W W^T + diag(v) + s k_M(u_c, u_c') 1(c, c' timepoints)`,
  `u = log(1 + hours)`, `k_M` a Matern-5/2 kernel, `W` of rank `TIME_RANK` (default 1) unless `rank` is given:
  timepoints close in log-time correlate more, and a timepoint with no data borrows from its neighbours (tested
  on synthetic data with a known time structure). A non-timepoint context relates to the others through `W` only.
* `IndependentContextGP`: one BoTorch `SingleTaskGP` per context; contexts never inform each other
  (zero cross-covariance). A context with fewer than `MIN_OBS` observations has the prior of all observations.
* `PooledContextGP`: one `SingleTaskGP` over gene features on every observation, context ignored: the same
  function in every context (every cross-covariance equals the variance).

The ICM joint posterior is the Gaussian conditional written out once (`_icm_joint`): with training covariance
`K = [k((x_i, c_i), (x_j, c_j))] + diag(noise_{c_i})`, `L L^T = K`, `alpha = K^{-1}(y - m)`, and for a query
gene `x` in context `c` the cross-covariance row `k_c = [k((x, c), (x_i, c_i))]_i`:
`mu_c = m_c + k_c alpha`, `Sigma_{cc'} = k((x, c), (x, c')) - (L^{-1} k_c)^T (L^{-1} k_c')`.
Every kernel value comes from the fitted GPyTorch modules; the result equals `MultiTaskGP.posterior` (tested)
but takes one triangular solve per context for all genes instead of gpytorch's per-chunk lazy algebra, which
took ~8-13 s for 4,000 genes x 3 contexts on 2 loaded cores (measured).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import MultiTaskGP
from botorch.models.transforms import Normalize
from botorch.models.kernels.positive_index import PositiveIndexKernel
from botorch.models.utils.priors import BetaPrior
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from gpytorch.kernels import Kernel, MaternKernel, ScaleKernel
from gpytorch.priors import GammaPrior, LogNormalPrior
from gpytorch.mlls import ExactMarginalLogLikelihood

from perturbloop.device import default_device
from surrogates.gp import GPSurrogate, unit_bounds

# keyword arguments of MultiTaskGP for each `task_prior` (module docstring)
TASK_PRIORS: dict[str, Callable[[], dict]] = {
    "weak": lambda: {"task_covar_prior": BetaPrior(concentration1=1.0, concentration0=3.0)},
    "botorch": lambda: {},
    "none": lambda: {"task_covar_prior": None},
}
# Initial task covariance: factor 0.3 and unit variances, correlations ~0.08 (0.08 x rank). BoTorch's default
# (factor ~ U(0, 1), random) starts at correlations ~0.75, which 15 L-BFGS iterations barely move: on 16 GWT genes x
# 3 timepoints (sample correlations with 48 h -0.47..0.51) the fitted correlations were 0.16-0.66, mean 0.5;
# 200 iterations gave 0-0.26 (measured, 5 seeds). A fixed start also makes the fit reproducible.
INIT_TASK_FACTOR = 0.3
MAX_FIT_ITER = 15  # L-BFGS-B iterations per fit: a fit of ~300 points stays within seconds
MIN_OBS = 3  # IndependentContextGP: fewer observations in a context -> that context keeps the pooled prior
TIME_RANK = 1  # rank of W beside the time kernel: one shared "regulator strength" axis, time does the rest
# Matern length scale over u = log(1 + hours): median e^0.7 ~ 2 log-units (8 h -> 48 h is 1.7 apart, rest -> 8 h 2.2)
TIME_LENGTHSCALE_PRIOR = (0.7, 0.6)  # LogNormal(loc, scale)
QUERY_CHUNK = 2048  # genes per block of the joint posterior (memory ~ n x chunk per context)


@dataclass
class ContextPosterior:
    """Joint posterior of `m` genes over `C` contexts: `mean` (`m x C`), `cov` (`m x C x C`), and the
    observation-noise variance of one measurement in each context, `noise` (`C`); original units, float64, CPU."""

    mean: torch.Tensor
    cov: torch.Tensor
    noise: torch.Tensor

    def marginal(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance (`m` each) in context `c`."""
        return self.mean[:, c], self.cov[:, c, c].clamp_min(0)


def _check(X: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor, n_contexts: int) -> None:
    if not (X.shape[0] == ctx.shape[0] == y.shape[0]):
        raise ValueError(f"X, ctx and y disagree in length: {X.shape[0]}, {ctx.shape[0]}, {y.shape[0]}")
    if X.shape[0] < 2:
        raise ValueError("a context model needs at least 2 observations")
    if ctx.numel() and (int(ctx.min()) < 0 or int(ctx.max()) >= n_contexts):
        raise ValueError(f"context indices must lie in 0..{n_contexts - 1}")


class MultiTaskContextGP:
    """ICM multi-task GP over gene features x context (module docstring)."""

    name = "multitask"

    def __init__(self, n_contexts: int, *, bounds: torch.Tensor | None = None, rank: int | None = None,
                 max_iter: int = MAX_FIT_ITER, task_prior: Literal["weak", "botorch", "none"] = "weak",
                 hours: Sequence[float | None] | None = None, device: torch.device | None = None):
        if task_prior not in TASK_PRIORS:
            raise ValueError(f"task_prior must be one of {', '.join(TASK_PRIORS)}, got {task_prior!r}")
        if hours is not None:
            hours = list(hours)
            if len(hours) != n_contexts:
                raise ValueError(f"hours: {len(hours)} value(s) for {n_contexts} contexts (None for a non-timepoint)")
            bad = [h for h in hours if h is not None and not (float(h) >= 0 and math.isfinite(float(h)))]
            if bad:
                raise ValueError(f"hours must be finite and >= 0 (None: not a timepoint), got {bad}")
            if sum(h is not None for h in hours) < 2:
                hours = None  # fewer than two timepoints: nothing for a kernel over time to relate
        self.hours = hours
        self.n_contexts = n_contexts
        self.bounds = bounds  # 2 x d gene-feature bounds over the whole pool: inputs mapped to the unit cube
        self.rank = rank
        self.task_prior = task_prior
        self.max_iter = max_iter
        self.device = device or default_device()
        self.model: MultiTaskGP | None = None

    def fit(self, X: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor, genes: torch.Tensor | None = None) -> None:
        """`X`: `n x d` gene features, `ctx`: `n` context indices, `y`: `n` values, `genes`: `n` gene ids (which
        rows are the same gene; default: rows with equal features)."""
        _check(X, ctx, y, self.n_contexts)
        dev = self.device
        d = X.shape[-1]
        train_X = torch.cat([self._with_genes(X, genes), ctx.to(dev, torch.float64).reshape(-1, 1)], -1)
        bounds = None if self.bounds is None else unit_bounds(self.bounds.to(dev, torch.float64))
        data_kernel = ScaleKernel(get_covar_module_with_dim_scaled_prior(ard_num_dims=d, active_dims=list(range(d)))) \
            + ScaleKernel(SameGeneKernel(active_dims=[d]))
        kwargs = dict(task_feature=-1, covar_module=data_kernel,
                      input_transform=Normalize(d=d + 2, indices=list(range(d)), bounds=bounds),  # features only
                      all_tasks=list(range(self.n_contexts)), **TASK_PRIORS[self.task_prior]())
        y2 = y.reshape(-1, 1).to(dev, torch.float64)
        if self.hours is None:
            model = MultiTaskGP(train_X, y2, rank=self.rank, **kwargs)
        else:
            model = TimeMultiTaskGP(train_X, y2, hours=self.hours, rank=self.rank or TIME_RANK, **kwargs)
        with torch.no_grad():  # contexts start nearly unrelated (INIT_TASK_FACTOR): transfer must be shown by the data
            task = model.covar_module.kernels[1]
            task.covar_factor = torch.full_like(task.covar_factor, INIT_TASK_FACTOR)
            task.initialize(raw_var=task.raw_var_constraint.inverse_transform(torch.ones_like(task.var)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model),
                             optimizer_kwargs={"options": {"maxiter": self.max_iter}})
        model.eval()
        self.model = model

    def _with_genes(self, X: torch.Tensor, genes: torch.Tensor | None) -> torch.Tensor:
        """`n x (d + 1)`: the features and the gene-id column (default ids: `_gene_ids(X)`), on the device."""
        genes = _gene_ids(X) if genes is None else genes
        return torch.cat([X.to(self.device, torch.float64), genes.to(self.device, torch.float64).reshape(-1, 1)], -1)

    def task_correlation(self) -> torch.Tensor:
        """`C x C` correlation between contexts, `B_cc' / sqrt(B_cc B_c'c')`, from the learned context covariance
        `B` (with `hours`, its time part included)."""
        if self.model is None:
            raise RuntimeError("MultiTaskContextGP: fit first")
        with torch.no_grad():
            B = self.model.covar_module.kernels[1].covar_matrix.to_dense().cpu()
        s = B.diagonal().clamp_min(1e-12).sqrt()
        return B / s[:, None] / s[None, :]

    @torch.no_grad()
    def joint(self, X: torch.Tensor, genes: torch.Tensor | None = None) -> ContextPosterior:
        """`X`: `m x d` gene features, `genes`: their `m` gene ids (as in `fit`)."""
        if self.model is None:
            raise RuntimeError("MultiTaskContextGP.joint called before fit")
        return _icm_joint(self.model, self._with_genes(X, genes), self.n_contexts)


class TimeIndexKernel(PositiveIndexKernel):
    """Task covariance with a smooth part over time: `B = W W^T + diag(v) + s k_M(u_c, u_c') m_c m_c'`, normalised
    so that `B[0, 0] = 1` (as `PositiveIndexKernel`); `u_c = log(1 + hours_c)`, `m_c = 1` for a timepoint and 0 for
    a context without hours, `k_M` Matern-5/2 with a LogNormal length-scale prior, `s` its output scale.

    Example:
        >>> TimeIndexKernel(4, hours=[None, 0, 8, 48], rank=1, active_dims=[17]).covar_matrix  # K562 + 3 timepoints
    """

    def __init__(self, num_tasks: int, *, hours: Sequence[float | None], rank: int = TIME_RANK, **kwargs):
        super().__init__(num_tasks, rank=rank, **kwargs)
        self.register_buffer("log_hours", torch.tensor([math.log1p(h) if h is not None else 0.0 for h in hours],
                                                       dtype=torch.float64).reshape(-1, 1))
        self.register_buffer("is_time", torch.tensor([h is not None for h in hours], dtype=torch.float64))
        loc, scale = TIME_LENGTHSCALE_PRIOR
        self.time_kernel = ScaleKernel(MaternKernel(nu=2.5, lengthscale_prior=LogNormalPrior(loc, scale)),
                                       outputscale_prior=GammaPrior(2.0, 2.0))

    @property
    def _lower_triangle_corr(self) -> torch.Tensor:
        """Correlations of the index part `W W^T + diag(v)` alone: the `task_prior` regularises that part; the time
        part has its own length-scale and output-scale priors (a Beta prior with mode 0 on the whole `B` would pull
        neighbouring timepoints apart)."""
        cf = self.covar_factor
        covar = cf @ cf.transpose(-1, -2) + torch.diag_embed(self.var)
        d = covar.diagonal(dim1=-1, dim2=-2).sqrt()
        rows, cols = torch.tril_indices(self.num_tasks, self.num_tasks, offset=-1)
        return (covar / (d.unsqueeze(-1) * d.unsqueeze(-2)))[..., rows, cols]

    def _eval_covar_matrix(self) -> torch.Tensor:
        cf = self.covar_factor
        u = self.log_hours.to(cf)
        time = self.time_kernel(u).to_dense() * (self.is_time[:, None] * self.is_time[None, :]).to(cf)
        covar = cf @ cf.transpose(-1, -2) + torch.diag_embed(self.var) + time
        if self.unit_scale_for_target:
            covar = covar / covar[..., self.target_task_index, self.target_task_index].unsqueeze(-1).unsqueeze(-1)
        return covar

    def time_correlation(self) -> torch.Tensor:
        """`C x C` correlation of the time part alone, `k_M(u_c, u_c') / s` (1 on the diagonal)."""
        with torch.no_grad():
            return self.time_kernel.base_kernel(self.log_hours).to_dense()


class TimeMultiTaskGP(MultiTaskGP):
    """BoTorch's `MultiTaskGP` with `TimeIndexKernel` as the task covariance (the rest unchanged)."""

    def __init__(self, train_X: torch.Tensor, train_Y: torch.Tensor, *, hours: Sequence[float | None],
                 rank: int = TIME_RANK, **kwargs):
        super().__init__(train_X, train_Y, rank=rank, **kwargs)
        index = self.covar_module.kernels[1]
        prior = next((p for name, _, p, _, _ in index.named_priors() if name == "IndexKernelPrior"), None)
        self.covar_module = self.covar_module.kernels[0] * TimeIndexKernel(
            self.num_tasks, hours=hours, rank=rank, task_prior=prior, active_dims=index.active_dims)
        self.to(train_X)


class SameGeneKernel(Kernel):
    """`k(a, b) = 1` if `a` and `b` name the same gene (one input column: a gene id), else 0.

    The gene-specific part of an effect, shared across contexts through `B`: gene features explain little of a
    regulator's effect, so without it a context could tell nothing about the same gene elsewhere."""

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params) -> torch.Tensor:
        if diag:
            return (x1[..., 0] == x2[..., 0]).to(x1.dtype)
        return (x1[..., :, None, 0] == x2[..., None, :, 0]).to(x1.dtype)


def _gene_ids(X: torch.Tensor) -> torch.Tensor:
    """`n` ids, equal for rows with equal features (a fixed random projection of the row)."""
    w = torch.randn(X.shape[-1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return X.to(torch.float64).cpu() @ w


def _icm_joint(model: MultiTaskGP, X: torch.Tensor, C: int) -> ContextPosterior:
    """Per-gene joint posterior over all contexts of a fitted ICM `MultiTaskGP` (formula: module docstring)."""
    train_X = model.train_inputs[0]  # already transformed (BoTorch sets them so in eval mode)
    t = train_X[:, -1].long()
    y = model.train_targets  # standardised
    kern = model.covar_module
    noise = model.likelihood.noise.reshape(-1)
    noise = noise.expand(C) if noise.numel() == 1 else noise
    means = torch.stack([m.constant.reshape(()) for m in model.mean_module.base_means])
    K = kern(train_X).to_dense() + torch.diag(noise[t])
    L = torch.linalg.cholesky(K + 1e-8 * torch.eye(len(K), dtype=K.dtype, device=K.device))
    alpha = torch.cholesky_solve((y - means[t]).unsqueeze(-1), L).squeeze(-1)
    out_mean, out_cov = [], []
    for s in range(0, X.shape[0], QUERY_CHUNK):
        xq = X[s:s + QUERY_CHUNK]
        m = xq.shape[0]
        aug = [model.transform_inputs(torch.cat([xq, torch.full((m, 1), float(c), dtype=xq.dtype, device=xq.device)], -1))
               for c in range(C)]
        V, mu = [], []
        for c in range(C):
            kc = kern(aug[c], train_X).to_dense()  # m x n
            mu.append(means[c] + kc @ alpha)
            V.append(torch.linalg.solve_triangular(L, kc.T, upper=False))  # n x m
        cov = torch.empty(m, C, C, dtype=xq.dtype, device=xq.device)
        for a in range(C):
            for b in range(a, C):
                prior = kern(aug[a], aug[b], diag=True)
                cov[:, a, b] = cov[:, b, a] = prior - (V[a] * V[b]).sum(0)
        out_mean.append(torch.stack(mu, -1))
        out_cov.append(cov)
    mean, cov = torch.cat(out_mean), torch.cat(out_cov)
    # back to original units (Standardize: y = mean_y + std_y * y_s)
    tf = model.outcome_transform
    mu_y, sd_y = (tf.means.reshape(()), tf.stdvs.reshape(())) if tf is not None else (0.0, 1.0)
    return ContextPosterior((mu_y + sd_y * mean).cpu(), (sd_y ** 2 * cov).cpu(), (sd_y ** 2 * noise).detach().cpu())


class IndependentContextGP:
    """One `SingleTaskGP` per context (module docstring): zero covariance between contexts."""

    name = "independent"

    def __init__(self, n_contexts: int, *, bounds: torch.Tensor | None = None, max_iter: int = MAX_FIT_ITER,
                 device: torch.device | None = None):
        self.n_contexts = n_contexts
        self.bounds = bounds
        self.max_iter = max_iter
        self.device = device
        self.models: dict[int, GPSurrogate] = {}
        self._prior = (0.0, 1.0)  # mean and variance (also the noise) for contexts without a model

    def fit(self, X: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor, genes: torch.Tensor | None = None) -> None:
        _check(X, ctx, y, self.n_contexts)
        y = y.to(torch.float64)
        self._prior = (float(y.mean()), float(y.var()))
        self.models = {}
        for c in range(self.n_contexts):
            sel = ctx == c
            if int(sel.sum()) >= MIN_OBS:
                self.models[c] = GPSurrogate(self.bounds, max_iter=self.max_iter, device=self.device)
                self.models[c].fit(X[sel], y[sel])

    @torch.no_grad()
    def joint(self, X: torch.Tensor, genes: torch.Tensor | None = None) -> ContextPosterior:
        m, C = X.shape[0], self.n_contexts
        mean = torch.full((m, C), self._prior[0], dtype=torch.float64)
        cov = torch.diag_embed(torch.full((m, C), self._prior[1], dtype=torch.float64))
        noise = torch.full((C,), self._prior[1], dtype=torch.float64)
        for c, gp in self.models.items():
            post = gp.posterior(X)
            mean[:, c], cov[:, c, c] = post.mean, post.variance
            noise[c] = _noise(gp, X)
        return ContextPosterior(mean, cov, noise)


class PooledContextGP:
    """One `SingleTaskGP` on every observation, context ignored (module docstring)."""

    name = "pooled"

    def __init__(self, n_contexts: int, *, bounds: torch.Tensor | None = None, max_iter: int = MAX_FIT_ITER,
                 device: torch.device | None = None):
        self.n_contexts = n_contexts
        self.gp = GPSurrogate(bounds, max_iter=max_iter, device=device)

    def fit(self, X: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor, genes: torch.Tensor | None = None) -> None:
        _check(X, ctx, y, self.n_contexts)
        self.gp.fit(X, y.to(torch.float64))

    @torch.no_grad()
    def joint(self, X: torch.Tensor, genes: torch.Tensor | None = None) -> ContextPosterior:
        post = self.gp.posterior(X)
        C = self.n_contexts
        return ContextPosterior(post.mean[:, None].expand(-1, C).clone(),
                                post.variance[:, None, None].expand(-1, C, C).clone(),
                                torch.full((C,), _noise(self.gp, X), dtype=torch.float64))


def _noise(gp: GPSurrogate, X: torch.Tensor) -> float:
    """The fitted observation-noise variance of `gp` in original units: predictive minus latent variance at `X[0]`."""
    x1 = X[:1].to(gp.device, torch.float64)
    return float(gp.model.posterior(x1, observation_noise=True).variance.reshape(())
                 - gp.model.posterior(x1).variance.reshape(()))
