"""Replay of a combinatorial (gene-pair) screen: Norman et al. 2019 CRISPRa growth GI map.

The world holds every measured pair back; a campaign knows the single-gene fitnesses up front
(they are the additive prior) and learns a pair's measured double fitness and genetic-interaction
(GI) score only by running it. The goal: find the strongest interactions (largest |GI|).

Norman 2019 data (``../shared/data/pairs/norman2019/``, registry ``norman2019_pairs``):

- ``single_fitnesses.csv``: ``average_fitness`` of 112 genes plus the ``negative`` control
  (~0); equal to the ``negative`` row of the pair-fitness matrix.
- ``processed_fitnesses.csv``: 113 x 113 symmetric double-fitness matrix (112 genes +
  ``negative``); the diagonal (both guides on one gene) is not a pair and is left out.
- ``processed_emap.csv``: 112 x 112 symmetric GI map (the Horlbeck et al. 2018 score: the double's
  deviation from the expectation given the singles, normalised; negative = synergistic /
  aggravating, positive = buffering / alleviating).

All 112 x 111 / 2 = 6,216 pairs are measured. Fitness is a growth phenotype (negative = slower
growth), so the additive prior of a pair is ``fitness_A + fitness_B``. Outdated symbols are
mapped to current ones through the alias table (``ELMSAN1`` -> ``MIDEAS``, ``TMEM173`` -> ``STING1``);
symbols without an HGNC entry (``RP5-862P8.2``) keep their name.

`pairs`, `truth` and `hits` are for scoring a simulated campaign only; policies never see them.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from perturbloop.data.registry import resolve
from perturbloop.perturbation import canonical_label
from perturbloop.perturbseq import UnknownPerturbationError, _symbol_map
from simulators.world import top_by_magnitude

NORMAN_CONTROL = "negative"
HIT_FRACTION = 0.05  # hits = the top 5% of pairs by |GI| (as the screen benchmarks use for genes)

Objective = Literal["gi", "fitness"]


@dataclass
class PairReading:
    """One run of one pair: the objective (`value`), and both measured quantities."""

    perturbation: str
    value: float | None
    fitness: float | None = None
    gi: float | None = None
    error: str | None = None
    replicates: list[float] = field(default_factory=list)


class PairReplay:
    """Holds a pair screen back and answers runs of its pairs (module docstring).

    Args:
        singles: gene -> single-gene fitness (the prior, known up front).
        pairs: index = pair labels ``A+B`` (any order, canonicalised), columns ``fitness`` and
            ``gi`` (measured double fitness and GI score).
        objective: what a run's `value` is: ``"gi"`` (default) or ``"fitness"``.
        hit_fraction: hits = the top fraction of pairs by |objective| (evaluation only).
        noise_sd: Gaussian measurement noise added to a run's value (seeded per pair and
            attempt; 0 = the published value).
        seed: seeds the noise.
        name: the dataset's name (in errors).
        extra: optional per-pair tables (e.g. Norman's Perturb-seq decomposition), by pair label.

    Example:
        >>> world = PairReplay.from_norman2019(data_dir)
        >>> world.additive("CBL+CNN1"), world.run(["CBL+CNN1"])[0].value
    """

    kind = "pairs"

    def __init__(self, singles: pd.Series, pairs: pd.DataFrame, *, objective: Objective = "gi",
                 hit_fraction: float = HIT_FRACTION, noise_sd: float = 0.0, seed: int = 0, name: str = "pair screen",
                 extra: dict[str, pd.DataFrame] | None = None):
        if objective not in ("gi", "fitness"):
            raise ValueError(f"objective must be 'gi' or 'fitness', got {objective!r}")
        missing_cols = [c for c in ("fitness", "gi") if c not in pairs.columns]
        if missing_cols:
            raise ValueError(f"pairs table lacks column(s) {missing_cols}")
        self.name = name
        self.objective = objective
        self.noise_sd = float(noise_sd)
        self.seed = int(seed)
        singles = pd.Series(singles, dtype=float).dropna()
        singles.index = [str(g).strip().upper() for g in singles.index]
        self._singles = singles.sort_index()
        labels = [canonical_label(lab) for lab in pairs.index]
        bad = [str(o) for o, lab in zip(pairs.index, labels) if lab is None or lab.count("+") != 1]
        if bad:
            raise ValueError(f"not gene pairs: {', '.join(bad[:10])}")
        df = pairs[["fitness", "gi"]].astype(float).copy()
        df.index = pd.Index(labels, name="perturbation")
        if df.index.duplicated().any():
            raise ValueError(f"pairs listed twice: {', '.join(df.index[df.index.duplicated()][:10])}")
        df = df.dropna(subset=[objective])
        split = df.index.str.split("+")
        df.insert(0, "gene_a", [p[0] for p in split])
        df.insert(1, "gene_b", [p[1] for p in split])
        no_single = sorted(set(df["gene_a"]).union(df["gene_b"]) - set(self._singles.index))
        if no_single:
            raise ValueError(f"genes of pairs without a single fitness: {', '.join(no_single[:10])}")
        df["additive"] = self._singles.reindex(df["gene_a"]).to_numpy() + self._singles.reindex(df["gene_b"]).to_numpy()
        self._pairs = df.sort_index()
        top = top_by_magnitude(self._pairs[objective], hit_fraction)
        self.hits = frozenset(top.index)  # the top `hit_fraction` of pairs by |objective| (evaluation only)
        self.hit_threshold = float(top.iloc[-1])
        self.extra = dict(extra or {})
        self.symbol_map: dict[str, str] = {}  # source symbol -> current symbol, where they differ
        self._attempts: dict[str, int] = {}

    @classmethod
    def from_norman2019(cls, data_dir: str | os.PathLike | None = None, *, map_symbols: bool = True,
                        with_perturbseq_fits: bool = True, **kwargs) -> PairReplay:
        """The Norman 2019 CRISPRa K562 pair screen (112 genes, 6,216 pairs) from the registry.

        Args:
            data_dir: where ``pairs/norman2019/`` is (else ``PERTURBLOOP_DATA_DIR``, the cache).
            map_symbols: map outdated symbols to current HGNC symbols (alias table).
            with_perturbseq_fits: also load ``regr_fits_final.csv`` (registry
                ``norman2019_gi_fits``; 125 pairs' Perturb-seq decomposition) into
                ``extra['perturbseq_fits']``.
            **kwargs: PairReplay options (objective, hit_fraction, noise_sd, seed).
        """
        singles, pairs, symbol_map = read_norman2019(data_dir, map_symbols=map_symbols)
        extra = {}
        if with_perturbseq_fits:
            path, = resolve("norman2019_gi_fits", data_dir)
            fits = pd.read_csv(path, index_col=0)
            fits.index = pd.Index([canonical_label(n, separators="_", symbol_map=symbol_map) for n in fits.index],
                                  name="perturbation")
            extra["perturbseq_fits"] = fits
        world = cls(singles, pairs, name="norman2019", extra=extra, **kwargs)
        world.symbol_map = symbol_map
        return world

    @property
    def singles(self) -> pd.Series:
        """Gene -> single-gene fitness (the prior; known before any pair is run)."""
        return self._singles.copy()

    @property
    def genes(self) -> list[str]:
        return list(self._singles.index)

    @property
    def candidates(self) -> list[str]:
        """Every measured pair label (the design space), sorted."""
        return list(self._pairs.index)

    perturbations = candidates  # what `run` accepts

    def __contains__(self, label: str) -> bool:
        return (canonical_label(label) or "") in self._pairs.index

    def additive(self, label: str | Sequence[str]) -> float | pd.Series:
        """Additive prior of a pair's fitness, ``fitness_A + fitness_B`` (one label, or a Series)."""
        if isinstance(label, str):
            c = canonical_label(label) or ""
            genes = c.split("+")
            if c.count("+") != 1 or any(g not in self._singles.index for g in genes):
                raise UnknownPerturbationError([label], self.name, "a pair of two measured genes is needed")
            return float(self._singles[genes[0]] + self._singles[genes[1]])
        return pd.Series({c: self.additive(c) for c in (canonical_label(x) or str(x) for x in label)}, dtype=float)

    def run(self, labels: Sequence[str]) -> list[PairReading]:
        """Measured values of a batch of pairs, in order.

        Raises UnknownPerturbationError, before anything is run, for labels that are not measured
        pairs (single genes included: they are known up front, see `singles`).
        """
        canon = [canonical_label(lab) or "" for lab in labels]
        unknown = [str(lab) for lab, c in zip(labels, canon) if c not in self._pairs.index]
        if unknown:
            hint = "single genes are not run (their fitness is in .singles)" if any("+" not in c for c in canon) \
                else f"{len(self._pairs)} measured pairs"
            raise UnknownPerturbationError(unknown, self.name, hint)
        out = []
        for c in canon:
            attempt = self._attempts.get(c, 0)
            self._attempts[c] = attempt + 1
            row = self._pairs.loc[c]
            value = float(row[self.objective])
            if self.noise_sd > 0:
                rng = np.random.default_rng([self.seed, zlib.crc32(c.encode()), attempt])
                value += float(rng.normal(0.0, self.noise_sd))
            out.append(PairReading(c, value, float(row["fitness"]), float(row["gi"])))
        return out

    @property
    def pairs(self) -> pd.DataFrame:
        """Every pair (evaluation only): gene_a, gene_b, fitness, gi, additive; index = label."""
        return self._pairs.copy()

    def truth(self, labels: Sequence[str] | None = None) -> pd.Series:
        """The objective of each pair (evaluation only); all pairs when `labels` is None."""
        s = self._pairs[self.objective]
        return s.copy() if labels is None else s.reindex([canonical_label(x) or str(x) for x in labels])

    def strongest(self, n: int = 20) -> list[str]:
        """The `n` pairs with the largest |objective| (evaluation only)."""
        return list(self._pairs[self.objective].abs().sort_values(ascending=False, kind="stable").index[:n])


def read_norman2019(
    data_dir: str | os.PathLike | None = None, *, map_symbols: bool = True
) -> tuple[pd.Series, pd.DataFrame, dict[str, str]]:
    """Singles (gene -> fitness), pairs (label -> fitness, gi) and the symbol map used.

    Checks what the module docstring states: symmetric matrices, the ``negative`` row equal to the
    single fitnesses, the same genes in both maps.
    """
    fit_path, emap_path, single_path = resolve("norman2019_pairs", data_dir)
    fit = pd.read_csv(fit_path, index_col=0)
    emap = pd.read_csv(emap_path, index_col=0)
    single = pd.read_csv(single_path, index_col=0)["average_fitness"]
    genes = [g for g in fit.index if g != NORMAN_CONTROL]
    if list(fit.columns) != list(fit.index) or sorted(emap.index) != sorted(genes) or sorted(emap.columns) != sorted(genes):
        raise ValueError(f"{fit_path.name} / {emap_path.name}: gene lists differ")
    if not np.allclose(fit.loc[NORMAN_CONTROL, genes].to_numpy(), single.reindex(genes).to_numpy(), atol=1e-9):
        raise ValueError(f"{single_path.name} differs from the {NORMAN_CONTROL!r} row of {fit_path.name}")
    fit = fit.loc[genes, genes]
    emap = emap.loc[genes, genes]
    if not np.allclose(fit.to_numpy(), fit.to_numpy().T, equal_nan=True):
        raise ValueError(f"{fit_path.name} is not symmetric")
    symbol_map = _symbol_map(genes, data_dir) if map_symbols else {}
    sym = [symbol_map.get(g, g).upper() for g in genes]
    singles = pd.Series(single.reindex(genes).to_numpy(), index=sym, name="fitness")
    iu = np.triu_indices(len(genes), 1)
    labels = ["+".join(sorted((sym[i], sym[j]))) for i, j in zip(*iu)]
    pairs = pd.DataFrame({"fitness": fit.to_numpy()[iu], "gi": emap.to_numpy()[iu]},
                         index=pd.Index(labels, name="perturbation"))
    return singles, pairs, symbol_map
