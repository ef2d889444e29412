"""Gene symbols: current HGNC symbols and the alias table that maps outdated ones."""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from perturbloop.data.json_cache import cache_file, read_json, write_json
from perturbloop.data.registry import resolve
from perturbloop.errors import UnknownGeneError

if TYPE_CHECKING:
    import pandas as pd

INDEX_CACHE_VERSION = 1  # bump when GeneIndex.from_tables changes what it builds


class GeneIndex:
    """Maps symbols (any case, outdated or current) to current upper-case HGNC symbols.

    Only unambiguous aliases are used: an alias naming two current genes maps to neither.
    """

    def __init__(self, symbols: Iterable[str], aliases: dict[str, str]):
        self.symbols: frozenset[str] = frozenset(s.upper() for s in symbols)
        self.aliases = {k.upper(): v.upper() for k, v in aliases.items() if k.upper() not in self.symbols}

    @classmethod
    def from_tables(cls, info: pd.DataFrame, alias: pd.DataFrame) -> GeneIndex:
        counts = alias.groupby("alias_symbol")["gene_symbol"].nunique()
        unique = alias[alias["alias_symbol"].isin(counts.index[counts == 1])].drop_duplicates("alias_symbol")
        return cls(info["gene_symbol"].astype(str), dict(zip(unique["alias_symbol"].astype(str), unique["gene_symbol"].astype(str))))

    @classmethod
    def _from_cache(cls, symbols: list[str], aliases: dict[str, str]) -> GeneIndex:
        """An index from its own cached fields (already upper-case, aliases already without current symbols)."""
        idx = cls.__new__(cls)
        idx.symbols, idx.aliases = frozenset(symbols), aliases
        return idx

    def map(self, symbol: str) -> str | None:
        """Current symbol for `symbol`, or None if it is unknown."""
        s = str(symbol).strip().upper()
        if s in self.symbols:
            return s
        return self.aliases.get(s)

    def current(self, symbol: str) -> str:
        """Current symbol for `symbol`, or `symbol` itself (stripped, upper-cased) if it is unknown."""
        return self.map(symbol) or str(symbol).strip().upper()

    def canonical(self, symbols: Iterable[str], *, context: str = "", allowed: Iterable[str] | None = None) -> list[str]:
        """Map every symbol or raise UnknownGeneError naming all the unknown ones.

        `allowed` adds symbols accepted as they are (e.g. a screen's own gene names without an HGNC entry).
        """
        symbols = [str(s) for s in symbols]
        extra = {a.upper() for a in allowed} if allowed is not None else set()
        unknown = [s for s in symbols if self.map(s) is None and s.strip().upper() not in extra]
        if unknown:
            raise UnknownGeneError(unknown, context)
        return [self.current(s) for s in symbols]


def _read_index_cache(path: Path) -> GeneIndex | None:
    """The cached index, or None when there is none or it is unreadable / malformed (it is then rebuilt)."""
    raw = read_json(path)
    try:
        symbols, aliases = raw["symbols"], raw["aliases"]
    except (KeyError, TypeError, IndexError):
        return None
    if not (isinstance(symbols, list) and isinstance(aliases, dict) and all(isinstance(s, str) for s in symbols)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items())):
        return None
    return GeneIndex._from_cache(symbols, aliases)


def _build_index(info_path: Path, alias_path: Path) -> GeneIndex:
    import pandas as pd

    info = pd.read_csv(info_path, sep="\t", usecols=["gene_symbol"], dtype=str)
    alias = pd.read_csv(alias_path, sep="\t", dtype=str)
    return GeneIndex.from_tables(info, alias)


@lru_cache(maxsize=4)
def _gene_index(data_dir: str | None) -> GeneIndex:
    info_path, = resolve("gene_info", data_dir)
    alias_path, = resolve("gene_alias", data_dir)
    # keyed by the two tables: a changed table gets a new cache file, so a stale index is never read
    path = cache_file("genes", "gene_index", (info_path, alias_path), f"v{INDEX_CACHE_VERSION}")
    idx = _read_index_cache(path)
    if idx is None:
        idx = _build_index(info_path, alias_path)
        write_json(path, {"symbols": sorted(idx.symbols), "aliases": idx.aliases})
    return idx


def gene_index(data_dir: str | os.PathLike | None = None) -> GeneIndex:
    """The GeneIndex built from the registry's `gene_info` and `gene_alias` tables (cached in memory, and on
    disk under the cache folder as JSON, so a later process loads it without pandas)."""
    return _gene_index(str(data_dir) if data_dir else os.environ.get("PERTURBLOOP_DATA_DIR"))


def read_gene_file(path: str | os.PathLike) -> list[str]:
    """The genes a file lists, one a line (the first column of a CSV); `#` comments and a header line
    (`gene`, `genes`, `hit`, `hits`, `symbol`) skipped."""
    raw = [line.split(",")[0].strip() for line in Path(path).read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    return raw[1:] if raw and raw[0].lower() in ("gene", "genes", "hit", "hits", "symbol") else raw
