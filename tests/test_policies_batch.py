"""Batch acquisition policies (Thompson, P(hit), coreset, batch UCB) on the small real IL2 pool.

The GP is fit on 100 real |score| targets of the 600-gene pool (GO features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from perturbloop.design_space import SingleSpace
from perturbloop.perturbation import Perturbation

N_TRAIN = 100
SPLIT_SEED = 7
Q = 8
NEW_POLICIES = ["thompson", "prob_hit", "coreset", "ucb_batch"]


@dataclass
class Fitted:
    gp: object
    observed: dict[str, float]


def _bounds(X: torch.Tensor) -> torch.Tensor:
    return torch.stack([X.min(0).values, X.max(0).values])


@pytest.fixture(scope="module")
def fitted(small_pool, il2_screen) -> Fitted:
    from surrogates import make_surrogate

    torch.manual_seed(0)
    train = np.random.default_rng(SPLIT_SEED).permutation(len(small_pool))[:N_TRAIN]
    y = torch.tensor(il2_screen.scores.abs().loc[small_pool.labels].to_numpy(), dtype=torch.float64)
    gp = make_surrogate("gp", bounds=_bounds(small_pool.X), max_iter=30)
    gp.fit(small_pool.X[train], y[train])
    return Fitted(gp, {small_pool.labels[i]: float(y[i]) for i in train})


@pytest.fixture(scope="module")
def dup_pool(small_pool, fitted) -> tuple[SingleSpace, int, int]:
    """small_pool plus `DUPA` and `DUPB`, exact copies of the feature row of the best unobserved UCB candidate."""
    from acquisition.analytic import ucb

    acq = ucb(fitted.gp.posterior(small_pool.X))
    acq[small_pool.indices(fitted.observed)] = float("-inf")
    top = int(acq.argmax())
    X = torch.cat([small_pool.X, small_pool.X[top].expand(2, -1)])
    pool = SingleSpace([*small_pool.perturbations, Perturbation(("DUPA",)), Perturbation(("DUPB",))], X,
                         small_pool.feature_names)
    return pool, top, len(small_pool)


def _select(kind, fitted, pool, batch=Q, pending=(), seed=0, **kw):
    from acquisition import make_policy

    return make_policy(kind, seed=seed, beta=4.0, **kw).select(fitted.gp, pool, fitted.observed, batch, list(pending))


# --- all four -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", NEW_POLICIES)
def test_batch_is_q_unique_available_and_reproducible(kind, fitted, small_pool):
    from acquisition import Proposal

    free = _select(kind, fitted, small_pool).labels
    pending = free[:3]  # what the policy picks when nothing is pending: it must avoid them now
    prop = _select(kind, fitted, small_pool, pending=pending)
    assert isinstance(prop, Proposal) and prop.policy == kind
    labels = prop.labels
    assert len(labels) == Q == len(set(labels))
    assert all(lab in small_pool for lab in labels)
    assert not set(labels) & set(fitted.observed)
    assert not set(labels) & set(pending)
    for it in prop.items:
        assert it.mean is not None and it.sd is not None and it.sd >= 0 and it.acq_value is not None
        assert "near " in it.rationale
    again = _select(kind, fitted, small_pool, pending=pending)  # a fresh policy, same seed and state
    assert again.labels == labels
    assert [i.acq_value for i in again.items] == [i.acq_value for i in prop.items]


@pytest.mark.parametrize("kind", NEW_POLICIES)
def test_batch_capped_by_available_and_rejects_empty_batch(kind, fitted, small_pool):
    pool = small_pool.subset(range(40))
    observed = {lab: v for lab, v in fitted.observed.items() if lab in pool}
    from acquisition import make_policy

    pol = make_policy(kind, seed=0, beta=4.0)
    n_free = len(pool) - len(observed)
    prop = pol.select(fitted.gp, pool, observed, n_free + 10)
    assert sorted(prop.labels) == sorted(set(pool.labels) - set(observed))
    with pytest.raises(ValueError, match="batch_size"):
        pol.select(fitted.gp, pool, observed, 0)


@pytest.mark.parametrize("kind", ["thompson", "prob_hit", "ucb_batch"])
def test_first_round_falls_back_to_prior_policy(kind, fitted, small_pool):
    from acquisition import make_policy
    from acquisition.prior import PriorScorePolicy

    prop = make_policy(kind, seed=5).select(None, small_pool, {}, Q)
    assert prop.policy == kind
    assert prop.labels == PriorScorePolicy(seed=5).select(None, small_pool, {}, Q).labels


@pytest.mark.parametrize("kind", NEW_POLICIES)
def test_identical_feature_rows_are_distinct_candidates(kind, fitted, dup_pool):
    pool, top, dup = dup_pool
    labels = _select(kind, fitted, pool, batch=40).labels
    assert len(labels) == len(set(labels)) == 40
    assert not set(labels) & set(fitted.observed)


# --- P(hit) ---------------------------------------------------------------------------------------

def test_prob_hit_values_and_ranking(fitted, small_pool):
    from acquisition.prob_hit import HIT_FRACTION

    prop = _select("prob_hit", fitted, small_pool)
    post = fitted.gp.posterior(small_pool.X)
    tau = torch.quantile(post.mean, 1 - HIT_FRACTION)
    ph = torch.special.ndtr((post.mean - tau) / post.sd)
    assert ((ph >= 0) & (ph <= 1)).all()
    picks = small_pool.indices(prop.labels)
    values = [it.acq_value for it in prop.items]
    assert values == pytest.approx(ph[picks].tolist())
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values, reverse=True)  # best first
    avail = [i for i, lab in enumerate(small_pool.labels) if lab not in fitted.observed]
    assert torch.equal(picks, torch.tensor(avail)[ph[avail].argsort(descending=True, stable=True)[:Q]])


def test_prob_hit_threshold_and_arguments(fitted, small_pool):
    from acquisition.prob_hit import ProbHitPolicy

    post = fitted.gp.posterior(small_pool.X)
    assert ProbHitPolicy(hit_fraction=0.5).threshold(post) == pytest.approx(float(post.mean.median()), abs=1e-3)
    assert ProbHitPolicy(hit_fraction=0.01).threshold(post) > ProbHitPolicy(hit_fraction=0.2).threshold(post)
    assert ProbHitPolicy(tau=1.5).threshold(post) == 1.5
    with pytest.raises(ValueError, match="hit_fraction"):
        ProbHitPolicy(hit_fraction=1.0)


# --- coreset --------------------------------------------------------------------------------------

def test_coreset_is_greedy_k_center(fitted, small_pool):
    pending = [lab for lab in small_pool.labels if lab not in fitted.observed][:2]
    prop = _select("coreset", fitted, small_pool, pending=pending)
    X = small_pool.X
    covered = small_pool.indices([*fitted.observed, *pending]).tolist()
    free = torch.ones(len(small_pool), dtype=torch.bool)
    free[covered] = False
    for it in prop.items:
        i = small_pool.index[it.perturbation]
        dmin = torch.cdist(X, X[covered]).min(dim=1).values
        assert it.acq_value == pytest.approx(float(dmin[i]))
        assert float(dmin[i]) == pytest.approx(float(dmin[free].max()))  # the farthest from everything covered
        covered.append(i)
        free[i] = False
    values = [it.acq_value for it in prop.items]
    assert values == sorted(values, reverse=True)


def test_coreset_first_round_starts_from_seeded_random(small_pool):
    from acquisition import make_policy

    a = make_policy("coreset", seed=1).select(None, small_pool, {}, Q)
    assert a.labels == make_policy("coreset", seed=1).select(None, small_pool, {}, Q).labels
    assert a.labels[0] != make_policy("coreset", seed=2).select(None, small_pool, {}, Q).labels[0]
    assert a.items[0].acq_value is None and all(it.mean is None for it in a.items)
    X = small_pool.X
    first = small_pool.index[a.labels[0]]
    second = small_pool.index[a.labels[1]]
    assert second == int(torch.cdist(X[[first]], X)[0].argmax())


# --- Thompson -------------------------------------------------------------------------------------

def test_thompson_depends_on_seed_and_state(fitted, small_pool):
    batches = [_select("thompson", fitted, small_pool, seed=s).labels for s in range(3)]
    assert len({tuple(b) for b in batches}) == 3
    pending = [lab for lab in small_pool.labels if lab not in fitted.observed and lab not in batches[0]][:1]
    assert _select("thompson", fitted, small_pool, pending=pending).labels != batches[0]


def test_thompson_draws_follow_the_joint_posterior(fitted, small_pool):
    """Averaged over many draws, the per-point draw mean and sd match the GP's marginals."""
    from acquisition.thompson import _joint_draws

    X = small_pool.X[:50]
    z = torch.randn(50, 4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = _joint_draws(fitted.gp.model, X, z)
    post = fitted.gp.posterior(X)
    assert torch.allclose(f.mean(1), post.mean, atol=4 * float(post.sd.max()) / 4000**0.5)
    assert torch.allclose(f.std(1), post.sd, rtol=0.1)


def test_thompson_with_a_surrogate_without_botorch_model(fitted, small_pool):
    from acquisition import make_policy
    from surrogates import make_surrogate

    mean = make_surrogate("mean")
    mean.fit(small_pool.X[:10], torch.arange(10, dtype=torch.float64))
    observed = {lab: 0.0 for lab in small_pool.labels[:10]}
    prop = make_policy("thompson", seed=0).select(mean, small_pool, observed, Q)
    assert len(set(prop.labels)) == Q and not set(prop.labels) & set(observed)


# --- batch UCB ------------------------------------------------------------------------------------

def test_batch_ucb_starts_at_ucb_and_reduces_to_it_without_penalty(fitted, small_pool):
    ucb = _select("ucb", fitted, small_pool).labels
    batch = _select("ucb_batch", fitted, small_pool).labels
    assert batch[0] == ucb[0]
    assert _select("ucb_batch", fitted, small_pool, penalty=0.0).labels == ucb


def test_batch_ucb_penalises_duplicates_of_a_pick(fitted, dup_pool):
    """Plain UCB spends its first three picks on the three identical rows; batch UCB takes one, then
    the copies keep only their mean (no bonus), which here falls below the next-best candidate's UCB."""
    pool, top, dup = dup_pool
    copies = {pool.labels[top], "DUPA", "DUPB"}
    plain = _select("ucb", fitted, pool).labels
    assert set(plain[:3]) == copies
    prop = _select("ucb_batch", fitted, pool)
    assert prop.labels[0] in copies and prop.labels[1] not in copies
    mean = float(fitted.gp.posterior(pool.X[[top]]).mean)
    later = [it for it in prop.items[1:] if it.perturbation in copies]
    assert all(it.acq_value == pytest.approx(mean) for it in later)  # bonus gone, mean kept


def test_batch_ucb_arguments():
    from acquisition.batch_ucb import BatchUCBPolicy, nn_length_scale

    with pytest.raises(ValueError, match="penalty"):
        BatchUCBPolicy(penalty=2.0)
    with pytest.raises(ValueError, match="beta"):
        BatchUCBPolicy(beta=-1.0)
    X = torch.tensor([[0.0], [0.0], [1.0], [3.0]], dtype=torch.float64)
    assert nn_length_scale(X) == pytest.approx(1.0)  # nn distances 1, 1, 1, 2: duplicates ignored
    assert nn_length_scale(torch.zeros(3, 2, dtype=torch.float64)) == 1.0
