"""A screen's gene list without pandas: what `load_screen` gave, kept in the cache folder as JSON.

`load_screen` writes the list of every screen it loads (`remember_screen_genes`), keyed by the screen's
files, the gene tables that map its symbols and the aggregation, so a later process (`perturbloop approve`
checking an edit) reads it in milliseconds (`screen_genes`); a changed file gets another key and is loaded
again.
"""

from __future__ import annotations

import os
from pathlib import Path

from perturbloop.data.json_cache import cache_file, read_json, write_json
from perturbloop.data.registry import REGISTRY, resolve
from perturbloop.errors import PerturbloopError

SCREEN_GENES_CACHE_VERSION = 1  # bump when load_screen changes which genes a screen has


def is_screen_file(name_or_path: str | os.PathLike) -> bool:
    """Whether `load_screen` reads `name_or_path` as a file path (else as a registry name)."""
    text, p = str(name_or_path), Path(name_or_path)
    return text not in REGISTRY and bool(p.suffix or os.sep in text or p.exists())


def _cache_path(name_or_path: str | os.PathLike, data_dir, aggregate: str | None) -> Path | None:
    """The cache file of this screen's genes; None when a file is missing (`load_screen` names it)."""
    try:
        if is_screen_file(name_or_path):
            source, files = "file", [Path(name_or_path).expanduser()]
        else:
            source, files = f"registry:{name_or_path}", resolve(str(name_or_path), data_dir, download=False)
        tables = [*resolve("gene_info", data_dir, download=False), *resolve("gene_alias", data_dir, download=False)]
        return cache_file("screens", "screen_genes", [*files, *tables], f"v{SCREEN_GENES_CACHE_VERSION}", source,
                          f"aggregate={aggregate}")
    except (OSError, PerturbloopError):
        return None


def remember_screen_genes(name_or_path: str | os.PathLike, data_dir, aggregate: str | None,
                          genes: list[str]) -> None:
    """Keep the genes `load_screen(name_or_path, data_dir, aggregate=aggregate)` gave (unless already kept)."""
    path = _cache_path(name_or_path, data_dir, aggregate)
    if path is not None and not path.is_file():
        write_json(path, list(genes))


def screen_genes(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None, *,
                 aggregate: str | None = None) -> list[str]:
    """The genes of `load_screen(name_or_path, data_dir, aggregate=aggregate)` (current HGNC symbols): read
    from the cache when this screen was loaded before from the same files, else loaded (pandas) and kept
    (a corrupt entry is replaced)."""
    path = _cache_path(name_or_path, data_dir, aggregate)
    genes = read_json(path) if path is not None else None
    if isinstance(genes, list) and genes and all(isinstance(g, str) for g in genes):
        return genes
    from perturbloop.data.screens import load_screen

    genes = load_screen(name_or_path, data_dir, aggregate=aggregate).genes
    if path is not None:
        write_json(path, genes)  # in place of a corrupt entry
    return genes
