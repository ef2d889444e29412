"""Gene features from prior biological knowledge (`design.features`: string, pathways, hpo, literature,
depmap, paralogs; `knowledge` = all six). Each block is `len(genes) x d` and ends in a missing flag
(1 where the source says nothing about the gene; its other columns are then 0).

- `string`: spectral embedding of the STRING v12 network. With `W` the symmetric weighted adjacency
  (`combined_score / 1000`) and `D` its degrees, the normalised Laplacian is
  `L = I - D^-1/2 W D^-1/2`; its `STRING_DIMS` smallest non-trivial eigenvectors (Lanczos, `eigsh` on
  the largest eigenvalues of `D^-1/2 W D^-1/2`, sparse, never a dense n x n matrix) are the coordinates,
  plus `log(1 + degree)`.
- `pathways`: MSigDB Hallmark + Reactome membership, embedded like GO (`features.incidence_embedding`:
  IDF weights, row-normalised, truncated SVD).
- `hpo`: HPO annotations propagated to every ancestor term along is_a, embedded the same way.
- `literature`: `log(1 + n_pubmed)` (Entrez Gene's gene-paper links).
- `depmap`: common-essential and strongly-selective flags, mean Chronos gene effect, fraction of
  blood-lineage models dependent on the gene (a flag where the effect was not measured).
- `paralogs`: number of paralogs `log(1 + n)`, best sequence identity, best identity x min(coverage);
  `paralogs_none` = 1 for a gene without a listed paralog.

Blocks are cached under `<cache>/features/`, keyed by the source files' sha256, the genes and the
parameters (`benchmarks/knowledge_features.py` measures the build times on all genes).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbloop.data import knowledge as kn
from perturbloop.data.registry import cache_dir, sha256_of
from perturbloop.errors import PerturbloopError
from perturbloop.features import cached_array, go_incidence, incidence_embedding, save_arrays

KNOWLEDGE_BLOCKS = ("string", "pathways", "hpo", "literature", "depmap", "paralogs")
# 32 eigenvectors: the Lanczos solve takes ~3 s on the 17k-gene network (64 take ~12 s), and a GP fit on a
# few hundred genes gains little from more dimensions (the GO embedding's reasoning).
STRING_DIMS = 32
PATHWAY_DIMS = 32
HPO_DIMS = 16
SET_MIN_GENES = 3
PATHWAY_MAX_GENES = 1000
HPO_MAX_GENES = 2000  # terms above this ("Phenotypic abnormality", inheritance modes) carry little signal
CACHE_VERSION = 1  # bump when a block's definition changes

Block = tuple[np.ndarray, list[str]]
DataDir = str | os.PathLike | None


SOURCES = {"string": ["string_v12"], "pathways": ["msigdb_hallmark", "msigdb_reactome"], "hpo": ["hpo"],
           "literature": ["gene_pubmed_counts"], "depmap": ["depmap_dependency"], "paralogs": ["paralogs"]}


def _cached(name: str, genes: Sequence[str], data_dir: DataDir, params: str, build: Callable[[], np.ndarray],
            names: list[str]) -> Block:
    """The block `build()` makes (`len(genes) x len(names)`), cached on disk by genes, the files of its
    `SOURCES` datasets and `params`."""
    shas = ",".join(sha256_of(p) for d in SOURCES[name] for p in kn.knowledge_paths(d, data_dir))
    return cached_array(name, "\n".join(genes) + f"|{shas}|{params}|v{CACHE_VERSION}", build), names


def string_spectrum(data_dir: DataDir = None, *, dims: int = STRING_DIMS,
                    ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """The `dims` smallest non-trivial eigenpairs of the STRING normalised Laplacian.

    Returns `(lam, U, genes, degree)`: `lam` (dims,) ascending eigenvalues of `L = I - D^-1/2 W D^-1/2`
    in [0, 2], `U` (n x dims) orthonormal eigenvectors (sign fixed: largest-|entry| positive), the
    network's genes and their weighted degrees. The eigenvalue-0 eigenvector (`~ D^1/2 1`) is dropped.
    Cached on disk like the feature blocks.
    """
    src, = kn.knowledge_paths("string_v12", data_dir)
    key = hashlib.sha256(f"{sha256_of(src)}|{dims}|v{CACHE_VERSION}".encode()).hexdigest()[:20]
    path = cache_dir() / "features" / f"string_spectrum_{key}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return z["lam"], z["U"], list(z["genes"]), z["degree"]
    W, genes = kn.string_adjacency(data_dir)
    lam, U, degree = laplacian_eigenpairs(W, dims)
    save_arrays(path, lam=lam, U=U, genes=np.array(genes), degree=degree)  # a temporary file of its own
    return lam, U, genes, degree


def laplacian_eigenpairs(W: sp.spmatrix, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(lam, U, degree)`: the `dims` smallest eigenpairs of `I - D^-1/2 W D^-1/2` after the smallest one.

    Lanczos (`eigsh`) on the largest algebraic eigenvalues of `S = D^-1/2 W D^-1/2` (`lam = 1 - mu`),
    with a fixed start vector so the result is reproducible. Isolated nodes (degree 0) get zero rows.
    """
    from scipy.sparse.linalg import eigsh

    n = W.shape[0]
    if dims + 1 >= n:
        raise PerturbloopError(f"a spectral embedding of {dims} dimensions needs more than {dims + 1} genes, got {n}")
    degree = np.asarray(W.sum(axis=1)).ravel()
    dinv = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-300)), 0.0)
    S = (sp.diags(dinv) @ W @ sp.diags(dinv)).tocsr()
    v0 = np.random.default_rng(0).standard_normal(n)
    mu, U = eigsh(S, k=dims + 1, which="LA", v0=v0, tol=1e-8)
    order = np.argsort(-mu)[1:]
    mu, U = mu[order], U[:, order]
    flip = np.sign(U[np.abs(U).argmax(axis=0), np.arange(U.shape[1])])
    return np.clip(1.0 - mu, 0.0, 2.0), U * flip, degree


def string_block(genes: Sequence[str], data_dir: DataDir = None, *, dims: int = STRING_DIMS) -> Block:
    """Spectral coordinates, `string_log_degree`, `string_missing` (see module docstring)."""
    names = [f"string_eig{i}" for i in range(dims)] + ["string_log_degree", "string_missing"]

    def build() -> np.ndarray:
        _, U, net_genes, degree = string_spectrum(data_dir, dims=dims)
        rows = pd.Index(net_genes).get_indexer(list(genes))
        have = rows >= 0
        out = np.zeros((len(genes), dims + 2))
        out[have, :dims] = U[rows[have]]
        out[have, dims] = np.log1p(degree[rows[have]])
        out[~have, dims + 1] = 1.0
        return out

    return _cached("string", genes, data_dir, f"dims={dims}", build, names)


def pathways_block(genes: Sequence[str], data_dir: DataDir = None, *, dims: int = PATHWAY_DIMS) -> Block:
    """Hallmark + Reactome membership embedded by IDF-weighted truncated SVD, then `pathways_missing`."""
    names = [f"pathways_svd{i}" for i in range(dims)] + ["pathways_missing"]

    def build() -> np.ndarray:
        sets = kn.gene_sets(("hallmark", "reactome"), data_dir)
        A, _ = go_incidence(sets.rename(columns={"set": "go_id"}), pd.DataFrame(), list(genes))
        return incidence_embedding(A, dims=dims, min_genes=SET_MIN_GENES, max_genes=PATHWAY_MAX_GENES)

    return _cached("pathways", genes, data_dir, f"dims={dims}|{SET_MIN_GENES}|{PATHWAY_MAX_GENES}", build, names)


def hpo_block(genes: Sequence[str], data_dir: DataDir = None, *, dims: int = HPO_DIMS) -> Block:
    """HPO annotations propagated to ancestors, embedded by IDF-weighted truncated SVD, then `hpo_missing`."""
    names = [f"hpo_svd{i}" for i in range(dims)] + ["hpo_missing"]

    def build() -> np.ndarray:
        ann = kn.hpo_annotations(data_dir).rename(columns={"hpo_id": "go_id"})
        parents = kn.hpo_parent_edges(kn.hpo_terms(data_dir)).rename(
            columns={"hpo_id": "go_id", "parent_id": "parent_go_id"})
        A, _ = go_incidence(ann, parents, list(genes))
        return incidence_embedding(A, dims=dims, min_genes=SET_MIN_GENES, max_genes=HPO_MAX_GENES)

    return _cached("hpo", genes, data_dir, f"dims={dims}|{SET_MIN_GENES}|{HPO_MAX_GENES}", build, names)


def literature_block(genes: Sequence[str], data_dir: DataDir = None) -> Block:
    """`literature_log_pubmed = log(1 + n_pubmed)`, `literature_missing`."""
    names = ["literature_log_pubmed", "literature_missing"]

    def build() -> np.ndarray:
        n = kn.pubmed_counts(data_dir).reindex(list(genes))
        return np.column_stack([np.log1p(n.fillna(0.0).to_numpy(float)), n.isna().to_numpy(float)])

    return _cached("literature", genes, data_dir, "", build, names)


def depmap_block(genes: Sequence[str], data_dir: DataDir = None) -> Block:
    """DepMap flags, mean gene effect, blood-lineage dependent fraction, `depmap_effect_missing`, `depmap_missing`."""
    cols = ["common_essential", "strongly_selective", "gene_effect", "blood_dependent_fraction"]
    names = [f"depmap_{c}" for c in cols] + ["depmap_effect_missing", "depmap_missing"]

    def build() -> np.ndarray:
        d = kn.depmap_dependency(data_dir).reindex(list(genes))
        missing = d["common_essential"].isna().to_numpy()
        effect_missing = d["gene_effect"].isna().to_numpy() & ~missing
        vals = d[cols].fillna(0.0).to_numpy(float)
        return np.column_stack([vals, effect_missing.astype(float), missing.astype(float)])

    return _cached("depmap", genes, data_dir, "", build, names)


def paralogs_block(genes: Sequence[str], data_dir: DataDir = None) -> Block:
    """`paralogs_log_count`, `paralogs_max_identity`, `paralogs_max_identity_x_coverage`, `paralogs_none`."""
    names = ["paralogs_log_count", "paralogs_max_identity", "paralogs_max_identity_x_coverage", "paralogs_none"]

    def build() -> np.ndarray:
        p = kn.paralog_pairs(data_dir)
        both = pd.concat([p.rename(columns={"gene_a": "gene", "gene_b": "other"}),
                          p.rename(columns={"gene_b": "gene", "gene_a": "other"})])
        both = both.drop_duplicates(["gene", "other"])
        both["idcov"] = both["fident"] * np.minimum(both["qcov"], both["tcov"])
        agg = both.groupby("gene").agg(n=("other", "size"), ident=("fident", "max"), idcov=("idcov", "max"))
        agg = agg.reindex(list(genes))
        none = agg["n"].isna().to_numpy(float)
        agg = agg.fillna(0.0)
        return np.column_stack([np.log1p(agg["n"].to_numpy(float)), agg["ident"], agg["idcov"], none])

    return _cached("paralogs", genes, data_dir, "", build, names)


BUILDERS: dict[str, Callable[..., Block]] = {
    "string": string_block, "pathways": pathways_block, "hpo": hpo_block,
    "literature": literature_block, "depmap": depmap_block, "paralogs": paralogs_block,
}


def knowledge_features(genes: Sequence[str], name: str = "knowledge", *, data_dir: DataDir = None) -> Block:
    """One knowledge block by name, or `knowledge`: all six side by side (`len(genes) x d`, names)."""
    genes = list(genes)
    if name == "knowledge":
        blocks = [BUILDERS[b](genes, data_dir) for b in KNOWLEDGE_BLOCKS]
        return np.hstack([m for m, _ in blocks]), [n for _, ns in blocks for n in ns]
    if name not in BUILDERS:
        raise PerturbloopError(f"unknown knowledge feature {name!r}; choose from {', '.join(KNOWLEDGE_BLOCKS)}, knowledge")
    return BUILDERS[name](genes, data_dir)
