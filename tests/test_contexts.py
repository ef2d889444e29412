"""Contexts and time (issue 12): multi-context screen files, the replay world, the multi-task GP, cost-aware picks,
cost accounting and the `benchmark --contexts` command, on a slice of the GWT CD4+ T-cell tables."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from acquisition.cost_aware import CostAwareHitPolicy, hit_threshold, p_hit
from perturbloop.config import parse_config
from perturbloop.contexts import ContextScreen, ContextSpace, context_list, load_gwt, read_context_screen
from perturbloop.errors import ConfigError, ScreenFormatError
from simulators.context_replay import ContextReplay
from simulators.world import World
from surrogates.multitask import ContextPosterior, IndependentContextGP, MultiTaskContextGP, PooledContextGP

TIMES = ["Rest", "Stim8hr", "Stim48hr"]
SLICE_TOP, SLICE_OTHERS = 8, 112


@pytest.fixture(scope="module")
def gwt_slice(data_dir) -> ContextScreen:
    """The GWT activation coefficients of 120 regulators: the 8 strongest at 48 h and 112 others (seeded)."""
    s = load_gwt("polarization", signature="activation", data_dir=data_dir)
    t48 = s.scores("Stim48hr").abs().sort_values(ascending=False)
    rng = np.random.default_rng(7)
    genes = list(t48.index[:SLICE_TOP]) + list(rng.choice(t48.index[SLICE_TOP:], SLICE_OTHERS, replace=False))
    return s.restrict(TIMES, genes)


def test_gwt_tables_load_with_contexts_and_standard_errors(data_dir):
    s = load_gwt("polarization", data_dir=data_dir)
    assert set(s.contexts) == set(TIMES) and len(s.genes) > 3800
    assert (s.table["se"] > 0).all() and not s.table.duplicated(["gene", "context"]).any()
    aging = load_gwt("aging", signature="CD4T", data_dir=data_dir)
    assert set(aging.contexts) == {"K562", *TIMES}
    with pytest.raises(ConfigError, match="no signature 'IL2'"):
        load_gwt("polarization", signature="IL2", data_dir=data_dir)


def test_long_and_mageck_files_round_trip(gwt_slice, tmp_path):
    long = read_context_screen(gwt_slice.write_long(tmp_path / "s.csv"))
    mageck = read_context_screen(gwt_slice.write_mageck(tmp_path / "s.gene_summary.txt"))
    key = ["gene", "context"]
    want = gwt_slice.table.sort_values(key).reset_index(drop=True)
    for got in (long, mageck):
        got = got.table.sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(got[key], want[key])
        np.testing.assert_allclose(got["score"], want["score"], rtol=1e-12)
        np.testing.assert_allclose(got["se"], want["se"], rtol=1e-12)


@pytest.mark.parametrize("text, match", [
    ("gene,context,value\nA,Rest,1\n", "unrecognised multi-context screen"),
    ("gene,context,score\nA,Rest,1\nB,Rest,high\n", r"score is not a finite number at line 3 \('high'\)"),
    ("gene,context,score\nA,Rest,1\nA,Rest,2\n", "listed more than once: A in Rest"),
    ("gene,context,score,se\nA,Rest,1,-0.1\n", "negative standard error at line"),
    ("gene,context,score\n", "no data rows"),
    ("gene,context,score\nA,,1\n", "empty gene or context at line"),
    ("id,neg|lfc.Rest,neg|lfc.\nA,1,2\n", "names no context"),
])
def test_malformed_files_are_refused_naming_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ScreenFormatError, match=match):
        read_context_screen(path)


def test_world_replays_with_reported_noise_and_fails_unmeasured_pairs(gwt_slice):
    world = ContextReplay(gwt_slice, TIMES, "Stim48hr", seed=3)
    assert isinstance(world, World)
    unmeasured = next(g for g in load_gwt_genes_missing(gwt_slice))
    row = gwt_slice.table.iloc[0]
    label = f"{row.gene}@@{row.context}"
    res = world.measure([label, f"{unmeasured[0]}@@{unmeasured[1]}", f"{row.gene}@@K562", row.gene])
    assert res[label].ok and abs(res[label].response[0] - row.score) < 6 * row.se
    assert not res[f"{unmeasured[0]}@@{unmeasured[1]}"].ok and "was not measured" in res[f"{unmeasured[0]}@@{unmeasured[1]}"].error
    assert "unknown context 'K562'" in res[f"{row.gene}@@K562"].error
    assert "not a (gene, context) label" in res[row.gene].error
    # seeded: a new world with the same seed draws the same value; a repeated run draws anew
    again = ContextReplay(gwt_slice, TIMES, "Stim48hr", seed=3).measure([label])[label].response[0]
    assert again == res[label].response[0]
    assert world.measure([label])[label].response[0] != res[label].response[0]
    assert world.truth([label]).iloc[0] == row.score
    top = gwt_slice.scores("Stim48hr").abs().sort_values(ascending=False)
    assert world.hits == frozenset(top.index[:max(1, round(0.05 * len(top)))])
    # noise is the reported standard error: over many draws the spread matches it
    draws = [world.measure([label])[label].response[0] for _ in range(400)]
    assert np.std(draws) == pytest.approx(row.se, rel=0.15)


def load_gwt_genes_missing(screen: ContextScreen) -> list[tuple[str, str]]:
    """(gene, context) pairs of the slice's genes that the screen did not measure."""
    have = set(zip(screen.table["gene"], screen.table["context"]))
    return [(g, c) for g in screen.genes for c in TIMES if (g, c) not in have]


def test_bad_contexts_costs_and_budgets_are_clear_errors(gwt_slice):
    with pytest.raises(ConfigError, match="unknown context.*'Stim72hr'"):
        gwt_slice.check_contexts(["Rest", "Stim72hr"])
    with pytest.raises(ConfigError, match="2 cost.*for 3 context"):
        context_list(TIMES, [1, 2])
    with pytest.raises(ConfigError, match="positive number.*Rest=0"):
        context_list(TIMES, [0, 1, 2])
    table = {"contexts": TIMES, "costs": [1, 1, 2], "target": "Stim48hr", "budget": 100}

    def config(initial: int = 2, **change) -> dict:
        return {"name": "c", "initial": initial, "world": {"kind": "contexts", "dataset": "gwt_cd4_polarization"},
                "contexts": {**table, **change}}

    assert parse_config(config()).contexts.context_list()[2].hours == 48.0
    for bad, match in [(config(target="K562"), "target 'K562' is not among"),
                       (config(0, budget=0.5), "smaller than one perturbation's cost"),
                       (config(30), "initial design.*costs 120"), (config(allowed=["Stim72hr"]), "allowed: unknown context"),
                       (config(goal="heldout"), "goal"), (config(goal="matrix", test_genes=1), "test_genes")]:
        with pytest.raises(ConfigError, match=match):
            parse_config(bad)


def _posterior(rho: float, m: int = 200, seed: int = 0) -> ContextPosterior:
    """A synthetic joint posterior over 2 contexts (cheap 0, target 1) with correlation `rho`, unit variances."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.zeros(m, 2, dtype=torch.float64)
    mean[:, 1] = 0.3 * torch.randn(m, generator=g, dtype=torch.float64)
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64).expand(m, 2, 2).clone()
    return ContextPosterior(mean, cov, torch.tensor([0.01, 0.01], dtype=torch.float64))


def _space(m: int = 200, costs=(1.0, 4.0)) -> ContextSpace:
    return ContextSpace([f"G{i}" for i in range(m)], torch.zeros(m, 1), context_list(["cheap", "target"], list(costs)))


def test_cost_aware_policy_uses_a_cheap_context_only_when_it_informs_the_target():
    space = _space()
    measured = np.zeros((200, 2), bool)
    policy = CostAwareHitPolicy("target")
    informed = policy.select(_posterior(0.95), space, measured, budget=40)
    uninformed = policy.select(_posterior(0.0), space, measured, budget=40)
    assert sum(p.context == "cheap" for p in informed) > 10
    assert all(p.context == "target" for p in uninformed) and len(uninformed) == 10
    for picks in (informed, uninformed):
        assert sum(p.cost for p in picks) <= 40 and len({p.gene for p in picks}) == len(picks)
    only = policy.select(_posterior(0.95), space, measured, budget=40, allowed=["target"])
    assert {p.context for p in only} == {"target"}
    with pytest.raises(ConfigError, match="unknown context 'K562'"):
        policy.select(_posterior(0.95), space, measured, budget=40, allowed=["K562"])
    # pairs already measured are not proposed again
    measured[:, 1] = True
    measured[:5, 1] = False
    again = policy.select(_posterior(0.0), space, measured, budget=40)
    assert {p.gene for p in again} <= {f"G{i}" for i in range(5)}


def test_hit_threshold_makes_the_expected_hit_fraction():
    mean = torch.linspace(-2, 2, 500, dtype=torch.float64)
    var = torch.full((500,), 0.3, dtype=torch.float64)
    tau = hit_threshold(mean, var, 0.05)
    assert float(p_hit(mean, var, tau).mean()) == pytest.approx(0.05, abs=1e-6)


def _two_contexts(rho: float, n: int = 40, seed: int = 0):
    """Each of `n` genes measured in two contexts whose effects correlate by `rho` (features carry no signal)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    z1, z2 = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    y = torch.cat([z1, rho * z1 + (1 - rho ** 2) ** 0.5 * z2]) + 0.05 * torch.randn(2 * n, generator=g, dtype=torch.float64)
    return torch.cat([X, X]), torch.cat([torch.zeros(n), torch.ones(n)]).long(), y


@pytest.mark.slow
def test_multitask_gp_learns_how_contexts_correlate():
    corr = {}
    for rho in (0.95, 0.0):
        X, ctx, y = _two_contexts(rho)
        model = MultiTaskContextGP(2, max_iter=30, bounds=torch.stack([X.min(0).values, X.max(0).values]))
        model.fit(X, ctx, y)
        corr[rho] = float(model.task_correlation()[0, 1])
    assert corr[0.95] > 0.8 and corr[0.0] < 0.3, corr
    # the joint posterior is BoTorch's: mean and the C x C block of one gene
    X, ids = torch.randn(3, 3, dtype=torch.float64), torch.tensor([1000.0, 1001.0, 1002.0], dtype=torch.float64)
    joint = model.joint(X, ids)
    with torch.no_grad():
        post = model.model.posterior(torch.cat([X, ids[:, None]], -1)[:1])
    torch.testing.assert_close(joint.mean[0], post.mean[0])
    torch.testing.assert_close(joint.cov[0], post.mvn.covariance_matrix)


def test_baselines_carry_no_transfer_or_full_transfer():
    """Independent GPs: zero covariance between contexts; the pooled GP: one function, covariance = variance."""
    X, ctx, y = _two_contexts(0.5, n=20)
    Xq = torch.randn(4, 3, dtype=torch.float64)
    ind, pooled = IndependentContextGP(2, max_iter=5), PooledContextGP(2, max_iter=5)
    for model in (ind, pooled):
        model.fit(X, ctx, y)
    a, b = ind.joint(Xq), pooled.joint(Xq)
    assert torch.all(a.cov[:, 0, 1] == 0) and torch.all(a.cov[:, 0, 0] > 0) and torch.all(a.noise > 0)
    torch.testing.assert_close(b.cov[:, 0, 1], b.cov[:, 0, 0])
    torch.testing.assert_close(b.mean[:, 0], b.mean[:, 1])


def _slice_config(path, **contexts) -> dict:
    return {"name": "slice", "initial": 4, "rounds": 3, "world": {"kind": "contexts", "dataset": str(path)},
            "contexts": {"contexts": TIMES, "costs": [1, 1, 2], "target": "Stim48hr", "budget": 60, **contexts},
            "surrogate": {"kind": "multitask", "max_iter": 5}}


def test_campaign_spends_within_budget_and_counts_target_hits(gwt_slice, tmp_path, data_dir):
    """A benchmark row comes from the campaign loop: random target picks within the budget, cost per round."""
    from agent.benchmark import contexts_row

    config = parse_config(_slice_config(gwt_slice.write_long(tmp_path / "s.csv")))
    row = contexts_row(config, "random", 1, data_dir)
    assert row["cost"] <= 60 and sum(row["spend"].values()) == row["cost"]
    assert row["spend"]["Rest"] == row["spend"]["Stim8hr"] <= 4  # only the initial design uses them
    costs = [pt["cost"] for pt in row["curve"]]
    assert costs == sorted(costs) and costs[-1] == row["cost"] and len(costs) == 4
    world = ContextReplay(gwt_slice, TIMES, "Stim48hr")
    assert row["n_hits"] == len(world.hits) and 0 <= row["hits_found"] <= row["n_hits"]
    target_picks = {p.split("@@")[0] for r in row["picks"] for p in r if p.endswith("@@Stim48hr")}
    assert row["hits_found"] == len(target_picks & world.hits)


@pytest.mark.parametrize("variant", ["multitask_random", "multitask"])  # random pairs; variance-per-cost picks
def test_matrix_goal_holds_pairs_out_and_scores_them_through_the_loop(gwt_slice, tmp_path, data_dir, variant):
    """Goal `matrix`: held-out pairs never measured, the test genes' other timepoints free in round 0, held-out
    NRMSE per timepoint after every round equal to the score of the model refit on what was measured."""
    from agent.benchmark import contexts_row
    from agent.parts import campaign_parts

    config = parse_config(_slice_config(gwt_slice.write_long(tmp_path / "s.csv"), goal="matrix", test_genes=9))
    parts = campaign_parts(config, data_dir)
    test = set(parts.split.test)
    assert len(test) == 9 and {lab.split("@@")[1] for lab in test} == set(TIMES)
    row = contexts_row(config, variant, 0, data_dir)
    picked = [lab for r in row["picks"] for lab in r]
    assert not test & set(picked)
    known = [lab for lab in row["picks"][0] if lab.split("@@")[0] in {t.split("@@")[0] for t in test}]
    assert len(known) == 18  # 9 test genes x their 2 other timepoints, at no cost
    assert row["curve"][0]["cost"] == 4 * 4  # only the 4 initial genes in every context are paid for
    assert len(row["curve"]) == 4 and all(set(pt["errors"]) == set(TIMES) for pt in row["curve"])
    assert row["cost"] <= 60
    for pt in row["curve"]:
        for c in TIMES:
            assert np.isfinite(pt["errors"][c]["nrmse"]) and pt["errors"][c]["nrmse"] > 0
            assert -1 <= pt["errors"][c]["pearson"] <= 1
    assert row["curve"][0]["errors"] != row["curve"][-1]["errors"]  # refit on more data each round


@pytest.mark.parametrize("variant", ["random", "multitask"])  # random whole genes; expected evidence per cost
@pytest.mark.slow
def test_specific_goal_counts_the_specific_genes_measured_through_the_loop(gwt_slice, tmp_path, data_dir, variant):
    from agent.benchmark import contexts_row
    from perturbloop.context_objectives import context_specific, specific_found, specific_genes
    from perturbloop.contexts import ContextSpace as Space

    config = parse_config(_slice_config(gwt_slice.write_long(tmp_path / "s.csv"), goal="specific"))
    row = contexts_row(config, variant, 2, data_dir)
    genes = gwt_slice.genes
    truth = gwt_slice.table.pivot(index="gene", columns="context", values="score").reindex(index=genes,
                                                                                           columns=TIMES).to_numpy()
    space = Space(genes, torch.zeros(len(genes), 1), context_list(TIMES, [1, 1, 2]))
    strong, weak = context_specific(truth)
    measured = space.measured_mask([lab for r in row["picks"] for lab in r])
    assert row["n_specific"] == len(specific_genes(strong, weak)) > 0
    assert row["found"] == len(specific_found(strong, weak, measured))
    assert row["cost"] <= 60 and row["curve"][-1]["found"] == row["found"]
    if variant != "random":
        return
    # random genes are measured at every timepoint the screen measured them at
    later = [lab for r in row["picks"][1:] for lab in r]
    per_gene = pd.Series([lab.split("@@")[0] for lab in later]).value_counts()
    offered = gwt_slice.table.groupby("gene")["context"].nunique()
    assert len(per_gene) > 5 and (per_gene == offered[per_gene.index]).all()


def test_benchmark_command_refuses_bad_contexts(gwt_slice, tmp_path, data_dir):
    from perturbloop.cli import app

    path = gwt_slice.write_long(tmp_path / "gwt.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("gene,context,score\nA,Rest,x\n")
    base = ["benchmark", "--out", str(tmp_path / "r.json"), "--data-dir", str(data_dir)]
    runner = CliRunner()
    for args, match in [
        (["--screen", str(path), "--contexts", "Rest,Stim72hr", "--target-context", "Stim72hr"], "unknown context"),
        (["--screen", str(path), "--contexts", ",".join(TIMES), "--target-context", "Stim48hr", "--costs", "1,2"],
         "2 cost.*for 3 context"),
        (["--screen", str(bad), "--contexts", "Rest", "--target-context", "Rest"], "score is not a finite number"),
        (["--screen", str(path), "--contexts", ",".join(TIMES), "--target-context", "K562"], "target 'K562'"),
    ]:
        res = runner.invoke(app, [*base, *args])
        assert res.exit_code == 2, res.output
        assert re.search(match, res.output), res.output
    assert not (tmp_path / "r.json").exists()


def test_benchmark_command_refuses_a_bad_hits_file(gwt_slice, tmp_path, data_dir):
    from perturbloop.cli import app

    path = gwt_slice.write_long(tmp_path / "gwt.csv")
    hits = tmp_path / "hits.txt"
    hits.write_text("NOT_A_GENE_XYZ\n")
    base = ["benchmark", "--out", str(tmp_path / "r.json"), "--data-dir", str(data_dir), "--screen", str(path),
            "--contexts", ",".join(TIMES), "--target-context", "Stim48hr"]
    for extra, match in [(["--hits", str(hits)], "world.hits: hit gene.*not measured in the target.*NOT_A_GENE_XYZ"),
                         (["--hits", str(tmp_path / "none.txt")], "--hits: file .* does not exist"),
                         (["--policy", "multitask,bogus"], "unknown contexts variant.*'bogus'")]:
        res = CliRunner().invoke(app, [*base, *extra])
        assert res.exit_code == 2 and re.search(match, res.output), res.output
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["long", "mageck"])
def test_benchmark_command_end_to_end(gwt_slice, tmp_path, data_dir, fmt):
    """`benchmark --screen FILE --contexts ...` runs the campaign loop (the rows of `benchmark --config`)."""
    path = gwt_slice.write_long(tmp_path / "gwt.csv") if fmt == "long" else gwt_slice.write_mageck(tmp_path / "gwt.txt")
    out = tmp_path / "r.json"
    hits = tmp_path / "hits.txt"
    hit_genes = sorted(gwt_slice.scores("Stim48hr").abs().sort_values(ascending=False).index[:10])
    hits.write_text("\n".join(hit_genes) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "perturbloop.cli", "benchmark", "--screen", str(path), "--contexts", ",".join(TIMES),
         "--target-context", "Stim48hr", "--costs", "1,1,2", "--budget", "60", "--rounds", "2", "--initial", "4",
         "--seeds", "1", "--policy", "best,random", "--data-dir", str(data_dir), "--out", str(out),
         *(["--hits", str(hits)] if fmt == "long" else [])],
        capture_output=True, text=True, timeout=600, env=dict(os.environ), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["protocol"]["target"] == "Stim48hr" and res["protocol"]["costs"] == [1.0, 1.0, 2.0]
    assert res["protocol"]["name"] == "campaigns across contexts (campaign loop)" and res["protocol"]["seeds"] == 1
    assert [r["policy"] for r in res["results"]] == ["multitask", "independent", "pooled", "random"]
    for r in res["results"]:
        assert r["cost"] <= 60 and len(r["curve"]) == 3 and r["n_hits"] == (10 if fmt == "long" else 6)
        assert set(r["spend"]) == set(TIMES) and r["curve"][0]["cost"] == 16
        found = {lab.split("@@")[0] for rnd in r["picks"] for lab in rnd if lab.endswith("@@Stim48hr")}
        assert r["hits_found"] == len(found & (set(hit_genes) if fmt == "long" else
                                                  set(ContextReplay(gwt_slice, TIMES, "Stim48hr").hits)))
    assert set(res["results"][0]["correlation_with_target"]) == {"Rest", "Stim8hr"}
    assert [s["policy"] for s in res["summary"]] == ["multitask", "independent", "pooled", "random"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "multitask" in proc.stdout and "hits / 100 cost" in proc.stdout


def test_cost_aware_thompson_draw_follows_the_round_seed():
    """The campaign's policy draws its Thompson order from the round's seeded `rng`: the same (seed, round) picks the
    same pairs (a resumed campaign as an uninterrupted one), another seed draws anew."""
    from acquisition.context_policies import CostAwareContextPolicy

    space, post = _space(), _posterior(0.0, seed=1)
    post.cov[:, 1, 1] = 4.0  # wide posteriors: the draw, not the mean, orders the target genes

    def picks(seed: int) -> list[str]:
        policy = CostAwareContextPolicy("target", hit_fraction=0.05)
        out = policy.picks(post, space, np.zeros((200, 2), bool), 40, observed={}, round_index=1,
                           rng=np.random.default_rng([seed, 1]), rounds_left=3)
        return [p.label for p in out]

    assert picks(0) == picks(0)
    assert picks(0) != picks(1) and len(picks(0)) == len(picks(1)) == 10
