"""Named biological terms and the genes under them, searchable by words: GO, Reactome, Hallmark, HPO.

A `TermIndex` holds every term's name, source and genes: `A` (genes x terms, binary) with GO and HPO
annotations propagated up their DAGs (a gene annotated to a term is also under each ancestor, along
is_a / part_of / regulates for GO and is_a for HPO), MSigDB sets as listed. Built once from the data
directory's tables and cached on disk (`<cache>/features/term_index_<key>.npz`, keyed by the sources'
sha256), so a campaign loads it in well under a second.

Words. `tokens(text)` lower-cases, rewrites the usual abbreviations to one canonical word
(`IL-2`, `IL2`, `interleukin 2` -> `interleukin2`; `IFN-gamma`, `IFNG`, `IFN-γ`, `type II interferon`
-> `interferongamma`; `T cell`, `T-cells` -> `tcell`; `TCR` -> `tcell receptor`; `NK` -> `natural killer`;
`SARS-CoV-2` -> `sarscov2`), splits on anything not a letter or digit, drops stop words (English function
words and the ontologies' boiler-plate such as "regulation", "positive", "process", "activity",
"abnormality") and strips a light suffix (`stem`: plural, then one of -ation, -ion, -ing, -ed, ...).
Term words are weighted by their inverse document frequency over all term names,
`idf(w) = log(N_terms / df(w))`, so "interleukin2" or "tcell" weigh more than "cell" or "response".
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbloop.data import knowledge as kn
from perturbloop.data.registry import cache_dir, resolve, sha256_of
from perturbloop.errors import ConfigError
from perturbloop.features import go_incidence, save_arrays

CACHE_VERSION = 1  # bump when the index's definition changes
CLOSE_MATCHES = 5  # closest term names listed for an unknown prior term

DataDir = str | os.PathLike | None

# (pattern, replacement) applied in order to lower-cased text with `_` turned into spaces
_REWRITES: tuple[tuple[str, str], ...] = (
    ("γ", "gamma"), ("α", "alpha"), ("β", "beta"), ("κ", "kappa"),
    (r"signalling", "signaling"), (r"tumour", "tumor"), (r"leukaemia", "leukemia"),
    (r"\bsars[- ]?cov[- ]?2\b", " sarscov2 "), (r"\bsars[- ]?cov[- ]?1?\b", " sarscov "),
    (r"\b(?:il|interleukin)[- ]?(\d{1,2})\b", r" interleukin\1 "),
    (r"\btype (?:ii|2) interferon\b", " interferongamma "),
    (r"\b(?:ifn|interferon)[- ]*(?:gamma|g)\b", " interferongamma "),
    (r"\b(?:ifn|interferon)[- ]*(?:alpha|a)\b", " interferonalpha "),
    (r"\b(?:ifn|interferon)[- ]*(?:beta|b)\b", " interferonbeta "),
    (r"\btype (?:i|1) interferons?\b", " interferonalpha interferonbeta "),
    (r"\bifns?\b", " interferon "),
    (r"\btnf[- ]?(?:alpha|a)?\b", " tumor necrosis factor "),
    (r"\bnf[- ]?(?:kappa|k)[- ]?(?:b|beta)\b", " nfkb "),
    (r"\btcr\b", " t cell receptor "), (r"\bbcr\b", " b cell receptor "),
    (r"\bnk\b", " natural killer "),
    (r"\bcd(\d{1,3})[- ]?positive\b", r" cd\1 "),
    (r"\b([tb])[- ]?(?:cell|lymphocyte)s?\b", r" \1cell "),
)
_REWRITES_RE = tuple((re.compile(p), r) for p, r in _REWRITES)

STOP_WORDS = frozenset("""
a an the of in on by to for with and or not no via from into onto after before during upon as at its it their
is are was were be been being that which whose this these those than then there here also both each other
such using use used per vs versus within without between among under over out off up down all any some
regulation regulating regulates regulated regulator regulators positive negative process processes involved
activity activities pathway pathways reactome hallmark mediated dependent independent containing
abnormality abnormal abnormally phenotype phenotypes human humans primary gene genes measured measure measuring
level levels type like related relating co anti non pre post sub
""".split())

_SUFFIXES = ("ational", "ation", "ition", "ated", "ating", "ement", "ment", "ness", "ing", "ion", "ive", "ity",
             "ory", "ous", "ed", "er", "or", "al", "ly")
MIN_STEM = 4  # a suffix is stripped only when this many letters remain


def stem(word: str) -> str:
    """Light suffix stripping: a plural `-s` / `-ies`, then the first matching suffix of `_SUFFIXES`
    (`secretion`, `secreted` -> `secret`; `stimulation`, `stimulated` -> `stimul`; `killer` -> `kill`).
    Words with digits (gene-like: `cd28`, `interleukin2`) are kept as they are."""
    if not word.isalpha() or len(word) <= MIN_STEM:
        return word
    if word.endswith("ies") and len(word) - 3 >= MIN_STEM - 1:
        word = word[:-3] + "y"
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) - 1 >= MIN_STEM:
        word = word[:-1]
    for suf in _SUFFIXES:
        if word.endswith(suf) and len(word) - len(suf) >= MIN_STEM:
            return word[: -len(suf)]
    return word


@lru_cache(maxsize=200_000)
def tokens(text: str) -> tuple[str, ...]:
    """The distinct content words of `text`, normalised (see module docstring), in order of appearance."""
    t = " " + str(text).lower().replace("_", " ") + " "
    for pat, rep in _REWRITES_RE:
        t = pat.sub(rep, t)
    out: dict[str, None] = {}
    for w in re.split(r"[^a-z0-9]+", t):
        if len(w) < 2 or w in STOP_WORDS or w.isdigit():
            continue
        s = stem(w)
        if s not in STOP_WORDS:
            out[s] = None
    return tuple(out)


@dataclass
class TermIndex:
    """Terms (`ids`, display `names`, `sources`: GO, Reactome, Hallmark, HPO) and their genes: `A` is
    `len(genes) x len(ids)` binary (DAG-propagated for GO and HPO); `W` is `len(ids) x len(vocab)`, the
    IDF weight of each word of each term name; `n_genes[t]` the genes under term `t`."""

    genes: list[str]
    ids: list[str]
    names: list[str]
    sources: list[str]
    A: sp.csr_matrix
    vocab: dict[str, int]
    idf: np.ndarray
    W: sp.csr_matrix
    by_key: dict[str, int]  # lower-cased id or name -> column

    @property
    def n_genes(self) -> np.ndarray:
        return np.asarray(self.A.sum(axis=0)).ravel()

    def query(self, text: str) -> tuple[list[str], np.ndarray]:
        """`text`'s words known to the index and their IDF weights (unknown words carry no weight)."""
        ws = [w for w in tokens(text) if w in self.vocab]
        return ws, np.array([self.idf[self.vocab[w]] for w in ws])

    def find(self, names: list[str], *, field: str = "design.prior_terms") -> list[int]:
        """Columns of the named terms (an id such as `GO:0032623` / `HP:0001888`, a set name such as
        `HALLMARK_IL2_STAT5_SIGNALING`, or a term name, case-insensitive). An unknown one is a ConfigError
        listing the closest term names (difflib)."""
        out, bad = [], []
        for n in names:
            key = " ".join(str(n).strip().lower().split())
            if key in self.by_key:
                out.append(self.by_key[key])
                continue
            close = difflib.get_close_matches(key, list(self.by_key), n=CLOSE_MATCHES, cutoff=0.6)
            shown = [self.names[self.by_key[c]] if not c.startswith(("go:", "hp:")) else c.upper() for c in close]
            bad.append(f"{n!r} (closest: {', '.join(dict.fromkeys(shown))})" if shown else f"{n!r} (no close term)")
        if bad:
            raise ConfigError(f"{field}: unknown GO / Reactome / Hallmark / HPO term(s): {'; '.join(bad)}")
        return out


def _set_name(set_id: str) -> str:
    """`REACTOME_TCR_SIGNALING` -> `TCR signaling`, `HALLMARK_IL2_STAT5_SIGNALING` -> `IL2 STAT5 signaling`."""
    words = set_id.split("_", 1)[-1].split("_")
    return " ".join(w if any(c.isdigit() for c in w) or len(w) <= 4 else w.lower() for w in words)


def _build(data_dir: DataDir) -> tuple[sp.csr_matrix, list[str], list[str], list[str], list[str]]:
    from perturbloop.features import go_tables

    ann, parents = go_tables(data_dir)
    go_names = pd.read_csv(resolve("go_terms", data_dir)[0], sep="\t", dtype=str).set_index("go_id")["term"]
    sets = kn.gene_sets(("hallmark", "reactome"), data_dir)
    hpo_ann = kn.hpo_annotations(data_dir)
    hpo_terms = kn.hpo_terms(data_dir)
    genes = sorted(set(ann["gene_symbol"]) | set(sets["gene_symbol"]) | set(hpo_ann["gene_symbol"]))
    A_go, go_ids = go_incidence(ann, parents, genes)
    hpo_parents = kn.hpo_parent_edges(hpo_terms).rename(columns={"hpo_id": "go_id", "parent_id": "parent_go_id"})
    A_hpo, hpo_ids = go_incidence(hpo_ann.rename(columns={"hpo_id": "go_id"}), hpo_parents, genes)
    A_set, set_ids = go_incidence(sets.rename(columns={"set": "go_id"}), pd.DataFrame(), genes)
    hpo_name = hpo_terms.set_index("hpo_id")["name"]
    names = ([str(go_names.get(t, t)) for t in go_ids] + [str(hpo_name.get(t, t)) for t in hpo_ids]
             + [_set_name(t) for t in set_ids])
    sources = (["GO"] * len(go_ids) + ["HPO"] * len(hpo_ids)
               + ["Hallmark" if t.startswith("HALLMARK_") else "Reactome" for t in set_ids])
    A = sp.hstack([A_go, A_hpo, A_set]).tocsr()
    keep = np.flatnonzero(np.asarray(A.sum(axis=0)).ravel() > 0)  # a term with no gene can't move a prior
    ids = [*go_ids, *hpo_ids, *set_ids]
    return A[:, keep].tocsr(), genes, [ids[i] for i in keep], [names[i] for i in keep], [sources[i] for i in keep]


def term_index(data_dir: DataDir = None) -> TermIndex:
    """The index over GO, Hallmark, Reactome and HPO (see module docstring); cached on disk and in memory.

    Raises KnowledgeMissingError (naming the dataset and how to fetch it) when a source file is missing."""
    paths = [*resolve("gene_go", data_dir), *resolve("go_terms", data_dir),
             *(p for d in ("msigdb_hallmark", "msigdb_reactome", "hpo") for p in kn.knowledge_paths(d, data_dir))]
    key = hashlib.sha256((",".join(sha256_of(p) for p in paths) + f"|v{CACHE_VERSION}").encode()).hexdigest()[:20]
    return _term_index(key, str(data_dir) if data_dir else None)


@lru_cache(maxsize=2)
def _term_index(key: str, data_dir: str | None) -> TermIndex:
    path = cache_dir() / "features" / f"term_index_{key}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        A = sp.csr_matrix((np.ones(len(z["indices"])), z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        genes, ids, names, sources = (list(map(str, z[k])) for k in ("genes", "ids", "names", "sources"))
    else:
        A, genes, ids, names, sources = _build(data_dir)
        save_arrays(path, indices=A.indices.astype(np.int32), indptr=A.indptr.astype(np.int64), shape=np.array(A.shape),
                    genes=np.array(genes), ids=np.array(ids), names=np.array(names), sources=np.array(sources))
    term_words = [tokens(n) for n in names]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(w for ws in term_words for w in ws))}  # by first appearance
    rows = np.repeat(np.arange(len(names)), [len(ws) for ws in term_words])
    cols = [vocab[w] for ws in term_words for w in ws]
    B = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(vocab)))
    df = np.asarray(B.sum(axis=0)).ravel()
    idf = np.log(len(names) / df)
    by_key: dict[str, int] = {}
    for i, (t, n) in enumerate(zip(ids, names)):
        by_key.setdefault(t.lower(), i)
        by_key.setdefault(" ".join(n.lower().split()), i)
    return TermIndex(genes, ids, names, sources, A, vocab, idf, (B @ sp.diags(idf)).tocsr(), by_key)
