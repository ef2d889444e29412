"""The kernel over time of the multi-task context GP (issue 12): on synthetic effects with a known time structure
(a Matern correlation over log(1 + hours)), the fitted task correlation orders timepoints by their distance in
time, and a timepoint with no data is predicted from its neighbours, which an ICM without hours cannot do."""

from __future__ import annotations

import math

import pytest
import torch
from gpytorch.kernels import MaternKernel

from surrogates.multitask import MultiTaskContextGP, TimeIndexKernel

HOURS = [0.0, 2.0, 8.0, 24.0, 48.0]
TRUE_LENGTHSCALE = 1.5  # in log(1 + hours) units


def _true_correlation() -> torch.Tensor:
    k = MaternKernel(nu=2.5).double()
    k.lengthscale = TRUE_LENGTHSCALE
    u = torch.tensor([math.log1p(h) for h in HOURS], dtype=torch.float64).reshape(-1, 1)
    with torch.no_grad():
        return k(u).to_dense()


def _timecourse(n: int = 40, seed: int = 0):
    """`n` genes x 5 timepoints: each gene's effects over time ~ N(0, R) with R the true correlation, small noise;
    gene features are pure noise (the effect is the gene's own)."""
    g = torch.Generator().manual_seed(seed)
    R = _true_correlation()
    F = torch.randn(n, len(HOURS), generator=g, dtype=torch.float64) @ torch.linalg.cholesky(R).T
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return X, F, F + 0.05 * torch.randn(F.shape, generator=g, dtype=torch.float64)


def _long(X, Y, genes, contexts):
    gi = torch.as_tensor(genes).repeat_interleave(len(contexts))
    ci = torch.as_tensor(contexts).repeat(len(genes))
    return X[gi], ci, Y[gi, ci], gi


@pytest.mark.slow
def test_fitted_time_correlation_falls_with_distance_in_time():
    X, _, Y = _timecourse()
    model = MultiTaskContextGP(len(HOURS), hours=HOURS, max_iter=40)
    model.fit(*_long(X, Y, range(len(X)), range(len(HOURS))))
    fitted, sample = model.task_correlation(), torch.corrcoef(Y.T)  # sample: what 40 genes show of the truth
    adjacent = torch.stack([fitted[i, i + 1] for i in range(len(HOURS) - 1)])
    assert adjacent.min() > 0.4, fitted  # true 0.65-0.86
    assert fitted[0, 4] < adjacent.min() - 0.2, fitted  # rest vs 48 h: true 0.18
    assert fitted[0, 4] < fitted[0, 2] < fitted[0, 1], fitted  # farther in time, less alike
    assert (fitted - sample).abs().max() < 0.3, (fitted, sample)


@pytest.mark.slow
def test_a_timepoint_without_data_is_predicted_from_its_neighbours():
    """24 h is never measured; its effects are predicted from the same genes at 8 h and 48 h."""
    X, F, Y = _timecourse(seed=1)
    seen = [0, 1, 2, 4]
    data = _long(X, Y, range(len(X)), seen)
    err = {}
    for name, hours in (("time", HOURS), ("icm", None)):
        model = MultiTaskContextGP(len(HOURS), hours=hours, max_iter=40)
        model.fit(*data)
        mean = model.joint(X, torch.arange(len(X))).mean[:, 3]
        err[name] = float(((mean - F[:, 3]) ** 2).mean().sqrt())
    truth_sd = float(F[:, 3].std())
    assert err["time"] < 0.6 * truth_sd, err
    assert err["time"] < 0.8 * err["icm"], err


def test_a_context_without_hours_relates_through_the_shared_factor_only():
    kernel = TimeIndexKernel(3, hours=[None, 0.0, 8.0], rank=1, active_dims=[0]).double()
    with torch.no_grad():
        kernel.covar_factor = torch.tensor([[1e-6], [1e-6], [1e-6]], dtype=torch.float64)
        kernel.time_kernel.base_kernel.lengthscale = 3.0
        kernel.initialize(raw_var=kernel.raw_var_constraint.inverse_transform(torch.full((3,), 0.1, dtype=torch.float64)))
        B = kernel.covar_matrix
    corr = B / B.diagonal().sqrt()[:, None] / B.diagonal().sqrt()[None, :]
    assert corr[0, 1] == pytest.approx(0.0, abs=1e-6) and corr[0, 2] == pytest.approx(0.0, abs=1e-6)
    assert float(corr[1, 2]) > 0.3  # rest and 8 h, 2.2 apart in log-time with length scale 3


def test_bad_hours_are_refused():
    with pytest.raises(ValueError, match="2 value"):
        MultiTaskContextGP(3, hours=[0.0, 8.0])
    with pytest.raises(ValueError, match=">= 0"):
        MultiTaskContextGP(2, hours=[-1.0, 8.0])
    assert MultiTaskContextGP(2, hours=[None, 8.0]).hours is None  # one timepoint: plain ICM
