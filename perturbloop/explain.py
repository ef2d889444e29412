"""Why a gene was proposed, in one line: the prior evidence behind it, next to the policy's own rationale.

For a proposed gene `g`, given what was measured (`observed`: gene -> readout) and the hit cut-off `tau`
(a measured gene is a hit when `|value| >= tau`):

- **STRING hits**: `g`'s STRING v12 neighbours measured as hits, strongest edge first, each with its edge
  score (`combined_score / 1000`) and its measured value;
- **pathway**: among `g`'s MSigDB Hallmark / Reactome sets, the one most enriched among measured hits,
  by the smoothed hit fraction `(h + 1) / (m + 1 / p)` (`h` hits among `m` measured members, `p` the hit
  fraction of everything measured: a Beta prior with mean `p`), ties to the smaller set;
  with no measured hit in any of its sets, its smallest Hallmark set (else its smallest Reactome set);
- **literature**: PubMed papers linked to `g` (Entrez Gene);
- **prior screens**: the largest `|z|` of `g` in the prior screens (when the `screens` features are on);
- **phenotype terms**: terms of the scientist's phenotype that `g` matches (`matched_terms`, from a
  phenotype scorer; none here is also fine).

`GeneKnowledge.load` reads the tables (a missing knowledge file leaves its part out; `knowledge_for` once per
process);
`explain` is a pure function of those tables and the campaign's values, fast over a batch.

Example:
    >>> kb = GeneKnowledge.load(data_dir)
    >>> explain(["IL2RB"], kb, {"IL2RA": 5.1, "ACTB": 0.1}, hit_threshold=2.0)
    ['STRING hits: IL2RA 0.999 (5.10); pathway: HALLMARK_IL2_STAT5_SIGNALING (1/1 measured hit); PubMed 1,312']
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.sparse as sp

from perturbloop.data.knowledge import KnowledgeMissingError

MAX_NEIGHBOURS = 3  # hit neighbours named per gene (strongest edges): one line stays readable
MAX_TERMS = 3  # phenotype terms named per gene


@dataclass
class GeneKnowledge:
    """The tables `explain` reads. Any part may be empty (its knowledge file is missing)."""

    network: sp.csr_matrix = field(default_factory=lambda: sp.csr_matrix((0, 0)))  # W_ij = combined_score / 1000
    network_genes: list[str] = field(default_factory=list)
    gene_sets: dict[str, list[str]] = field(default_factory=dict)  # gene -> its sets
    set_members: dict[str, frozenset[str]] = field(default_factory=dict)  # set -> genes
    pubmed: Mapping[str, int] = field(default_factory=dict)
    prior_absz: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # screen -> gene -> |z|

    def __post_init__(self) -> None:
        self._row = {g: i for i, g in enumerate(self.network_genes)}

    @classmethod
    def load(cls, data_dir: str | os.PathLike | None = None, *, prior_screens: Sequence[object] = ()) -> GeneKnowledge:
        """STRING, Hallmark + Reactome, PubMed counts from the data directory; `prior_screens` (`Screen`s) give
        each gene's `|z|` (`z` standardised over the screen, as the `screens` features)."""
        from perturbloop.data import knowledge as kn

        kb: dict = {}
        with suppress(KnowledgeMissingError):
            kb["network"], kb["network_genes"] = kn.string_adjacency(data_dir)
        with suppress(KnowledgeMissingError):
            sets = kn.gene_sets(("hallmark", "reactome"), data_dir)
            kb["gene_sets"] = sets.groupby("gene_symbol")["set"].agg(list).to_dict()
            kb["set_members"] = {s: frozenset(g) for s, g in sets.groupby("set")["gene_symbol"]}
        with suppress(KnowledgeMissingError):
            kb["pubmed"] = kn.pubmed_counts(data_dir).astype(int).to_dict()
        absz = {s.name: ((s.scores - s.scores.mean()) / s.scores.std()).abs().to_dict() for s in prior_screens}
        return cls(**kb, prior_absz=absz)

    def neighbours(self, gene: str) -> tuple[list[str], np.ndarray]:
        """`gene`'s STRING neighbours and edge scores (empty outside the network)."""
        if (i := self._row.get(gene)) is None:
            return [], np.zeros(0)
        row = self.network[i]
        return [self.network_genes[j] for j in row.indices], row.data


@lru_cache(maxsize=4)
def knowledge_for(data_dir: str | None = None, prior_screens: tuple[str, ...] = ()) -> GeneKnowledge:
    """`GeneKnowledge.load` for a data directory and prior screens (registry names), read once per process."""
    from perturbloop.data import load_screen

    return GeneKnowledge.load(data_dir, prior_screens=[load_screen(n, data_dir) for n in prior_screens])


def hits_of(observed: Mapping[str, float | None], hit_threshold: float) -> set[str]:
    """Measured genes with `|value| >= hit_threshold`."""
    return {g for g, v in observed.items() if v is not None and not math.isnan(v) and abs(v) >= hit_threshold}


def _hit_neighbours(gene: str, kb: GeneKnowledge, observed: Mapping[str, float | None], hits: set[str]) -> str:
    names, scores = kb.neighbours(gene)
    found = sorted(((s, n) for n, s in zip(names, scores) if n in hits), key=lambda t: (-t[0], t[1]))
    shown = [f"{n} {s:.3f} ({observed[n]:.2f})" for s, n in found]
    return f"STRING hits: {_first(shown, MAX_NEIGHBOURS)}" if found else ""


def _first(items: Sequence[str], k: int) -> str:
    """The first `k` items, comma-separated, and `+N` for the rest."""
    return ", ".join(items[:k]) + (f" +{len(items) - k}" if len(items) > k else "")


def _pathway(gene: str, kb: GeneKnowledge, measured: set[str], hits: set[str]) -> str:
    sets = kb.gene_sets.get(gene, [])
    if not sets:
        return ""
    p = max(len(hits) / max(len(measured), 1), 1e-6)
    enriched = []  # (key, h, m): the smallest key is the most enriched set, ties to the smaller set, then by name
    for s in sets:
        members = kb.set_members[s]
        h, m = len(members & hits), len(members & measured)
        if h:
            enriched.append(((-(h + 1) / (m + 1 / p), len(members), s), h, m))
    if enriched:
        (_, _, s), h, m = min(enriched)
        return f"pathway: {s} ({h}/{m} measured hit{'s' if m != 1 else ''})"
    hallmark = [s for s in sets if s.startswith("HALLMARK_")]
    s = min(hallmark or sets, key=lambda x: (len(kb.set_members[x]), x))
    return f"pathway: {s}"


def explain(genes: Sequence[str], kb: GeneKnowledge, observed: Mapping[str, float | None], hit_threshold: float,
            *, matched_terms: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """One short line of evidence per gene (see module docstring); `""` where nothing is known.

    Args:
        genes: the proposed genes (symbols).
        kb: the knowledge tables (`GeneKnowledge.load`).
        observed: measured gene -> readout (None for a failed measurement).
        hit_threshold: `|value|` at or above which a measured gene is a hit.
        matched_terms: gene -> phenotype terms it matches (a phenotype scorer's output), optional.
    """
    if not hit_threshold > 0:
        raise ValueError(f"hit_threshold must be positive, got {hit_threshold}")
    measured = {g for g, v in observed.items() if v is not None and not math.isnan(v)}
    hits = hits_of(observed, hit_threshold)
    out = []
    for g in genes:
        parts = [_hit_neighbours(g, kb, observed, hits), _pathway(g, kb, measured, hits)]
        if g in kb.pubmed:
            parts.append(f"PubMed {kb.pubmed[g]:,}")
        z = [(v, s) for s, absz in kb.prior_absz.items() if (v := absz.get(g)) is not None and not math.isnan(v)]
        if z:
            v, s = max(z)
            parts.append(f"prior screens: |z| {v:.1f} in {s}")
        if terms := list((matched_terms or {}).get(g, ())):
            parts.append("phenotype: " + _first(terms, MAX_TERMS))
        out.append("; ".join(p for p in parts if p))
    return out


def with_evidence(rationales: Sequence[str], evidence: Sequence[str]) -> list[str]:
    """Each rationale with its gene's evidence appended (`rationale; evidence`)."""
    if len(rationales) != len(evidence):
        raise ValueError(f"{len(rationales)} rationales for {len(evidence)} evidence lines")
    return ["; ".join(x for x in (r, e) if x) for r, e in zip(rationales, evidence)]
