"""The RL acquisition policy: the training loop learns, the cheap environment computes the same
GP posterior as the campaign's surrogate, checkpoints round-trip without pickle, and a campaign
with `acquisition.kind = "rl"` runs end to end on a real IL2 slice."""

from __future__ import annotations

import itertools
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from forked import perturbloop
import torch

from acquisition.rl.env import GPParams, TrainWorld, gp_posterior, hits_of, log_target, run_episode
from acquisition.rl.features import FEATURES, pool_static, state_features
from acquisition.rl.network import PolicyConfig, PolicyNet, gumbel_topk, load_policy, plackett_luce_logp, save_policy
from acquisition.rl.train import evaluate, train_policy
from perturbloop.errors import ConfigError
from perturbloop.design_space import SingleSpace
from perturbloop.perturbation import Perturbation

ROOT = Path(__file__).resolve().parents[1]


def synthetic_world(n: int = 400, seed: int = 0) -> TrainWorld:
    """A small world without real data: 6 GO-like columns and two prior screens; |score| follows
    prior screen `a` (a noisy copy), so a policy that learns to trust the prior finds hits."""
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(n, 6, generator=g, dtype=torch.float64)
    a = torch.randn(n, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    cols = [go, torch.zeros(n, 1, dtype=torch.float64), a[:, None], a.abs()[:, None], torch.zeros(n, 1, dtype=torch.float64),
            b[:, None], b.abs()[:, None], torch.zeros(n, 1, dtype=torch.float64)]
    X = torch.cat(cols, 1)
    X = (X - X.mean(0)) / torch.where(X.std(0) > 0, X.std(0), torch.ones(1, dtype=torch.float64))
    names = [f"go_svd{i}" for i in range(6)] + ["go_missing", "a_z", "a_absz", "a_missing", "b_z", "b_absz", "b_missing"]
    y = (a.abs() + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)).abs()
    gp = [GPParams([1.0] * X.shape[1], 0.5, 0.0)]
    return TrainWorld("toy", X, names, y, hits_of(y), gp, synthetic=True)


def test_training_improves_reward_on_a_small_synthetic_world():
    torch.set_num_threads(1)
    world = synthetic_world()
    kw = {"rounds": 3, "batch": 10, "pool_size": 400, "episodes": 4}
    torch.manual_seed(0)
    before = evaluate([world], PolicyNet(), **kw)["toy"]  # the untrained network (same init as train_policy's seed 0)
    t0 = time.perf_counter()
    res = train_policy([world], rounds=3, batch=10, pool_size=400, iterations=40, group=4, lr=1e-2, warm_start=None, seed=0)
    seconds = time.perf_counter() - t0
    after = evaluate([world], res.net, **kw)["toy"]
    random_expectation = 30 / 400  # 30 picks of 400 genes: hit ratio of random picks
    assert after > before + 0.1 and after > 2 * random_expectation, (before, after)
    assert seconds < 30
    first, last = res.history[:10], res.history[-10:]
    assert np.mean([r["return"] for r in last]) > np.mean([r["return"] for r in first])
    assert res.config.training["episodes"] == 40 * 4 and res.config.training["warm_start"] is None


def test_imitation_warm_start_reproduces_the_teacher():
    world = synthetic_world(seed=1)
    from functools import partial

    from acquisition.rl.features import reference_score

    kw = {"rounds": 3, "batch": 10, "pool_size": 400, "episodes": 3}
    teacher = evaluate([world], scorer=partial(reference_score, "greedy"), **kw)["toy"]
    res = train_policy([world], rounds=3, batch=10, pool_size=400, iterations=0, bc_iterations=30, lr=1e-2, seed=0)
    assert evaluate([world], res.net, **kw)["toy"] >= teacher - 0.05
    assert [r["phase"] for r in res.history] == ["imitation"] * 30


def test_closed_form_posterior_matches_the_gp_surrogate():
    from surrogates.gp import GPSurrogate

    torch.manual_seed(0)
    X = torch.randn(300, 7, dtype=torch.float64)
    y = (X[:, 0] ** 2 + 0.3 * torch.randn(300, dtype=torch.float64)).abs()
    bounds = torch.stack([X.min(0).values, X.max(0).values])
    gp = GPSurrogate(bounds=bounds, target_transform="log", max_iter=20, device=torch.device("cpu"))
    gp.fit(X[:60], y[:60])
    post = gp.posterior(X)
    mean, var = gp_posterior(GPParams.from_model(gp.model), bounds, X[:60], log_target(y[:60]), X)
    assert torch.allclose(mean, post.mean, atol=1e-8) and torch.allclose(var, post.variance, atol=1e-8)


def test_plackett_luce_probabilities_sum_to_one_and_sampling_respects_availability():
    s = torch.tensor([0.3, -1.0, 2.0, 0.5, 0.0], requires_grad=True)
    avail = torch.tensor([True, True, True, False, True])
    total = sum(math.exp(float(plackett_luce_logp(s, avail, torch.tensor(p)).sum().detach()))
                for p in itertools.permutations([0, 1, 2, 4], 2))
    assert total == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    draws = [gumbel_topk(s, avail, 2, g).tolist() for _ in range(2000)]
    assert all(3 not in d and len(set(d)) == 2 for d in draws)
    first = np.bincount([d[0] for d in draws], minlength=5) / 2000
    p = torch.softmax(s.detach()[avail], 0).numpy()
    assert np.allclose(first[[0, 1, 2, 4]], p, atol=0.03)


def test_state_features_are_scale_free_and_zero_before_a_model():
    world = synthetic_world()
    static = pool_static(world.X, world.feature_names)
    n = len(world)
    avail = torch.ones(n, dtype=torch.bool)
    F0 = state_features(static, avail, torch.zeros(0, dtype=torch.long), torch.zeros(0), None, None, progress=0.0, last_round=False)
    assert F0.shape == (n, len(FEATURES)) and F0[:, FEATURES.index("has_model")].eq(0).all()
    assert F0[:, FEATURES.index("prior_q")].max() == 1.0 and F0[:, FEATURES.index("has_prior")].eq(1).all()
    obs = torch.arange(20)
    avail[obs] = False
    mean, sd = torch.randn(n, dtype=torch.float64), torch.rand(n, dtype=torch.float64) + 0.1
    F1 = state_features(static, avail, obs, world.y[obs], mean, sd, progress=0.4, last_round=False)
    F2 = state_features(static, avail, obs, 10 * world.y[obs] + 3, 10 * mean + 3, 10 * sd, progress=0.4, last_round=False)
    assert torch.allclose(F1, F2, atol=1e-5)  # an affine change of the target scale changes nothing


def test_checkpoint_round_trips_without_pickle(tmp_path):
    torch.manual_seed(3)
    net = PolicyNet(hidden=16)
    cfg = PolicyConfig(hidden=16, rounds=4, training={"worlds": ["toy"], "seed": 3})
    path = save_policy(net, cfg, tmp_path / "p.pt")
    blob = torch.load(path, weights_only=True)  # plain tensors and strings only
    assert set(blob) == {"format", "config", "state_dict"}
    net2, cfg2 = load_policy(path)
    x = torch.randn(50, len(FEATURES))
    assert torch.equal(net(x), net2(x)) and cfg2 == cfg

    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(3)}, bad)
    with pytest.raises(ConfigError, match="not a perturbloop RL policy"):
        load_policy(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_policy(tmp_path / "missing.pt")


def test_config_and_policy_spec_accept_rl(tmp_path):
    from agent.benchmark import PolicySpec
    from perturbloop.config import parse_config

    path = save_policy(PolicyNet(), PolicyConfig(), tmp_path / "pol.pt")
    base = {"name": "x", "data": {"screen": "s.csv"}}
    cfg = parse_config({**base, "acquisition": {"kind": "rl", "policy_path": str(path)}})
    assert cfg.acquisition.policy_path == str(path)
    with pytest.raises(ConfigError, match="policy_path"):
        parse_config({**base, "acquisition": {"kind": "rl"}})
    spec = PolicySpec.parse(f"rl:{path}")
    assert (spec.kind, spec.label, spec.path) == ("rl", "rl:pol", str(path.resolve()))
    assert PolicySpec.parse(f"rl_permuted:{path}").kind == "rl_permuted"
    with pytest.raises(ConfigError, match="does not exist"):
        PolicySpec.parse("rl:nope.pt")


class _RecordingSurrogate:
    """Marginal posterior = a fixed function of the features; remembers what it was fitted on."""

    name = "recording"
    model = None
    target_transform = "none"

    def __init__(self):
        self.fits: list[torch.Tensor] = []

    def fit(self, X, Y):
        self.fits.append(Y.clone())

    def posterior(self, X):
        from surrogates.base import SurrogatePosterior

        return SurrogatePosterior(X[:, 0].clone(), torch.ones(X.shape[0], dtype=torch.float64))


def test_permuted_control_refits_on_shuffled_feedback(tmp_path):
    from acquisition import make_policy

    world = synthetic_world()
    pool = SingleSpace([Perturbation((f"G{i}",)) for i in range(len(world))], world.X, world.feature_names)
    path = save_policy(PolicyNet(), PolicyConfig(), tmp_path / "pol.pt")
    observed = {pool.labels[i]: float(world.y[i]) for i in range(30)}
    sur = _RecordingSurrogate()
    plain = make_policy("rl", policy_path=str(path), seed=0).select(sur, pool, observed, 10)
    assert sur.fits == [] and len(plain.labels) == 10 and not set(plain.labels) & set(observed)
    ctrl = make_policy("rl_permuted", policy_path=str(path), seed=0).select(sur, pool, observed, 10)
    (y_seen,) = sur.fits
    y = torch.tensor(list(observed.values()), dtype=torch.float64)
    assert not torch.equal(y_seen, y) and torch.equal(y_seen.sort().values, y.sort().values)
    assert ctrl.policy == "rl_permuted"

    from surrogates.gp import GPSurrogate  # the real surrogate refits (a gradient-based fit) inside select

    gp = GPSurrogate(bounds=torch.stack([pool.X.min(0).values, pool.X.max(0).values]), max_iter=5,
                     target_transform="log", device=torch.device("cpu"))
    gp.fit(pool.X[:30], torch.tensor(list(observed.values()), dtype=torch.float64))
    before = gp.posterior(pool.X).mean
    make_policy("rl_permuted", policy_path=str(path), seed=0).select(gp, pool, observed, 10)
    assert not torch.allclose(gp.posterior(pool.X).mean, before)


def test_greedy_episode_of_a_trained_policy_is_deterministic():
    world = synthetic_world()
    net = PolicyNet()
    idx = torch.arange(len(world))
    a = run_episode(world, net, idx, rounds=3, batch=10)
    b = run_episode(world, net, idx, rounds=3, batch=10)
    assert a.rewards == b.rewards and a.logps == []


ROUNDS, BATCH = 3, 24


@pytest.fixture(scope="module")
def slice_csv(il2_slice_1500) -> Path:
    """1,500 real IL2 genes (the 150 strongest plus 1,350 drawn at random), shared with the other campaign tests."""
    return il2_slice_1500


@pytest.fixture(scope="module")
def trained_checkpoint(slice_csv, data_dir, tmp_path_factory) -> Path:
    """`perturbloop policy train` on the slice as its only (real) world plus a synthetic one, a few steps."""
    out = tmp_path_factory.mktemp("rlpol") / "policy.pt"
    env = {**os.environ, "PERTURBLOOP_DEVICE": "cpu"}
    proc = perturbloop(  # a process of its own (tests/forked.py)
        "policy", "train", "--worlds", str(slice_csv), "--synthetic", "1", "--iterations", "3", "--bc-iterations", "3",
        "--group", "2", "--pool-size", "500", "--rounds", str(ROUNDS), "--batch", str(BATCH), "--seed", "1",
        "--data-dir", str(data_dir), "--out", str(out), cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "policy:" in proc.stdout
    return out


@pytest.mark.slow
def test_policy_train_cli_writes_a_loadable_checkpoint(trained_checkpoint, slice_csv):
    net, cfg = load_policy(trained_checkpoint)
    t = cfg.training
    assert t["worlds"] == ["il2_slice", "synthetic1000@il2_slice"]
    assert t["episodes"] == 3 * 2 and t["bc_iterations"] == 3 and t["seed"] == 1 and cfg.rounds == ROUNDS
    assert t["total_minutes"] >= 0 and t["device"] == "cpu"


@pytest.mark.slow
def test_campaign_with_rl_policy_runs_end_to_end(trained_checkpoint, slice_csv, data_dir, tmp_path):
    from agent.runner import run_campaign
    from perturbloop.config import parse_config
    from perturbloop.store import Store

    cfg = parse_config({"name": "rl", "rounds": ROUNDS, "batch_size": BATCH, "seed": 1,
                        "data": {"screen": str(slice_csv)}, "design": {"features": ["go", "screens"]},
                        "acquisition": {"kind": "rl", "policy_path": str(trained_checkpoint)}})
    store = Store(str(tmp_path / "pl.db"))
    res = run_campaign(cfg, store, data_dir)
    assert res.status == "finished" and len(res.rounds) == ROUNDS
    labels = [o.perturbation for o in store.observations("rl")]
    assert len(labels) == len(set(labels)) == ROUNDS * BATCH
    for r in store.rounds("rl"):
        props = store.proposals(r.id)
        assert len(props) == BATCH and all(p.policy == "rl" for p in props)
        assert [p.acq_value for p in props] == sorted((p.acq_value for p in props), reverse=True)
        if r.index > 0:
            assert all(p.mean is not None and p.sd > 0 for p in props)
