"""The scientist's prior (perturbloop.phenotype_prior): words, term matching on the real GO / Reactome /
Hallmark / HPO names, the STRING walk, round 1 from the prior, the feature column, and bad input."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from forked import perturbloop
import scipy.sparse as sp

from perturbloop.errors import ConfigError, UnknownGeneError
from perturbloop.phenotype_prior import (
    PhenotypePriorWarning,
    matching_terms,
    phenotype_prior,
    propagate,
    read_gene_list,
)
from perturbloop.term_index import stem, tokens

IL2_PHENOTYPE = "IL-2 secretion by primary human CD4 T cells after TCR stimulation"
IL2_PATHWAY = ["IL2", "IL2RA", "CD28", "LCP2", "ZAP70"]


def _rank(prior, gene: str) -> int:
    return int((prior.score > prior.score[prior.genes.index(gene)]).sum())


@pytest.fixture(scope="module")
def il2_prior(il2_screen, data_dir):
    return phenotype_prior(il2_screen.genes, phenotype=IL2_PHENOTYPE, data_dir=data_dir)


def test_words_are_normalised():
    assert tokens("IL-2") == tokens("IL2") == tokens("interleukin 2") == tokens("Interleukin-2") == ("interleukin2",)
    assert tokens("IL-21") != tokens("IL-2")
    assert tokens("IFN-γ") == tokens("IFNG") == tokens("type II interferon") == ("interferongamma",)
    assert tokens("T-cells") == tokens("T cell") == ("tcell",)
    assert tokens("TCR signaling") == tokens("T cell receptor signalling")
    assert tokens("SARS-CoV-2") == tokens("REACTOME_SARS_COV_2") == ("sarscov2",)
    assert tokens("regulation of the process") == ()  # stop words only
    assert stem("secretion") == stem("secreted") == "secret"
    assert stem("stimulation") == stem("stimulated") and stem("killer") == stem("killing") == "kill"
    assert stem("cd28") == "cd28"


def test_il2_phenotype_ranks_il2_pathway_high(il2_prior, il2_screen):
    n = len(il2_screen.genes)
    ranks = {g: _rank(il2_prior, g) for g in IL2_PATHWAY}
    assert all(r < 0.025 * n for r in ranks.values()), ranks  # each in the top 2.5% of ~18.9k genes
    assert np.median(list(ranks.values())) < 0.01 * n, ranks
    housekeeping = [g for g in il2_screen.genes if g.startswith(("RPL", "RPS"))][:40]
    assert min(_rank(il2_prior, g) for g in housekeeping) > 0.05 * n
    names = [m.name for m in il2_prior.matched]
    assert "interleukin-2 production" in names and not il2_prior.warnings
    assert il2_prior.score.min() >= 0 and il2_prior.score.max() == pytest.approx(1.0)


def test_rationale_names_matching_terms(il2_prior):
    terms = matching_terms(il2_prior, ["IL2RA", "ZAP70", "IL2"])
    assert any("interleukin-2" in m.name for m in terms["IL2RA"])
    assert any(m.name == "T cell receptor signaling pathway" and m.source == "GO" for m in terms["ZAP70"])
    assert any(m.name == "interleukin 2 signaling" and m.source == "Reactome" for m in terms["IL2"])
    assert il2_prior.rationale("IL2RA").startswith("phenotype prior 1.00: ")
    assert all(m.why == "phenotype" for m in il2_prior.matched)
    w = [m.weight for m in il2_prior.matched]
    assert w == sorted(w, reverse=True)


def test_named_terms_by_id_set_name_or_name(small_pool_genes, data_dir):
    by_id = phenotype_prior(small_pool_genes, prior_terms=["GO:0032623"], data_dir=data_dir)
    by_name = phenotype_prior(small_pool_genes, prior_terms=["Interleukin-2  Production"], data_dir=data_dir)
    assert np.allclose(by_id.score, by_name.score)
    assert [m.name for m in by_id.matched] == ["interleukin-2 production"] and by_id.matched[0].why == "named"
    both = phenotype_prior(small_pool_genes, phenotype="IL-2 production", prior_terms=["GO:0032663"],
                           data_dir=data_dir)  # the named "regulation of interleukin-2 production"
    kept = [m for m in both.matched if m.name == "interleukin-2 production"]  # one wording, the broadest term
    assert len(kept) == 1 and kept[0].why == "named" and kept[0].score == 1.0
    assert not any(m.name == "regulation of interleukin-2 production" for m in both.matched)
    hallmark = phenotype_prior(small_pool_genes, prior_terms=["HALLMARK_IL2_STAT5_SIGNALING"], data_dir=data_dir)
    assert hallmark.matched[0].source == "Hallmark" and hallmark.informative


def test_unknown_prior_term_lists_the_closest_names(small_pool_genes, data_dir):
    with pytest.raises(ConfigError) as e:
        phenotype_prior(small_pool_genes, prior_terms=["interleukin-2 productoin", "GO:0032623"], data_dir=data_dir)
    msg = str(e.value)
    assert "design.prior_terms" in msg and "'interleukin-2 productoin'" in msg and "interleukin-2 production" in msg
    assert "GO:0032623'" not in msg  # the known one is not reported


def test_known_positive_that_is_not_a_gene(small_pool_genes, data_dir):
    with pytest.raises(UnknownGeneError, match="NOTAGENE1") as e:
        phenotype_prior(small_pool_genes, known_positives=["IL2", "NOTAGENE1"], data_dir=data_dir)
    assert "design.known_positives" in str(e.value) and "IL2," not in str(e.value)


def test_known_positives_reach_their_string_neighbours(il2_screen, data_dir):
    prior = phenotype_prior(il2_screen.genes, known_positives=["zap70"], data_dir=data_dir)  # alias-mapped
    assert prior.positives == ["ZAP70"] and _rank(prior, "ZAP70") == 0
    n = len(il2_screen.genes)
    assert _rank(prior, "LCP2") < 0.01 * n and _rank(prior, "LAT") < 0.01 * n  # STRING partners of ZAP70
    assert "known positive" in prior.rationale("ZAP70") and not prior.matched


def test_propagation_is_a_random_walk_with_restart():
    W = sp.csr_matrix(np.array([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]], dtype=float))  # a path
    x = np.array([1.0, 0, 0, 0])
    f = propagate(W, x, alpha=0.5)
    P = np.diag(1 / W.toarray().sum(1)) @ W.toarray()
    assert np.allclose(f, 0.5 * np.linalg.solve(np.eye(4) - 0.5 * P, x), atol=1e-7)
    assert f[0] > f[1] > f[2] > f[3] > 0


def test_phenotype_matching_nothing_warns_and_keeps_other_priors(small_pool_genes, data_dir):
    from acquisition.prior import PriorScorePolicy
    from perturbloop.features import build_gene_pool

    with pytest.warns(PhenotypePriorWarning, match="matches no GO"):
        pool = build_gene_pool(small_pool_genes, features=["go"], data_dir=data_dir, phenotype="qwzx blorf",
                               known_positives=["IL2"])
    assert pool.feature_names[0] == "phenotype_prior" and pool.phenotype_prior.informative
    items = PriorScorePolicy(seed=0).select(None, pool, {}, 5).items
    assert items[0].perturbation == "IL2"
    assert all(i.rationale.startswith("warning: phenotype 'qwzx blorf' matches no") for i in items)
    assert "known positive" in items[0].rationale


def test_round_one_takes_the_top_prior(small_pool_genes, data_dir):
    from acquisition.prior import PriorScorePolicy
    from perturbloop.features import build_gene_pool

    pool = build_gene_pool(small_pool_genes, features=["go"], data_dir=data_dir, phenotype=IL2_PHENOTYPE)
    prior = pool.phenotype_prior
    col = pool.X[:, pool.feature_names.index("phenotype_prior")].numpy()
    assert np.corrcoef(col, np.sqrt(prior.score))[0, 1] == pytest.approx(1.0)  # standardised sqrt(p)
    items = PriorScorePolicy(seed=0).select(None, pool, {"IL2RA": 1.0}, 10, pending=["CD28"]).items
    top = [pool.labels[i] for i in np.argsort(-prior.score) if pool.labels[i] not in ("IL2RA", "CD28")][:10]
    assert [i.perturbation for i in items] == top
    assert all(i.rationale.startswith("phenotype prior") for i in items)
    plain = build_gene_pool(small_pool_genes, features=["go"], data_dir=data_dir)
    assert plain.phenotype_prior is None and "phenotype_prior" not in plain.feature_names


def test_missing_knowledge_file_names_the_dataset(tmp_path, data_dir, small_pool_genes):
    from perturbloop.data.knowledge import KnowledgeMissingError

    (tmp_path / "knowledge").mkdir()
    for f in (data_dir / "knowledge").iterdir():
        if f.is_file() and not f.name.startswith(("gene_hpo", "hpo_terms")):
            (tmp_path / "knowledge" / f.name).symlink_to(f)
    for d in ("annotations", "screens"):
        (tmp_path / d).symlink_to(data_dir / d)
    with pytest.raises(KnowledgeMissingError, match="'hpo'.*perturbloop data fetch hpo"):
        phenotype_prior(small_pool_genes, phenotype=IL2_PHENOTYPE, data_dir=tmp_path)


def test_gene_lists_from_text_or_file(tmp_path):
    assert read_gene_list("IL2, CD28,") == ["IL2", "CD28"]
    f = tmp_path / "pos.txt"
    f.write_text("gene\nIL2\n# a comment\nCD28\n")
    assert read_gene_list(str(f)) == ["IL2", "CD28"]
    assert read_gene_list(None) == [] and read_gene_list(["ZAP70"]) == ["ZAP70"]


def test_config_fields(tmp_path):
    from perturbloop.config import check_named_files, parse_config

    base = {"name": "c", "data": {"screen": "schmidt2021_il2"}}
    c = parse_config({**base, "design": {"phenotype": IL2_PHENOTYPE, "prior_terms": ["GO:0032623"],
                                         "known_positives": ["IL2"]}})
    assert c.design.has_prior and not parse_config(base).design.has_prior
    with pytest.raises(ConfigError, match="design.known_positives"):
        check_named_files(parse_config({**base, "design": {"known_positives": str(tmp_path / "none.txt")}}))
    with pytest.raises(ConfigError, match="apply to pooled screens only"):
        parse_config({"name": "r", "world": {"kind": "perturbseq", "dataset": "papalexi2021"},
                      "design": {"phenotype": "IFN-gamma response"}})
    with pytest.raises(ConfigError, match="design.phenotype"):
        parse_config({**base, "design": {"phenotype": ""}})


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`perturbloop ARGS` in a process of its own, forked from a preloaded forkserver (tests/forked.py)."""
    return perturbloop(*args, cwd=cwd, env=dict(os.environ), timeout=300)


@pytest.mark.slow
def test_cli_benchmark_refuses_bad_prior_input_before_running(slice_csv, data_dir, tmp_path):
    base = ["benchmark", "--screen", str(slice_csv), "--features", "go", "--data-dir", str(data_dir),
            "--out", str(tmp_path / "r.json")]
    proc = _cli(*base, "--prior-terms", "GO:0032623;interleukin-2 productoin", cwd=tmp_path)
    assert proc.returncode != 0 and "interleukin-2 production" in proc.stdout + proc.stderr
    pos = tmp_path / "positives.txt"
    pos.write_text("IL2\nNOTAGENE1\n")
    proc = _cli(*base, "--known-positives", str(pos), cwd=tmp_path)
    assert proc.returncode != 0 and "NOTAGENE1" in proc.stdout + proc.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_cli_benchmark_with_phenotype(slice_csv, data_dir, tmp_path):
    import json

    out = tmp_path / "r.json"
    proc = _cli("benchmark", "--screen", str(slice_csv), "--features", "go", "--data-dir", str(data_dir),
                "--phenotype", "qwzx blorf", "--known-positives", "IL2,CD28", "--policy", "best", "--seeds", "1",
                "--rounds", "1", "--batch", "8", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning:" in proc.stdout and "matches no GO" in proc.stdout
    res = json.loads(out.read_text())
    assert res["protocol"]["known_positives"] == ["IL2", "CD28"]
    assert {"IL2", "CD28"} <= set(res["results"][0]["picks"][0])


@pytest.mark.slow
def test_the_issues_one_line_runs_on_a_screen_file(slice_csv, data_dir, tmp_path):
    """`perturbloop benchmark --screen FILE --hits FILE --features go,knowledge --phenotype "..." --policy
    best,random --out r.json` (issue 11's line anyone can rerun), on a real screen slice; the hits are the file's."""
    import json

    import pandas as pd

    scores = pd.read_csv(slice_csv).set_index("Gene")["Score"]
    hits = list(scores.abs().sort_values(ascending=False).index[:40])
    (tmp_path / "hits.txt").write_text("\n".join(hits) + "\n")
    out = tmp_path / "r.json"
    proc = _cli("benchmark", "--screen", str(slice_csv), "--hits", str(tmp_path / "hits.txt"), "--features",
                "go,knowledge", "--phenotype", IL2_PHENOTYPE, "--policy", "best,random", "--out", str(out),
                "--data-dir", str(data_dir), "--seeds", "2", "--rounds", "2", "--batch", "16", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["protocol"]["features"] == ["go", "knowledge"] and res["protocol"]["phenotype"] == IL2_PHENOTYPE
    assert res["protocol"]["n_hits"] == len(hits)
    assert sorted((r["policy"], r["seed"]) for r in res["results"]) == [("best", 0), ("best", 1), ("random", 0),
                                                                        ("random", 1)]
    for r in res["results"]:
        found = {g for batch in r["picks"] for g in batch} & set(hits)
        assert r["hit_ratio"] == pytest.approx(len(found) / len(hits))


@pytest.mark.slow
def test_cli_benchmark_builds_the_screen_world_once(slice_csv, data_dir, tmp_path, monkeypatch):
    """The --phenotype warning pre-check, the sweep's fail-fast check and every run of the sweep (local runner,
    this process) share one build of the screen world (its pool, with the phenotype prior)."""
    from typer.testing import CliRunner

    import agent.benchmark as bm
    from perturbloop.cli import app

    built: list[str] = []
    real = bm.screen_parts

    def counted(config, data_dir):
        built.append(config.data.screen)
        return real(config, data_dir)

    monkeypatch.setattr(bm, "screen_parts", counted)
    bm.build_screen_world.cache_clear()
    try:
        res = CliRunner().invoke(app, ["benchmark", "--screen", str(slice_csv), "--features", "go", "--data-dir",
                                       str(data_dir), "--phenotype", "qwzx blorf", "--policy", "best,random",
                                       "--seeds", "2", "--rounds", "1", "--batch", "8", "--out", str(tmp_path / "r.json")],
                                 env={"COLUMNS": "200"})
    finally:
        bm.build_screen_world.cache_clear()
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "warning:" in res.output and "matches no GO" in res.output
    assert built == [str(slice_csv)]  # 4 campaigns, one build


def test_prior_share_mixes_random_picks_into_round_one(small_pool_genes, data_dir):
    from acquisition.prior import PriorScorePolicy
    from perturbloop.features import build_gene_pool

    pool = build_gene_pool(small_pool_genes, features=["go"], data_dir=data_dir, phenotype=IL2_PHENOTYPE,
                           prior_share=0.5)
    prior = pool.phenotype_prior
    items = PriorScorePolicy(seed=3).select(None, pool, {}, 10).items
    labels = [i.perturbation for i in items]
    assert len(set(labels)) == 10
    assert labels[:5] == [pool.labels[i] for i in np.argsort(-prior.score)[:5]]
    assert all(i.rationale.startswith("random pick") for i in items[5:])
    assert labels == [i.perturbation for i in PriorScorePolicy(seed=3).select(None, pool, {}, 10).items]  # seeded
    assert labels[5:] != [i.perturbation for i in PriorScorePolicy(seed=4).select(None, pool, {}, 10).items][5:]
