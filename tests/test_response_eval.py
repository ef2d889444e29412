"""Simulated response campaigns end to end: a slice of the real Papalexi 2021 Perturb-seq data,
a small synthetic GRN (pairs), a slice of the Norman 2019 pair screen, and the benchmark command."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from forked import perturbloop
import torch

from perturbloop.errors import ConfigError
from perturbloop.config import load_config, parse_config

SLICE_TARGETS = ["STAT1", "IFNGR1", "JAK2", "IRF1", "CD86", "ATF2", "CAV1", "ETV7", "MYC", "NFKBIA"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Small models: one thread (two shared cores spin-wait badly on tiny matmuls)."""




def _papalexi_config(path, **over) -> dict:
    cfg = {
        "name": "papalexi-slice", "objective": "learn_response", "initial": 3, "rounds": 2, "batch_size": 2,
        "world": {"kind": "perturbseq", "dataset": str(path), "key": "target", "control": "non-targeting",
                  "cells_per_run": 40},
        "design": {"features": ["go", "expression_pca"], "go_dims": 8},
        "surrogate": {"kind": "ensemble", "epochs": 100},
        "evaluation": {"seeds": 1, "test_fraction": 0.3, "policies": ["uncertainty", "random"]},
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
    return cfg


GRN_CONFIG = {
    "name": "grn-small", "objective": "learn_response", "initial": 10, "rounds": 2, "batch_size": 10,
    "world": {"kind": "synthetic_grn", "seed": 3, "cells_per_run": 60,
              "params": {"n_genes": 100, "n_regulators": 8, "pairs_per_type": 1}},
    "design": {"space": "pairs", "features": ["expression_pca"]},
    "surrogate": {"kind": "ensemble", "epochs": 100},
    "evaluation": {"seeds": 1, "max_test": 30, "policies": ["uncertainty", "random"], "de_method": "abs_lfc"},
}


def _check_rows(rows, config, policies):
    assert [(r["policy"], r["seed"]) for r in rows] == [(p, 0) for p in policies]
    for r in rows:
        for name, values in r["metrics"].items():
            assert len(values) == config.rounds + 1, name
            assert np.isfinite(values).all(), name
        assert len(r["round_seconds"]) == config.rounds
        assert len(r["picks"]) == config.rounds + 1 and len(r["picks"][0]) == config.initial
        flat = [lab for b in r["picks"] for lab in b]
        assert len(flat) == len(set(flat))  # never the same perturbation twice


def test_papalexi_slice_campaign_scores_model_and_baselines(papalexi_slice, data_dir):
    from agent.benchmark import response_sweep
    from perturbloop.design import build_space, split_candidates
    from simulators.response_worlds import build_world

    config = parse_config(_papalexi_config(papalexi_slice))
    world = build_world(config, data_dir)
    assert sorted(world.candidates) == sorted(SLICE_TARGETS) and len(world.genes) == 299
    space = build_space(world, config, data_dir)
    assert space.kind == "genes" and space.dim > 8
    rows = response_sweep(config, data_dir)
    _check_rows(rows, config, ["uncertainty", "random"])
    m = rows[0]["metrics"]
    for base in ("", "@mean", "@linear"):
        assert {f"mse_top20_de{base}", f"pearson_delta{base}", f"l2_top_expressed{base}"} <= set(m)
    test = split_candidates(space, config, 0).test
    assert len(test) == 3 and not {lab for r in rows for b in r["picks"] for lab in b} & set(test)
    # the same seed gives both policies the same split and initial design
    assert rows[0]["picks"][0] == rows[1]["picks"][0]
    # the mean baseline after round 0 is the same whichever policy will pick next
    assert rows[0]["metrics"]["mse@mean"][0] == pytest.approx(rows[1]["metrics"]["mse@mean"][0])


def test_replayed_responses_are_pseudobulk_lfcs_of_the_revealed_cells(papalexi_slice, data_dir):
    from simulators.response_worlds import build_world

    world = build_world(parse_config(_papalexi_config(papalexi_slice)), data_dir)
    got = world.measure(["STAT1"])["STAT1"].response
    truth = world.truth(["STAT1"])[0]
    assert got.shape == truth.shape == (299,)
    assert np.corrcoef(got, truth)[0, 1] > 0.5  # 40 cells vs all 80: same knockout signature
    assert world.lab.history[-1]["n_cells"] == 40
    de = world.de_genes(["STAT1"], 20)[0]
    assert len(de) == 20 and len(set(de)) == 20


def test_synthetic_pair_campaign_uses_the_additive_prior():
    from agent.benchmark import campaign_for
    from perturbloop.design import build_space, prepare_singles
    from simulators.response_worlds import build_world

    config = parse_config(GRN_CONFIG)
    world = build_world(config)
    assert world.synthetic and all(c.count("+") == 1 for c in world.candidates)
    space = build_space(world, config)
    singles = prepare_singles(world, space)
    assert len(singles) == len(space.genes) == 16 and len(space) == 120
    lab = space.labels_at([0])[0]
    a, b = lab.split("+")
    assert np.allclose(space.offset(space.indices([lab]))[0].numpy(), singles[a] + singles[b])
    rows = [campaign_for(config, "uncertainty", 0, space=space)]  # random picks: the next test
    _check_rows(rows, config, ["uncertainty"])
    m = rows[0]["metrics"]
    assert {"l2_additive", "l2_ratio_vs_additive", "interaction_pearson", "l2_top_expressed@additive"} <= set(m)
    assert m["l2_top_expressed@additive"] == pytest.approx(m["l2_additive"])  # the additive baseline is the prior
    assert len(set(np.round(m["l2_additive"], 10))) == 1  # singles are fixed: additive does not move
    assert torch.get_num_threads() == 1  # scanpy's summaries reset OpenMP threads; the world restores them


def test_failed_runs_are_not_trained_on_or_reproposed():
    from agent.benchmark import campaign_for

    cfg = json.loads(json.dumps(GRN_CONFIG))
    cfg["world"]["failure_rate"] = 0.3
    config = parse_config(cfg)
    row = campaign_for(config, "random", 0)
    assert row["failed"]
    later = [lab for b in row["picks"] for lab in b]
    assert all(later.count(f) == 1 for f in row["failed"])  # picked once, never again
    assert row["n_observed"][-1] == len(later) - len(row["failed"])


def test_norman_gi_campaign_tracks_hits(data_dir):
    from agent.benchmark import campaign_for

    config = parse_config({
        "name": "norman-slice", "objective": "maximize", "initial": 30, "rounds": 2, "batch_size": 30,
        "world": {"kind": "pair_fitness", "dataset": "norman2019_pairs", "readout": "gi"},
        "design": {"space": "pairs", "features": ["none"], "max_pairs": 600},  # singles' fitness only (GO: Papalexi test)
        "surrogate": {"kind": "ensemble", "epochs": 100},
        "acquisition": {"kind": "program", "absolute": True},
        "evaluation": {"seeds": 1, "test_fraction": 0.2, "policies": ["program", "random"], "hit_fraction": 0.1},
    })
    rows = [campaign_for(config, p, 0, data_dir) for p in ("program", "random")]
    _check_rows(rows, config, ["program", "random"])
    for r in rows:
        hr = r["metrics"]["hit_ratio"]
        assert hr == sorted(hr) and 0 <= hr[0] <= hr[-1] <= 1  # cumulative
        assert "mse@mean" in r["metrics"] and "l2_top_expressed@additive" not in r["metrics"]  # GI: no additive offset
    assert rows[0]["n_candidates"] == 600


def test_results_file_and_table(tmp_path):
    from perturbloop.benchmark_report import final_table, protocol_of, response_table, write_response_results

    config = parse_config(GRN_CONFIG)
    rows = [{"policy": p, "seed": s, "metrics": {"l2_top_expressed": [3.0, 2.0 + s], "l2_top_expressed@mean": [4.0, 4.0],
                                                "l2_additive": [2.5, 2.5], "pearson_delta": [0.1, 0.2]},
             "round_seconds": [0.5], "n_observed": [10, 20], "picks": [], "failed": [], "n_test": 30, "n_candidates": 120}
            for p in ("uncertainty", "random") for s in range(2)]
    protocol = protocol_of(config, rows)
    path, png = write_response_results(tmp_path / "r.json", protocol, "grn-small", rows)
    res = json.loads(path.read_text())
    assert set(res) == {"protocol", "world", "results"} and res["world"] == "grn-small"
    assert res["results"][0]["metrics"]["l2_top_expressed"] == [3.0, 2.0]
    assert png.read_bytes()[:4] == b"\x89PNG"
    fin = {(r["policy"], r["metric"]): r for r in final_table(rows)}
    l2 = fin[("random", "l2_top_expressed")]
    assert l2["final"] == pytest.approx(2.5) and l2["baselines"] == {"mean": 4.0, "additive": 2.5}
    assert l2["beats_baselines"] == "tie"  # 2.5 vs the additive 2.5: not a win, and the table says so
    from perturbloop.benchmark_report import beats_baselines

    assert beats_baselines("l2_top_expressed", 3.0, {"additive": 2.5, "mean": 4.0}) is False
    assert beats_baselines("pearson_delta", 0.5, {"mean": 0.2}) is True
    assert response_table("grn-small", protocol, rows).row_count == len(fin)


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="world.dataset"):
        parse_config({"name": "x", "world": {"kind": "perturbseq"}})
    with pytest.raises(ConfigError, match="program"):
        parse_config({"name": "x", "objective": "maximize", "world": {"kind": "synthetic_grn"}})
    with pytest.raises(ConfigError, match="surrogate.kind"):
        parse_config({"name": "x", "world": {"kind": "synthetic_grn"}, "surrogate": {"kind": "transformer"}})
    with pytest.raises(ConfigError, match="design.colour: unknown field"):
        parse_config({"name": "x", "world": {"kind": "synthetic_grn"}, "design": {"colour": 1}})
    with pytest.raises(ConfigError, match="'expression_pca' is not available"):
        parse_config({"name": "x", "data": {"screen": "s"}, "design": {"features": ["go", "expression_pca"]}})
    with pytest.raises(ConfigError, match="remove \\[data\\]"):
        parse_config({"name": "x", "data": {"screen": "s"}, "world": {"kind": "synthetic_grn"}})
    assert parse_config({"name": "x", "world": {"kind": "synthetic_grn"}}).is_response
    assert not parse_config({"name": "x", "data": {"screen": "s"}}).is_response


def test_example_configs_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "examples"
    kinds = {load_config(root / f"{n}.toml").world.kind
             for n in ("papalexi_learn", "synthetic_pairs", "norman_gi_pairs")}
    assert kinds == {"perturbseq", "synthetic_grn", "pair_fitness"}


@pytest.mark.slow
def test_benchmark_command_with_a_response_config(tmp_path, data_dir):
    cfg = tmp_path / "grn.toml"
    cfg.write_text("""
name = "grn-cli"
initial = 8
rounds = 1
batch_size = 6
[world]
kind = "synthetic_grn"
seed = 3
cells_per_run = 40
params = { n_genes = 100, n_regulators = 8, pairs_per_type = 1 }
[design]
space = "pairs"
features = ["expression_pca"]
[surrogate]
kind = "ensemble"
epochs = 100
[evaluation]
seeds = 1
max_test = 20
policies = ["uncertainty", "random"]
de_method = "abs_lfc"
""")
    out = tmp_path / "res" / "grn.json"
    env = {**os.environ, "PERTURBLOOP_TASK_THREADS": "1", "COLUMNS": "250"}
    proc = perturbloop("benchmark", "--config", str(cfg), "--out", str(out), "--data-dir", str(data_dir),
                       "--runner", "inline",  # the Prefect runners: benchmarks/perturbseq.py
                       env=env, cwd=tmp_path, timeout=300)  # a process of its own (tests/forked.py)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["world"] == "grn-cli" and res["protocol"]["synthetic"] is True
    assert [(r["policy"], r["seed"]) for r in res["results"]] == [("uncertainty", 0), ("random", 0)]
    assert all(len(r["metrics"]["l2_top_expressed"]) == 2 for r in res["results"])
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "beats baselines" in proc.stdout and "SYNTHETIC" in proc.stdout
    both = perturbloop("benchmark", "--config", str(cfg), "--screen", "x", "--out", str(out), env=env, cwd=tmp_path,
                       timeout=120)
    assert both.returncode == 2 and "not both" in both.stderr
