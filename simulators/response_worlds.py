"""Response worlds: simulated labs seen as response vectors over a fixed list of readouts.

A world answers `measure(labels)` with, per label, a response vector (a Perturb-seq world's
pseudobulk LFC over its readout genes; a pair screen's one readout) or None for a failed run; its
truth (`truth`, `de_genes`, `expressed`) is for scoring only and never reaches a policy.
`build_world(config)` makes the world a response campaign's `[world]` table names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from perturbloop.device import keep_torch_threads
from perturbloop.errors import ConfigError
from perturbloop.config import CampaignConfig
from perturbloop.response_metrics import TOP_DE
from simulators.world import Measurement, OneReadoutWorld, World


class ResponseWorld(World, Protocol):
    """A `World` (simulators.world) with what a response campaign also asks, and what only its evaluation
    may see.

    Campaign side: `genes` (= `readouts`, the readout columns), `singles()` (pair worlds: the single-gene
    responses measured before pairs; {} otherwise), `control_expression()` (control cells, log-normalised,
    for expression features; None where there are no cells).
    Evaluation side: `truth(labels)` (`n x G`), `de_genes(labels, n)`, `expressed(n)`.
    """

    name: str
    synthetic: bool
    genes: list[str]

    def singles(self) -> dict[str, np.ndarray]: ...

    def control_expression(self) -> np.ndarray | None: ...

    def truth(self, labels: Sequence[str]) -> np.ndarray: ...

    def de_genes(self, labels: Sequence[str], n: int = TOP_DE) -> list[list[int]]: ...

    def expressed(self, n: int) -> list[int]: ...


class CellWorld:
    """A lab that returns cells (`PerturbSeqReplay`, `SyntheticGRN`: `genes`, `perturbations`,
    `control()`, `run(labels)`) seen as LFC vectors: each run's cells are pseudobulked against the
    lab's control cells (`perturbloop.responses.pseudobulk_lfc`).

    `truth(labels)` (evaluation only) is the replay's full-data pseudobulk or the synthetic world's
    noise-free expected pseudobulk; DE genes of the truth by a t-test vs control on all cells
    (GEARS, when the full AnnData is given) or by |LFC|; expressed genes = highest mean in control
    cells. With `pairs=True` the candidates are the pairs and the singles are measured first.
    """

    def __init__(self, lab, truth: Callable[[list[str]], np.ndarray], *, name: str, synthetic: bool = False,
                 pairs: bool = False, adata=None, de_method: str = "abs_lfc"):
        self.lab = lab
        self.name = name
        self.synthetic = synthetic
        self._truth_fn = truth
        self.adata = adata
        self.de_method = de_method if adata is not None else "abs_lfc"
        self.genes = self.readouts = [str(g) for g in lab.genes]
        offered = list(lab.perturbations)
        self.pairs = pairs
        self.candidates = [p for p in offered if p.count("+") == 1] if pairs else [p for p in offered if "+" not in p]
        self._single_labels = [p for p in offered if "+" not in p]
        self._ctrl = lab.control()
        self._ctrl_expr: np.ndarray | None = None
        self._truth: dict[str, np.ndarray] = {}
        self._de: dict[str, list[str]] = {}

    def measure(self, labels: Sequence[str]) -> dict[str, Measurement]:
        import anndata as ad

        from perturbloop.responses import pseudobulk_lfc

        readings = self.lab.run(list(labels))
        ok = [r for r in readings if r.ok]
        out = {r.perturbation: Measurement.failed(r.error or "run failed (no usable cells)") for r in readings}
        if ok:
            cells = ad.concat([self._ctrl, *[r.cells for r in ok]], join="outer", merge="first")
            with keep_torch_threads():
                lfc = pseudobulk_lfc(cells, "perturbation", "ctrl")
            for r in ok:
                out[r.perturbation] = Measurement(lfc.loc[r.perturbation].to_numpy(dtype=np.float64))
        return out

    def singles(self) -> dict[str, np.ndarray]:
        if not self.pairs:
            return {}
        return {k: m.response for k, m in self.measure(self._single_labels).items() if m.ok}

    def control_expression(self) -> np.ndarray:
        if self._ctrl_expr is None:
            from perturbloop.responses import log_normalised

            with keep_torch_threads():
                X = log_normalised(self._ctrl).X
            self._ctrl_expr = (X.toarray() if hasattr(X, "toarray") else np.asarray(X)).astype(np.float64)
        return self._ctrl_expr

    def truth(self, labels: Sequence[str]) -> np.ndarray:
        need = [lab for lab in dict.fromkeys(labels) if lab not in self._truth]
        if need:
            with keep_torch_threads():
                self._truth.update(zip(need, self._truth_fn(need)))
        return np.stack([self._truth[lab] for lab in labels]) if len(labels) else np.zeros((0, len(self.genes)))

    def de_genes(self, labels: Sequence[str], n: int = TOP_DE) -> list[list[int]]:
        import pandas as pd

        from perturbloop.response_metrics import genes_to_idx
        from perturbloop.responses import top_de_genes

        key = f"{self.de_method}:{n}"
        if key not in self._de:
            self._de[key] = {} if self.de_method == "abs_lfc" else dict(_memo(
                ("de", id(self.adata), n, self.de_method),
                lambda: top_de_genes(self.adata, n, key="perturbation", control="ctrl", method=self.de_method)))
        lists = self._de[key]
        need = [lab for lab in labels if lab not in lists]
        if need:  # abs_lfc, or perturbations the t-test could not rank: largest |truth LFC|
            lists.update(top_de_genes(pd.DataFrame(self.truth(need), index=need, columns=self.genes), n))
        return genes_to_idx(self.genes, lists, labels)

    def expressed(self, n: int) -> list[int]:
        mean = self.control_expression().mean(0)
        return np.argsort(-mean, kind="stable")[:n].tolist()


_TRUTH_CACHE: dict[tuple, object] = {}


def _memo(key: tuple, build: Callable[[], object]):
    """`build()` once per `key` in this process (torch's thread count kept)."""
    if key not in _TRUTH_CACHE:
        with keep_torch_threads():
            _TRUTH_CACHE[key] = build()
    return _TRUTH_CACHE[key]


class PairFitnessWorld(OneReadoutWorld):
    """A `simulators.PairReplay` (Norman 2019 pair screen) seen as one-gene responses.

    The response of a pair is its measured `readout` (double fitness, or GI score); singles
    (known up front) are the single-gene fitnesses: the additive prior of a fitness readout, and
    features of either. `genes` is the one readout name.
    """

    def __init__(self, replay, readout: str = "fitness", name: str = "norman2019"):
        if readout not in ("fitness", "gi"):
            raise ConfigError(f"world.readout must be fitness or gi, got {readout!r}")
        self.replay = replay
        self.readout = readout
        self.name = name
        self.genes = self.readouts = [readout]
        self.candidates = list(replay.candidates)
        self._table = replay.pairs

    def measure(self, labels: Sequence[str]) -> dict[str, Measurement]:
        out: dict[str, Measurement] = {}
        for r in self.replay.run(list(labels)):  # a run's value is the objective's (noisy) measurement
            v = r.value if self.readout == self.replay.objective else getattr(r, self.readout)
            out[r.perturbation] = Measurement(np.array([float(v)])) if np.isfinite(v) \
                else Measurement.failed(f"no finite {self.readout} for this pair")
        return out

    def singles(self) -> dict[str, np.ndarray]:
        return {g: np.array([float(v)]) for g, v in self.replay.singles.items()}

    @property
    def offset_prior(self) -> bool:
        """Fitness has an additive prior (sum of singles); the GI score is already the deviation from it."""
        return self.readout == "fitness"

    def truth(self, labels: Sequence[str]) -> np.ndarray:
        return self._table.loc[list(labels), self.readout].to_numpy(dtype=np.float64).reshape(-1, 1)


def build_world(config: CampaignConfig, data_dir=None) -> ResponseWorld:
    """A fresh world for one campaign (labs keep per-perturbation cell cursors: never share one).

    The world's seed is `world.seed` for every campaign seed: all policies and seeds see the same
    cells for the same perturbation (paired comparisons); seeds vary the split and the models.
    """
    w = config.world
    pairs = config.design.space == "pairs"
    if w.kind == "contexts":  # a multi-context screen: (gene, context) pairs, one readout
        from simulators.context_replay import context_world

        return context_world(config, data_dir)
    if w.kind == "perturbseq":
        from simulators.perturbseq_replay import PerturbSeqReplay

        adata = _load_adata(w.dataset, str(data_dir) if data_dir else None, w.key, w.control)
        replay = PerturbSeqReplay(adata, "perturbation", "ctrl", cells_per_run=w.cells_per_run,
                                  failure_rate=w.failure_rate, min_cells=w.min_cells, seed=w.seed, **w.params)
        # the full-data pseudobulk does not depend on the replay's seed: once per AnnData
        table = _memo(("truth", id(adata), replay.min_cells), replay.truth_lfc)
        return CellWorld(replay, lambda labels: table.loc[labels].to_numpy(dtype=np.float64),
                         name=Path(w.dataset).stem, pairs=pairs, adata=adata, de_method=config.evaluation.de_method)
    if w.kind == "synthetic_grn":
        from simulators.synthetic_grn import SyntheticGRN

        try:
            grn = SyntheticGRN(seed=w.seed, cells_per_run=w.cells_per_run, failure_rate=w.failure_rate, **w.params)
        except TypeError as e:
            raise ConfigError(f"world.params: {e}") from None
        return CellWorld(grn, lambda labels: grn.true_lfc(labels).to_numpy(dtype=np.float64), name="synthetic_grn",
                         synthetic=True, pairs=pairs)
    if w.kind == "pair_fitness":
        from simulators.pair_replay import PairReplay

        if w.dataset not in (None, "norman2019", "norman2019_pairs"):
            raise ConfigError(f"world.dataset: pair_fitness replays norman2019_pairs, got {w.dataset!r}")
        replay = PairReplay.from_norman2019(data_dir, with_perturbseq_fits=False, seed=w.seed,
                                            objective=w.readout, **w.params)
        return PairFitnessWorld(replay, w.readout)
    if w.kind == "pair_screen":
        from simulators.pair_screen import PairScreenWorld

        return PairScreenWorld.from_file(w.dataset, hits=w.hits)
    raise ConfigError(f"world.kind: unknown world {w.kind!r}")


@lru_cache(maxsize=4)
def _load_adata(dataset: str, data_dir: str | None, key: str, control: str):
    from perturbloop.perturbseq import load_perturbseq

    return load_perturbseq(dataset, data_dir, key=key, control=control)
