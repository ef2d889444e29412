"""Gene features for the candidate pool: GO annotations, prior screens, essentiality, user embeddings.

GO embedding. Let `A` be the gene x term incidence matrix (annotations propagated up the GO DAG
along is_a / part_of, terms kept if annotated to between `min_genes` and `max_genes` genes).
Terms are weighted by inverse document frequency, `w_t = log(n_genes / n_t)`, rows are
L2-normalised, and a truncated SVD keeps `dims` components: `E = U_k S_k`. Genes without any
annotation get a zero row and `go_missing = 1`.

Prior-screen features. For each prior screen `s` (never the target), `z_s(g)` is the screen's
score standardised to mean 0 / sd 1, and the feature pair is `(z_s(g), |z_s(g)|)`; genes the
screen did not measure get 0 and `<s>_missing = 1`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from perturbloop.data.registry import cache_dir, resolve, sha256_of
from perturbloop.data.screens import Screen
from perturbloop.errors import PerturbloopError
from perturbloop.design_space import SingleSpace
from perturbloop.perturbation import Perturbation

GO_DIMS = 64  # SVD components; more adds noise dimensions for a GP fit on a few hundred points
GO_MIN_GENES = 3
GO_MAX_GENES = 1000  # very broad terms ("protein binding") carry little signal


def go_tables(data_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The GO annotations (`gene_symbol`, `go_id`) and the DAG edges (`go_id`, `parent_go_id`), along which
    annotations propagate to ancestor terms."""
    go_path, = resolve("gene_go", data_dir)
    parents_path, = resolve("go_parents", data_dir)
    return (pd.read_csv(go_path, sep="\t", usecols=["gene_symbol", "go_id"], dtype=str),
            pd.read_csv(parents_path, sep="\t", dtype=str))


def read_gaf(path: str | os.PathLike) -> pd.DataFrame:
    """Read a GO Annotation File (GAF 2.x): returns `gene_symbol`, `go_id` (NOT-qualified rows dropped)."""
    rows = pd.read_csv(path, sep="\t", comment="!", header=None, dtype=str, usecols=[2, 3, 4])
    if rows.shape[1] != 3 or not rows[4].str.startswith("GO:").all():
        raise PerturbloopError(f"{path}: not a GAF file (column 5 must hold GO ids)")
    rows = rows[~rows[3].fillna("").str.contains("NOT")]
    return pd.DataFrame({"gene_symbol": rows[2].str.upper(), "go_id": rows[4]})


def go_incidence(ann: pd.DataFrame, parents: pd.DataFrame, genes: Sequence[str]) -> tuple[sp.csr_matrix, list[str]]:
    """`len(genes) x n_terms` binary incidence, propagated to ancestor terms."""
    ann = ann.drop_duplicates(["gene_symbol", "go_id"])
    terms = pd.Index(sorted(set(ann["go_id"]) | set(parents.get("go_id", [])) | set(parents.get("parent_go_id", []))))
    gidx = pd.Index(genes)
    r = gidx.get_indexer(ann["gene_symbol"])
    keep = r >= 0
    A = sp.csr_matrix((np.ones(keep.sum()), (r[keep], terms.get_indexer(ann["go_id"][keep]))), shape=(len(genes), len(terms)))
    if len(parents):
        P = sp.csr_matrix(
            (np.ones(len(parents)), (terms.get_indexer(parents["go_id"]), terms.get_indexer(parents["parent_go_id"]))),
            shape=(len(terms), len(terms)),
        )
        frontier = A
        for _ in range(40):  # the GO DAG is < 20 levels deep
            frontier = (frontier @ P).sign()
            new = (A + frontier).sign()
            if new.nnz == A.nnz:
                break
            A = new
    A = A.sign().tocsr()
    return A, list(terms)


def go_embedding(genes: Sequence[str], *, data_dir=None, dims: int = GO_DIMS, gaf: str | None = None,
                 min_genes: int = GO_MIN_GENES, max_genes: int = GO_MAX_GENES) -> tuple[np.ndarray, list[str]]:
    """`len(genes) x (dims + 1)` GO embedding (see module docstring), cached on disk under a key of the genes,
    the source files' checksums and the parameters (the tables are read only to build a missing entry)."""
    sources = [Path(gaf)] if gaf else [*resolve("gene_go", data_dir), *resolve("go_parents", data_dir)]
    key = "\n".join(genes) + "|" + "|".join(sha256_of(p) for p in sources) + f"|{dims}|{min_genes}|{max_genes}"

    def build() -> np.ndarray:
        if gaf:
            ann, parents = read_gaf(gaf), pd.DataFrame(columns=["go_id", "parent_go_id"])
        else:
            ann, parents = go_tables(data_dir)
        return incidence_embedding(go_incidence(ann, parents, genes)[0], dims=dims, min_genes=min_genes,
                                   max_genes=max_genes)

    return cached_array("go", key, build), [f"go_svd{i}" for i in range(dims)] + ["go_missing"]


def cached_array(name: str, key: str, build: Callable[[], np.ndarray]) -> np.ndarray:
    """`build()`, cached on disk as `features/<name>_<sha256(key)[:20]>.npy` (written atomically: `save_array`)."""
    path = cache_dir() / "features" / f"{name}_{hashlib.sha256(key.encode()).hexdigest()[:20]}.npy"
    if path.is_file():
        return np.load(path)
    out = build()
    save_array(path, out)
    return out


def standardised(blocks: Sequence[np.ndarray], n: int) -> torch.Tensor:
    """The `n`-row blocks side by side (`n x 0` when none), each column to mean 0 and sd 1 (a constant column is
    only centred), as float64."""
    X = np.hstack(blocks) if blocks else np.zeros((n, 0))
    sd = X.std(axis=0)
    return torch.from_numpy((X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)).to(torch.float64)


def incidence_embedding(A: sp.csr_matrix, *, dims: int, min_genes: int, max_genes: int) -> np.ndarray:
    """`n_genes x (dims + 1)`: IDF-weighted, row-normalised truncated SVD of a gene x term incidence `A`,
    then a missing flag (the GO embedding of the module docstring, for any annotation)."""
    from sklearn.decomposition import TruncatedSVD

    df = np.asarray(A.sum(axis=0)).ravel()
    cols = np.flatnonzero((df >= min_genes) & (df <= max_genes))
    A = A[:, cols]
    idf = np.log(A.shape[0] / df[cols])
    W = A @ sp.diags(idf)
    norms = np.sqrt(np.asarray(W.multiply(W).sum(axis=1)).ravel())
    missing = norms == 0
    W = sp.diags(np.where(missing, 0.0, 1.0 / np.maximum(norms, 1e-12))) @ W
    k = min(dims, min(W.shape) - 1)
    emb = TruncatedSVD(n_components=k, random_state=0, algorithm="randomized", n_iter=7).fit_transform(W)
    return np.hstack([np.pad(emb, ((0, 0), (0, dims - k))), missing[:, None].astype(float)])  # zero columns past k


def save_array(path: Path, arr: np.ndarray) -> None:
    """Write an NPY atomically (a reader never sees a half-written cache file); an unwritable cache folder is
    an error naming it."""
    _save_atomic(path, lambda f: np.save(f, arr))


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Write an NPZ of `arrays` atomically, as `save_array` does."""
    _save_atomic(path, lambda f: np.savez(f, **arrays))


def _save_atomic(path: Path, write) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a temporary file of its own: processes building the same block at once (campaigns started together)
        # must not move one another's half-written file
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp", delete=False) as f:
            write(f)
        Path(f.name).replace(path)
    except OSError as e:
        raise PerturbloopError(f"cache folder {str(path.parent)!r} is not writable ({e.strerror}): set "
                               "PERTURBLOOP_CACHE_DIR to a folder you can write") from None


def screen_features(genes: Sequence[str], screens: Sequence[Screen]) -> tuple[np.ndarray, list[str]]:
    """`(z, |z|, missing)` per prior screen (see module docstring)."""
    cols, names = [], []
    for s in screens:
        z = ((s.scores - s.scores.mean()) / s.scores.std()).reindex(list(genes))
        v = z.fillna(0.0).to_numpy()
        cols += [v, np.abs(v), z.isna().to_numpy(float)]
        names += [f"{s.name}_z", f"{s.name}_absz", f"{s.name}_missing"]
    return (np.column_stack(cols) if cols else np.zeros((len(genes), 0))), names


def essential_genes(data_dir=None) -> set[str]:
    """Core-essential genes (CEGv2, Hart et al. 2017), upper-case symbols mapped to HGNC."""
    from perturbloop.genes import gene_index

    path, = resolve("cegv2", data_dir)
    return set(map(gene_index(data_dir).current, pd.read_csv(path, sep="\t", dtype=str).iloc[:, 0]))


def load_embeddings(path: str | os.PathLike, genes: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """User gene embeddings: a CSV (first column gene symbol, then numeric columns) or an NPY
    with a sibling `<name>.genes.txt` listing one gene per row. Missing genes get zeros."""
    path = Path(path)
    if path.suffix == ".npy":
        names_file = path.with_suffix(".genes.txt")
        if not names_file.is_file():
            raise PerturbloopError(f"{path}: an NPY embedding needs {names_file.name} listing its genes")
        mat = np.load(path, allow_pickle=False)
        emb_genes = [g.strip().upper() for g in names_file.read_text().split()]
        if mat.ndim != 2 or mat.shape[0] != len(emb_genes):
            raise PerturbloopError(f"{path}: shape {mat.shape} does not match {len(emb_genes)} genes")
        df = pd.DataFrame(mat, index=emb_genes)
    else:
        df = pd.read_csv(path, index_col=0)
        df.index = df.index.astype(str).str.upper()
        if not all(np.issubdtype(t, np.number) for t in df.dtypes):
            raise PerturbloopError(f"{path}: embedding columns must be numeric")
    df = df.groupby(level=0).mean()
    out = df.reindex(list(genes)).fillna(0.0).to_numpy(dtype=float)
    return out, [f"emb{i}" for i in range(out.shape[1])]


def build_gene_pool(
    genes: Sequence[str],
    *,
    features: Sequence[str] = ("go",),
    prior_screens: Sequence[Screen] = (),
    data_dir=None,
    go_dims: int = GO_DIMS,
    gaf: str | None = None,
    embeddings: str | None = None,
    phenotype: str | None = None,
    prior_terms: Sequence[str] = (),
    known_positives: str | Sequence[str] | None = None,
    prior_share: float = 1.0,
) -> SingleSpace:
    """A single-gene SingleSpace with standardised feature columns (float64).

    With a `phenotype`, `prior_terms` or `known_positives` the pool also gets the column `phenotype_prior`
    (`perturbloop.phenotype_prior`), built first so bad input fails before the slower blocks, and the prior
    itself as `pool.phenotype_prior` (round 1 ranks by it; rationales name its terms)."""
    from perturbloop.knowledge_features import KNOWLEDGE_BLOCKS, knowledge_features

    genes = list(genes)
    blocks, names = [], []
    prior = None
    if phenotype or prior_terms or known_positives:
        from perturbloop.phenotype_prior import phenotype_prior, phenotype_prior_block

        prior = phenotype_prior(genes, phenotype=phenotype, prior_terms=prior_terms,
                                known_positives=known_positives, data_dir=data_dir, round1_share=prior_share)
        m, n = phenotype_prior_block(prior)
        blocks.append(m)
        names += n
    for f in features:
        if f == "go":
            m, n = go_embedding(genes, data_dir=data_dir, dims=go_dims, gaf=gaf)
        elif f == "screens":
            m, n = screen_features(genes, prior_screens)
        elif f == "essential":
            ess = essential_genes(data_dir)
            m, n = np.array([[g in ess] for g in genes], dtype=float), ["essential"]
        elif f == "embedding":
            if not embeddings:
                raise PerturbloopError("feature 'embedding' needs an embeddings file")
            m, n = load_embeddings(embeddings, genes)
        elif f in KNOWLEDGE_BLOCKS or f == "knowledge":
            m, n = knowledge_features(genes, f, data_dir=data_dir)
        else:
            raise PerturbloopError(f"unknown feature source {f!r}; choose from go, screens, essential, embedding, "
                                   f"{', '.join(KNOWLEDGE_BLOCKS)}, knowledge")
        blocks.append(m)
        names += n
    pool = SingleSpace([Perturbation((g,)) for g in genes], standardised(blocks, len(genes)), names)
    pool.phenotype_prior = prior  # read by acquisition.prior (round 1) and rationales
    return pool
