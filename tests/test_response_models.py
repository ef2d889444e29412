"""Response surrogates, baselines, metrics, pair design spaces and response policies.

Synthetic data with a planted answer: a linear (or non-linear) response of many genes to a few
features, so a model that learns anything must beat the mean baseline, and the additive prior
of pairs must be used when it is given.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from perturbloop.errors import ConfigError
from perturbloop.response_metrics import (
    interaction_pearson,
    l2_top_expressed,
    mse_top_de,
    pearson_delta,
    response_metrics,
    rowwise_pearson,
)

G = 40  # genes of the planted responses


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Small models: one thread (two shared cores spin-wait badly on tiny matmuls)."""


def planted(n: int, d: int = 8, seed: int = 0, nonlinear: bool = False):
    """`n x d` features and `n x G` responses driven by 3 features through a rank-3 gene map."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    B = torch.randn(3, G, generator=g, dtype=torch.float64)
    h = torch.tanh(X[:, :3]) if nonlinear else X[:, :3]
    Y = h @ B + 0.05 * torch.randn(n, G, generator=g, dtype=torch.float64)
    return X, Y


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean())


# --- metrics on hand-made numbers --------------------------------------------------------------------

def test_mse_top_de_averages_over_each_perturbations_own_de_genes():
    pred = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    truth = np.array([[0.0, 2.0, 5.0, 4.0], [1.0, 0.0, 0.0, 3.0]])
    # row 0 on genes 0, 2: (1 + 4) / 2 = 2.5; row 1 on gene 3: 9 -> mean 5.75
    assert mse_top_de(pred, truth, [[0, 2], [3]]) == pytest.approx(5.75)


def test_pearson_delta_per_row_then_mean_and_constant_rows_score_zero():
    truth = np.array([[2.0, 4.0, 6.0], [1.0, 2.0, 3.0]])
    pred = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert pearson_delta(pred, truth) == pytest.approx(0.0)  # +1 and -1
    assert rowwise_pearson(pred, truth) == pytest.approx([1.0, -1.0])
    assert rowwise_pearson(np.array([[5.0, 5.0, 5.0]]), truth[:1]) == pytest.approx([0.0])
    # on a gene subset: genes 0 and 2 of row 0 (still +1), genes 0 and 1 of row 1 (-1)
    assert pearson_delta(pred, truth, [[0, 2], [0, 1]]) == pytest.approx(0.0)


def test_l2_over_expressed_genes_and_ratio_vs_additive():
    truth = np.zeros((2, 3))
    pred = np.array([[3.0, 4.0, 100.0], [0.0, 0.0, 0.0]])
    assert l2_top_expressed(pred, truth, [0, 1]) == pytest.approx(2.5)  # (5 + 0) / 2
    additive = np.array([[6.0, 8.0, 0.0], [0.0, 0.0, 0.0]])
    m = response_metrics(pred, truth, expressed_idx=[0, 1], additive=additive, de_idx=[[0], [1]])
    assert m["l2_top_expressed"] == pytest.approx(2.5) and m["l2_additive"] == pytest.approx(5.0)
    assert m["l2_ratio_vs_additive"] == pytest.approx(0.5)
    assert m["mse_top20_de"] == pytest.approx((9 + 0) / 2)


def test_interaction_pearson_across_pairs_for_a_scalar_phenotype():
    add = np.array([[1.0], [1.0], [1.0]])
    truth = add + np.array([[1.0], [2.0], [3.0]])
    assert interaction_pearson(add + np.array([[2.0], [4.0], [6.0]]), truth, add) == pytest.approx(1.0)
    assert interaction_pearson(add + np.array([[3.0], [2.0], [1.0]]), truth, add) == pytest.approx(-1.0)
    m = response_metrics(truth.copy(), truth, additive=add)
    assert set(m) == {"mse", "l2_top_expressed", "l2_additive", "l2_ratio_vs_additive", "interaction_pearson"}


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        response_metrics(np.zeros((2, 3)), np.zeros((2, 4)))


# --- posterior arithmetic -----------------------------------------------------------------------------

def test_posterior_maps_latent_moments_to_genes():
    from surrogates.response import ResponsePosterior

    g = torch.Generator().manual_seed(1)
    B = torch.linalg.qr(torch.randn(G, 3, generator=g, dtype=torch.float64))[0].T  # 3 x G orthonormal rows
    post = ResponsePosterior(torch.randn(5, 3, generator=g, dtype=torch.float64),
                             torch.rand(5, 3, generator=g, dtype=torch.float64), B,
                             torch.randn(G, generator=g, dtype=torch.float64), torch.randn(5, G, generator=g, dtype=torch.float64))
    assert post.mean.shape == (5, G) and post.variance.shape == (5, G)
    assert torch.allclose(post.total_variance, post.variance.sum(1))
    assert torch.allclose(post.total_variance, post.latent_var.sum(1))  # orthonormal basis
    w = torch.randn(G, generator=g, dtype=torch.float64)
    m, v = post.project(w)
    assert torch.allclose(m, post.mean @ w)
    assert torch.allclose(v, post.latent_var @ (B @ w).square())


def test_pca_output_reconstructs_a_low_rank_response():
    from surrogates.response import PCAOutput

    _, Y = planted(30)
    pca = PCAOutput(rank=10)
    Z = pca.fit_transform(Y)
    assert Z.shape == (30, 10)
    err = (pca.center + Z @ pca.basis - Y).abs().max()
    assert err < 0.2  # rank 3 signal + small noise
    assert PCAOutput(rank=10).fit_transform(Y[:4]).shape == (4, 3)  # k <= n - 1


# --- surrogates ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ensemble", "gp", "linear", "mean"])
def test_response_surrogates_fit_predict_shapes(kind):
    from surrogates import make_surrogate

    X, Y = planted(25)
    m = make_surrogate(kind, "response", **({"epochs": 50} if kind == "ensemble" else {}))
    m.fit(X[:20], Y[:20])
    post = m.posterior(X[20:])
    assert post.mean.shape == (5, G) and post.variance.shape == (5, G) and post.total_variance.shape == (5,)
    assert post.mean.dtype == torch.float64 and post.mean.device.type == "cpu"
    assert torch.isfinite(post.mean).all() and (post.variance >= 0).all()


def test_models_recover_a_planted_linear_response_and_beat_the_mean():
    from surrogates.response import EnsembleResponse, LowRankGPResponse
    from surrogates.response_baselines import LinearResponse, MeanResponse

    X, Y = planted(140)
    tr, te = slice(0, 100), slice(100, 140)
    errs = {}
    for m in (MeanResponse(), LinearResponse(), EnsembleResponse(seed=0), LowRankGPResponse(max_iter=30)):
        m.fit(X[tr], Y[tr])
        errs[m.name] = mse(m.posterior(X[te]).mean, Y[te])
    assert errs["linear"] < 0.01 * errs["mean"]  # the planted map is linear: ridge nails it
    assert errs["ensemble"] < 0.2 * errs["mean"]
    assert errs["gp"] < 0.2 * errs["mean"]


def test_ensemble_learns_a_nonlinear_response_better_than_linear():
    from surrogates.response import EnsembleResponse
    from surrogates.response_baselines import LinearResponse

    X, Y = planted(300, d=4, seed=3, nonlinear=True)
    X = X * 2.0  # deep into tanh's saturation
    Y = torch.tanh(X[:, :3]) @ torch.randn(3, G, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ens, lin = EnsembleResponse(seed=1, epochs=500), LinearResponse()
    for m in (ens, lin):
        m.fit(X[:250], Y[:250])
    assert mse(ens.posterior(X[250:]).mean, Y[250:]) < mse(lin.posterior(X[250:]).mean, Y[250:])


def test_ensemble_is_more_uncertain_away_from_the_data():
    from surrogates.response import EnsembleResponse

    X, Y = planted(60)
    m = EnsembleResponse(seed=0)
    m.fit(X, Y)
    near = m.posterior(X).total_variance.mean()
    far = m.posterior(X * 4.0).total_variance.mean()
    assert far > 2 * near
    assert m.device.type == "cpu"  # PERTURBLOOP_DEVICE=cpu in tests; CUDA otherwise when present


def test_ensemble_shrinks_to_the_mean_when_features_carry_nothing():
    """Out-of-bag shrinkage: features unrelated to the response -> predictions near the mean."""
    from surrogates.response import EnsembleResponse
    from surrogates.response_baselines import MeanResponse

    g = torch.Generator().manual_seed(5)
    X = torch.randn(40, 16, generator=g, dtype=torch.float64)
    Y = torch.randn(40, G, generator=g, dtype=torch.float64)
    ens, mean = EnsembleResponse(seed=0), MeanResponse()
    for m in (ens, mean):
        m.fit(X[:30], Y[:30])
    assert mse(ens.posterior(X[30:]).mean, Y[30:]) < 1.15 * mse(mean.posterior(X[30:]).mean, Y[30:])
    assert float(ens.shrinkage.mean()) < 0.5


def test_gp_latent_posterior_matches_botorch():
    from surrogates.response import LowRankGPResponse

    X, Y = planted(40)
    m = LowRankGPResponse(rank=4, max_iter=20)
    m.fit(X[:30], Y[:30])
    mean, var = m.latent(X[30:])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoTorch's unit-cube check: the inputs are standardised instead
        post = m.model.posterior(m.std(X[30:]))
    assert torch.allclose(mean, post.mean, atol=1e-8) and torch.allclose(var, post.variance, atol=1e-8)


def test_offset_models_learn_the_residual_and_additive_returns_the_prior():
    from surrogates.response import EnsembleResponse
    from surrogates.response_baselines import AdditiveResponse, LinearResponse, MeanResponse

    X, R = planted(120)
    off = torch.randn(120, G, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 3
    Y = off + R
    add = AdditiveResponse()
    add.fit(X[:90], Y[:90], off[:90])
    assert torch.equal(add.posterior(X[90:], off[90:]).mean, off[90:])
    e_add = mse(off[90:], Y[90:])
    for m in (LinearResponse(), EnsembleResponse(seed=0)):
        m.fit(X[:90], Y[:90], off[:90])
        assert mse(m.posterior(X[90:], off[90:]).mean, Y[90:]) < 0.3 * e_add
        no_prior = m.posterior(X[90:])  # variances without the prior are fine, the mean is not
        assert torch.allclose(no_prior.total_variance, m.posterior(X[90:], off[90:]).total_variance)
        with pytest.raises(ValueError, match="offset"):
            no_prior.mean
    with pytest.raises(ValueError, match="pairs only"):
        AdditiveResponse().fit(X, Y)
    mean = MeanResponse()
    mean.fit(X[:90], Y[:90], off[:90])  # ignores the prior
    assert torch.allclose(mean.posterior(X[:2]).mean[0], Y[:90].mean(0))


def test_one_registry_serves_both_campaign_kinds():
    from surrogates import make_surrogate, surrogate_names
    from surrogates.base import SurrogatePosterior

    assert set(surrogate_names("response")) == {"ensemble", "gp", "linear", "mean", "additive"}
    assert set(surrogate_names("screen")) == {"gp", "mean"} and make_surrogate("mean").name == "mean"
    assert type(make_surrogate("gp", "response")).__name__ == "LowRankGPResponse"
    with pytest.raises(ConfigError, match="unknown response surrogate"):
        make_surrogate("transformer", "response")
    with pytest.raises(ConfigError, match="unknown screen surrogate 'ensemble'"):
        make_surrogate("ensemble")
    # a one-readout posterior is already scalar: scalarising it with w = [s] scales it
    post = SurrogatePosterior(torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 2.0], dtype=torch.float64))
    s = post.scalarise(torch.tensor([-2.0]))
    assert s.mean.tolist() == [-2.0, 4.0] and s.variance.tolist() == [2.0, 8.0]


# --- pair spaces and chunked scoring ------------------------------------------------------------------

def _pair_space(n_genes: int = 30, d: int = 5, with_singles: bool = True, **kw):
    from perturbloop.design_space import PairSpace

    g = torch.Generator().manual_seed(2)
    genes = [f"G{i:03d}" for i in range(n_genes)]
    gx = torch.randn(n_genes, d, generator=g, dtype=torch.float64)
    singles = torch.randn(n_genes, G, generator=g, dtype=torch.float64) if with_singles else None
    return PairSpace(genes, gx, None, singles, **kw), gx, singles


def test_pair_space_features_are_symmetric_and_offset_is_the_sum_of_singles():
    from perturbloop.design_space import PairSpace

    space, gx, singles = _pair_space()
    assert len(space) == 30 * 29 // 2
    i = space.indices(["G003+G017", "G017+G003"])
    assert int(i[0]) == int(i[1])  # one candidate, whatever the order
    f = space.features(i[:1])
    assert f.shape == (1, space.dim) == (1, len(space.feature_names))
    assert torch.allclose(f[0, :5], gx[3] + gx[17]) and torch.allclose(f[0, 5:10], gx[3] * gx[17])
    assert torch.allclose(space.offset(i[:1])[0], singles[3] + singles[17])
    assert space.labels_at(i[:1]) == ["G003+G017"]
    # explicit pairs, and an unknown single contributes nothing to the offset
    s2 = singles.clone()
    s2[3] = float("nan")
    sub = PairSpace(space.genes, gx, ["G017+G003", "G001+G002"], s2)
    j = sub.indices(["G003+G017"])
    assert torch.allclose(sub.offset(j)[0], singles[17]) and float(sub.features(j)[0, -1]) == 1.0  # one single known
    with pytest.raises(KeyError, match="not in the design space"):
        sub.indices(["G001+G003"])


def test_program_score_on_pairs_uses_the_singles_scores():
    from acquisition.response import ProgramPolicy
    from surrogates.response import EnsembleResponse

    space, _, singles = _pair_space(n_genes=25)
    w = torch.zeros(G, dtype=torch.float64)
    w[[1, 4, 9]] = 1.0
    idx = torch.arange(len(space))
    assert torch.allclose(space.offset_score(idx, w), space.offset(idx) @ w)
    w[[1, 4, 9]] = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)  # the same tensor, other weights
    assert torch.allclose(space.offset_score(idx, w), space.offset(idx) @ w)
    w[[1, 4, 9]] = 1.0
    obs = torch.arange(0, len(space), 6)
    m = EnsembleResponse(seed=0, epochs=50)
    m.fit(space.features(obs), space.offset(obs) + 0.3 * torch.tanh(space.features(obs)[:, :1]), space.offset(obs))
    pol = ProgramPolicy(weights=w, beta=0.5, interaction=True, absolute=True)
    post = m.posterior(space.features(idx), space.offset(idx))
    mean, var = post.project(w)
    ref = (mean - space.offset(idx) @ w).abs() + 0.5 ** 0.5 * var.sqrt()
    assert torch.allclose(pol.score(m, space, idx), ref)


def test_pair_labels_round_trip_over_all_pairs():
    space, _, _ = _pair_space(n_genes=50, with_singles=False)
    idx = torch.arange(len(space))
    assert torch.equal(space.indices(space.labels_at(idx)), idx)


@pytest.mark.parametrize("chunk", [1, 7, 100, 10_000])
def test_chunked_top_k_matches_scoring_everything_at_once(chunk):
    from perturbloop.design_space import top_k

    g = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 50, (1000,), generator=g).to(torch.float64)  # many ties
    exclude = torch.rand(1000, generator=g) < 0.3
    idx, s = top_k(1000, lambda i: scores[i], 25, chunk=chunk, exclude=exclude)
    masked = scores.masked_fill(exclude, -float("inf"))
    ref = torch.argsort(-masked, stable=True)[:25]
    assert idx.tolist() == ref.tolist() and torch.equal(s, scores[ref])


def test_chunked_pair_scoring_with_a_surrogate_matches_unchunked():
    from acquisition.response import UncertaintyPolicy
    from surrogates.response import EnsembleResponse

    space, _, _ = _pair_space(n_genes=40)
    obs_idx = torch.arange(0, len(space), 13)
    X, off = space.features(obs_idx), space.offset(obs_idx)
    Y = off + torch.tanh(X[:, :3]) @ torch.randn(3, G, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = EnsembleResponse(seed=0, epochs=100)
    m.fit(X, Y, off)
    observed = {lab: None for lab in space.labels_at(obs_idx)}
    small = UncertaintyPolicy(chunk=7).select(m, space, observed, 12, pending=["G000+G001"])
    big = UncertaintyPolicy(chunk=1_000_000).select(m, space, observed, 12, pending=["G000+G001"])
    assert small.labels == big.labels
    assert [i.acq_value for i in small.items] == pytest.approx([i.acq_value for i in big.items])
    full = m.posterior(space.features(torch.arange(len(space))), space.offset(torch.arange(len(space)))).total_variance
    assert small.items[0].acq_value == pytest.approx(float(full.max()), rel=1e-6) or small.labels[0] in observed


# --- policies -----------------------------------------------------------------------------------------

def _singles_setup(n: int = 60):
    from perturbloop.design_space import SingleSpace
    from surrogates.response import EnsembleResponse

    X, Y = planted(n)
    space = SingleSpace([f"G{i:03d}" for i in range(n)], X)
    obs = {space.label(i): Y[i].numpy() for i in range(0, n, 4)}
    m = EnsembleResponse(seed=0, epochs=100)
    idx = space.indices(list(obs))
    m.fit(X[idx], Y[idx])
    return space, obs, m, Y


def test_uncertainty_picks_the_largest_total_variance_never_observed_or_pending():
    from acquisition.response import UncertaintyPolicy

    space, obs, m, _ = _singles_setup()
    pending = ["G001", "G002"]
    prop = UncertaintyPolicy().select(m, space, obs, 5, pending)
    assert len(prop.labels) == 5 and not set(prop.labels) & (set(obs) | set(pending))
    tv = m.posterior(space.X).total_variance
    avail = [i for i in range(len(space)) if space.label(i) not in obs and space.label(i) not in pending]
    best = sorted(avail, key=lambda i: -float(tv[i]))[:5]
    assert prop.labels == space.labels_at(best)
    assert all(it.sd is not None and it.rationale.startswith("most uncertain") for it in prop.items)


def test_pair_batches_cap_picks_per_gene():
    from acquisition.response import UncertaintyPolicy
    from perturbloop.design_space import gene_counts
    from surrogates.response import EnsembleResponse

    space, _, _ = _pair_space(n_genes=20)
    idx = torch.arange(0, len(space), 5)
    m = EnsembleResponse(seed=0, epochs=50)
    m.fit(space.features(idx), space.offset(idx) + 0.1, space.offset(idx))
    obs = {lab: None for lab in space.labels_at(idx)}
    prop = UncertaintyPolicy(max_per_gene=2).select(m, space, obs, 10)
    counts = gene_counts(space, space.indices(prop.labels).tolist())
    assert len(prop.labels) == 10 and counts.max() <= 2


def test_diversity_random_and_program_policies():
    from acquisition import make_policy
    from acquisition.response import ProgramPolicy

    space, obs, m, Y = _singles_setup()
    d = make_policy("diversity", "response", seed=0).select(None, space, obs, 6)  # an alias of coreset
    assert d.policy == "coreset"
    assert len(set(d.labels)) == 6 and not set(d.labels) & set(obs)
    assert all(a is not None for a in [i.acq_value for i in d.items])
    assert [i.acq_value for i in d.items] == sorted([i.acq_value for i in d.items], reverse=True)
    r1 = make_policy("random", "response", seed=3).select(None, space, obs, 6)
    assert r1.labels == make_policy("random", "response", seed=3).select(None, space, obs, 6).labels
    w = torch.zeros(G, dtype=torch.float64)
    w[:5] = 0.2
    p = ProgramPolicy(weights=w, beta=0.0).select(m, space, obs, 3)
    pred = m.posterior(space.X).mean @ w
    avail = [i for i in range(len(space)) if space.label(i) not in obs]
    assert p.labels == space.labels_at(sorted(avail, key=lambda i: -float(pred[i]))[:3])
    assert p.items[0].mean == pytest.approx(float(pred[space.indices(p.labels[:1])[0]]))
    with pytest.raises(ConfigError, match="program weights"):
        make_policy("program", "response")
    with pytest.raises(ConfigError, match="unknown response policy"):
        make_policy("bald", "response")
    with pytest.raises(ValueError, match="needs a fitted surrogate"):
        make_policy("uncertainty", "response").select(None, space, obs, 3)
