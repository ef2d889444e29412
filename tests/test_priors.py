"""Round-1 picks from priors, the log target transform, and the leakage guard."""

from __future__ import annotations

import pytest
import torch

from acquisition import make_policy
from acquisition.prior import PriorScorePolicy
from perturbloop.data.priors import default_prior_screens
from perturbloop.config import parse_config
from perturbloop.data import load_screen
from perturbloop.errors import ConfigError
from perturbloop.features import build_gene_pool
from surrogates import make_surrogate


@pytest.fixture(scope="module")
def screen_pool(data_dir, il2_screen, small_pool_genes):
    priors = [load_screen(n, data_dir) for n in ("schmidt2021_ifng", "zhuang2019_nk")]
    return build_gene_pool(small_pool_genes, features=["go", "screens"], prior_screens=priors, data_dir=data_dir)


def test_prior_screens_never_include_the_target_or_its_sibling():
    assert "schmidt2021_il2" not in default_prior_screens("schmidt2021_il2")
    assert "schmidt2021_ifng" in default_prior_screens("schmidt2021_il2")
    tau = default_prior_screens("sanchez2021_tau_up")  # same source file as tau_down
    assert "sanchez2021_tau_up" not in tau and "sanchez2021_tau_down" not in tau


def test_round_one_uses_prior_screens_only(screen_pool):
    cols = PriorScorePolicy.columns(screen_pool)
    assert [screen_pool.feature_names[c] for c in cols] == ["schmidt2021_ifng_absz", "zhuang2019_nk_absz"]
    prop = make_policy("ucb", seed=0).select(None, screen_pool, {}, 10, ["VAV1"])
    score = screen_pool.X[:, cols].mean(1)
    order = [screen_pool.labels[i] for i in score.argsort(descending=True).tolist() if screen_pool.labels[i] != "VAV1"]
    assert prop.labels == order[:10]


def test_round_one_without_prior_screens_is_random(small_pool):
    a = make_policy("greedy", seed=0).select(None, small_pool, {}, 20)
    b = make_policy("greedy", seed=1).select(None, small_pool, {}, 20)
    assert len(set(a.labels)) == 20 and a.labels != b.labels


def test_log_target_transform_keeps_ranking_and_rejects_negative(small_pool, il2_screen):
    idx = list(range(0, 600, 4))
    y = torch.tensor(il2_screen.scores.loc[[small_pool.labels[i] for i in idx]].abs().to_numpy())
    bounds = torch.stack([small_pool.X.min(0).values, small_pool.X.max(0).values])
    gp = make_surrogate("gp", bounds=bounds, target_transform="log", max_iter=30)
    gp.fit(small_pool.X[idx], y)
    post = gp.posterior(small_pool.X[idx])
    expected = torch.log(y + y.median())
    assert torch.corrcoef(torch.stack([post.mean, expected]))[0, 1] > 0.5
    with pytest.raises(ValueError, match="non-negative"):
        gp.fit(small_pool.X[idx], -y)


def test_log_transform_needs_the_hits_objective():
    with pytest.raises(ConfigError, match="target_transform"):
        parse_config({"name": "x", "objective": "maximize", "data": {"screen": "schmidt2021_il2"},
                      "surrogate": {"target_transform": "log"}})
