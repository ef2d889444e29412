"""The hit-discovery protocol on small real slices: arithmetic, hit lists, the non-essential
variant, no leakage of unseen scores, and the benchmark command's output."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from forked import perturbloop

from acquisition import make_policy
from agent.benchmark import PolicySpec, WorldSpec, benchmark_config, build_screen_world, read_hits_file, simulate
from perturbloop.benchmark_report import summarise
from perturbloop.data import load_screen
from perturbloop.data.screens import Screen
from perturbloop.errors import ConfigError, UnknownGeneError
from perturbloop.features import essential_genes
from simulators import ScreenReplay
from surrogates import make_surrogate


@pytest.fixture(scope="module")
def slice_path(tmp_path_factory, data_dir):
    s = load_screen("schmidt2021_il2", data_dir)
    genes = list(s.scores.abs().sort_values(ascending=False).index[:100]) + sorted(s.genes)[::25]
    genes = list(dict.fromkeys(genes))
    p = tmp_path_factory.mktemp("bench") / "slice.csv"
    pd.DataFrame({"Gene": genes, "Score": s.scores.loc[genes].to_numpy()}).to_csv(p, index=False)
    return p


def _gp(pool, **kw):
    import torch

    bounds = torch.stack([pool.X.min(0).values, pool.X.max(0).values])
    kw = {"max_iter": 30, "target_transform": "log", **kw}
    return lambda seed, params: make_surrogate("gp", bounds=bounds, init_params=params, **kw)


def _run(spec: WorldSpec, policy, make, rounds: int, batch: int, replay=None,
         kind: str | None = None) -> tuple[list[float], list[list[str]]]:
    """A simulated campaign through the shipped loop (the config names `kind`, default the policy's name):
    (cumulative hit ratio per round, picks per round)."""
    world = build_screen_world(spec)
    config = benchmark_config(spec, PolicySpec.parse(kind or policy.name), 0, rounds, batch)
    rows, picks = simulate(config, world.pool, replay or world.replay, policy, make)
    return [r["hit_ratio"] for r in rows], picks


def test_hit_ratio_is_distinct_hits_over_all_hits(slice_path, data_dir):
    spec = WorldSpec(str(slice_path), features=("go",), data_dir=str(data_dir))
    world = build_screen_world(spec)
    per_round, picks = _run(spec, make_policy("random", seed=3), None, 3, 20)
    hits = world.replay.hits
    assert len(hits) == round(0.05 * len(world.pool))
    for t in range(3):
        picked = {g for batch in picks[: t + 1] for g in batch}
        assert per_round[t] == pytest.approx(len(picked & hits) / len(hits))
    assert len({g for b in picks for g in b}) == 60  # never the same gene twice


def test_given_hit_list_replaces_top_fraction(slice_path, data_dir, tmp_path):
    hits_file = tmp_path / "hits.txt"
    hits_file.write_text("# paper's hits\nGene\nVAV1\ncd3g\nTMEM173\n")  # lower case and an outdated symbol
    s = load_screen(str(slice_path), data_dir)
    if "STING1" not in s.genes:
        hits_file.write_text("Gene\nVAV1\ncd3g\n")
    got = read_hits_file(str(hits_file), s.genes, data_dir)
    assert {"VAV1", "CD3G"} <= got and len(got) in (2, 3)
    bad = tmp_path / "bad.txt"
    bad.write_text("VAV1\nNOT_A_GENE_X\n")
    with pytest.raises(UnknownGeneError, match="NOT_A_GENE_X"):
        read_hits_file(str(bad), s.genes, data_dir)


@pytest.mark.slow
def test_nonessential_drops_core_essential_genes_from_hits_and_picks(data_dir):
    world = build_screen_world(WorldSpec("schmidt2021_il2", nonessential=True, features=("go",), data_dir=str(data_dir)))
    ess = essential_genes(data_dir)
    assert not (set(world.pool.labels) & ess) and not (world.replay.hits & ess)
    full = load_screen("schmidt2021_il2", data_dir)
    assert len(world.pool) == len(full.genes) - len(ess & set(full.genes))


@pytest.mark.slow
def test_unseen_scores_never_reach_the_policy(slice_path, data_dir):
    """Shuffle the scores of every gene a campaign never picked: it must pick exactly the same.
    Shuffle all scores: round 1 (priors only) is unchanged, later rounds follow the new values."""
    spec = WorldSpec(str(slice_path), features=("go", "screens"), prior_screens=("schmidt2021_ifng",), data_dir=str(data_dir))
    world = build_screen_world(spec)
    screen: Screen = world.replay.screen
    _, run_picks = _run(spec, make_policy("ucb", seed=0, beta=0.25), _gp(world.pool), 3, 16)
    picked = {g for b in run_picks for g in b}
    rng = np.random.default_rng(0)

    unseen = [g for g in screen.genes if g not in picked]
    scores = screen.scores.copy()
    scores.loc[unseen] = rng.permutation(scores.loc[unseen].to_numpy())
    shuffled = ScreenReplay(Screen(screen.name, scores), hits=set(world.replay.hits))
    _, again = _run(spec, make_policy("ucb", seed=0, beta=0.25), _gp(world.pool), 3, 16, replay=shuffled)
    assert again == run_picks

    all_shuffled = ScreenReplay(Screen(screen.name, pd.Series(rng.permutation(screen.scores.to_numpy()), index=screen.scores.index)))
    _, other = _run(spec, make_policy("ucb", seed=0, beta=0.25), _gp(world.pool), 3, 16, replay=all_shuffled)
    assert other[0] == run_picks[0]
    assert other[1:] != run_picks[1:]


def test_policy_specs_and_aliases():
    assert PolicySpec.parse("ucb:0.5").beta == 0.5
    best = PolicySpec.parse("best")
    assert best.label == "best" and best.kind in ("ucb", "greedy", "prob_hit", "thompson", "ucb_batch")
    with pytest.raises(ConfigError, match="unknown policy 'nope'"):
        PolicySpec.parse("nope")


def test_summary_statistics():
    rows = [{"policy": "a", "seed": s, "hit_ratio": h, "per_round": [h / 2, h], "round_seconds": [0.1, 0.3]}
            for s, h in enumerate([0.1, 0.3])]
    (s,) = summarise(rows)
    assert s["hit_ratio_mean"] == pytest.approx(0.2) and s["hit_ratio_sd"] == pytest.approx(0.1)
    assert s["per_round_mean"] == pytest.approx([0.1, 0.2]) and s["round_seconds_max"] == pytest.approx(0.3)


@pytest.mark.slow
def test_benchmark_command_writes_results_and_curves(slice_path, data_dir, tmp_path):
    out = tmp_path / "res" / "slice.json"
    proc = perturbloop(  # a process of its own (tests/forked.py)
        "benchmark", "--screen", str(slice_path), "--rounds", "2", "--batch", "16", "--seeds", "2", "--policy",
        "best,random", "--features", "go", "--data-dir", str(data_dir), "--out", str(out), env=dict(os.environ),
        cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["screen"] == str(slice_path) and res["protocol"]["rounds"] == 2
    assert [(r["policy"], r["seed"]) for r in res["results"]] == [("best", 0), ("best", 1), ("random", 0), ("random", 1)]
    for r in res["results"]:
        assert len(r["per_round"]) == 2 and len(r["round_seconds"]) == 2 and r["hit_ratio"] == r["per_round"][-1]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "best" in proc.stdout and "random" in proc.stdout


def test_hit_call_target_trains_on_the_labs_hit_calls(slice_path, data_dir):
    """`--target hit`: the surrogate sees 1.0 for measured hits and 0.0 otherwise, never the scores."""
    spec = WorldSpec(str(slice_path), features=("go", "screens"), prior_screens=("schmidt2021_ifng",),
                     data_dir=str(data_dir), target="hit")
    world = build_screen_world(spec)
    seen: list[dict] = []

    class Recording:
        name = "recording"

        def __init__(self):
            self.inner = make_policy("greedy")

        def select(self, surrogate, pool, observed, batch_size, pending=()):
            seen.append(dict(observed))
            return self.inner.select(surrogate, pool, observed, batch_size, pending)

    _, picks = _run(spec, Recording(), _gp(world.pool, max_iter=5, target_transform="none"), 3, 40, kind="greedy")
    last = seen[-1]
    assert set(last) == {g for b in picks[:2] for g in b}
    assert all(v == float(g in world.replay.hits) for g, v in last.items())
    assert 0 < sum(last.values()) < len(last)  # both kinds were measured: a real hit-call signal
    with pytest.raises(ConfigError, match="--target"):
        build_screen_world(WorldSpec(str(slice_path), features=("go",), data_dir=str(data_dir), target="score"))


def test_embedding_features_from_a_user_file(slice_path, data_dir, tmp_path):
    s = load_screen(str(slice_path), data_dir)
    rng = np.random.default_rng(0)
    emb = pd.DataFrame(rng.normal(size=(len(s.genes), 4)), index=[g.lower() for g in s.genes])
    path = tmp_path / "emb.csv"
    emb.to_csv(path)
    world = build_screen_world(WorldSpec(str(slice_path), features=("embedding",), data_dir=str(data_dir), embeddings=str(path)))
    assert world.pool.feature_names == ["emb0", "emb1", "emb2", "emb3"] and world.pool.X.shape == (len(s.genes), 4)
    with pytest.raises(ConfigError, match="--embeddings"):
        build_screen_world(WorldSpec(str(slice_path), features=("go", "embedding"), data_dir=str(data_dir)))
