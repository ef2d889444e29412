"""Perturb-seq and pair worlds: loaders, scanpy summaries, PerturbSeqReplay (real Papalexi
slices), SyntheticGRN (small synthetic worlds) and PairReplay (real Norman 2019 pairs)."""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbloop.data import registry
from perturbloop.errors import DataIntegrityError, PerturbloopError, UnknownDatasetError
from perturbloop.perturbseq import (
    PerturbSeqFormatError,
    UnknownPerturbationError,
    canonical_label,
    load_perturbseq,
    prepare_perturbseq,
)
from perturbloop.responses import most_expressed_genes, pseudobulk_lfc, top_de_genes
from simulators import (
    INTERACTION_TYPES,
    PairReplay,
    PerturbSeqReading,
    PerturbSeqReplay,
    SyntheticGRN,
    classify_interaction,
)

PAPALEXI_SLICE_TARGETS = ["STAT1", "IRF1", "MYC", "SPI1"]  # 444, 1073, 109 and 48 cells
PAPALEXI_SLICE_GENES = 150


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def papalexi(data_dir: Path):
    """All of Papalexi 2021 low-MOI (20,729 cells x 299 genes), canonical form."""
    return load_perturbseq("papalexi2021", data_dir)


@pytest.fixture(scope="session")
def papalexi_slice(papalexi):
    """Control cells and four targets' cells, on the 150 most expressed genes plus the targets."""
    cells = papalexi.obs["perturbation"].isin(["ctrl", *PAPALEXI_SLICE_TARGETS]).to_numpy()
    top = most_expressed_genes(papalexi, PAPALEXI_SLICE_GENES)
    genes = list(dict.fromkeys(top + [g for g in PAPALEXI_SLICE_TARGETS if g in papalexi.var_names]))
    return papalexi[cells, genes].copy()


@pytest.fixture(scope="session")
def grn():
    """A small synthetic world: 120 genes, 8 regulators, 1 planted pair of each type."""
    return SyntheticGRN(n_genes=120, n_regulators=8, density=0.15, seed=3, pairs_per_type=1, module_size=4, n_private=2)


@pytest.fixture(scope="session")
def norman(data_dir: Path):
    return PairReplay.from_norman2019(data_dir)


def _tiny(counts, labels, genes=("G1", "G2", "G3")) -> ad.AnnData:
    X = sp.csr_matrix(np.asarray(counts, dtype=np.float32))
    return ad.AnnData(X=X, obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
                      var=pd.DataFrame(index=list(genes)))


# --- registry -----------------------------------------------------------------------------------

def test_registry_scperturb_entries_are_documented_and_verifiable():
    for name, fname, size in [
        ("norman2019", "NormanWeissman2019_filtered.h5ad", 698_680_199),
        ("replogle2022_k562_essential", "ReplogleWeissman2022_K562_essential.h5ad", 1_546_729_675),
        ("adamson2016", "AdamsonWeissman2016_GSM2406681_10X010.h5ad", 471_286_951),
    ]:
        spec = registry.get_spec(name)
        assert spec.kind == "perturbseq" and spec.citation
        f, = spec.files
        assert f.path.endswith(fname) and f.size == size
        assert f.url.startswith("https://zenodo.org/records/13350497/files/" + fname)
        assert f.sha256 is None and re.fullmatch(r"[0-9a-f]{32}", f.md5)  # Zenodo publishes md5 only
        assert f.verifiable
        assert spec.loader == {"key": "perturbation", "control": "control", "separators": "_+"}


def test_local_registry_checksums_match_the_shared_files(data_dir):
    for name in ("papalexi2021", "norman2019_gi_fits", "norman2019_pairs"):
        for f in registry.get_spec(name).files:
            assert registry.verify_file(data_dir / f.path, f) is None, f.path


def test_fetch_refuses_files_without_checksum(monkeypatch, tmp_path):
    spec = registry.DatasetSpec("unchecked_demo", "perturbseq", "demo",
                                (registry.DataFile("perturbseq/x.h5ad", None, "url", "https://example.invalid/x.h5ad"),))
    monkeypatch.setitem(registry.REGISTRY, "unchecked_demo", spec)

    def no_network(*a, **k):
        raise AssertionError("fetch must refuse before any download")

    monkeypatch.setattr(registry.urllib.request, "urlopen", no_network)
    with pytest.raises(PerturbloopError, match=r"refusing to download perturbseq/x\.h5ad.*no checksum"):
        registry.fetch("unchecked_demo")


def test_verify_file_checks_size_then_md5(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"perturbloop")
    good = registry.DataFile("f.bin", None, size=11, md5=registry.md5_of(p))
    assert registry.verify_file(p, good) is None
    assert "size 11 bytes" in registry.verify_file(p, registry.DataFile("f.bin", None, size=12, md5=good.md5))
    assert "md5" in registry.verify_file(p, registry.DataFile("f.bin", None, size=11, md5="0" * 32))
    assert "sha256" in registry.verify_file(p, registry.DataFile("f.bin", "0" * 64, md5=good.md5))  # sha256 wins


def test_fetch_md5_mismatch_is_integrity_error(monkeypatch, tmp_path):
    import io

    spec = registry.DatasetSpec("md5_demo", "perturbseq", "demo",
                                (registry.DataFile("perturbseq/y.bin", None, "url", "https://example.invalid/y", md5="0" * 32),))
    monkeypatch.setitem(registry.REGISTRY, "md5_demo", spec)
    monkeypatch.setattr(registry.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"not the file"))
    with pytest.raises(DataIntegrityError, match="md5"):
        registry.fetch("md5_demo")
    assert not (registry.cache_dir() / "perturbseq/y.bin").exists()


# --- labels and loading -----------------------------------------------------------------------

@pytest.mark.parametrize("raw, kw, expected", [
    ("MAP2K6+KLF1", {}, "KLF1+MAP2K6"),
    ("map2k6_klf1", {"separators": "_+"}, "KLF1+MAP2K6"),
    ("KLF1+ctrl", {}, "KLF1"),  # GEARS single
    ("ctrl", {}, "ctrl"),
    ("ctrl+ctrl", {}, "ctrl"),
    ("non-targeting", {"control": "non-targeting"}, "ctrl"),
    ("control", {"control": ["control", "NT"]}, "ctrl"),
    ("STAT1+STAT1", {}, "STAT1"),
    ("", {}, None),
    (float("nan"), {}, None),
    ("MARCH8", {"symbol_map": {"MARCH8": "MARCHF8"}}, "MARCHF8"),
])
def test_canonical_label(raw, kw, expected):
    assert canonical_label(raw, **kw) == expected


def test_load_papalexi_matches_readme(papalexi):
    a = papalexi
    assert a.shape == (20_729, 299)
    counts = a.obs["perturbation"].value_counts()
    assert counts["ctrl"] == 2_386
    targets = sorted(set(counts.index) - {"ctrl"})
    # The data README says "26 knocked-out target genes"; the h5ad has 25 targets + non-targeting.
    assert len(targets) == 25
    assert "MARCHF8" in targets and "MARCH8" not in targets  # outdated symbol mapped
    assert a.uns["perturbseq"]["symbol_map"] == {"MARCH8": "MARCHF8"}
    assert set(a.obs.loc[a.obs["perturbation"] == "ctrl", "perturbation_source"]) == {"non-targeting"}
    assert a.obs["bio_rep"].nunique() == 3
    c = a.layers["counts"]
    assert sp.issparse(c) and np.allclose(c.data, np.round(c.data)) and c.data.min() >= 0
    assert (a.X != c).nnz == 0 and a.X is not c and a.X.data is not c.data


def test_load_scperturb_style_file(tmp_path):
    counts = np.array([[1, 0, 3], [2, 2, 0], [0, 5, 1], [4, 1, 1], [1, 1, 1]])
    src = _tiny(counts, ["control", "KLF1_MAP2K6", "MAP2K6_KLF1", "KLF1", None])
    src.layers["counts"] = src.X.copy()
    src.X = sp.csr_matrix(np.log1p(counts.astype(np.float32)) / 3)  # normalised X, raw counts in a layer
    path = tmp_path / "sc.h5ad"
    src.write_h5ad(path)
    a = load_perturbseq(path, control="control", separators="_+", map_symbols=False)
    assert list(a.obs["perturbation"]) == ["ctrl", "KLF1+MAP2K6", "KLF1+MAP2K6", "KLF1"]  # unlabelled cell dropped
    assert a.uns["perturbseq"]["n_dropped_unlabelled"] == 1
    assert np.array_equal(a.layers["counts"].toarray(), counts[:4])
    assert list(a.obs["perturbation_source"]) == ["control", "KLF1_MAP2K6", "MAP2K6_KLF1", "KLF1"]


def test_load_errors_name_the_problem(tmp_path, data_dir):
    bad = _tiny(np.ones((2, 3)) * 0.5, ["ctrl", "A"])
    with pytest.raises(PerturbSeqFormatError, match="raw counts"):
        prepare_perturbseq(bad)
    with pytest.raises(PerturbSeqFormatError, match=r"no obs column 'condition'.*perturbation"):
        prepare_perturbseq(_tiny(np.ones((2, 3)), ["ctrl", "A"]), key="condition")
    with pytest.raises(UnknownDatasetError, match="papalexi2021"):
        load_perturbseq("papalexi2099", data_dir)
    with pytest.raises(PerturbloopError, match="not Perturb-seq"):
        load_perturbseq("schmidt2021_il2", data_dir)
    with pytest.raises(PerturbloopError, match="does not exist"):
        load_perturbseq(tmp_path / "missing.h5ad")


# --- summaries --------------------------------------------------------------------------------

def test_pseudobulk_lfc_by_hand():
    # every cell has 4 counts and target_sum=4, so normalisation leaves counts as they are
    counts = [[1, 1, 2], [2, 0, 2],    # ctrl
              [4, 0, 0], [0, 2, 2],    # A
              [0, 0, 4]]               # B (one cell)
    a = _tiny(counts, ["ctrl", "ctrl", "A", "A", "B"])
    lfc = pseudobulk_lfc(a, target_sum=4)
    assert list(lfc.index) == ["A", "B"] and list(lfc.columns) == ["G1", "G2", "G3"]
    ctrl = np.array([(np.log(2) + np.log(3)) / 2, (np.log(2) + np.log(1)) / 2, np.log(3)])
    A = np.array([np.log(5) / 2, np.log(3) / 2, np.log(3) / 2])
    assert lfc.loc["A"].to_numpy() == pytest.approx(A - ctrl)
    assert lfc.loc["A", "G1"] == pytest.approx(0.5 * np.log(5 / 6))
    assert lfc.loc["B"].to_numpy() == pytest.approx(np.log([1, 1, 5]) - ctrl)
    assert lfc.attrs["n_cells"] == {"A": 2, "B": 1, "ctrl": 2}
    assert list(pseudobulk_lfc(a, target_sum=4, min_cells=2).index) == ["A"]
    assert np.array_equal(a.X.toarray(), np.asarray(counts, dtype=np.float32))  # input untouched
    # counts in a layer are preferred over X
    b = a.copy()
    b.layers["counts"] = b.X.copy()
    b.X = sp.csr_matrix(np.full((5, 3), 0.3, dtype=np.float32))
    pd.testing.assert_frame_equal(pseudobulk_lfc(b, target_sum=4), lfc)
    with pytest.raises(PerturbloopError, match="no control cells"):
        pseudobulk_lfc(a[a.obs["perturbation"] != "ctrl"].copy())


def test_top_de_and_most_expressed_by_hand():
    lfc = pd.DataFrame([[0.1, -2.0, 0.5], [1.0, 1.0, -3.0]], index=["A", "B"], columns=["G1", "G2", "G3"])
    assert top_de_genes(lfc, 2) == {"A": ["G2", "G3"], "B": ["G3", "G1"]}  # ties keep gene order
    a = _tiny([[0, 1, 3], [0, 2, 2], [1, 1, 2]], ["ctrl", "ctrl", "A"])
    assert most_expressed_genes(a, 2) == ["G3", "G2"]
    assert most_expressed_genes(a, 5) == ["G3", "G2", "G1"]
    with pytest.raises(PerturbloopError, match="needs cells"):
        top_de_genes(lfc, 2, method="t-test")


def test_summaries_on_real_papalexi_slice(papalexi_slice):
    lfc = pseudobulk_lfc(papalexi_slice)
    assert list(lfc.index) == sorted(PAPALEXI_SLICE_TARGETS)
    # a CRISPR knockout lowers its own target's mRNA (nonsense-mediated decay)
    assert lfc.loc["STAT1", "STAT1"] < -0.5  # (STAT1 is among the 299 measured genes; IRF1 is not)
    by_lfc = top_de_genes(lfc, 5)
    by_test = top_de_genes(papalexi_slice, 5, method="t-test")
    assert set(by_test) == set(PAPALEXI_SLICE_TARGETS)
    for method_top in (by_lfc, by_test):
        assert len(method_top["STAT1"]) == 5 and "STAT1" in method_top["STAT1"]
    assert len(most_expressed_genes(papalexi_slice, 20, control="ctrl")) == 20


# --- PerturbSeqReplay on real Papalexi cells --------------------------------------------------

def test_replay_offers_held_out_perturbations_and_control_only(papalexi_slice):
    world = PerturbSeqReplay(papalexi_slice, cells_per_run=30, min_cells=50, seed=0)
    assert world.perturbations == ["IRF1", "MYC", "STAT1"]  # SPI1 has 48 cells < min_cells
    assert "STAT1" in world and "SPI1" not in world
    ctrl = world.control()
    assert set(ctrl.obs["perturbation"]) == {"ctrl"} and ctrl.n_obs == 2386
    assert ctrl.uns["perturbseq"]["symbol_map"] == {"MARCH8": "MARCHF8"}  # the loader's provenance is kept
    assert world.control(100).obs_names.equals(world.control(100).obs_names)  # same cells each call
    spi1, = world.run(["SPI1"])
    assert spi1.cells is None and "only 48 cells of SPI1" in spi1.error


def test_replay_held_back_cells_do_not_leak(papalexi_slice):
    """Two worlds that differ only in STAT1's cells answer everything else identically."""
    other = papalexi_slice.copy()
    m = (other.obs["perturbation"] == "STAT1").to_numpy()
    rng = np.random.default_rng(1)
    scrambled = other.layers["counts"].toarray()
    scrambled[m] = rng.permutation(scrambled[m].ravel()).reshape(scrambled[m].shape)
    other.layers["counts"] = sp.csr_matrix(scrambled)
    other.X = other.layers["counts"].copy()
    w1, w2 = (PerturbSeqReplay(x, cells_per_run=40, seed=5) for x in (papalexi_slice, other))
    assert (w1.control().X != w2.control().X).nnz == 0
    for lab in ("IRF1", "MYC"):
        (r1,), (r2,) = w1.run([lab]), w2.run([lab])
        assert r1.cells.obs_names.equals(r2.cells.obs_names)
        assert (r1.cells.layers["counts"] != r2.cells.layers["counts"]).nnz == 0
    stat1_cells = set(papalexi_slice.obs_names[m])
    assert not stat1_cells & set(w1.control().obs_names)
    (s1,), (s2,) = w1.run(["STAT1"]), w2.run(["STAT1"])
    assert s1.cells.obs_names.equals(s2.cells.obs_names)  # same cells drawn ...
    assert (s1.cells.layers["counts"] != s2.cells.layers["counts"]).nnz > 0  # ... their data only now


def test_replay_samples_without_replacement_until_exhausted(papalexi_slice):
    world = PerturbSeqReplay(papalexi_slice, cells_per_run=50, seed=0)
    seen: list[str] = []
    readings = []
    while True:
        r, = world.run(["MYC"])
        readings.append(r)
        if r.error:
            break
        assert set(r.cells.obs["perturbation"]) == {"MYC"}
        seen += list(r.cells.obs_names)
    assert [r.n_cells for r in readings] == [50, 50, 9, 0]  # MYC has 109 cells
    assert "low cell count: 9 of 50" in readings[2].note
    assert "all 109 cells of MYC were returned" in readings[3].error
    assert len(seen) == len(set(seen)) == 109
    assert set(seen) == set(papalexi_slice.obs_names[papalexi_slice.obs["perturbation"] == "MYC"])


def test_replay_is_seeded_and_order_independent(papalexi_slice):
    a = PerturbSeqReplay(papalexi_slice, cells_per_run=20, seed=7).run(["IRF1", "STAT1"])
    b = PerturbSeqReplay(papalexi_slice, cells_per_run=20, seed=7).run(["STAT1", "IRF1"])[::-1]
    c = PerturbSeqReplay(papalexi_slice, cells_per_run=20, seed=8).run(["IRF1", "STAT1"])
    for ra, rb, rc in zip(a, b, c):
        assert ra.cells.obs_names.equals(rb.cells.obs_names)
        assert not ra.cells.obs_names.equals(rc.cells.obs_names)
    twice = PerturbSeqReplay(papalexi_slice, cells_per_run=20, seed=7).run(["IRF1", "IRF1"])
    assert twice[0].cells.obs_names.equals(a[0].cells.obs_names)
    assert not set(twice[0].cells.obs_names) & set(twice[1].cells.obs_names)  # a rerun gives new cells


def test_replay_failures_and_low_cell_counts(papalexi_slice):
    labels = ["IRF1", "STAT1", "MYC"] * 4
    runs = PerturbSeqReplay(papalexi_slice, cells_per_run=5, failure_rate=0.4, seed=2).run(labels)
    again = PerturbSeqReplay(papalexi_slice, cells_per_run=5, failure_rate=0.4, seed=2).run(labels)
    failed = [r.error is not None for r in runs]
    assert 0 < sum(failed) < len(runs) and failed == [r.error is not None for r in again]
    assert all("failed in the lab" in r.error and r.cells is None for r in runs if r.error)
    ok_myc = [r for r in runs if r.perturbation == "MYC" and r.ok]
    assert sum(r.n_cells for r in ok_myc) == 5 * len(ok_myc)  # failed runs use up no cells
    w = PerturbSeqReplay(papalexi_slice, fail=["irf1"], seed=0)
    assert all(r.error for r in w.run(["IRF1", "IRF1"])) and w.run(["STAT1"])[0].ok
    var = PerturbSeqReplay(papalexi_slice, cells_per_run=40, cell_count_cv=0.5, seed=0).run(["IRF1"] * 8)
    sizes = [r.n_cells for r in var]
    assert len(set(sizes)) > 3 and min(sizes) < 40 < max(sizes)
    assert any(r.note and "simulated low cell count" in r.note for r in var)


def test_replay_unknown_labels_are_refused_before_running(papalexi_slice):
    world = PerturbSeqReplay(papalexi_slice, seed=0)
    with pytest.raises(UnknownPerturbationError, match=r"NOTAGENE, CD86\+STAT1") as ei:
        world.run(["STAT1", "NOTAGENE", "CD86+STAT1"])
    assert ei.value.labels == ["NOTAGENE", "CD86+STAT1"]
    with pytest.raises(UnknownPerturbationError, match="use control"):
        world.run(["ctrl"])
    assert world.history == []  # nothing was run
    r, = world.run(["stat1"])
    assert r.perturbation == "STAT1" and r.ok and isinstance(r, PerturbSeqReading) and r.value is r.cells


def test_replay_runs_feed_pseudobulk_and_truth_is_full_data(papalexi_slice):
    world = PerturbSeqReplay(papalexi_slice, cells_per_run=200, seed=0)
    runs = world.run(["STAT1", "IRF1"])
    obs = ad.concat([world.control(), *[r.cells for r in runs]])
    lfc = pseudobulk_lfc(obs)
    truth = world.truth_lfc()
    assert list(truth.index) == ["IRF1", "MYC", "SPI1", "STAT1"]
    pd.testing.assert_frame_equal(truth, pseudobulk_lfc(papalexi_slice, min_cells=world.min_cells))
    for lab in ("STAT1", "IRF1"):
        assert np.corrcoef(lfc.loc[lab], truth.loc[lab])[0, 1] > 0.6  # 200 cells already track the truth


def test_replay_canonicalises_pair_labels():
    rng = np.random.default_rng(0)
    labels = ["ctrl"] * 30 + ["B+A"] * 25 + ["A"] * 25
    a = _tiny(rng.poisson(3, (80, 3)), labels)
    world = PerturbSeqReplay(a, cells_per_run=10, seed=0)
    assert world.perturbations == ["A", "A+B"]
    r, = world.run(["B+A"])
    assert r.perturbation == "A+B" and set(r.cells.obs["perturbation"]) == {"A+B"}
    assert set(r.cells.obs["perturbation_source"]) == {"B+A"}


# --- SyntheticGRN -------------------------------------------------------------------------------

def test_grn_is_labelled_synthetic_and_seeded(grn):
    a = grn.simulate(["ctrl", grn.perturbable[0]], 20, seed=1)
    assert a.uns["synthetic"] is True and a.shape == (40, 120)
    assert all(re.fullmatch(r"SYN\d{4}", g) for g in a.var_names)
    assert list(a.var_names) == grn.genes == sorted(grn.genes)  # name order hides which genes regulate
    assert np.allclose(a.layers["counts"].data, np.round(a.layers["counts"].data))
    b = SyntheticGRN(n_genes=120, n_regulators=8, density=0.15, seed=3, pairs_per_type=1, module_size=4,
                     n_private=2).simulate(["ctrl", grn.perturbable[0]], 20, seed=1)
    assert (a.X != b.X).nnz == 0
    c = grn.simulate(["ctrl", grn.perturbable[0]], 20, seed=2)
    assert (a.X != c.X).nnz > 0
    other = SyntheticGRN(n_genes=120, n_regulators=8, density=0.15, seed=4, pairs_per_type=1, module_size=4, n_private=2)
    assert not np.allclose(np.sort(other.interactions["magnitude"]), np.sort(grn.interactions["magnitude"]))


def test_grn_counts_have_cell_to_cell_variation(grn):
    ctrl = grn.simulate(["ctrl"], 2000, seed=0).layers["counts"].toarray()
    mean, var = ctrl.mean(0), ctrl.var(0)
    expressed = mean > 1
    assert (var[expressed] > 1.2 * mean[expressed]).all()  # over-dispersed (negative binomial)
    lib = ctrl.sum(1)
    assert lib.std() / lib.mean() > 0.15  # size factors vary between cells


def test_grn_knockdown_and_propagation(grn):
    lfc = grn.true_lfc(grn.perturbable, scale="log_mean")
    for g in grn.perturbable:
        assert lfc.loc[g, g] == pytest.approx(np.log(0.1))  # 90% knock-down; its regulators are untouched
        assert (lfc.loc[g].drop(g).abs() > 0.1).sum() >= 2  # reaches other genes


def test_grn_planted_interactions_reproduce_their_definitions(grn):
    inter = grn.interactions
    n = len(grn.perturbable)
    assert len(inter) == n * (n - 1) // 2 and set(inter["type"]) <= set(INTERACTION_TYPES)
    planted = inter[inter["planted"]]
    assert sorted(planted["planted_type"]) == sorted(INTERACTION_TYPES)
    assert (planted["type"] == planted["planted_type"]).all()
    for label, row in planted.iterrows():
        a, b = row["gene_a"], row["gene_b"]
        t = grn.true_lfc([a, b, label], scale="log_mean")
        A, B, D = (t.loc[x].to_numpy() for x in (a, b, label))
        S = A + B
        dev = np.abs(D - S)
        g = dev > 0.1 * dev.max() if dev.max() > 0 else np.zeros_like(dev, dtype=bool)
        if row["type"] == "additive":
            assert np.allclose(D, S, atol=1e-9)
        elif row["type"] == "synergistic":
            assert (np.abs(D[g]) > np.abs(S[g])).all()  # the double goes beyond the sum
        elif row["type"] == "buffering":
            assert np.allclose(D[g], A[g]) and np.allclose(D[g], B[g])  # = either single (AND)
            assert np.allclose(D[g], 0.5 * S[g])
        else:
            dom = row["dominant"]
            assert dom == row["planted_dominant"]
            single = A if dom == a else B
            other = B if dom == a else A
            assert np.abs(D[g] - single[g]).max() < 0.1 * np.abs(D[g]).max()  # looks like the masking gene
            assert np.abs(D[g] - other[g]).max() > 0.5 * np.abs(D[g]).max()
        assert row["magnitude"] == pytest.approx(float(np.linalg.norm(D - S)))
    assert inter["magnitude"].is_monotonic_decreasing


def test_classify_interaction_by_hand():
    a, b = np.array([-1.0, 0.0, 2.0]), np.array([0.0, -1.0, 2.0])
    assert classify_interaction(a, b, a + b)["type"] == "additive"
    assert classify_interaction(a, b, a + b + np.array([0, 0, 3.0]))["type"] == "synergistic"
    assert classify_interaction(a, b, np.array([-1.0, -1.0, 2.0]))["type"] == "buffering"
    ep = classify_interaction(np.array([-3.0, 0, 0]), np.array([-1.0, 0, 0]), np.array([-3.1, 0, 0]))
    assert ep["type"] == "epistatic" and ep["dominant"] == "a"
    assert ep["magnitude"] == pytest.approx(0.9)


def test_grn_pseudobulk_truth_matches_simulated_cells(grn):
    inter = grn.interactions
    labels = [grn.perturbable[0], grn.perturbable[1], inter.index[0], inter[inter["planted"]].index[0]]
    truth = grn.true_lfc(labels)
    sim = pseudobulk_lfc(grn.simulate(["ctrl", *labels], 2500, seed=11)).loc[truth.index]
    err = (sim - truth).to_numpy()
    assert np.abs(err).max() < 0.2 and np.sqrt((err**2).mean()) < 0.05
    for lab in labels:
        assert np.corrcoef(sim.loc[lab], truth.loc[lab])[0, 1] > 0.98


def test_grn_as_a_lab(grn):
    world = SyntheticGRN(n_genes=120, n_regulators=8, density=0.15, seed=3, pairs_per_type=1, module_size=4,
                         n_private=2, cells_per_run=30, failure_rate=0.3)
    pair = world.candidate_pairs()[0]
    assert pair in world.perturbations and len(world.perturbations) == len(world.perturbable) * (len(world.perturbable) + 1) // 2
    runs = world.run([pair] * 6)
    assert 0 < sum(r.ok for r in runs) < 6
    ok = [r for r in runs if r.ok]
    assert all(r.n_cells == 30 for r in ok)
    if len(ok) >= 2:
        assert (ok[0].cells.X != ok[1].cells.X).nnz > 0  # each run draws new cells
    assert world.control(40).n_obs == 40 and (world.control(40).X != world.control(40).X).nnz == 0
    with pytest.raises(UnknownPerturbationError, match="SYN9999"):
        world.run(["SYN9999"])
    with pytest.raises(ValueError, match="n_genes=50 is too small"):
        SyntheticGRN(n_genes=50, n_regulators=20)


# --- PairReplay on the real Norman 2019 pair screen -------------------------------------------

def test_norman_loader_matches_readme(norman, data_dir):
    fit = pd.read_csv(data_dir / "pairs/norman2019/processed_fitnesses.csv", index_col=0)
    assert fit.shape == (113, 113) and "negative" in fit.index  # README: "~113x113 genes"
    assert len(norman.genes) == 112 and "negative" not in norman.genes
    assert len(norman.candidates) == 112 * 111 // 2 == 6_216
    assert norman.symbol_map == {"ELMSAN1": "MIDEAS", "TMEM173": "STING1"}
    assert "MIDEAS" in norman.genes and "RP5-862P8.2" in norman.genes  # no HGNC entry: kept
    fits = norman.extra["perturbseq_fits"]
    assert len(fits) == 125 and set(fits.index) <= set(norman.candidates)  # README: 125 double perturbations
    assert fits.loc["CBL+CNN1", "emap"] == pytest.approx(norman.pairs.loc["CBL+CNN1", "gi"])


def test_norman_singles_pairs_and_additive_prior(norman, data_dir):
    fit = pd.read_csv(data_dir / "pairs/norman2019/processed_fitnesses.csv", index_col=0)
    emap = pd.read_csv(data_dir / "pairs/norman2019/processed_emap.csv", index_col=0)
    singles = norman.singles
    assert singles["AHR"] == pytest.approx(fit.loc["negative", "AHR"])
    assert singles["MIDEAS"] == pytest.approx(fit.loc["negative", "ELMSAN1"])
    row = norman.pairs.loc["CBL+CNN1"]
    assert row["fitness"] == pytest.approx(fit.loc["CBL", "CNN1"]) and row["gi"] == pytest.approx(emap.loc["CNN1", "CBL"])
    assert norman.additive("CNN1+CBL") == pytest.approx(singles["CBL"] + singles["CNN1"]) == pytest.approx(row["additive"])
    prior = norman.additive(["CBL+CNN1", "AHR+FEV"])
    assert list(prior.index) == ["CBL+CNN1", "AHR+FEV"]
    r, = norman.run(["CNN1+CBL"])
    assert r.perturbation == "CBL+CNN1" and r.value == r.gi == pytest.approx(row["gi"])
    assert r.fitness == pytest.approx(row["fitness"]) and r.error is None


def test_norman_goal_is_strongest_interactions(norman):
    gi = norman.pairs["gi"]
    top = norman.strongest(10)
    assert list(gi.abs().loc[top]) == sorted(gi.abs().loc[top], reverse=True)
    assert gi.abs().loc[top[-1]] >= gi.abs().drop(top).max()
    assert len(norman.hits) == round(0.05 * 6216) and set(top) <= norman.hits
    assert norman.truth(["CNN1+CBL"]).iloc[0] == pytest.approx(gi["CBL+CNN1"])


def test_norman_errors_and_noise(norman, data_dir):
    with pytest.raises(UnknownPerturbationError, match=r"AHR\b.*singles"):
        norman.run(["AHR"])
    with pytest.raises(UnknownPerturbationError, match="AHR\\+NOTAGENE"):
        norman.run(["CBL+CNN1", "AHR+NOTAGENE"])
    noisy = PairReplay(norman.singles, norman.pairs, noise_sd=0.5, seed=1)
    a = [r.value for r in noisy.run(["CBL+CNN1"] * 3)]
    b = [r.value for r in PairReplay(norman.singles, norman.pairs, noise_sd=0.5, seed=1).run(["CBL+CNN1"] * 3)]
    assert a == b and len(set(a)) == 3 and all(v != norman.pairs.loc["CBL+CNN1", "gi"] for v in a)
    fitness_world = PairReplay(norman.singles, norman.pairs, objective="fitness")
    assert fitness_world.run(["CBL+CNN1"])[0].value == pytest.approx(norman.pairs.loc["CBL+CNN1", "fitness"])
