"""The gene-symbol index cached on disk (issue 13, `approve` in seconds): a later process loads the JSON the
first one wrote, without pandas; the cache gives the same mappings as a fresh build, follows its source tables
and rebuilds a corrupt file."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from perturbloop import genes
from perturbloop.data.registry import resolve


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder of its own and no in-memory index."""
    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(tmp_path / "cache"))
    genes._gene_index.cache_clear()
    yield tmp_path / "cache"
    genes._gene_index.cache_clear()


def _cache_files(cache: Path) -> list[Path]:
    return sorted((cache / "genes").glob("gene_index_*.json"))


def test_cached_index_maps_like_a_fresh_build(data_dir, cache):
    built = genes._build_index(*resolve("gene_info", data_dir), *resolve("gene_alias", data_dir))
    first = genes.gene_index(data_dir)  # builds and writes
    assert len(_cache_files(cache)) == 1
    genes._gene_index.cache_clear()
    loaded = genes.gene_index(data_dir)  # reads the file
    assert loaded is not first
    assert loaded.symbols == built.symbols == first.symbols and len(built.symbols) > 50_000
    assert loaded.aliases == built.aliases == first.aliases and len(built.aliases) > 10_000
    assert loaded.canonical(["vav1", "KIAA0100"]) == ["VAV1", "BLTP2"]


def test_a_later_process_loads_the_cache_without_pandas(data_dir, cache, fresh_python):
    genes.gene_index(data_dir)
    out = fresh_python("import sys; from perturbloop.genes import gene_index; "
                       f"assert gene_index({str(data_dir)!r}).map('kiaa0100') == 'BLTP2'; "
                       "print('pandas' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _tables(d: Path, symbols: list[str], aliases: list[tuple[str, str]]) -> None:
    (d / "annotations").mkdir(parents=True, exist_ok=True)
    with gzip.open(d / "annotations" / "gene_info.tsv.gz", "wt") as f:
        f.write("gene_symbol\tentrez_id\n" + "".join(f"{s}\t{i}\n" for i, s in enumerate(symbols)))
    with gzip.open(d / "annotations" / "gene_alias.tsv.gz", "wt") as f:
        f.write("alias_symbol\tgene_symbol\n" + "".join(f"{a}\t{g}\n" for a, g in aliases))


def test_index_is_rebuilt_when_a_source_table_changes(tmp_path, cache):
    src = tmp_path / "data"
    _tables(src, ["AAA1", "BBB2"], [("OLD1", "AAA1")])
    assert genes.gene_index(src).map("old1") == "AAA1"
    genes._gene_index.cache_clear()
    _tables(src, ["AAA1", "BBB2"], [("OLD1", "BBB2"), ("OLD2", "AAA1")])  # another size: another key
    idx = genes.gene_index(src)
    assert idx.map("old1") == "BBB2" and idx.map("old2") == "AAA1"
    assert len(_cache_files(cache)) == 2


@pytest.mark.parametrize("content", [b"", b"{\"symbols\": [\"AAA1\"", b"\x00\xff garbage", b"[1, 2]",
                                     b"{\"symbols\": [1], \"aliases\": {}}"])
def test_a_corrupt_cache_file_is_rebuilt(tmp_path, cache, content):
    src = tmp_path / "data"
    _tables(src, ["AAA1", "BBB2"], [("OLD1", "AAA1"), ("AMB", "AAA1"), ("AMB", "BBB2")])
    genes.gene_index(src)
    path, = _cache_files(cache)
    path.write_bytes(content)
    genes._gene_index.cache_clear()
    idx = genes.gene_index(src)
    assert idx.symbols == {"AAA1", "BBB2"} and idx.aliases == {"OLD1": "AAA1"}  # the ambiguous alias maps to neither
    genes._gene_index.cache_clear()
    assert genes._read_index_cache(path) is not None  # rewritten whole


def test_an_unwritable_cache_still_gives_the_index(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(blocked))
    genes._gene_index.cache_clear()
    src = tmp_path / "data"
    _tables(src, ["AAA1"], [("OLD1", "AAA1")])
    try:
        assert genes.gene_index(src).map("OLD1") == "AAA1"
    finally:
        genes._gene_index.cache_clear()
