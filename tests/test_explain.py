"""Evidence in proposal rationales (`perturbloop.explain`): STRING neighbours measured as hits, pathway, literature,
prior-screen signal and phenotype terms; and in the loop, on a slice of the IL2 screen."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from perturbloop.explain import GeneKnowledge, explain, with_evidence


@pytest.fixture
def toy() -> GeneKnowledge:
    """A: neighbour of B (0.9), C (0.5), D (0.7); E alone. Sets: S1 = {A, B, C}, S2 = {A, D, F, G},
    HALLMARK_X = {E, F}."""
    genes = ["A", "B", "C", "D", "E"]
    edges = {(0, 1): 0.9, (0, 2): 0.5, (0, 3): 0.7}
    i, j = zip(*edges)
    w = list(edges.values())
    W = sp.coo_matrix((w + w, (i + j, j + i)), shape=(5, 5)).tocsr()
    sets = {"S1": ["A", "B", "C"], "S2": ["A", "D", "F", "G"], "HALLMARK_X": ["E", "F"]}
    by_gene: dict[str, list[str]] = {}
    for s, members in sets.items():
        for g in members:
            by_gene.setdefault(g, []).append(s)
    return GeneKnowledge(W, genes, by_gene, {s: frozenset(m) for s, m in sets.items()}, {"A": 1234, "E": 3},
                         {"screen1": {"A": 4.2, "E": 0.3}, "screen2": {"A": 1.0}})


def test_explain_names_hit_neighbours_pathway_literature_prior_and_terms(toy):
    observed = {"B": 2.5, "C": -3.0, "D": 0.4, "F": 0.1, "G": None}
    line, = explain(["A"], toy, observed, hit_threshold=2.0, matched_terms={"A": ["T cell activation"]})
    # hits B and C (|value| >= 2), strongest edge first; D is measured but not a hit
    assert line.startswith("STRING hits: B 0.900 (2.50), C 0.500 (-3.00);")
    assert "D " not in line
    assert "pathway: S1 (2/2 measured hits)" in line  # S1 holds both hits; S2 none
    assert "PubMed 1,234" in line and "prior screens: |z| 4.2 in screen1" in line
    assert line.endswith("phenotype: T cell activation")


def test_explain_without_hits_or_knowledge(toy):
    e, unknown = explain(["E", "Z"], toy, {"A": 0.1}, hit_threshold=1.0)
    assert e == "pathway: HALLMARK_X; PubMed 3; prior screens: |z| 0.3 in screen1"  # no hit: its Hallmark set
    assert unknown == ""
    assert with_evidence(["near A (0.10)", ""], [e, unknown]) == [f"near A (0.10); {e}", ""]
    with pytest.raises(ValueError, match="hit_threshold"):
        explain(["A"], toy, {}, hit_threshold=0)


def test_explain_is_fast_over_a_batch(data_dir):
    """128 genes against the real tables, 2,000 measured: well under a second once the tables are read."""
    import time

    from perturbloop.data import load_screen
    from perturbloop.explain import knowledge_for

    kb = knowledge_for(str(data_dir))
    s = load_screen("schmidt2021_il2", data_dir)
    genes = list(s.genes)
    observed = {g: float(s.scores[g]) for g in genes[:2000]}
    t0 = time.perf_counter()
    lines = explain(genes[2000:2128], kb, observed, hit_threshold=float(s.scores.abs().quantile(0.95)))
    assert time.perf_counter() - t0 < 1.0
    assert sum("STRING hits:" in x for x in lines) >= 1 and sum("pathway:" in x for x in lines) > 50


@pytest.mark.slow
def test_proposal_names_a_string_neighbour_measured_as_a_hit(il2_slice_1500, data_dir, tmp_path, one_torch_thread):
    """An IL2-slice campaign: after a first random round, a later proposal's rationale names a STRING neighbour
    of the proposed gene that was measured as a hit, with its edge score and measured value; the store holds it
    (what `perturbloop review` and the web page print)."""
    import re

    from agent.runner import run_campaign
    from perturbloop.config import parse_config
    from perturbloop.data import knowledge as kn
    from perturbloop.store import Store

    config = parse_config({"name": "ex", "rounds": 2, "batch_size": 100, "seed": 3,
                           "data": {"screen": str(il2_slice_1500)}, "acquisition": {"kind": "greedy"}})
    store = Store(str(tmp_path / "pl.db"))
    assert run_campaign(config, store, data_dir).status == "finished"
    hits = {o.perturbation: o.value for o in store.observations("ex") if o.hit}
    assert hits
    W, genes = kn.string_adjacency(data_dir)
    row = {g: i for i, g in enumerate(genes)}
    r1 = store.rounds("ex")[1]
    named = 0
    for p in store.proposals(r1.id):
        m = re.search(r"STRING hits: (.*?)(;|$)", p.rationale)
        if not m:
            continue
        for name, score, value in re.findall(r"([A-Z0-9.-]+) ([0-9.]+) \((-?[0-9.]+)\)", m.group(1)):
            assert name in hits and float(value) == pytest.approx(hits[name], abs=0.01)
            assert W[row[p.perturbation], row[name]] == pytest.approx(float(score), abs=1e-3)
            named += 1
    assert named > 0
    assert np.mean(["PubMed" in p.rationale for p in store.proposals(r1.id)]) > 0.5
