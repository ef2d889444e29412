"""The scientist's prior: a score per gene from a phenotype sentence, named terms and known positives.

Inputs (`design.phenotype`, `design.prior_terms`, `design.known_positives`; `perturbloop benchmark
--phenotype/--prior-terms/--known-positives`), over the `TermIndex` of GO, Reactome, Hallmark and HPO
(`perturbloop.term_index`: words, IDF weights, DAG-propagated gene sets) and the STRING v12 network.

1. Phenotype -> terms. With `q` the sentence's words and `t` a term name's words, each weighted by its IDF
   over all term names, the matched weight is `m_t = sum_{w in q & t} idf(w)`. A term matches when most of
   its name is in the sentence, `m_t / |t| >= MIN_TERM_COVERAGE` (`|.|` = summed IDF), and scores
   `s_t = (m_t / |t|) * (m_t / |q|)` (precision x recall of the name's information), rescaled to max 1.
   A named prior term scores `s_t = 1`; a term matched both ways keeps the larger.
2. Terms -> genes. A term's genes include those annotated to its descendants (GO / HPO DAG), and a
   specific term says more about its genes than a broad one: with `n_t` genes out of `N`,
   `spec_t = log(N / n_t) / log N`, and each matched term is independent evidence with weight
   `c_t = s_t spec_t` (noisy-OR): `y(g) = 1 - prod_{t: A[g, t] = 1} (1 - c_t)`, rescaled to max 1 over the
   pool. Terms worded alike (GO's "X", "regulation of X", "positive regulation of X") count once: the
   broadest of them (its genes include the others' through the regulates edges).
3. Seeds -> network. The seed vector `x = y + 1[g in known positives]` is propagated over STRING by a
   random walk with restart: `f = alpha x + (1 - alpha) P f`, `P = D^-1 W` (`W` = combined score / 1000,
   `D` its degrees), i.e. `f = alpha sum_k (1 - alpha)^k P^k x`: `f(g)` is the expected seed value met by a
   walk from `g` that stops with probability `alpha` at each step, so a gene inherits the prior of its
   neighbours by edge weight, and hubs gain nothing from their degree alone (unlike `D^-1/2 W D^-1/2`).
   Solved by sparse fixed-point iteration (`(1 - alpha)^k` converges). A gene outside the network keeps
   `alpha x(g)`. The prior is `p = f / max f` in [0, 1].

`p` ranks round 1 (`acquisition.prior.PriorScorePolicy`) and enters the model afterwards as the feature
column `phenotype_prior = sqrt(p)` (`phenotype_prior_block`). A sentence that matches no term is a warning
(`PhenotypePrior.warnings`, shown in round 1's rationale and printed), and the other priors still apply.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbloop.genes import gene_index, read_gene_file
from perturbloop.term_index import TermIndex, term_index, tokens

MIN_TERM_COVERAGE = 0.5  # most of a term's name (by IDF weight) must be in the sentence
RESTART = 0.5  # alpha: half of a gene's prior stays its own, the rest comes from its STRING neighbours
PROPAGATION_TOL = 1e-8
PROPAGATION_MAX_ITER = 200  # (1 - alpha)^k: 30 iterations already reach 1e-9
SHOWN_TERMS = 3  # terms named per gene in a rationale

DataDir = str | os.PathLike | None


class PhenotypePriorWarning(UserWarning):
    """A prior input that is used but says nothing (a sentence that matches no term)."""


@dataclass
class MatchedTerm:
    """A term that moves the prior: its id, name, source, score `s_t`, weight `c_t = s_t spec_t` and why
    (`phenotype` or `named`)."""

    term_id: str
    name: str
    source: str
    score: float
    weight: float
    why: str


@dataclass
class PhenotypePrior:
    """The prior over a pool's genes (see module docstring).

    Attributes:
        genes: the pool's genes, in order.
        score: `len(genes)` prior `p` in [0, 1] (0 everywhere when no input said anything).
        matched: the terms used (phenotype matches and named terms), by weight `c_t`, largest first.
        membership: `len(genes) x len(matched)` binary: gene under term (DAG-propagated).
        positives: the known positives (current HGNC symbols).
        warnings: messages for the scientist (e.g. a sentence that matched no term).
        round1_share: `design.prior_share` (acquisition.prior).
    """

    genes: list[str]
    score: np.ndarray
    matched: list[MatchedTerm]
    membership: sp.csr_matrix
    positives: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    round1_share: float = 1.0  # share of round 1 taken from the top of `score` (the rest drawn at random)

    @property
    def informative(self) -> bool:
        """Whether the prior ranks anything (some gene scores above the others)."""
        return bool(self.score.max() > self.score.min())

    def terms_for(self, gene: str, k: int = SHOWN_TERMS) -> list[MatchedTerm]:
        """The `k` best-scoring matched terms the gene is under (none for a gene outside the pool)."""
        if gene not in self.genes:
            return []
        cols = self.membership[self.genes.index(gene)].indices
        return [self.matched[c] for c in sorted(cols)[:k]]  # matched is sorted by weight

    def rationale(self, gene: str) -> str:
        """`phenotype prior 0.83: interleukin-2 production (GO), ...; known positive` for one gene."""
        i = self.genes.index(gene)
        parts = [f"phenotype prior {self.score[i]:.2f}"]
        terms = self.terms_for(gene)
        if terms:
            parts[0] += ": " + ", ".join(f"{m.name} ({m.source})" for m in terms)
        if gene in self.positives:
            parts.append("known positive")
        elif self.score[i] > 0 and not terms:
            parts.append("STRING neighbour of prior genes")
        return "; ".join(parts)


def matching_terms(prior: PhenotypePrior, genes: Sequence[str], k: int = SHOWN_TERMS) -> dict[str, list[MatchedTerm]]:
    """Per gene, the `k` best matched terms it is under (for rationales and explanations)."""
    return {g: prior.terms_for(g, k) for g in genes}


def read_gene_list(value: str | Sequence[str] | None) -> list[str]:
    """Genes as given: a list, a comma-separated string, or a file with one gene a line (`#` comments,
    a first line `gene` is a header)."""
    if isinstance(value, str) and "," not in value and Path(value).expanduser().is_file():
        return read_gene_file(Path(value).expanduser())
    items = value.split(",") if isinstance(value, str) else value or []
    return [str(g).strip() for g in items if str(g).strip()]


def match_phenotype(text: str, index: TermIndex) -> np.ndarray:
    """`s_t` for every term of `index` (step 1 of the module docstring; max 1, 0 where unmatched)."""
    ws, weights = index.query(text)
    out = np.zeros(len(index.ids))
    if not ws:
        return out
    cols = [index.vocab[w] for w in ws]
    matched = np.asarray(index.W[:, cols].sum(axis=1)).ravel()
    size = np.asarray(index.W.sum(axis=1)).ravel()
    precision = np.divide(matched, size, out=np.zeros_like(matched), where=size > 0)
    s = np.where(precision >= MIN_TERM_COVERAGE, precision * matched / weights.sum(), 0.0)
    return s / s.max() if s.max() > 0 else out


def propagate(W: sp.csr_matrix, x: np.ndarray, alpha: float = RESTART) -> np.ndarray:
    """`f = alpha x + (1 - alpha) D^-1 W f` (step 3): `f(g)` is the expected seed value met by a random walk
    from `g` that stops with probability `alpha` at each step; fixed-point iteration (sparse)."""
    d = np.asarray(W.sum(axis=1)).ravel()
    P = (sp.diags(np.where(d > 0, 1.0 / np.maximum(d, 1e-300), 0.0)) @ W).tocsr()
    f = alpha * x
    for _ in range(PROPAGATION_MAX_ITER):
        nxt = alpha * x + (1 - alpha) * (P @ f)
        if np.abs(nxt - f).max() <= PROPAGATION_TOL * max(1.0, np.abs(nxt).max()):
            return nxt
        f = nxt
    return f


def phenotype_prior(genes: Sequence[str], *, phenotype: str | None = None, prior_terms: Sequence[str] = (),
                    known_positives: str | Sequence[str] | None = None, data_dir: DataDir = None,
                    round1_share: float = 1.0) -> PhenotypePrior:
    """The prior `p` over `genes` from the given inputs (module docstring). Bad input raises before any
    work is stored: an unknown term (ConfigError listing the closest names), a positive that is not a gene
    (UnknownGeneError), a missing knowledge file (KnowledgeMissingError naming it and how to fetch it)."""
    genes = list(genes)
    # current HGNC symbols; a positive outside the pool is kept: it still seeds the network
    positives = list(dict.fromkeys(gene_index(data_dir).canonical(read_gene_list(known_positives),
                                                                  context="in design.known_positives", allowed=genes)))
    index = term_index(data_dir)
    s = np.zeros(len(index.ids))
    why = np.full(len(index.ids), "", dtype=object)
    notes: list[str] = []
    if phenotype and phenotype.strip():
        s = match_phenotype(phenotype, index)
        why[s > 0] = "phenotype"
        if not s.any():
            notes.append(f"phenotype {phenotype.strip()!r} matches no GO / Reactome / Hallmark / HPO term name "
                         f"(words: {', '.join(tokens(phenotype)) or 'none'}); the prior uses the other inputs only")
    for c in index.find(list(prior_terms)):
        s[c], why[c] = 1.0, "named"
    cols = _one_per_wording(index, np.flatnonzero(s > 0), s, why)
    n_all = index.A.shape[0]
    c = s[cols] * np.log(n_all / np.maximum(index.n_genes[cols], 1)) / np.log(n_all)  # s_t spec_t
    order = np.argsort(-c, kind="stable")
    cols, c = cols[order], c[order]
    member = _take_rows(index.A[:, cols].tocsr(), pd.Index(index.genes).get_indexer(genes))
    y = 1.0 - np.exp(member @ np.log1p(-np.minimum(c, 1 - 1e-12)))  # noisy-OR over terms
    y = y / y.max() if y.max() > 0 else y
    x = y + np.isin(genes, positives).astype(float)
    p = _network(genes, x, positives, data_dir) if x.any() else x
    p = p / p.max() if p.max() > 0 else p
    matched = [MatchedTerm(index.ids[t], index.names[t], index.sources[t], float(s[t]), float(w), str(why[t]))
               for t, w in zip(cols, c)]
    for msg in notes:
        warnings.warn(msg, PhenotypePriorWarning, stacklevel=2)
    return PhenotypePrior(genes, p, matched, member, positives, notes, round1_share)


def _one_per_wording(index: TermIndex, cols: np.ndarray, s: np.ndarray, why: np.ndarray) -> np.ndarray:
    """`cols` with only the broadest term of each wording: GO's "X", "regulation of X", "positive / negative
    regulation of X" have the same words and nested genes, so they are one piece of evidence, not four. The
    kept term takes its group's largest `s` and reason (a named term stays named), in place."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for col in cols:
        groups.setdefault(tuple(sorted(tokens(index.names[col]))), []).append(int(col))
    n = index.n_genes
    kept = []
    for members in groups.values():
        best, top = max(members, key=lambda c: n[c]), max(members, key=lambda c: (s[c], why[c] == "named"))
        s[best], why[best] = s[top], why[top]
        kept.append(best)
    return np.array(sorted(kept), dtype=int)


def _take_rows(M: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """Rows `rows` of `M` (`-1`: an empty row)."""
    sel = sp.csr_matrix((np.ones((rows >= 0).sum()), (np.flatnonzero(rows >= 0), rows[rows >= 0])),
                        shape=(len(rows), M.shape[0]))
    return (sel @ M).tocsr()


def _network(genes: list[str], x: np.ndarray, positives: list[str], data_dir: DataDir) -> np.ndarray:
    """Step 3 over STRING: seeds on the pool's genes plus positives outside the pool."""
    from perturbloop.data import knowledge as kn

    W, net_genes = kn.string_adjacency(data_dir)
    net = pd.Index(net_genes)
    seed = np.zeros(len(net_genes))
    r = net.get_indexer(genes)
    seed[r[r >= 0]] = x[r >= 0]
    outside = [g for g in positives if g not in set(genes)]
    ro = net.get_indexer(outside)
    seed[ro[ro >= 0]] = 1.0
    f = propagate(W, seed)
    return np.where(r >= 0, f[np.maximum(r, 0)], RESTART * x)


def phenotype_prior_block(prior: PhenotypePrior) -> tuple[np.ndarray, list[str]]:
    """The model's feature column `phenotype_prior = sqrt(p)` (`len(genes) x 1`)."""
    return np.sqrt(prior.score)[:, None], ["phenotype_prior"]
