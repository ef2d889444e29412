"""Data registry, screen loaders (real files and malformed ones) and gene-symbol mapping."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from perturbloop.data import REGISTRY, Screen, data_dirs, load_screen, read_screen_file, resolve
from perturbloop.errors import PerturbloopError, ScreenFormatError, UnknownDatasetError, UnknownGeneError
from perturbloop.genes import gene_index

SCREEN_DIR = "screens/genedisco"


def _write(path, text: str, *, bom: bool = False):
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def _unambiguous_aliases(data_dir, n: int = 5) -> dict[str, str]:
    """A few outdated symbols that name exactly one current gene and are not current symbols themselves."""
    alias = pd.read_csv(data_dir / "annotations" / "gene_alias.tsv.gz", sep="\t", dtype=str)
    info = pd.read_csv(data_dir / "annotations" / "gene_info.tsv.gz", sep="\t", usecols=["gene_symbol"], dtype=str)
    current = set(info["gene_symbol"].str.upper())
    counts = alias.groupby("alias_symbol")["gene_symbol"].nunique()
    ok = alias[alias["alias_symbol"].isin(counts.index[counts == 1])]
    ok = ok[~ok["alias_symbol"].str.upper().isin(current) & ok["alias_symbol"].str.fullmatch(r"[A-Z][A-Z0-9]{2,}")]
    ok = ok.drop_duplicates("alias_symbol").sort_values("alias_symbol")
    picked = ok.iloc[np.linspace(0, len(ok) - 1, n).astype(int)]
    return dict(zip(picked["alias_symbol"], picked["gene_symbol"].str.upper()))


# --- registry ---------------------------------------------------------------------------------

def test_unknown_dataset_names_it_and_lists_known(data_dir):
    with pytest.raises(UnknownDatasetError) as ei:
        resolve("no_such_screen_2099", data_dir)
    msg = str(ei.value)
    assert "'no_such_screen_2099'" in msg
    for known in ("schmidt2021_il2", "zhuang2019_nk", "gene_alias"):
        assert known in msg
    assert isinstance(ei.value, KeyError)  # callers may catch it as a missing key
    assert not msg.startswith('"')  # not KeyError's quoted repr


def test_load_screen_unknown_name_is_unknown_dataset(data_dir):
    with pytest.raises(UnknownDatasetError, match="schmidt2099_il2"):
        load_screen("schmidt2099_il2", data_dir)


def test_resolve_finds_files_in_data_dir(data_dir):
    paths = resolve("schmidt2021_il2", data_dir, download=False)
    assert [p.name for p in paths] == ["schmidt_il2_d1.gene_summary.txt", "schmidt_il2_d2.gene_summary.txt"]
    for p in paths:
        assert p.is_file()
        assert p.parent == data_dir / SCREEN_DIR


def test_resolve_without_download_reports_missing_dataset(tmp_path):
    with pytest.raises(PerturbloopError, match=r"'zhuang2019_nk'.*perturbloop data fetch zhuang2019_nk"):
        resolve("zhuang2019_nk", tmp_path, download=False)


def test_data_dirs_explicit_then_cache(data_dir, perturbloop_cache_dir):
    assert data_dirs(data_dir) == [data_dir, perturbloop_cache_dir]
    assert data_dirs() == [perturbloop_cache_dir]  # PERTURBLOOP_DATA_DIR is unset in tests


def test_data_dirs_reads_env(data_dir, perturbloop_cache_dir, monkeypatch):
    monkeypatch.setenv("PERTURBLOOP_DATA_DIR", str(data_dir))
    assert data_dirs() == [data_dir, perturbloop_cache_dir]


def test_data_dirs_missing_dir_raises(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(PerturbloopError, match=re.escape(str(missing))):
        data_dirs(missing)


def test_registry_screens_have_loaders():
    screens = [s for s in REGISTRY.values() if s.kind == "screen"]
    assert len(screens) >= 6
    for s in screens:
        assert s.loader.get("format") in {"mageck_rra", "mageck_mle", "table"}, s.name
        assert s.files and all(f.path.startswith(SCREEN_DIR) for f in s.files), s.name


# --- screen loaders on real files ---------------------------------------------------------------

def test_mageck_rra_file_reads_neg_lfc(data_dir):
    path = data_dir / SCREEN_DIR / "schmidt_il2_d1.gene_summary.txt"
    scores, reps = read_screen_file(path)
    raw = pd.read_csv(path, sep="\t")
    assert reps is None
    assert len(scores) == len(raw) - 1 > 18_000  # all but the non-targeting control row
    assert "NO-TARGET" in set(raw["id"]) and "CTRL" in scores.index  # CTRL is a real gene (chymotrypsin like)
    assert scores.dtype == np.float64
    assert scores["VAV1"] == pytest.approx(-3.686)
    assert scores["CD3G"] == pytest.approx(-3.6187)
    assert scores.name == "schmidt_il2_d1.gene_summary"


def test_schmidt_il2_screen_averages_two_donors(il2_screen, data_dir):
    d1, _ = read_screen_file(data_dir / SCREEN_DIR / "schmidt_il2_d1.gene_summary.txt")
    d2, _ = read_screen_file(data_dir / SCREEN_DIR / "schmidt_il2_d2.gene_summary.txt")
    s = il2_screen
    assert s.name == "schmidt2021_il2"
    assert s.scores.index.is_unique and not s.scores.isna().any()
    assert 18_000 < len(s.scores) < 19_500
    assert list(s.replicates.columns) == ["rep1", "rep2"]
    assert s.replicates.index.equals(s.scores.index)
    for g in ("VAV1", "CD3G", "LCP2"):
        assert s.replicates.loc[g, "rep1"] == pytest.approx(d1[g])
        assert s.replicates.loc[g, "rep2"] == pytest.approx(d2[g])
        assert s.scores[g] == pytest.approx((d1[g] + d2[g]) / 2)
    assert all(g == g.upper() for g in s.genes[:500])
    assert s.unmapped, "an old screen has some symbols without an HGNC entry"
    assert all(g.upper() in s.scores.index for g in s.unmapped)


def test_mageck_mle_zhuang_mean_z_over_replicates(data_dir):
    s = load_screen("zhuang2019_nk", data_dir)
    raw = pd.read_csv(data_dir / SCREEN_DIR / "zhuang_2019_low_selection.gene_summary.txt", sep="\t").set_index("Gene")
    assert list(s.replicates.columns) == ["Rep1", "Rep2"]
    assert len(s.scores) > 20_000
    for g in ("PITPNB", "SCAMP2"):
        assert s.replicates.loc[g, "Rep1"] == pytest.approx(raw.loc[g, "Rep1|z"])
        assert s.scores[g] == pytest.approx((raw.loc[g, "Rep1|z"] + raw.loc[g, "Rep2|z"]) / 2)


def test_mageck_mle_autodetected_by_path_uses_beta(data_dir):
    scores, reps = read_screen_file(data_dir / SCREEN_DIR / "zhuang_2019_low_selection.gene_summary.txt")
    assert list(reps.columns) == ["Rep1", "Rep2"]
    assert scores["PITPNB"] == pytest.approx((0.0017936 + 0.19383) / 2)


def test_bom_csv_sanchez_by_registry_name(data_dir):
    down = load_screen("sanchez2021_tau_down", data_dir)
    up = load_screen("sanchez2021_tau_up", data_dir)
    raw = pd.read_csv(data_dir / SCREEN_DIR / "sanchezetal2021_21days.csv", encoding="utf-8-sig").set_index("Symbol")
    assert len(down.scores) > 18_000 and down.replicates is None
    for g in ("A1BG", "A2M"):
        assert down.scores[g] == pytest.approx(-raw.loc[g, "RSA_Down"])
        assert up.scores[g] == pytest.approx(-raw.loc[g, "RSA_Up"])


def test_bom_csv_zhu_by_registry_name_neglog(data_dir):
    s = load_screen("zhu2021_sarscov2", data_dir)
    assert len(s.scores) > 19_000
    assert s.scores["ACE2"] == pytest.approx(-math.log(1.40e-13))
    assert s.scores.idxmax() in {"ACE2", "COMMD3"}  # the top-ranked host factors
    assert (s.scores >= 0).all() and (s.scores == 0).any()  # -ln of RRA scores in (0, 1]; some are exactly 1


def test_gene_score_csv_from_path(tmp_path, data_dir):
    path = _write(tmp_path / "mini.csv", "Gene,Score\nVAV1,-2.5\ncd3g,1.25\nLCP2,0.5\n")
    s = load_screen(path, data_dir)
    assert s.name == "mini"
    assert s.scores.to_dict() == {"CD3G": 1.25, "LCP2": 0.5, "VAV1": -2.5}
    assert s.replicates is None and s.unmapped == []


def test_gene_score_tab_separated_csv(tmp_path):
    path = _write(tmp_path / "tabs.csv", "Gene\tScore\nVAV1\t1.5\n")
    scores, _ = read_screen_file(path)
    assert scores.to_dict() == {"VAV1": 1.5}


def test_outdated_symbol_maps_to_current(tmp_path, data_dir):
    aliases = _unambiguous_aliases(data_dir)
    idx = gene_index(data_dir)
    for old, new in aliases.items():
        assert idx.map(old) == new
        assert idx.map(old.lower()) == new
    assert idx.map("KIAA0100") == "BLTP2"
    assert idx.map("GARS") is None  # ambiguous alias (GARS1 / GART): mapped to neither
    assert idx.map("VAV1") == "VAV1"

    path = _write(tmp_path / "old.csv", "Gene,Score\nKIAA0100,2.0\nVAV1,-1.0\nNOT_A_GENE_XYZ,0.5\n")
    s = load_screen(path, data_dir)
    assert s.scores["BLTP2"] == 2.0
    assert "KIAA0100" not in s.scores.index
    assert s.unmapped == ["NOT_A_GENE_XYZ"]
    assert s.scores["NOT_A_GENE_XYZ"] == 0.5


def test_conflicting_duplicate_genes_are_refused_unless_aggregated(tmp_path, data_dir):
    path = _write(tmp_path / "dup.csv", "Gene,Score\nVAV1,-3.6\nCD3G,1.0\nvav1,100\nCD3G,1.0\n")
    with pytest.raises(ScreenFormatError, match=r"1 gene\(s\) listed more than once with different scores.*"
                                               r"VAV1 on lines 2 \(VAV1 = -3.6\), 4 \(vav1 = 100\).*aggregate") as err:
        load_screen(path, data_dir)
    assert str(path) in str(err.value) and "CD3G" not in str(err.value)  # rows that agree are one row
    assert load_screen(path, data_dir, aggregate="mean").scores.to_dict() == {"CD3G": 1.0, "VAV1": pytest.approx(48.2)}
    assert load_screen(path, data_dir, aggregate="first").scores.to_dict() == {"CD3G": 1.0, "VAV1": -3.6}
    with pytest.raises(PerturbloopError, match="aggregate must be one of error, mean, first, got 'median'"):
        load_screen(path, data_dir, aggregate="median")


def test_alias_and_current_symbol_are_one_gene(tmp_path, data_dir):
    path = _write(tmp_path / "dup.csv", "Gene,Score\nKIAA0100,2.0\nBLTP2,4.0\n")
    with pytest.raises(ScreenFormatError, match=r"BLTP2 on lines 2 \(KIAA0100 = 2\), 3 \(BLTP2 = 4\)"):
        load_screen(path, data_dir)
    assert load_screen(path, data_dir, aggregate="mean").scores.to_dict() == {"BLTP2": 3.0}
    assert load_screen(path, data_dir, aggregate="first").scores.to_dict() == {"BLTP2": 2.0}


def test_duplicates_with_different_replicates_conflict(tmp_path, data_dir):
    path = _write(tmp_path / "mle.gene_summary.txt", "Gene\tRep1|beta\tRep2|beta\nVAV1\t1\t3\nCD3G\t0\t1\nVAV1\t2\t2\n")
    with pytest.raises(ScreenFormatError, match=r"VAV1 on lines 2 \(VAV1 = 2\), 4 \(VAV1 = 2\)"):
        load_screen(path, data_dir)  # the same mean, from different replicates
    s = load_screen(path, data_dir, aggregate="first")
    assert s.replicates.loc["VAV1"].tolist() == [1.0, 3.0]


def test_registry_screens_declare_their_aggregation_and_load(data_dir):
    names = [n for n, spec in REGISTRY.items() if spec.kind == "screen"]
    assert len(names) == 6
    for name in names:
        assert REGISTRY[name].loader["aggregate"] == "mean"  # their outdated symbols collide with current ones
        assert load_screen(name, data_dir).scores.index.is_unique
    with pytest.raises(ScreenFormatError, match=r"zhu_2021_sarscov2_host_factors.csv: 22 gene\(s\).*MACF1 on lines 1042 "
                                               r"\(MACF1 = 2.79351\), 6222 \(KIAA0754 = 1.05898\)"):
        load_screen("zhu2021_sarscov2", data_dir, aggregate="error")


# --- malformed files -----------------------------------------------------------------------------

def test_missing_file_raises_screen_format_error(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(ScreenFormatError, match="does not exist"):
        read_screen_file(missing)
    with pytest.raises(ScreenFormatError, match="nope.csv"):
        load_screen(missing)


def test_empty_file(tmp_path):
    with pytest.raises(ScreenFormatError, match="empty.csv"):
        read_screen_file(_write(tmp_path / "empty.csv", ""))


def test_header_only_file(tmp_path):
    with pytest.raises(ScreenFormatError, match="no data rows"):
        read_screen_file(_write(tmp_path / "hdr.csv", "Gene,Score\n"))


def test_unknown_format_lists_columns(tmp_path):
    with pytest.raises(ScreenFormatError, match=r"unrecognised screen format.*'symbol'.*'value'"):
        read_screen_file(_write(tmp_path / "weird.csv", "symbol,value\nVAV1,1\n"))


def test_non_numeric_score_names_column_and_lines(tmp_path):
    path = _write(tmp_path / "bad.csv", "Gene,Score\nVAV1,1.0\nCD3G,abc\nLAT,2\nZAP70,x\n")
    with pytest.raises(ScreenFormatError) as ei:
        read_screen_file(path)
    msg = str(ei.value)
    assert "'Score'" in msg and "non-numeric" in msg
    assert "[3, 5]" in msg  # 1-based file lines of CD3G and ZAP70


def test_non_numeric_line_numbers_with_bom(tmp_path):
    path = _write(tmp_path / "bom.csv", "Gene,Score\nVAV1,oops\n", bom=True)
    with pytest.raises(ScreenFormatError, match=r"\[2\]"):
        read_screen_file(path)


def test_missing_score_column(tmp_path):
    path = _write(tmp_path / "rra.txt", "id\tnum\tneg|score\nVAV1\t3\t0.1\n")
    with pytest.raises(ScreenFormatError, match=r"missing score column 'neg\|lfc'"):
        read_screen_file(path, loader={"format": "mageck_rra", "column": "neg|lfc"})


def test_missing_gene_column(tmp_path):
    path = _write(tmp_path / "nogene.txt", "symbol\tneg|lfc\nVAV1\t-1\n")
    with pytest.raises(ScreenFormatError, match="missing gene column 'id'"):
        read_screen_file(path, loader={"format": "mageck_rra", "column": "neg|lfc"})


def test_empty_score_cell_names_gene(tmp_path):
    path = _write(tmp_path / "gap.csv", "Gene,Score\nVAV1,1\nCD3G,\n")
    with pytest.raises(ScreenFormatError, match="missing score for gene.*CD3G"):
        read_screen_file(path)


def test_empty_gene_symbol(tmp_path):
    path = _write(tmp_path / "nosym.csv", "Gene,Score\nVAV1,1\n,2\n")
    with pytest.raises(ScreenFormatError, match="empty gene symbol"):
        read_screen_file(path)


def test_neglog_of_non_positive_value(tmp_path):
    path = _write(tmp_path / "zero.csv", "id,pos|score\nACE2,0\n")
    with pytest.raises(ScreenFormatError, match="positive"):
        read_screen_file(path, loader={"format": "table", "gene": "id", "column": "pos|score", "transform": "neglog"})


def test_mle_without_replicate_columns(tmp_path):
    path = _write(tmp_path / "mle.txt", "Gene\tsgRNA\tRep1|beta\nA1BG\t4\t0.1\n")
    with pytest.raises(ScreenFormatError, match=r"no `<replicate>\|z` columns"):
        read_screen_file(path, loader={"format": "mageck_mle", "column": "z"})


def test_non_screen_dataset_is_refused(data_dir):
    with pytest.raises(ScreenFormatError, match="gene_go.*not a screen"):
        load_screen("gene_go", data_dir)


def test_score_gene_column_order_is_detected(tmp_path):
    scores, _ = read_screen_file(_write(tmp_path / "swapped.csv", "Score,Gene\n1.0,VAV1\n"))
    assert scores.to_dict() == {"VAV1": 1.0}


def test_control_rows_and_spreadsheet_dates_are_not_genes(tmp_path):
    scores, _ = read_screen_file(_write(tmp_path / "s.csv", "Gene,Score\nVAV1,1.0\nNO-TARGET,0.1\n01.SEP,3.0\nCD3G,2.0\n"))
    assert sorted(scores.index) == ["CD3G", "VAV1"]


def test_real_screens_drop_their_non_targeting_row(il2_screen):
    assert "NO-TARGET" not in il2_screen.scores.index


def test_missing_bare_filename_is_a_file_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScreenFormatError, match="does not exist"):
        load_screen("missing.csv")


# --- hits ----------------------------------------------------------------------------------------

def test_hits_size_and_largest_abs_score(il2_screen):
    hits = il2_screen.hits(0.05)
    n = len(il2_screen.scores)
    assert len(hits) == round(0.05 * n)
    abs_scores = il2_screen.scores.abs()
    hit_min = abs_scores[list(hits)].min()
    non_hit_max = abs_scores.drop(index=list(hits)).max()
    assert hit_min >= non_hit_max
    # both directions count: the top hits include strongly negative and positive genes
    assert (il2_screen.scores[list(hits)] < 0).any() and (il2_screen.scores[list(hits)] > 0).any()
    assert {"VAV1", "CD3G"} <= hits


def test_hits_small_screen_and_bad_fraction():
    s = Screen("toy", pd.Series({"A": 0.1, "B": -5.0, "C": 2.0, "D": 0.0}))
    assert s.hits(0.25) == {"B"}
    assert s.hits(0.5) == {"B", "C"}
    assert s.hits(0.01) == {"B"}  # at least one hit
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="hit fraction"):
            s.hits(bad)


def test_screen_subset(il2_screen):
    sub = il2_screen.subset(["VAV1", "CD3G"])
    assert sub.genes == ["VAV1", "CD3G"]
    assert sub.replicates.shape == (2, 2)
    assert sub.scores["VAV1"] == il2_screen.scores["VAV1"]


# --- gene index ----------------------------------------------------------------------------------

def test_canonical_names_every_unknown_symbol(data_dir):
    idx = gene_index(data_dir)
    assert idx.canonical(["vav1", " CD3G ", "KIAA0100"]) == ["VAV1", "CD3G", "BLTP2"]
    with pytest.raises(UnknownGeneError) as ei:
        idx.canonical(["VAV1", "NOTAGENE1", "cd3g", "xyzzy42"], context="in test batch")
    assert ei.value.genes == ["NOTAGENE1", "xyzzy42"]
    msg = str(ei.value)
    assert "NOTAGENE1" in msg and "xyzzy42" in msg and "in test batch" in msg


def test_canonical_allowed_and_many_unknown(data_dir):
    idx = gene_index(data_dir)
    assert idx.canonical(["my_custom_gene", "VAV1"], allowed=["MY_CUSTOM_GENE"]) == ["MY_CUSTOM_GENE", "VAV1"]
    unknown = [f"FAKEGENE{i}" for i in range(25)]
    with pytest.raises(UnknownGeneError, match=r"\(\+5 more\)") as ei:
        idx.canonical(unknown)
    assert ei.value.genes == unknown

