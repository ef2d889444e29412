"""Download routes of the gene and GO tables: Bioconductor's org.Hs.eg.db / GO.db 3.16.0 as Debian packages.

The real route (`apt-get download`, checked by sha256, unpacked and re-encoded here) is run once and its
tables compared row by row with the shipped ones; the mechanics (ar/tar unpacking, the URL fallback, the
checks) are unit-tested on a small package built in the test and served from 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import shutil
import sqlite3
import tarfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from perturbloop.data import bioconductor as bioc
from perturbloop.data import registry
from perturbloop.errors import DataIntegrityError, PerturbloopError

ORG_TABLES = ["gene_info", "gene_alias", "gene_go", "gene_pubmed_counts"]
GO_TABLES = ["go_terms", "go_parents"]
BIOC_TABLES = ORG_TABLES + GO_TABLES


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _bioc_files():
    for name in BIOC_TABLES:
        f, = registry.get_spec(name).files
        yield name, f


# ------------------------------------------------------------------------------------------ registry


def test_every_gene_and_go_table_has_a_pinned_debian_route(data_dir):
    """Each table names its package (sha256), the SQLite member, a converter that exists, the same .deb by
    URL, and the sha256 of its content, which is the shipped file's."""
    for name, f in _bioc_files():
        o = f.origin
        assert f.source == "derived" and o is not None and o.kind == "deb", name
        assert o.ref in ("r-bioc-org.hs.eg.db=3.16.0-1", "r-bioc-go.db=3.16.0-1") and len(o.sha256) == 64
        assert o.members[0].endswith("GO.sqlite" if name in GO_TABLES else "org.Hs.eg.sqlite")
        assert callable(registry.converter(o))
        assert o.urls[0] == "https://deb.debian.org/debian/pool/main/r/" + o.ref.split("=")[0] + "/" + bioc.deb_filename(o.ref)
        assert registry.content_sha256(data_dir / f.path) == f.content_sha256, name
        assert registry.sha256_of(data_dir / f.path) == f.sha256, name


def test_go_parents_is_a_dataset_the_go_features_resolve(data_dir):
    """The GO DAG used to be read only when it happened to sit beside gene_go; it is now resolved (and
    fetched) like every other table."""
    got, = registry.resolve("go_parents", data_dir, download=False)
    assert got == data_dir / "annotations/go_parents.tsv.gz"


# ----------------------------------------------------------------------------------- the real route


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="no apt-get on this machine: the Debian route needs it")
@pytest.mark.skipif(os.environ.get("PERTURBLOOP_OFFLINE") == "1", reason="PERTURBLOOP_OFFLINE=1: no package registry")
def test_apt_get_route_rebuilds_the_shipped_tables(data_dir, tmp_path, monkeypatch):
    """`apt-get download` of both packages (no URL fallback), sha256-checked, unpacked in Python, re-encoded:
    every table equals the shipped one, same columns, same rows in the same order."""
    import subprocess

    for ref in (registry.ORG_HS_EG_DEB, registry.GO_DEB):
        if subprocess.run(["apt-get", "download", "--print-uris", ref], capture_output=True, check=False).returncode:
            pytest.skip(f"apt's sources here have no {ref} (Debian 12 bookworm main): `apt-get update`, or the "
                        "URL route serves the same file")
    for name, f in _bioc_files():  # apt only: the URL fallback is another test
        monkeypatch.setitem(registry.REGISTRY, name, replace(registry.get_spec(name),
                                                             files=(replace(f, origin=replace(f.origin, urls=())),)))
    cache = tmp_path / "cache"
    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(cache))
    t0 = time.perf_counter()
    registry.fetch("gene_info")
    # one download and unpacking of org.Hs.eg.db built its other tables too
    assert all((cache / registry.get_spec(n).files[0].path).is_file() for n in ORG_TABLES)
    registry.fetch("go_terms")
    seconds = time.perf_counter() - t0
    for name, f in _bioc_files():
        got, = registry.fetch(name)  # cached now
        assert got == cache / f.path
        want = _read(data_dir / f.path)
        pd.testing.assert_frame_equal(_read(got), want, check_exact=True, obj=name)
        assert registry.content_sha256(got) == f.content_sha256
    print(f"Debian route: 6 tables in {seconds:.1f} s")


# ------------------------------------------------------------------- mechanics, on a small package

_ORG_SCHEMA = """
CREATE TABLE genes (_id INTEGER PRIMARY KEY, gene_id VARCHAR(10) NOT NULL UNIQUE);
CREATE TABLE gene_info (_id INTEGER NOT NULL UNIQUE, gene_name VARCHAR(255) NOT NULL, symbol VARCHAR(80) NOT NULL);
CREATE TABLE genetype (_id INTEGER NOT NULL, gene_type VARCHAR(20) NOT NULL);
CREATE TABLE chromosome_locations (_id INTEGER NOT NULL, seqname VARCHAR(20) NOT NULL, start_location INTEGER NOT NULL,
                                   end_location INTEGER NOT NULL);
CREATE TABLE alias (_id INTEGER NOT NULL, alias_symbol VARCHAR(80) NOT NULL);
CREATE TABLE pubmed (_id INTEGER NOT NULL, pubmed_id VARCHAR(10) NOT NULL);
CREATE TABLE go_bp (_id INTEGER NOT NULL, go_id CHAR(10) NOT NULL, evidence CHAR(3) NOT NULL);
CREATE TABLE go_mf (_id INTEGER NOT NULL, go_id CHAR(10) NOT NULL, evidence CHAR(3) NOT NULL);
CREATE TABLE go_cc (_id INTEGER NOT NULL, go_id CHAR(10) NOT NULL, evidence CHAR(3) NOT NULL);
INSERT INTO genes VALUES (1, '1'), (2, '9'), (3, '100187828'), (4, '3045');
INSERT INTO gene_info VALUES (1, 'alpha-1-B glycoprotein', 'A1BG'), (2, 'N-acetyltransferase 1', 'NAT1'),
  (3, 'hypophosphatemic bone disease', 'HBD'), (4, 'hemoglobin subunit delta', 'HBD');
INSERT INTO genetype VALUES (1, 'protein-coding'), (2, 'protein-coding'), (3, 'unknown'), (4, 'protein-coding');
INSERT INTO chromosome_locations VALUES (1, '19', -58345182, -58353492), (2, '8', 18210108, 18223689),
  (2, '8_KI270821v1_alt', 5000, 6000), (2, '8', 18170466, 18223689), (4, '11', -5232837, -5234483);
INSERT INTO alias VALUES (1, 'A1BG'), (1, 'A1B'), (2, 'NAT1'), (2, 'AAC1'), (4, 'HBD'), (1, 'HYST2477'), (2, 'A1B');
INSERT INTO pubmed VALUES (1, '11'), (1, '12'), (4, '13');
INSERT INTO go_bp VALUES (2, 'GO:0006805', 'TAS'), (1, 'GO:0008150', 'ND');
INSERT INTO go_mf VALUES (1, 'GO:0003674', 'ND');
INSERT INTO go_cc VALUES (1, 'GO:0005576', 'IDA'), (1, 'GO:0005576', 'HDA');
"""


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data + b"\n" * (len(data) % 2)
    return out


def _org_deb(path: Path) -> Path:
    """A package laid out like r-bioc-org.hs.eg.db (ar: debian-binary, control.tar.xz, data.tar.xz) whose
    org.Hs.eg.sqlite holds four genes with the cases the converters handle (see _ORG_SCHEMA)."""
    db = path.parent / "org.sqlite"
    with sqlite3.connect(db) as con:
        con.executescript(_ORG_SCHEMA)
    con.close()
    data = _tar_xz({"usr/share/doc/r-bioc-org.hs.eg.db/copyright": b"Artistic-2.0\n",
                    registry.ORG_HS_EG_SQLITE: db.read_bytes()})
    path.write_bytes(_ar({"debian-binary": b"2.0\n", "control.tar.xz": _tar_xz({"control": b"Package: x\n"}),
                          "data.tar.xz": data}))
    return path


def test_converters_on_a_small_package(tmp_path):
    """Symbol-sorted with ties in Entrez order; chromosome: distinct seqnames in table order; start: the
    smallest |start| on a primary chromosome; aliases other than the gene's own symbol; zero-paper genes kept."""
    org, = bioc.extract_from_deb(_org_deb(tmp_path / "org.deb"), [registry.ORG_HS_EG_SQLITE], tmp_path)
    assert org == tmp_path / "org.Hs.eg.sqlite"
    info = bioc.gene_info_table(org)
    assert info.values.tolist() == [
        ["A1BG", "1", "alpha-1-B glycoprotein", "protein-coding", "19", "58345182"],
        ["HBD", "100187828", "hypophosphatemic bone disease", "unknown", "", ""],
        ["HBD", "3045", "hemoglobin subunit delta", "protein-coding", "11", "5232837"],
        ["NAT1", "9", "N-acetyltransferase 1", "protein-coding", "8,8_KI270821v1_alt", "18170466"]]
    assert bioc.gene_alias_table(org).values.tolist() == [["A1B", "A1BG"], ["A1B", "NAT1"], ["AAC1", "NAT1"],
                                                          ["HYST2477", "A1BG"]]
    assert bioc.gene_go_table(org).values.tolist() == [
        ["A1BG", "GO:0008150", "BP", "ND"], ["A1BG", "GO:0005576", "CC", "HDA"], ["A1BG", "GO:0005576", "CC", "IDA"],
        ["A1BG", "GO:0003674", "MF", "ND"], ["NAT1", "GO:0006805", "BP", "TAS"]]
    assert bioc.pubmed_counts_table(org).values.tolist() == [["A1BG", "1", "2"], ["NAT1", "9", "0"],
                                                              ["HBD", "100187828", "0"], ["HBD", "3045", "1"]]


def test_not_a_debian_package_is_refused(tmp_path):
    (tmp_path / "x.deb").write_bytes(b"<html>404</html>")
    with pytest.raises(DataIntegrityError, match="not a Debian package"):
        bioc.extract_from_deb(tmp_path / "x.deb", [registry.ORG_HS_EG_SQLITE], tmp_path)
    _org_deb(tmp_path / "org.deb")
    with pytest.raises(DataIntegrityError, match="has no usr/lib/R/site-library/GO.db"):
        bioc.extract_from_deb(tmp_path / "org.deb", [registry.GO_SQLITE], tmp_path)


@pytest.fixture
def file_server(tmp_path):
    """A static HTTP server on 127.0.0.1 over `tmp_path / "www"`; yields (root dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _point_org_tables_at(monkeypatch, sha: str, urls: tuple[str, ...]) -> None:
    """For this test: the org.Hs.eg.db tables come from a package with `sha` at `urls`; content unpinned."""
    for name in ORG_TABLES:
        spec = registry.get_spec(name)
        f, = spec.files
        g = replace(f, origin=replace(f.origin, sha256=sha, urls=urls), content_sha256=None)
        monkeypatch.setitem(registry.REGISTRY, name, replace(spec, files=(g,)))


def test_url_route_without_apt_builds_the_table_and_its_siblings(tmp_path, file_server, monkeypatch):
    """No apt-get on PATH: the .deb comes from the (first reachable) archive URL, is checked, and one unpacking
    builds gene_info and the other org.Hs.eg.db tables into the cache."""
    root, url = file_server
    deb = _org_deb(root / bioc.deb_filename(registry.ORG_HS_EG_DEB))
    _point_org_tables_at(monkeypatch, registry.sha256_of(deb), (url + "missing.deb", url + deb.name))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(tmp_path / "cache"))
    got, = registry.fetch("gene_info")
    assert got == tmp_path / "cache/annotations/gene_info.tsv.gz"
    assert _read(got)["gene_symbol"].tolist() == ["A1BG", "HBD", "HBD", "NAT1"]
    assert _read(tmp_path / "cache/annotations/gene_alias.tsv.gz").shape == (4, 2)
    assert _read(tmp_path / "cache/knowledge/gene_pubmed_counts.tsv.gz")["n_pubmed"].tolist() == ["2", "0", "0", "1"]
    assert registry.fetch("gene_go") == [tmp_path / "cache/annotations/gene_go.tsv.gz"]  # built already


def test_url_route_refuses_a_package_with_another_checksum(tmp_path, file_server, monkeypatch):
    root, url = file_server
    deb = _org_deb(root / bioc.deb_filename(registry.ORG_HS_EG_DEB))
    _point_org_tables_at(monkeypatch, "0" * 64, (url + deb.name,))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataIntegrityError, match=r"r-bioc-org.hs.eg.db_3.16.0-1_all.deb \(from http://127.*\): sha256"):
        registry.fetch("gene_info")
    assert not (tmp_path / "cache/annotations/gene_info.tsv.gz").exists()


def test_a_rebuilt_table_with_other_content_is_refused(tmp_path, file_server, monkeypatch):
    """The package checks out but the table built from it is not the registry's: refused, nothing cached."""
    root, url = file_server
    deb = _org_deb(root / bioc.deb_filename(registry.ORG_HS_EG_DEB))
    spec = registry.get_spec("gene_info")
    f, = spec.files
    g = replace(f, origin=replace(f.origin, sha256=registry.sha256_of(deb), urls=(url + deb.name,)))
    monkeypatch.setitem(registry.REGISTRY, "gene_info", replace(spec, files=(g,)))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataIntegrityError, match="annotations/gene_info.tsv.gz rebuilt from r-bioc-org.hs.eg.db=3.16.0-1: "
                                                 "content sha256 .* does not match"):
        registry.fetch("gene_info")
    assert not list((tmp_path / "cache/annotations").glob("gene_info*"))


def test_no_route_reachable_is_one_error_naming_each(tmp_path, monkeypatch):
    _point_org_tables_at(monkeypatch, "0" * 64, ("http://127.0.0.1:9/org.deb",))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(PerturbloopError, match=r"could not download the Debian package r-bioc-org.hs.eg.db=3.16.0-1 "
                                               r"\(apt-get: not on this machine; http://127.0.0.1:9/org.deb: .*refused"):
        registry.fetch("gene_alias")


def test_a_file_without_a_route_is_refused_naming_it(monkeypatch, tmp_path):
    """Only the Papalexi h5ad (its source is an R object) has no public route left; fetch says so."""
    local = [f.path for s in registry.REGISTRY.values() for f in s.files if f.source == "local"]
    assert local == ["perturbseq/papalexi2021/papalexi2021_lowmoi.h5ad"]
    monkeypatch.setenv("PERTURBLOOP_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(PerturbloopError, match="papalexi2021_lowmoi.h5ad has no public download route"):
        registry.fetch("papalexi2021")
