"""A screen's gene list kept in the cache (issue 13, a refused `approve` in seconds): `load_screen` keeps it,
`screen_genes` reads it without pandas in a later process, follows a changed file and reloads a corrupt entry."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from perturbloop.data.json_cache import read_json
from perturbloop.data.screen_genes import screen_genes
from perturbloop.data.screens import load_screen


@pytest.fixture
def screen_file(tmp_path, slice_csv) -> Path:
    """A copy of the IL2 slice of this test's own (the session cache may hold the shared slice's entry)."""
    return Path(shutil.copy(slice_csv, tmp_path / "screen.csv"))


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "screens").glob("screen_genes_*.json"))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_later_process_reads_the_genes_without_pandas(screen_file, data_dir, cache, fresh_python):
    genes = load_screen(screen_file, data_dir).genes  # keeps the list
    assert len(_entries(cache)) == 1 and len(genes) > 500
    out = fresh_python("import sys; from perturbloop.data.screen_genes import screen_genes; "
                       f"g = screen_genes({str(screen_file)!r}, {str(data_dir)!r}); "
                       "print(len(g), g[0], g[-1], 'pandas' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(genes)), genes[0], genes[-1], "False"]
    assert screen_genes(screen_file, data_dir) == genes


def test_a_changed_file_or_another_aggregation_is_loaded_again(screen_file, data_dir, cache):
    first = screen_genes(screen_file, data_dir)  # nothing kept yet: loaded, then kept
    assert first == load_screen(screen_file, data_dir).genes and len(_entries(cache)) == 1
    lines = screen_file.read_text().splitlines()
    screen_file.write_text("\n".join(lines[:11]) + "\n")  # the header and 10 genes
    fewer = screen_genes(screen_file, data_dir)
    assert len(fewer) == 10 and set(fewer) < set(first) and len(_entries(cache)) == 2
    assert screen_genes(screen_file, data_dir, aggregate="first") == fewer and len(_entries(cache)) == 3


@pytest.mark.parametrize("content", [b"", b"[\"VAV1\"", b"\x00\xff", b"{\"genes\": []}", b"[1, 2]", b"[]"])
def test_a_corrupt_entry_is_loaded_again(screen_file, data_dir, cache, content):
    genes = screen_genes(screen_file, data_dir)
    entry, = _entries(cache)
    entry.write_bytes(content)
    assert screen_genes(screen_file, data_dir) == genes
    assert read_json(entry) == genes  # replaced whole


def test_a_missing_screen_is_named_by_the_loader(tmp_path, data_dir, cache):
    from perturbloop.errors import PerturbloopError

    with pytest.raises((PerturbloopError, FileNotFoundError), match="nowhere.csv"):
        screen_genes(tmp_path / "nowhere.csv", data_dir)
    assert not _entries(cache)
