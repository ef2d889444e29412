"""Surrogates and acquisition policies on the small real IL2 pool (600 genes, GO features)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from perturbloop.errors import ConfigError

N_TRAIN = 150
SPLIT_SEED = 1


@dataclass
class Fitted:
    gp: object
    y: torch.Tensor  # |score| for every pool gene (the `hits` objective)
    train: np.ndarray
    test: np.ndarray
    observed: dict[str, float]


def _bounds(pool) -> torch.Tensor:
    return torch.stack([pool.X.min(0).values, pool.X.max(0).values])


@pytest.fixture(scope="module")
def fitted(small_pool, il2_screen) -> Fitted:
    from surrogates import make_surrogate

    torch.manual_seed(0)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(small_pool))
    train, test = perm[:N_TRAIN], perm[N_TRAIN:]
    y = torch.tensor(il2_screen.scores.abs().loc[small_pool.labels].to_numpy(), dtype=torch.float64)
    gp = make_surrogate("gp", bounds=_bounds(small_pool), max_iter=30)
    gp.fit(small_pool.X[train], y[train])
    observed = {small_pool.labels[i]: float(y[i]) for i in train}
    return Fitted(gp, y, train, test, observed)


# --- surrogates ----------------------------------------------------------------------------------

def test_gp_posterior_shapes_and_positive_variance(fitted, small_pool):
    post = fitted.gp.posterior(small_pool.X[fitted.test])
    n = len(fitted.test)
    assert post.mean.shape == (n,) and post.variance.shape == (n,)
    assert post.mean.dtype == torch.float64 and post.mean.device.type == "cpu"
    assert torch.isfinite(post.mean).all() and (post.variance > 0).all()
    assert torch.allclose(post.sd, post.variance.sqrt())
    assert fitted.gp.model is not None  # exposes the BoTorch model for qLogNEI


def test_gp_predicts_held_out_genes(fitted, small_pool):
    """GO features carry signal about |IL2 effect| (rho ~0.25-0.4 across splits)."""
    post = fitted.gp.posterior(small_pool.X[fitted.test])
    rho = spearmanr(post.mean.numpy(), fitted.y[fitted.test].numpy())[0]
    assert rho > 0.0


def test_gp_more_certain_at_observed_points(fitted, small_pool):
    var_train = fitted.gp.posterior(small_pool.X[fitted.train]).variance.mean()
    var_test = fitted.gp.posterior(small_pool.X[fitted.test]).variance.mean()
    assert var_train < var_test


def test_gp_posterior_chunking_matches_single_call(fitted, small_pool):
    from surrogates import gp as gp_module

    full = fitted.gp.posterior(small_pool.X)  # 600 rows: 3 chunks of 256
    assert len(full.mean) == len(small_pool) > gp_module.POSTERIOR_CHUNK
    part = fitted.gp.posterior(small_pool.X[300:310])
    assert torch.allclose(full.mean[300:310], part.mean) and torch.allclose(full.variance[300:310], part.variance)


def test_gp_needs_two_points_and_fit_before_posterior(small_pool):
    from surrogates import make_surrogate

    gp = make_surrogate("gp")
    with pytest.raises(RuntimeError, match="before fit"):
        gp.posterior(small_pool.X[:3])
    with pytest.raises(ValueError, match="at least 2"):
        gp.fit(small_pool.X[:1], torch.ones(1, dtype=torch.float64))


def test_gp_tolerates_constant_feature_column(small_pool, il2_screen):
    from surrogates import make_surrogate

    pool = small_pool.subset(range(40))
    X = torch.cat([pool.X, torch.zeros(len(pool), 1, dtype=torch.float64)], dim=1)  # e.g. an all-zero missing flag
    y = torch.tensor(il2_screen.scores.loc[pool.labels].to_numpy())
    gp = make_surrogate("gp", bounds=torch.stack([X.min(0).values, X.max(0).values]), max_iter=5)
    gp.fit(X[:30], y[:30])
    assert torch.isfinite(gp.posterior(X[30:]).mean).all()


def test_mean_surrogate():
    from surrogates import make_surrogate
    from surrogates.baselines import MeanSurrogate

    m = make_surrogate("mean")
    assert isinstance(m, MeanSurrogate) and m.model is None
    X = torch.zeros(3, 2, dtype=torch.float64)
    post = m.posterior(X)
    assert post.mean.tolist() == [0.0] * 3 and post.variance.tolist() == [1.0] * 3
    Y = torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64)
    m.fit(X, Y)
    post = m.posterior(torch.zeros(5, 2, dtype=torch.float64))
    assert post.mean.shape == (5,) and torch.allclose(post.mean, torch.full((5,), 3.0, dtype=torch.float64))
    assert post.variance[0].item() == pytest.approx(7.0 * (1 + 1 / 3))  # sample var 7
    m.fit(X[:1], Y[:1])
    assert m.posterior(X).variance[0].item() == 1.0 and m.posterior(X).mean[0].item() == 1.0


def test_unknown_surrogate():
    from surrogates import make_surrogate

    with pytest.raises(ConfigError, match=r"surrogate\.kind.*'forest'.*gp"):
        make_surrogate("forest")


# --- acquisition policies ------------------------------------------------------------------------

def _pending(fitted, small_pool, k: int = 5) -> list[str]:
    """The `k` best unobserved candidates by UCB: a policy that ignored `pending` would pick them."""
    from acquisition.analytic import ucb

    post = fitted.gp.posterior(small_pool.X)
    acq = ucb(post)
    acq[torch.as_tensor(fitted.train)] = float("-inf")
    return [small_pool.labels[i] for i in acq.topk(k).indices.tolist()]


@pytest.mark.parametrize("kind", ["random", "greedy", "ucb", "qlognei"])
def test_policy_respects_observed_and_pending(kind, fitted, small_pool):
    from acquisition import Proposal, make_policy

    pending = _pending(fitted, small_pool)
    batch = 4
    prop = make_policy(kind, seed=0).select(fitted.gp, small_pool, fitted.observed, batch, pending)
    assert isinstance(prop, Proposal) and prop.policy == kind
    labels = prop.labels
    assert len(labels) == batch and len(set(labels)) == batch
    assert all(lab in small_pool for lab in labels)
    assert not set(labels) & set(fitted.observed)
    assert not set(labels) & set(pending)
    for it in prop.items:
        assert it.mean is not None and it.sd is not None and it.sd >= 0
        assert "near " in it.rationale  # names the nearest measured genes


def test_greedy_ignoring_observed_would_pick_them(fitted, small_pool):
    """Guard for the test above: the best posterior means are observed genes."""
    post = fitted.gp.posterior(small_pool.X)
    top = {small_pool.labels[i] for i in post.mean.topk(4).indices.tolist()}
    assert top & set(fitted.observed)


def test_random_policy_reproducible_per_seed(fitted, small_pool):
    from acquisition import make_policy

    def pick(seed):
        return make_policy("random", seed=seed).select(None, small_pool, fitted.observed, 10).labels

    assert pick(3) == pick(3)
    assert pick(3) != pick(4)
    prop = make_policy("random", seed=3).select(None, small_pool, fitted.observed, 10)
    assert all(it.mean is None and it.acq_value is None for it in prop.items)


def test_random_policy_draw_changes_with_campaign_state(fitted, small_pool):
    from acquisition import make_policy

    pol = make_policy("random", seed=0)
    first = pol.select(None, small_pool, {}, 10).labels
    later = pol.select(None, small_pool, {lab: 1.0 for lab in first}, 10).labels
    assert len(later) == 10 and not set(first) & set(later)


def test_ucb_picks_top_q_of_mean_plus_two_sd(fitted, small_pool):
    from acquisition import make_policy

    q = 8
    pending = _pending(fitted, small_pool, 3)
    prop = make_policy("ucb").select(fitted.gp, small_pool, fitted.observed, q, pending)
    post = fitted.gp.posterior(small_pool.X)
    score = post.mean + 2.0 * post.variance.sqrt()
    avail = [i for i, lab in enumerate(small_pool.labels) if lab not in fitted.observed and lab not in pending]
    best = sorted(avail, key=lambda i: -float(score[i]))[:q]
    assert prop.labels == [small_pool.labels[i] for i in best]  # ordered best first
    for it, i in zip(prop.items, best):
        assert it.acq_value == pytest.approx(float(score[i]))
        assert it.mean == pytest.approx(float(post.mean[i]))


def test_greedy_picks_top_q_mean_and_beta_zero_ucb_matches(fitted, small_pool):
    from acquisition import make_policy

    greedy = make_policy("greedy").select(fitted.gp, small_pool, fitted.observed, 6).labels
    post = fitted.gp.posterior(small_pool.X)
    avail = [i for i, lab in enumerate(small_pool.labels) if lab not in fitted.observed]
    assert greedy == [small_pool.labels[i] for i in sorted(avail, key=lambda i: -float(post.mean[i]))[:6]]
    assert make_policy("ucb", beta=0.0).select(fitted.gp, small_pool, fitted.observed, 6).labels == greedy
    assert make_policy("ucb", beta=100.0).select(fitted.gp, small_pool, fitted.observed, 6).labels != greedy


@pytest.mark.parametrize("kind", ["greedy", "ucb", "qlognei"])
def test_first_round_without_surrogate_is_random(kind, small_pool):
    from acquisition import make_policy

    prop = make_policy(kind, seed=5).select(None, small_pool, {}, 7, ["VAV1"])
    assert len(set(prop.labels)) == 7 and "VAV1" not in prop.labels
    assert prop.labels == make_policy("random", seed=5).select(None, small_pool, {}, 7, ["VAV1"]).labels


def test_qlognei_falls_back_to_random_for_baseline_surrogate(fitted, small_pool):
    from acquisition import make_policy
    from surrogates import make_surrogate

    mean = make_surrogate("mean")
    mean.fit(small_pool.X[fitted.train], fitted.y[fitted.train])
    prop = make_policy("qlognei", seed=2).select(mean, small_pool, fitted.observed, 5)
    assert len(set(prop.labels)) == 5 and not set(prop.labels) & set(fitted.observed)


def test_batch_larger_than_available_and_invalid_batch(small_pool):
    from acquisition import make_policy

    pool = small_pool.subset(range(10))
    observed = {lab: 1.0 for lab in pool.labels[:6]}
    prop = make_policy("random").select(None, pool, observed, 50, [pool.labels[6]])
    assert sorted(prop.labels) == sorted(pool.labels[7:])
    with pytest.raises(ValueError, match="batch_size"):
        make_policy("random").select(None, pool, {}, 0)


def test_unknown_policy():
    from acquisition import make_policy

    with pytest.raises(ConfigError, match=r"acquisition\.kind.*'bandit'.*ucb"):
        make_policy("bandit")
