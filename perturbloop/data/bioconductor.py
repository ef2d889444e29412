"""The gene and GO tables, rebuilt from Bioconductor's annotation packages as Debian ships them.

`annotations/gene_info`, `gene_alias`, `gene_go`, `go_terms`, `go_parents` and
`knowledge/gene_pubmed_counts` are plain re-encodings of the SQLite files inside two Debian packages:

- `r-bioc-org.hs.eg.db` 3.16.0-1: `org.Hs.eg.sqlite` (Entrez Gene 2022-09-12, GO annotations 2022-07-01);
- `r-bioc-go.db` 3.16.0-1: `GO.sqlite` (the GO terms and DAG, 2022-07-01).

A package is fetched with `apt-get download PACKAGE=VERSION` where apt exists, else from the Debian
archive by URL (the same file); either way it is checked against the registry's sha256 before it is
read. A `.deb` is an `ar` archive holding `data.tar.xz`; the SQLite file is streamed out of it with the
standard library (`tarfile`, `lzma`), so no Debian tools are needed to read it.

Every table is one SQL query over the package's own tables, its rows in the shipped file's order (each
function says which: a stable sort over the package's `_id` order), written as gzip-compressed TSV.
"""

from __future__ import annotations

import gzip
import http.client
import io
import shutil
import sqlite3
import subprocess
import tarfile
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from perturbloop.data.registry import check_sha256, download_url, sha256_of
from perturbloop.errors import DataIntegrityError, PerturbloopError

GO_ONTOLOGIES = ("bp", "mf", "cc")


# --------------------------------------------------------------------------------------------- download


def deb_filename(ref: str) -> str:
    """`r-bioc-go.db=3.16.0-1` -> `r-bioc-go.db_3.16.0-1_all.deb` (Debian's name for the file)."""
    package, _, version = ref.partition("=")
    return f"{package}_{version}_all.deb"


def download_deb(ref: str, sha256: str, dest: Path, urls: Sequence[str] = (), *, apt_get: str | None = "apt-get") -> Path:
    """The Debian package `ref` (`PACKAGE=VERSION`) in `dest`, checked against `sha256`.

    Tries `apt-get download PACKAGE=VERSION` (the machine's own mirrors and proxy; `apt_get=None` skips
    it), then each URL of `urls` (the same file in the Debian archive). A file with another sha256 is deleted
    and refused (DataIntegrityError); when no route gives the file, one PerturbloopError lists what
    each route said.
    """
    target = dest / deb_filename(ref)
    if target.is_file() and sha256_of(target) == sha256:
        return target
    tried: list[str] = []
    apt = shutil.which(apt_get) if apt_get else None
    if apt:
        try:
            res = subprocess.run([apt, "download", "-q", ref], cwd=dest, capture_output=True, text=True,
                                 timeout=900, check=False)
            if res.returncode == 0 and target.is_file():
                return check_sha256(target, sha256, f"{target.name} (from apt-get download {ref})")
            tried.append(f"apt-get download {ref}: {(res.stderr.strip().splitlines() or ['failed'])[-1]}")
        except subprocess.TimeoutExpired:
            tried.append(f"apt-get download {ref}: timed out")
    else:
        tried.append("apt-get: not on this machine")
    for url in urls:
        part = target.with_suffix(".deb.part")
        try:
            download_url(url, part)
        except (OSError, http.client.HTTPException) as e:
            tried.append(f"{url}: {getattr(e, 'reason', None) or e}")
            continue
        part.replace(target)
        return check_sha256(target, sha256, f"{target.name} (from {url})")
    raise PerturbloopError(f"could not download the Debian package {ref} ({'; '.join(tried)}); is this machine "
                           "online? Or put the tables under --data-dir / PERTURBLOOP_DATA_DIR")


# ---------------------------------------------------------------------------------------------- unpack


class _Slice(io.RawIOBase):
    """`size` bytes of `fh` from its current position, as a read-only stream."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self._fh, self._left = fh, size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self._left)
        data = self._fh.read(n)
        b[: len(data)] = data
        self._left -= len(data)
        return len(data)


def _ar_members(fh: BinaryIO):
    """Yield (name, size) of each member of an `ar` archive, `fh` positioned at its data."""
    if fh.read(8) != b"!<arch>\n":
        raise DataIntegrityError(f"{getattr(fh, 'name', 'file')}: not a Debian package (no ar header)")
    while header := fh.read(60):
        if len(header) < 60 or header[58:60] != b"`\n":
            raise DataIntegrityError(f"{getattr(fh, 'name', 'file')}: truncated ar archive")
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        start = fh.tell()
        yield name, size
        fh.seek(start + size + (size % 2))  # members are 2-byte aligned


def extract_from_deb(deb: Path, members: Sequence[str], dest: Path) -> list[Path]:
    """Stream `members` (paths inside the package, e.g. `usr/lib/...`) out of `deb`'s data archive into
    `dest` (each under its base name); pure Python: `ar` parsed here, `data.tar.{xz,gz,bz2}` by `tarfile`."""
    wanted = {m.lstrip("./"): dest / Path(m).name for m in members}
    found: dict[str, Path] = {}
    with open(deb, "rb") as fh:
        for name, size in _ar_members(fh):
            if not name.startswith("data.tar"):
                continue
            if name.endswith(".zst"):
                raise PerturbloopError(f"{deb.name}: {name} is zstd-compressed, which Python cannot read; "
                                       "use `dpkg-deb -x` and --data-dir")
            with tarfile.open(fileobj=io.BufferedReader(_Slice(fh, size), 1 << 20), mode="r|*") as tar:
                for info in tar:
                    key = info.name.lstrip("./")
                    if key in wanted and info.isfile():
                        src = tar.extractfile(info)
                        assert src is not None
                        with open(wanted[key], "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
                        found[key] = wanted[key]
                        if len(found) == len(wanted):
                            break
            break
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise DataIntegrityError(f"{deb.name} has no {', '.join(missing)}")
    return [found[m.lstrip("./")] for m in members]


# ------------------------------------------------------------------------------------------ re-encoding


def _query(db: Path, sql: str) -> pd.DataFrame:
    with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as con:  # never changes the file
        return pd.read_sql_query(sql, con, dtype=str)


def _genes(org: Path) -> pd.DataFrame:
    """`_id`, `entrez_id`, `gene_symbol`, `gene_name`, `gene_type`: one row per Entrez gene, in `_id` order."""
    return _query(org, "SELECT g._id, g.gene_id AS entrez_id, i.symbol AS gene_symbol, i.gene_name, t.gene_type "
                       "FROM genes g JOIN gene_info i USING (_id) LEFT JOIN genetype t USING (_id) ORDER BY g._id")


def _by_first_column(df: pd.DataFrame, key: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows sorted by `key` (default: the first column), ties kept in source order."""
    return df.sort_values(list(key or [df.columns[0]]), kind="stable").reset_index(drop=True)


def gene_info_table(org: Path) -> pd.DataFrame:
    """`gene_symbol, entrez_id, gene_name, gene_type, chromosome, start` per Entrez gene.

    `chromosome`: the distinct `seqname`s of the gene's `chromosome_locations` rows, comma-joined in
    table order (alt/fix contigs included); `start`: the smallest |start_location| on a primary
    chromosome (a seqname without `_`; Bioconductor stores minus-strand starts negated), empty if none.
    """
    genes = _genes(org)
    loc = _query(org, "SELECT _id, seqname, start_location FROM chromosome_locations ORDER BY rowid")
    chromosome = loc.drop_duplicates(["_id", "seqname"]).groupby("_id", sort=False)["seqname"].agg(",".join)
    primary = loc[~loc["seqname"].str.contains("_")]
    start = primary["start_location"].astype(int).abs().groupby(primary["_id"]).min().astype(str)
    out = genes.assign(chromosome=genes["_id"].map(chromosome).fillna(""), start=genes["_id"].map(start).fillna(""))
    return _by_first_column(out[["gene_symbol", "entrez_id", "gene_name", "gene_type", "chromosome", "start"]])


def gene_alias_table(org: Path) -> pd.DataFrame:
    """`alias_symbol, gene_symbol`: every alias of a gene other than its own symbol (an alias may name
    several genes: one row each)."""
    df = _query(org, "SELECT a.alias_symbol, i.symbol AS gene_symbol FROM alias a JOIN gene_info i USING (_id) "
                     "WHERE a.alias_symbol != i.symbol ORDER BY a.rowid")
    return _by_first_column(df)


def gene_go_table(org: Path) -> pd.DataFrame:
    """`gene_symbol, go_id, ontology, evidence`: the direct GO annotations (`go_bp`, `go_mf`, `go_cc`),
    sorted by symbol, ontology, term and evidence code."""
    parts = [_query(org, f"SELECT i.symbol AS gene_symbol, g.go_id, '{o.upper()}' AS ontology, g.evidence "
                         f"FROM go_{o} g JOIN gene_info i USING (_id) ORDER BY i._id, g.rowid")
             for o in GO_ONTOLOGIES]
    return _by_first_column(pd.concat(parts, ignore_index=True), ["gene_symbol", "ontology", "go_id", "evidence"])


def pubmed_counts_table(org: Path) -> pd.DataFrame:
    """`gene_symbol, entrez_id, n_pubmed`: PubMed ids linked to each gene (0 for none), in `_id` order."""
    return _query(org, "SELECT i.symbol AS gene_symbol, g.gene_id AS entrez_id, COUNT(p.pubmed_id) AS n_pubmed "
                       "FROM genes g JOIN gene_info i USING (_id) LEFT JOIN pubmed p USING (_id) "
                       "GROUP BY g._id ORDER BY g._id")


def go_terms_table(go: Path) -> pd.DataFrame:
    """`go_id, ontology, term`: every current GO term (the root `all` left out), by GO id."""
    return _by_first_column(_query(go, "SELECT go_id, ontology, term FROM go_term WHERE go_id != 'all' ORDER BY _id"))


def go_parents_table(go: Path) -> pd.DataFrame:
    """`go_id, parent_go_id, relationship` (isa, part of, regulates, ...): the GO DAG's edges of the three
    ontologies, edges to the artificial root `all` left out: BP, then MF, then CC, each sorted by child then parent."""
    parts = [_by_first_column(_query(go, f"SELECT c.go_id, p.go_id AS parent_go_id, r.relationship_type AS relationship "
                                         f"FROM go_{o}_parents r JOIN go_term c ON c._id = r._id "
                                         f"JOIN go_term p ON p._id = r._parent_id WHERE p.go_id != 'all' ORDER BY r.rowid"),
                              ["go_id", "parent_go_id"])
             for o in GO_ONTOLOGIES]
    return pd.concat(parts, ignore_index=True)


def write_tsv_gz(df: pd.DataFrame, out: Path) -> None:
    """Write `df` as a tab-separated table, gzip-compressed reproducibly (no timestamp)."""
    with open(out, "wb") as raw, gzip.GzipFile(filename=out.name.removesuffix(".gz"), mode="wb", fileobj=raw,
                                               compresslevel=9, mtime=0) as gz:
        gz.write(df.to_csv(sep="\t", index=False, lineterminator="\n").encode())


def _converter(table: Callable[[Path], pd.DataFrame]) -> Callable[[Sequence[Path], Path], None]:
    def convert(paths: Sequence[Path], out: Path) -> None:
        write_tsv_gz(table(paths[0]), out)

    convert.__doc__ = f"Registry converter: {table.__name__}(sqlite) written to `out` as TSV.gz."
    return convert


convert_gene_info = _converter(gene_info_table)
convert_gene_alias = _converter(gene_alias_table)
convert_gene_go = _converter(gene_go_table)
convert_pubmed_counts = _converter(pubmed_counts_table)
convert_go_terms = _converter(go_terms_table)
convert_go_parents = _converter(go_parents_table)
