"""A campaign across contexts through the one loop (issue 12): the `[contexts]` config, the graph, the store's
`GENE@@context` labels, the budget in cost units, review and approval edits, on a slice of the GWT T-cell tables."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from agent.approval import pending_proposal
from agent.context import build_context
from agent.runner import run_campaign
from perturbloop.cli import app
from perturbloop.config import load_config, parse_config
from perturbloop.contexts import split_label
from perturbloop.errors import ConfigError
from perturbloop.store import Store

TIMES = ["Rest", "Stim8hr", "Stim48hr"]
COSTS = {"Rest": 1.0, "Stim8hr": 1.0, "Stim48hr": 2.0}


def _config(screen, **top) -> dict:
    contexts = {"contexts": TIMES, "costs": [1, 1, 2], "target": "Stim48hr", "budget": 40,
                **top.pop("contexts", {})}
    return {"name": "ctx", "initial": 3, "rounds": 2, "seed": 0, "world": {"kind": "contexts", "dataset": str(screen)},
            "contexts": contexts, "surrogate": {"kind": "multitask", "max_iter": 5}, **top}


def _spent(store: Store, name: str) -> dict[str, float]:
    out = dict.fromkeys(TIMES, 0.0)
    for o in store.observations(name, include_failed=True):
        out[split_label(o.perturbation)[1]] += COSTS[split_label(o.perturbation)[1]]
    return out


def test_pair_separator_is_the_one_of_perturbloop_contexts():
    from agent import approval
    from perturbloop import contexts

    assert approval.PAIR_SEP == contexts.PAIR_SEP


def test_example_config_is_a_contexts_campaign():
    c = load_config("examples/tcell_contexts.toml")
    assert c.is_contexts and c.contexts.target == "Stim48hr" and c.surrogate.kind == "multitask"
    assert [(x.name, x.cost, x.hours) for x in c.contexts.context_list()] == [
        ("Rest", 1.0, 0.0), ("Stim8hr", 1.0, 8.0), ("Stim48hr", 2.0, 48.0)]


@pytest.mark.parametrize("change, match", [
    ({"contexts": {"costs": [1, 2]}}, r"contexts: .*costs: 2 cost\(s\) for 3 context\(s\)"),
    ({"contexts": {"costs": [1, 0, 2]}}, r"contexts: .*positive number.*Stim8hr=0"),
    ({"contexts": {"budget": 0.5}}, r"contexts: .*budget 0.5 is smaller than one perturbation's cost \(1\)"),
    ({"contexts": {"allowed": ["Stim72hr"]}}, r"allowed: unknown context\(s\) Stim72hr"),
    ({"initial": 20}, r"initial: the initial design \(20 genes in every context\) costs 80, more than the budget 40"),
    ({"surrogate": {"kind": "gp"}}, r"surrogate.kind: 'gp' is not available"),
])
def test_bad_contexts_config_names_the_field(gwt_activation_slice_csv, change, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(_config(gwt_activation_slice_csv, **change))
    with pytest.raises(ConfigError, match="a contexts world needs a \\[contexts\\] table"):
        parse_config({k: v for k, v in _config(gwt_activation_slice_csv).items() if k != "contexts"})


def test_unknown_context_is_refused_before_anything_is_stored(gwt_activation_slice_csv, tmp_path, data_dir):
    cfg = _config(gwt_activation_slice_csv, contexts={"contexts": ["Rest", "Stim72hr", "Stim48hr"]})
    store = Store(str(tmp_path / "s.db"))
    with pytest.raises(ConfigError, match=r"contexts.contexts: unknown context\(s\) 'Stim72hr'.*Rest, Stim8hr, Stim48hr"):
        build_context(parse_config(cfg), store, data_dir)
    toml = tmp_path / "bad.toml"
    toml.write_text(f'name = "ctx"\n[world]\nkind = "contexts"\ndataset = "{gwt_activation_slice_csv}"\n'
                    '[contexts]\ncontexts = ["Rest", "Stim72hr", "Stim48hr"]\ncosts = [1, 1, 2]\n'
                    'target = "Stim48hr"\nbudget = 40\n')
    out = CliRunner().invoke(app, ["run", str(toml), "--store", str(tmp_path / "s.db"), "--no-baseline",
                                   "--data-dir", str(data_dir)])
    assert out.exit_code == 2 and "Stim72hr" in out.output
    assert Store(str(tmp_path / "s.db")).get_campaign("ctx") is None


@pytest.mark.slow
def test_campaign_runs_through_the_graph_within_its_budget(gwt_activation_slice_csv, tmp_path, data_dir):
    # initial design 3 genes x (1 + 1 + 2) = 12 cost units; a round may always buy a target pair (cost 2) while
    # the 3 left last, and ends the campaign once it picks nothing it can afford
    config = parse_config(_config(gwt_activation_slice_csv, rounds=10, contexts={"budget": 15}))
    store = Store(str(tmp_path / "s.db"))
    res = run_campaign(config, store, data_dir)
    assert res.status == "finished"
    obs = store.observations("ctx", include_failed=True)
    pairs = [split_label(o.perturbation) for o in obs]
    assert {c for _, c in pairs} <= set(TIMES) and len(set(pairs)) == len(pairs)
    spent = _spent(store, "ctx")
    # the budget ends the campaign before its 10 rounds, with at most the cheapest context's cost left unspent
    assert 14 <= sum(spent.values()) <= 15 and len(store.rounds("ctx")) < 5 and spent["Stim48hr"] >= 6
    rounds = store.rounds("ctx")
    assert all(r.status == "ingested" for r in rounds)  # the round that could buy nothing is not kept
    last = store.model_fit(rounds[-1].id).metrics
    assert last["cost_spent"] == sum(spent.values()) and last["spent:Stim48hr"] == spent["Stim48hr"]
    # round 0: 3 genes in every context they were measured in; later rounds: at most one context per gene
    first = [split_label(o.perturbation) for o in obs if o.round_id == rounds[0].id]
    assert len({g for g, _ in first}) == 3 and len(first) == 9
    hits = build_context(config, store, data_dir).hits
    assert all(o.hit == (o.perturbation in hits) for o in obs if not o.failed)
    assert {split_label(h)[1] for h in hits} == {"Stim48hr"}
    later = [p for r in rounds[1:] for p in store.proposals(r.id)]
    assert later and all(p.mean is not None and p.sd is not None and "P(hit in Stim48hr)" in p.rationale
                         for p in later)
    # the same campaign makes the same picks whatever the process drew before (seeded fits)
    torch.randn(100)
    again = Store(str(tmp_path / "again.db"))
    run_campaign(config, again, data_dir)
    assert [again.decision(r.id).final for r in again.rounds("ctx")] == [store.decision(r.id).final for r in rounds]


def test_review_and_approve_a_gene_in_a_context(gwt_activation_slice_csv, tmp_path, data_dir):
    config = parse_config(_config(gwt_activation_slice_csv, approval="required", rounds=1, initial=2))
    path = str(tmp_path / "s.db")
    assert run_campaign(config, Store(path), data_dir).status == "awaiting_approval"
    cli = CliRunner()

    def call(*args):
        return cli.invoke(app, [*args, "--store", path], catch_exceptions=False)

    shown = call("review", "ctx")
    assert shown.exit_code == 0 and "@@Rest" in shown.output and "@@Stim48hr" in shown.output
    approve = ("approve", "ctx", "--data-dir", str(data_dir))
    screen = pd.read_csv(gwt_activation_slice_csv)
    n = screen.groupby("gene")["context"].nunique()
    partial = sorted(n.index[n < 3])[0]
    missing = next(c for c in TIMES if c not in set(screen.loc[screen["gene"] == partial, "context"]))
    proposed = {p.perturbation for p in pending_proposal(Store(path), "ctx")[1]}
    free = next(g for g in sorted(n.index[n == 3]) if f"{g}@@Stim48hr" not in proposed)
    for bad, says in [(f"{partial}@@{missing}", f"does not offer {partial} in {missing}"),
                      (f"{free}@@Stim72hr", "unknown context 'Stim72hr'"),
                      (free, "name a gene in a context, GENE@@context")]:
        out = call(*approve, "--add", bad)
        assert out.exit_code == 2 and says in out.output, out.output
        r, _ = pending_proposal(Store(path), "ctx")
        assert Store(path).decision(r.id) is None  # nothing written
    out = call(*approve, "--drop", f"{free}@@Stim48hr")
    assert out.exit_code == 2 and f"--drop: not in the pending proposal: {free}@@Stim48hr" in out.output, out.output
    ok = call(*approve, "--add", f"{free}@@Stim48hr", "--by", "ada")
    assert ok.exit_code == 0 and f"added {free}@@Stim48hr" in ok.output, ok.output
    st = Store(path)
    d = st.decision(st.rounds("ctx")[0].id)
    assert d.action == "edited" and d.added == [f"{free}@@Stim48hr"] and d.by == "ada"
    assert f"{free}@@Stim48hr" in {o.perturbation for o in st.observations("ctx")}


@pytest.mark.slow
def test_benchmark_config_writes_learning_curves_through_the_loop(gwt_activation_slice_csv, tmp_path, data_dir):
    toml = tmp_path / "c.toml"
    toml.write_text(f'name = "bench"\ninitial = 2\nrounds = 1\n[world]\nkind = "contexts"\n'
                    f'dataset = "{gwt_activation_slice_csv}"\n[contexts]\ncontexts = ["Rest", "Stim8hr", "Stim48hr"]\n'
                    'costs = [1, 1, 2]\ntarget = "Stim48hr"\nbudget = 16\n[surrogate]\nmax_iter = 5\n'
                    '[evaluation]\nseeds = 4\n')
    out = CliRunner().invoke(app, ["benchmark", "--config", str(toml), "--out", str(tmp_path / "r.json"),
                                   "--seeds", "1", "--data-dir", str(data_dir)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    res = json.loads((tmp_path / "r.json").read_text())
    # --seeds overrides the file's evaluation.seeds (it was silently ignored with --config)
    assert res["protocol"]["seeds"] == 1 and all(s["seeds"] == 1 for s in res["summary"])
    rows = {r["policy"]: r for r in res["results"]}
    assert list(rows) == ["multitask", "independent", "pooled", "random"]  # no K562 context: no cheap_first
    for r in rows.values():
        assert [p["round"] for p in r["curve"]] == [0, 1] and r["curve"][-1]["cost"] == 16
        assert r["curve"][0]["cost"] == 8  # 2 genes in every context, paid by every variant
        for p in r["curve"]:
            assert sum(p["spend"].values()) == p["cost"]
    # random picks measure the target only; the same initial design for every variant of a seed
    assert rows["random"]["spend"]["Rest"] == rows["random"]["curve"][0]["spend"]["Rest"] == 2
    assert len({tuple(r["picks"][0]) for r in rows.values()}) == 1
    assert (tmp_path / "r.png").is_file()


def test_k562_first_then_target_on_the_strongest_k562_genes(tmp_path, data_dir):
    from agent.benchmark import context_variants, contexts_row
    from perturbloop.contexts import load_context_screen, load_gwt
    from simulators.context_replay import ContextReplay

    aging = load_gwt("aging", signature="CD4T", data_dir=data_dir)
    n = aging.table.groupby("gene")["context"].nunique()
    genes = sorted(n.index[n == 4])[:60]
    path = aging.restrict(["K562", "Stim48hr"], genes).write_long(tmp_path / "aging.csv")
    config = parse_config({"name": "k562", "initial": 2, "rounds": 2, "world": {"kind": "contexts", "dataset": str(path)},
                           "contexts": {"contexts": ["K562", "Stim48hr"], "costs": [1, 4], "target": "Stim48hr",
                                        "budget": 40}})
    assert context_variants(config)[-1] == "cheap_first"
    row = contexts_row(config, "cheap_first", 0, data_dir)
    first, second = row["picks"][1], row["picks"][2]
    assert first and all(p.endswith("@@K562") for p in first)  # round 1: K562 only
    assert second and all(p.endswith("@@Stim48hr") for p in second)
    # then the genes with the largest |value| measured in K562 (the world's seeded draws), not yet measured at 48 h
    measured = ContextReplay(load_context_screen(path), ["K562", "Stim48hr"], "Stim48hr", seed=0).measure(first)
    ranked = sorted(first, key=lambda lab: -abs(float(measured[lab].response[0])))
    assert [p.split("@@")[0] for p in second] == [p.split("@@")[0] for p in ranked[:len(second)]]
    assert row["cost"] <= 40


def test_http_lab_serves_a_contexts_world(gwt_activation_slice_csv, tmp_path, data_dir):
    from lab_adapters.http_server import world_for

    toml = tmp_path / "c.toml"
    toml.write_text(f'name = "http"\n[world]\nkind = "contexts"\ndataset = "{gwt_activation_slice_csv}"\n'
                    '[contexts]\ncontexts = ["Rest", "Stim48hr"]\ncosts = [1, 2]\ntarget = "Stim48hr"\nbudget = 40\n')
    world, what = world_for(str(toml), str(data_dir))
    screen = pd.read_csv(gwt_activation_slice_csv)
    gene = screen.loc[screen["context"] == "Stim48hr", "gene"].iloc[0]
    out = world.measure([f"{gene}@@Stim48hr", f"{gene}@@Stim8hr"])  # Stim8hr: not a context of this campaign
    assert out[f"{gene}@@Stim48hr"].ok and not out[f"{gene}@@Stim8hr"].ok and "contexts world" in what


@pytest.mark.slow
def test_perturbloop_run_prints_hits_and_spend_per_context(gwt_activation_slice_csv, tmp_path, data_dir):
    import os
    import subprocess
    import sys

    toml = tmp_path / "c.toml"
    toml.write_text(f'name = "cli"\ninitial = 2\nrounds = 2\n[world]\nkind = "contexts"\n'
                    f'dataset = "{gwt_activation_slice_csv}"\n[contexts]\ncontexts = ["Rest", "Stim8hr", "Stim48hr"]\n'
                    'costs = [1, 1, 2]\ntarget = "Stim48hr"\nbudget = 24\n[surrogate]\nmax_iter = 5\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "perturbloop.cli", "run", str(toml), "--store", str(tmp_path / "s.db"),
                          "--data-dir", str(data_dir)], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "hits in Stim48hr" in out.stdout and "spent Stim8hr" in out.stdout and "24 / 24" in out.stdout
    assert "cli-random: random picks, same campaign" in out.stdout
    st = Store(str(tmp_path / "s.db"))
    assert sum(COSTS[split_label(o.perturbation)[1]] for o in st.observations("cli-random", include_failed=True)) == 24
