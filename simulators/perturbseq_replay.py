"""Replay of a Perturb-seq experiment: a perturbation's cells are revealed only when it is run.

The world holds every cell of a real (or synthetic) Perturb-seq AnnData back. Control cells are
available up front (`control`); a perturbation's cells come out only through `run`, a few at a
time: each run returns up to `cells_per_run` cells drawn without replacement from a seeded
per-perturbation order, so running a perturbation again returns new cells until its cells are
exhausted. What a lab does to a batch is modelled too:

- a run fails with probability `failure_rate` (seeded per perturbation and attempt; no cells are
  used up), or always for the perturbations listed in `fail`;
- the number of cells recovered varies from run to run when `cell_count_cv > 0` (gamma
  distributed around `cells_per_run`), and a run may return fewer cells than asked for when the
  perturbation's cells run out (the reading carries a note);
- perturbations with fewer than `min_cells` cells in the data are not offered (running one is an
  error reading, as a lab reports a guide that gave too few cells).

Draws depend on (seed, perturbation, attempt) only, never on batch order or on other
perturbations. `truth_lfc` (the full-data pseudobulk) is for scoring a simulated campaign only;
policies never see it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd

from perturbloop.errors import PerturbloopError
from perturbloop.perturbation import CONTROL
from perturbloop.perturbseq import DEFAULT_KEY, UnknownPerturbationError, canonical_label, prepare_perturbseq
from perturbloop.responses import TARGET_SUM, pseudobulk_lfc

CELLS_PER_RUN = 50
# A perturbation needs this many cells in the data to be offered: fewer give a pseudobulk too noisy
# to serve as its truth (Papalexi's smallest group, SPI1, has 48 cells).
MIN_CELLS = 20
_CONTROL_STREAM = 0xC0  # rng stream of the control-cell order (distinct from any crc32-based stream)


@dataclass
class PerturbSeqReading:
    """One run of one perturbation: its cells (raw counts, canonical labels) or why it failed.

    `value` is `cells`, and `replicates` is empty, so a reading has the fields of a screen reading.
    """

    perturbation: str
    cells: ad.AnnData | None
    error: str | None = None
    note: str | None = None
    replicates: list = field(default_factory=list)

    @property
    def value(self) -> ad.AnnData | None:
        return self.cells

    @property
    def n_cells(self) -> int:
        return 0 if self.cells is None else int(self.cells.n_obs)

    @property
    def ok(self) -> bool:
        return self.error is None and self.cells is not None


def _stream(seed: int, label: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(label.encode()), *extra])


class PerturbSeqReplay:
    """Holds a Perturb-seq AnnData back and answers runs of its perturbations (module docstring).

    Args:
        adata: cells x genes with perturbation labels in ``obs[key]`` and raw counts in
            ``layers['counts']`` or ``X``; labels are canonicalised (``B+A`` -> ``A+B``).
        key: obs column with the labels.
        control: the control label(s) of `adata`.
        cells_per_run: cells returned by one run (fewer when they run out).
        failure_rate: probability that one run fails (0 <= rate < 1).
        min_cells: perturbations with fewer cells in `adata` are not offered.
        seed: seeds every draw.
        cell_count_cv: coefficient of variation of the number of cells a run recovers (0: fixed).
        fail: perturbations that fail on every run (e.g. a guide that does not work).
        separators: characters joining genes of a combination in `adata`'s labels.
        layer: layer with raw counts (default ``layers['counts']``, else ``X``).

    Example:
        >>> world = PerturbSeqReplay(load_perturbseq("papalexi2021"), cells_per_run=50, seed=0)
        >>> ctrl = world.control()
        >>> [r.n_cells for r in world.run(["STAT1", "IRF1"])]
        [50, 50]
    """

    kind = "perturbseq"

    def __init__(self, adata: ad.AnnData, key: str = DEFAULT_KEY, control: str | Iterable[str] = CONTROL,
                 cells_per_run: int = CELLS_PER_RUN, failure_rate: float = 0.0, min_cells: int = MIN_CELLS,
                 seed: int = 0, *, cell_count_cv: float = 0.0, fail: Iterable[str] = (), separators: str = "+",
                 layer: str | None = None):
        if cells_per_run < 1:
            raise ValueError(f"cells_per_run must be >= 1, got {cells_per_run}")
        if not 0.0 <= failure_rate < 1.0:
            raise ValueError(f"failure_rate must be in [0, 1), got {failure_rate}")
        if min_cells < 1:
            raise ValueError(f"min_cells must be >= 1, got {min_cells}")
        if cell_count_cv < 0:
            raise ValueError(f"cell_count_cv must be >= 0, got {cell_count_cv}")
        self.cells_per_run = int(cells_per_run)
        self.failure_rate = float(failure_rate)
        self.min_cells = int(min_cells)
        self.seed = int(seed)
        self.cell_count_cv = float(cell_count_cv)
        self._data = prepare_perturbseq(adata, key, control, layer=layer, separators=separators)
        labels = self._data.obs[DEFAULT_KEY].astype(str).to_numpy()
        groups = pd.Series(labels).groupby(labels).indices  # label -> its cells' rows
        if CONTROL not in groups:
            raise PerturbloopError(f"the AnnData has no control cells (obs[{key!r}] == {control!r})")
        self._ctrl = groups.pop(CONTROL)
        self._groups = groups
        self._offered = sorted(lab for lab, idx in groups.items() if len(idx) >= self.min_cells)
        self._fail = {canonical_label(f) for f in fail}
        self._order: dict[str, np.ndarray] = {}
        self._cursor: dict[str, int] = {}
        self._attempts: dict[str, int] = {}
        self._truth: pd.DataFrame | None = None
        self.history: list[dict] = []  # one entry per run: perturbation, attempt, n_cells, error

    @property
    def perturbations(self) -> list[str]:
        """The perturbations this world can run (held out until run), sorted."""
        return list(self._offered)

    @property
    def genes(self) -> list[str]:
        """The measured genes (columns of every returned AnnData)."""
        return [str(g) for g in self._data.var_names]

    def __contains__(self, label: str) -> bool:
        return canonical_label(label) in self._offered

    def control(self, n: int | None = None) -> ad.AnnData:
        """Control cells (available before any run): all of them, or `n` drawn with the world's
        seed (the same `n` cells on every call)."""
        idx = self._ctrl
        if n is not None:
            if n < 1:
                raise ValueError(f"n must be >= 1, got {n}")
            order = np.random.default_rng([self.seed, _CONTROL_STREAM]).permutation(idx)
            idx = np.sort(order[:n])
        out = self._data[idx].copy()
        out.uns["perturbseq_replay"] = {"seed": self.seed, "control": True}
        return out

    def run(self, labels: Sequence[str]) -> list[PerturbSeqReading]:
        """Run a batch; one reading per label, in order (a label twice = two runs, new cells).

        Raises UnknownPerturbationError, before anything is run, for labels not in the data
        (and for the control, which `control()` returns).
        """
        canon = [canonical_label(lab) or "" for lab in labels]
        unknown = [lab for lab, c in zip(labels, canon) if c not in self._groups]
        if unknown:
            hint = "the control is not run: use control()" if CONTROL in canon \
                else f"{len(self._offered)} perturbations are offered"
            raise UnknownPerturbationError([str(u) for u in unknown], "this Perturb-seq replay", hint)
        out = []
        for label in canon:
            attempt = self._attempts.get(label, 0)
            self._attempts[label] = attempt + 1
            out.append(self._draw(label, attempt))
            self.history.append({"perturbation": label, "attempt": attempt, "n_cells": out[-1].n_cells,
                                 "error": out[-1].error})
        return out

    def _draw(self, label: str, attempt: int) -> PerturbSeqReading:
        n_req = self.cells_per_run
        total = len(self._groups[label])
        if label not in self._offered:
            return PerturbSeqReading(label, None,
                                     f"only {total} cells of {label} in the data (min_cells={self.min_cells})")
        rng = _stream(self.seed, label, attempt)
        if label in self._fail or rng.random() < self.failure_rate:
            return PerturbSeqReading(label, None,
                                     f"run of {label} failed in the lab (simulated; attempt {attempt + 1})")
        n = n_req
        if self.cell_count_cv > 0:
            k = 1.0 / self.cell_count_cv**2
            n = int(round(n_req * rng.gamma(k, 1.0 / k)))
        if n == 0:
            return PerturbSeqReading(label, None, f"no cells of {label} recovered (simulated low cell count)")
        if label not in self._order:
            self._order[label] = _stream(self.seed, label).permutation(self._groups[label])
            self._cursor[label] = 0
        start = self._cursor[label]
        remaining = total - start
        if remaining == 0:
            return PerturbSeqReading(label, None, f"all {total} cells of {label} were returned by earlier runs")
        take = min(n, remaining)
        idx = np.sort(self._order[label][start:start + take])
        self._cursor[label] = start + take
        cells = self._data[idx].copy()
        cells.uns["perturbseq_replay"] = {"seed": self.seed, "attempt": attempt, "n_requested": n_req}
        note = None
        if take < n_req:
            why = "cells ran out" if take == remaining else "simulated low cell count"
            note = f"low cell count: {take} of {n_req} requested ({why})"
        return PerturbSeqReading(label, cells, None, note)

    def truth_lfc(self, target_sum: float = TARGET_SUM) -> pd.DataFrame:
        """Pseudobulk LFC of every offered perturbation on all its cells (evaluation only)."""
        if self._truth is None or self._truth.attrs.get("target_sum") != target_sum:
            keep = np.sort(np.concatenate([self._ctrl, *[self._groups[lab] for lab in self._offered]]))
            self._truth = pseudobulk_lfc(self._data[keep], DEFAULT_KEY, CONTROL, target_sum, self.min_cells)
        return self._truth.copy()
