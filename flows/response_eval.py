"""Simulated response campaigns: learning curves of a response surrogate under active vs random picks.

The protocol (IterPert-style for singles, Ahlmann-Eltze-style scoring for pairs):

1. Per seed, a held-out test set (`test_fraction` of the candidates, never run) and `initial`
   random candidates; pair campaigns also measure every single gene first (the additive prior).
2. Round `t = 0..rounds`: fit the surrogate on everything observed, score it on the test set
   (metrics below), and, for `t < rounds`, let the policy pick `batch_size` candidates, which the
   world then measures. Failed runs are not trained on and not re-proposed.
3. Every round the baselines (`mean`, `linear`; `additive` for pairs) are fitted on the same
   observations and scored beside the model (`<metric>@<baseline>`), so a curve that does not beat
   them shows it.

Metrics (perturbloop.response_metrics): `mse_top20_de`, `pearson_delta`, `pearson_delta_top20_de`,
`l2_top_expressed` (+ `l2_additive`, `l2_ratio_vs_additive`, `interaction_pearson` for pairs), `mse`;
objective `maximize` adds `hit_ratio` (share of the top `hit_fraction` candidates by true score
measured so far) and `best_score`.

The pieces are the ones a live campaign needs, each behind a small interface so the LangGraph
agent can later take them over unchanged: a `ResponseWorld` (what the lab returns: LFC vectors
per label, via `measure`), a `DesignSpace` (perturbloop.pairs), a `ResponseSurrogate`
(surrogates.response) and a response policy (acquisition.response). `truth`, `de_genes` and
`expressed` are for scoring only; policies never see them.

Results: `{"protocol", "world", "results": [{"policy", "seed", "metrics": {name: [per round]},
"round_seconds", ...}]}` (the screen benchmark's schema with `world` for `screen`) plus a PNG.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from perturbloop.errors import ConfigError, PerturbloopError
from perturbloop.pairs import DesignSpace, PairSpace, SingleSpace
from perturbloop.response_config import ResponseCampaignConfig
from perturbloop.response_metrics import TOP_DE, response_metrics

PRIMARY_METRICS = ("mse_top20_de", "pearson_delta", "l2_top_expressed")  # plotted, in this order


# --- worlds -------------------------------------------------------------------------------------

class ResponseWorld(Protocol):
    """What a response campaign can ask of its lab, and what only its evaluation may see.

    Campaign side: `genes` (readout columns), `candidates` (labels it can run), `measure(labels)`
    (label -> LFC vector, or None for a failed run), `singles()` (pair worlds: the single-gene
    responses measured before pairs; {} otherwise), `control_expression()` (control cells,
    log-normalised, for expression features; None where there are no cells).
    Evaluation side: `truth(labels)` (`n x G`), `de_genes(labels, n)`, `expressed(n)`.
    """

    name: str
    synthetic: bool
    genes: list[str]
    candidates: list[str]

    def measure(self, labels: Sequence[str]) -> dict[str, np.ndarray | None]: ...

    def singles(self) -> dict[str, np.ndarray]: ...

    def control_expression(self) -> np.ndarray | None: ...

    def truth(self, labels: Sequence[str]) -> np.ndarray: ...

    def de_genes(self, labels: Sequence[str], n: int = TOP_DE) -> list[list[int]]: ...

    def expressed(self, n: int) -> list[int]: ...


class _keep_torch_threads:
    """scanpy's preprocessing (numba, OpenMP) resets the calling thread's OpenMP thread count, which is
    torch's too: restore it after every summarisation, or the surrogate fits that follow run with
    threads the caller did not ask for (on 2 shared cores: several times slower)."""

    def __enter__(self) -> None:
        self.n = torch.get_num_threads()

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.n)


def _dense(m) -> np.ndarray:
    return m.toarray() if hasattr(m, "toarray") else np.asarray(m)


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
        self.genes = [str(g) for g in lab.genes]
        offered = list(lab.perturbations)
        self.pairs = pairs
        self.candidates = [p for p in offered if p.count("+") == 1] if pairs else [p for p in offered if "+" not in p]
        self._single_labels = [p for p in offered if "+" not in p]
        self._ctrl = lab.control()
        self._ctrl_expr: np.ndarray | None = None
        self._truth: dict[str, np.ndarray] = {}
        self._de: dict[str, list[str]] = {}

    @classmethod
    def from_replay(cls, replay, adata=None, *, name: str, de_method: str = "t-test", pairs: bool = False) -> CellWorld:
        table = _cached_truth(replay, adata)
        return cls(replay, lambda labels: table.loc[labels].to_numpy(dtype=np.float64), name=name, pairs=pairs,
                   adata=adata, de_method=de_method)

    @classmethod
    def from_grn(cls, grn, *, name: str = "synthetic_grn", pairs: bool = True) -> CellWorld:
        return cls(grn, lambda labels: grn.true_lfc(labels).to_numpy(dtype=np.float64), name=name, synthetic=True,
                   pairs=pairs)

    def measure(self, labels: Sequence[str]) -> dict[str, np.ndarray | None]:
        import anndata as ad

        from perturbloop.responses import pseudobulk_lfc

        readings = self.lab.run(list(labels))
        ok = [r for r in readings if r.ok]
        out: dict[str, np.ndarray | None] = {r.perturbation: None for r in readings}
        if ok:
            cells = ad.concat([self._ctrl, *[r.cells for r in ok]], join="outer", merge="first")
            with _keep_torch_threads():
                lfc = pseudobulk_lfc(cells, "perturbation", "ctrl")
            for r in ok:
                out[r.perturbation] = lfc.loc[r.perturbation].to_numpy(dtype=np.float64)
        return out

    def singles(self) -> dict[str, np.ndarray]:
        if not self.pairs:
            return {}
        got = self.measure(self._single_labels)
        return {k: v for k, v in got.items() if v is not None}

    def control_expression(self) -> np.ndarray:
        if self._ctrl_expr is None:
            from perturbloop.responses import log_normalised

            with _keep_torch_threads():
                self._ctrl_expr = _dense(log_normalised(self._ctrl).X).astype(np.float64)
        return self._ctrl_expr

    def truth(self, labels: Sequence[str]) -> np.ndarray:
        need = [lab for lab in dict.fromkeys(labels) if lab not in self._truth]
        if need:
            with _keep_torch_threads():
                self._truth.update(zip(need, self._truth_fn(need)))
        return np.stack([self._truth[lab] for lab in labels]) if len(labels) else np.zeros((0, len(self.genes)))

    def de_genes(self, labels: Sequence[str], n: int = TOP_DE) -> list[list[int]]:
        import pandas as pd

        from perturbloop.response_metrics import genes_to_idx
        from perturbloop.responses import top_de_genes

        key = f"{self.de_method}:{n}"
        if key not in self._de:
            if self.de_method == "abs_lfc":
                self._de[key] = {}
            else:
                self._de[key] = _cached_de(self.adata, n, self.de_method)
        lists = self._de[key]
        need = [lab for lab in labels if lab not in lists]
        if need:  # abs_lfc, or perturbations the t-test could not rank: largest |truth LFC|
            lists.update(top_de_genes(pd.DataFrame(self.truth(need), index=need, columns=self.genes), n))
        return genes_to_idx(self.genes, lists, labels)

    def expressed(self, n: int) -> list[int]:
        mean = self.control_expression().mean(0)
        return np.argsort(-mean, kind="stable")[:n].tolist()


_TRUTH_CACHE: dict[tuple, object] = {}


def _cached_truth(replay, adata):
    """The replay's full-data pseudobulk (it does not depend on the replay's seed): once per AnnData."""
    if adata is None:
        return replay.truth_lfc()
    key = ("truth", id(adata), replay.min_cells)
    if key not in _TRUTH_CACHE:
        with _keep_torch_threads():
            _TRUTH_CACHE[key] = replay.truth_lfc()
    return _TRUTH_CACHE[key]


def _cached_de(adata, n: int, method: str) -> dict[str, list[str]]:
    from perturbloop.responses import top_de_genes

    key = ("de", id(adata), n, method)
    if key not in _TRUTH_CACHE:
        with _keep_torch_threads():
            _TRUTH_CACHE[key] = top_de_genes(adata, n, key="perturbation", control="ctrl", method=method)
    return dict(_TRUTH_CACHE[key])


class PairFitnessWorld:
    """A `simulators.PairReplay` (Norman 2019 pair screen) seen as one-gene responses.

    The response of a pair is its measured `readout` (double fitness, or GI score); singles
    (known up front) are the single-gene fitnesses: the additive prior of a fitness readout, and
    features of either. `genes` is the one readout name.
    """

    synthetic = False

    def __init__(self, replay, readout: str = "fitness", name: str = "norman2019"):
        if readout not in ("fitness", "gi"):
            raise ConfigError(f"world.readout must be fitness or gi, got {readout!r}")
        self.replay = replay
        self.readout = readout
        self.name = name
        self.genes = [readout]
        self.candidates = list(replay.candidates)
        self._table = replay.pairs

    def measure(self, labels: Sequence[str]) -> dict[str, np.ndarray | None]:
        out: dict[str, np.ndarray | None] = {}
        for r in self.replay.run(list(labels)):
            v = getattr(r, self.readout) if r.error is None else None
            if v is not None and self.replay.noise_sd > 0 and self.readout == self.replay.objective:
                v = r.value  # the noisy measurement
            out[r.perturbation] = None if v is None or not np.isfinite(v) else np.array([float(v)])
        return out

    def singles(self) -> dict[str, np.ndarray]:
        return {g: np.array([float(v)]) for g, v in self.replay.singles.items()}

    @property
    def offset_prior(self) -> bool:
        """Fitness has an additive prior (sum of singles); the GI score is already the deviation from it."""
        return self.readout == "fitness"

    def control_expression(self) -> None:
        return None

    def truth(self, labels: Sequence[str]) -> np.ndarray:
        return self._table.loc[list(labels), self.readout].to_numpy(dtype=np.float64).reshape(-1, 1)

    def de_genes(self, labels: Sequence[str], n: int = TOP_DE) -> list[list[int]]:
        return [[0] for _ in labels]

    def expressed(self, n: int) -> list[int]:
        return [0]


# --- design space ---------------------------------------------------------------------------------

def expression_pca_features(genes: Sequence[str], readout: Sequence[str], ctrl_expr: np.ndarray,
                            k: int) -> tuple[np.ndarray, list[str]]:
    """Each perturbed gene's loadings on the top-`k` PCs of control-cell expression (genes x PCs, scaled
    by the PC's sd), plus a `expr_missing` flag for genes not measured (zeros)."""
    X = ctrl_expr - ctrl_expr.mean(0)
    _, s, Vt = np.linalg.svd(X, full_matrices=False)
    k = min(k, Vt.shape[0])
    load = (Vt[:k].T * (s[:k] / np.sqrt(max(X.shape[0] - 1, 1))))  # G x k
    pos = {g: i for i, g in enumerate(readout)}
    out = np.zeros((len(genes), k + 1))
    for r, g in enumerate(genes):
        if g in pos:
            out[r, :k] = load[pos[g]]
        else:
            out[r, k] = 1.0
    return out, [f"expr_pc{j}" for j in range(k)] + ["expr_missing"]


def gene_feature_matrix(genes: Sequence[str], world: ResponseWorld, config: ResponseCampaignConfig,
                        data_dir=None) -> tuple[torch.Tensor, list[str]]:
    """`n x d` standardised gene features of the perturbable genes (design.features)."""
    with _keep_torch_threads():  # scikit-learn's SVD (GO embedding) may reset OpenMP threads too
        return _gene_feature_matrix(genes, world, config, data_dir)


def _gene_feature_matrix(genes: Sequence[str], world: ResponseWorld, config: ResponseCampaignConfig,
                         data_dir=None) -> tuple[torch.Tensor, list[str]]:
    blocks, names = [], []
    for f in config.design.features:
        if f == "none":
            continue
        if f == "go":
            if world.synthetic:
                raise ConfigError("design.features: 'go' needs real gene symbols; a synthetic world has none "
                                  "(use expression_pca)")
            from perturbloop.features import go_embedding

            universe = list(dict.fromkeys([*genes, *world.genes]))
            emb, n = go_embedding(universe, data_dir=data_dir, dims=config.design.go_dims)
            blocks.append(emb[: len(genes)])
            names += n
        elif f == "expression_pca":
            ctrl = world.control_expression()
            if ctrl is None:
                raise ConfigError("design.features: 'expression_pca' needs control cells; this world has none")
            m, n = expression_pca_features(genes, world.genes, ctrl, config.design.expression_pcs)
            blocks.append(m)
            names += n
    X = np.hstack(blocks) if blocks else np.zeros((len(genes), 0))
    sd = X.std(0)
    X = (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)
    return torch.from_numpy(X).to(torch.float64), names


def build_space(world: ResponseWorld, config: ResponseCampaignConfig, data_dir=None) -> DesignSpace:
    """The design space of a response campaign over the world's candidates (see perturbloop.pairs)."""
    from perturbloop.device import default_device

    cands = list(world.candidates)
    if config.design.genes:
        keep = {g.upper() for g in config.design.genes}
        cands = [c for c in cands if set(c.split("+")) <= keep]
    if config.design.space == "genes":
        singles = [c for c in cands if "+" not in c]
        if not singles:
            raise ConfigError("design.space = 'genes' but the world offers no single-gene perturbations")
        X, names = gene_feature_matrix(singles, world, config, data_dir)
        return SingleSpace(singles, X, names)
    pairs = [c for c in cands if c.count("+") == 1]
    if not pairs:
        raise ConfigError("design.space = 'pairs' but the world offers no gene pairs")
    if config.design.max_pairs and len(pairs) > config.design.max_pairs:
        rng = np.random.default_rng([config.seed, 7])
        pairs = sorted(rng.choice(pairs, config.design.max_pairs, replace=False).tolist())
    genes = sorted({g for p in pairs for g in p.split("+")})
    X, _ = gene_feature_matrix(genes, world, config, data_dir)
    return PairSpace(genes, X, pairs, pooling=config.design.pooling, prior_rank=config.design.prior_rank,
                     use_offset=getattr(world, "offset_prior", True), device=default_device())


# --- one campaign ---------------------------------------------------------------------------------

@dataclass
class Split:
    test: list[str]
    initial: list[str]


def split_candidates(space: DesignSpace, config: ResponseCampaignConfig, seed: int) -> Split:
    """Held-out test perturbations and the initial random design of one seed (shared by all policies)."""
    n = len(space)
    rng = np.random.default_rng([config.seed, seed, 11])
    n_test = max(1, int(round(config.evaluation.test_fraction * n)))
    if config.evaluation.max_test:
        n_test = min(n_test, config.evaluation.max_test)
    if n_test + config.initial >= n:
        raise ConfigError(f"initial ({config.initial}) + test ({n_test}) leave nothing to pick among {n} candidates")
    perm = rng.permutation(n)
    return Split(space.labels(np.sort(perm[:n_test])), space.labels(np.sort(perm[n_test:n_test + config.initial])))


def program_weights(world: ResponseWorld, config: ResponseCampaignConfig) -> torch.Tensor:
    """`G` weights: the mean LFC of the program genes (sign by `direction`); pair fitness: the phenotype."""
    acq = config.acquisition
    sign = 1.0 if acq.direction == "up" else -1.0
    if not acq.program:
        if len(world.genes) == 1:
            return torch.tensor([sign], dtype=torch.float64)
        raise ConfigError("acquisition.program: list the program's genes")
    pos = {g: i for i, g in enumerate(world.genes)}
    missing = [g for g in acq.program if g.upper() not in pos and g not in pos]
    if missing:
        raise ConfigError(f"acquisition.program: genes not measured by the world: {', '.join(missing)}")
    w = torch.zeros(len(world.genes), dtype=torch.float64)
    for g in acq.program:
        w[pos.get(g.upper(), pos.get(g))] = sign / len(acq.program)
    return w


def program_flags(config: ResponseCampaignConfig) -> tuple[bool, bool]:
    """(interaction, absolute) of the program score. A pair screen's goal is the strongest genetic
    interactions of either sign: |GI|, or |fitness - additive| for a fitness readout."""
    a = config.acquisition
    if config.world.kind == "pair_fitness":
        return a.interaction or config.world.readout == "fitness", True
    return a.interaction, a.absolute


def make_policy(kind: str, config: ResponseCampaignConfig, world: ResponseWorld, seed: int):
    from acquisition.response import make_response_policy

    a = config.acquisition
    if kind == "program":
        interaction, absolute = program_flags(config)
        return make_response_policy(kind, weights=program_weights(world, config), beta=a.beta, interaction=interaction,
                                    absolute=absolute, max_per_gene=a.max_per_gene, seed=seed)
    return make_response_policy(kind, seed=seed, max_per_gene=a.max_per_gene)


def model_factory(config: ResponseCampaignConfig, kind: str | None = None) -> Callable[[int], object]:
    """`seed -> ResponseSurrogate`: the config's surrogate, or (`kind` given) a baseline with its own
    defaults, so a baseline is the same whatever model it is shown beside."""
    from surrogates import make_response_surrogate

    if kind is not None and kind != config.surrogate.kind:
        kw: dict = {}
    else:
        kind = config.surrogate.kind
        kw = config.surrogate.kwargs() if kind in ("ensemble", "gp") else {}
        if kind == "linear":
            kw = {"rank": config.surrogate.rank}

    def make(seed: int):
        return make_response_surrogate(kind, **({**kw, "seed": seed} if kind == "ensemble" else kw))

    return make


@dataclass
class CampaignRun:
    policy: str
    seed: int
    metrics: dict[str, list[float]] = field(default_factory=dict)
    round_seconds: list[float] = field(default_factory=list)
    n_observed: list[int] = field(default_factory=list)
    picks: list[list[str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add(self, values: Mapping[str, float], suffix: str = "") -> None:
        for k, v in values.items():
            self.metrics.setdefault(k + suffix, []).append(float(v))

    def row(self) -> dict:
        return {"policy": self.policy, "seed": self.seed, "metrics": self.metrics, "round_seconds": self.round_seconds,
                "n_observed": self.n_observed, "picks": self.picks, "failed": self.failed}


def _fit(model, space: DesignSpace, observed: Mapping[str, np.ndarray]):
    idx = space.indices(list(observed))
    X = space.features(idx).cpu()
    off = space.offset(idx)
    Y = torch.from_numpy(np.stack(list(observed.values()))).to(torch.float64)
    model.fit(X, Y, None if off is None else off.cpu())
    return model


def _predict(model, space: DesignSpace, idx: torch.Tensor) -> np.ndarray:
    off = space.offset(idx)
    return model.posterior(space.features(idx).cpu(), None if off is None else off.cpu()).mean.numpy()


@dataclass
class Evaluation:
    """What scoring one seed needs (computed once, shared by every policy of that seed)."""

    test: list[str]
    test_idx: torch.Tensor
    truth: np.ndarray
    de: list[list[int]] | None
    expressed: list[int]
    additive: np.ndarray | None
    hits: set[str] = field(default_factory=set)
    scores: dict[str, float] = field(default_factory=dict)


def prepare_singles(world: ResponseWorld, space: DesignSpace) -> dict[str, np.ndarray]:
    """Pair spaces: measure the singles (round 0) and give the space its additive prior."""
    if space.kind != "pairs":
        return {}
    singles = world.singles()
    S = np.full((len(space.genes), len(world.genes)), np.nan)
    pos = {g: i for i, g in enumerate(space.genes)}
    for lab, v in singles.items():
        if lab in pos:
            S[pos[lab]] = v
    space.set_singles(torch.from_numpy(S))
    return singles


def prepare_evaluation(world: ResponseWorld, space: DesignSpace, config: ResponseCampaignConfig, split: Split,
                       w: torch.Tensor | None) -> Evaluation:
    test_idx = space.indices(split.test)
    truth = world.truth(split.test)
    de = world.de_genes(split.test, config.evaluation.top_de) if truth.shape[1] > 1 else None
    off = space.offset(test_idx)
    ev = Evaluation(split.test, test_idx, truth, de, world.expressed(config.evaluation.top_expressed),
                    None if off is None else off.cpu().numpy())
    if config.objective == "maximize" and w is not None:
        labels = [c for c in space.labels(range(len(space))) if c not in set(split.test)]
        T = world.truth(labels)
        s = T @ w.numpy()
        interaction, absolute = program_flags(config)
        off = space.offset(space.indices(labels)) if interaction else None
        if off is not None:
            s = s - off.cpu().numpy() @ w.numpy()
        if absolute:
            s = np.abs(s)
        ev.scores = dict(zip(labels, s.tolist()))
        n_hits = max(1, int(round(config.evaluation.hit_fraction * len(labels))))
        ev.hits = set(np.array(labels)[np.argsort(-s, kind="stable")[:n_hits]].tolist())
    return ev


def run_campaign(world: ResponseWorld, space: DesignSpace, policy, make_model: Callable[[int], object], *,
                 split: Split, ev: Evaluation, rounds: int, batch_size: int, seed: int,
                 baselines: Sequence[str] = ("mean", "linear"), make_baseline: Callable[[str], object] | None = None,
                 policy_label: str | None = None, on_round: Callable[[int, dict], None] | None = None) -> CampaignRun:
    """One simulated response campaign (module docstring); the world must be fresh for this campaign."""
    run = CampaignRun(policy_label or policy.name, seed)
    observed: dict[str, np.ndarray] = {}
    failed: list[str] = []

    def measure(labels: Sequence[str]) -> None:
        for lab, v in world.measure(labels).items():
            if v is None:
                failed.append(lab)
            else:
                observed[lab] = v

    measure(split.initial)
    run.picks.append(list(split.initial))
    for t in range(rounds + 1):
        t0 = time.perf_counter()
        model = _fit(make_model(seed * 1000 + t), space, observed) if observed else None
        fit_s = time.perf_counter() - t0
        if model is not None:
            run.add(response_metrics(_predict(model, space, ev.test_idx), ev.truth, de_idx=ev.de,
                                     expressed_idx=ev.expressed, additive=ev.additive))
            for b in baselines:
                if b == "additive" and ev.additive is None:  # singles, or a response that is already a deviation (GI)
                    continue
                bm = _fit(make_baseline(b) if make_baseline else _baseline(b), space, observed)
                run.add(response_metrics(_predict(bm, space, ev.test_idx), ev.truth, de_idx=ev.de,
                                         expressed_idx=ev.expressed), f"@{b}")
        if ev.hits:
            run.add({"hit_ratio": len(ev.hits & set(observed)) / len(ev.hits),
                     "best_score": max((ev.scores.get(k, -np.inf) for k in observed), default=float("nan"))})
        run.n_observed.append(len(observed))
        if on_round is not None:
            on_round(t, {k: v[-1] for k, v in run.metrics.items()})
        if t == rounds:
            break
        t1 = time.perf_counter()
        proposal = policy.select(model, space, observed, batch_size, [*failed, *split.test])
        run.round_seconds.append(fit_s + time.perf_counter() - t1)
        seen = set(observed) | set(failed) | set(split.test)
        if any(lab in seen for lab in proposal.labels):
            raise PerturbloopError(f"policy {policy.name} re-proposed measured, failed or held-out perturbations")
        run.picks.append(proposal.labels)
        measure(proposal.labels)
    run.failed = failed
    return run


def _baseline(kind: str):
    from surrogates import make_response_surrogate

    return make_response_surrogate(kind)


# --- worlds from a config -------------------------------------------------------------------------

def build_world(config: ResponseCampaignConfig, data_dir=None) -> ResponseWorld:
    """A fresh world for one campaign (labs keep per-perturbation cell cursors: never share one).

    The world's seed is `world.seed` for every campaign seed: all policies and seeds see the same
    cells for the same perturbation (paired comparisons); seeds vary the split and the models.
    """
    w = config.world
    pairs = config.design.space == "pairs"
    if w.kind == "perturbseq":
        from simulators.perturbseq_replay import PerturbSeqReplay

        adata = _load_adata(w.dataset, str(data_dir) if data_dir else None, w.key, w.control)
        replay = PerturbSeqReplay(adata, "perturbation", "ctrl", cells_per_run=w.cells_per_run,
                                  failure_rate=w.failure_rate, min_cells=w.min_cells, seed=w.seed, **w.params)
        return CellWorld.from_replay(replay, adata, name=Path(w.dataset).stem, de_method=config.evaluation.de_method,
                                     pairs=pairs)
    if w.kind == "synthetic_grn":
        from simulators.synthetic_grn import SyntheticGRN

        try:
            grn = SyntheticGRN(seed=w.seed, cells_per_run=w.cells_per_run, failure_rate=w.failure_rate, **w.params)
        except TypeError as e:
            raise ConfigError(f"world.params: {e}") from None
        return CellWorld.from_grn(grn, name="synthetic_grn", pairs=pairs)
    if w.kind == "pair_fitness":
        from simulators.pair_replay import PairReplay

        if w.dataset not in (None, "norman2019", "norman2019_pairs"):
            raise ConfigError(f"world.dataset: pair_fitness replays norman2019_pairs, got {w.dataset!r}")
        replay = PairReplay.from_norman2019(data_dir, with_perturbseq_fits=False, seed=w.seed,
                                            objective=w.readout, **w.params)
        return PairFitnessWorld(replay, w.readout)
    raise ConfigError(f"world.kind: unknown world {w.kind!r}")


@lru_cache(maxsize=4)
def _load_adata(dataset: str, data_dir: str | None, key: str, control: str):
    from perturbloop.perturbseq import load_perturbseq

    return load_perturbseq(dataset, data_dir, key=key, control=control)


# --- sweeps ---------------------------------------------------------------------------------------

def campaign_for(config: ResponseCampaignConfig, policy_kind: str, seed: int, data_dir=None,
                 space: DesignSpace | None = None) -> dict:
    """One (policy, seed) campaign from a config: a fresh world, the seed's split, the results row."""
    threads = int(os.environ.get("PERTURBLOOP_TASK_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    world = build_world(config, data_dir)
    space = space if space is not None else build_space(world, config, data_dir)
    prepare_singles(world, space)
    split = split_candidates(space, config, seed)
    w = program_weights(world, config) if config.objective == "maximize" else None
    ev = prepare_evaluation(world, space, config, split, w)
    baselines = list(config.evaluation.baselines)
    if ev.additive is not None and "additive" not in baselines:
        baselines.append("additive")
    baselines = [b for b in baselines if b != config.surrogate.kind]
    run = run_campaign(world, space, make_policy(policy_kind, config, world, seed), model_factory(config),
                       split=split, ev=ev, rounds=config.rounds, batch_size=config.batch_size, seed=seed,
                       baselines=baselines, make_baseline=lambda k: model_factory(config, k)(seed),
                       policy_label=policy_kind)
    row = run.row()
    row["n_test"] = len(split.test)
    row["n_candidates"] = len(space)
    return row


def response_sweep(config: ResponseCampaignConfig, data_dir=None, *, policies: Sequence[str] | None = None,
                   seeds: int | None = None) -> list[dict]:
    """Every policy x seed in this process, rows in (policy, seed) order (tests, benchmarks/)."""
    policies = list(policies or config.evaluation.policies)
    seeds = seeds or config.evaluation.seeds
    return [campaign_for(config, p, s, data_dir) for p in policies for s in range(seeds)]


def run_response_sweep(config: ResponseCampaignConfig, data_dir=None, *, runner: str = "local",
                       address: str | None = None) -> list[dict]:
    """Every policy x seed as tasks of one Prefect flow (thread pool or Dask), like the screen benchmark;
    `runner="inline"`: in this process, no Prefect (quick runs)."""
    if runner == "inline":
        return response_sweep(config, data_dir)
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from flows.evaluation import _task_runner

    build_world(config, data_dir)  # fail fast on bad input, before any task starts
    campaign_task = task(name="response-campaign", cache_policy=NO_CACHE)(campaign_for)

    @flow(name="perturbloop-response-benchmark", task_runner=_task_runner(runner, address), log_prints=False)
    def sweep() -> list[dict]:
        futures = [campaign_task.submit(config, p, s, data_dir)
                   for p in config.evaluation.policies for s in range(config.evaluation.seeds)]
        return [f.result() for f in futures]

    return sweep()


def protocol_of(config: ResponseCampaignConfig, rows: Sequence[dict]) -> dict:
    baselines = sorted({k.split("@", 1)[1] for r in rows for k in r["metrics"] if "@" in k})
    return {"name": "response-campaign (IterPert-style learning curves)", "objective": config.objective,
            "world": config.world.model_dump(), "space": config.design.space, "initial": config.initial,
            "rounds": config.rounds, "batch": config.batch_size, "seeds": config.evaluation.seeds,
            "test_fraction": config.evaluation.test_fraction, "n_test": rows[0]["n_test"] if rows else None,
            "n_candidates": rows[0]["n_candidates"] if rows else None, "surrogate": config.surrogate.model_dump(),
            "baselines": baselines, "features": list(config.design.features),
            "synthetic": config.world.kind == "synthetic_grn", "top_de": config.evaluation.top_de,
            "top_expressed": config.evaluation.top_expressed, "de_method": config.evaluation.de_method}


def summarise_response(rows: Sequence[dict]) -> list[dict]:
    """Per policy: mean and sd over seeds of every metric per round, and seconds per round."""
    out = []
    for label in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == label]
        names = list(dict.fromkeys(k for r in rs for k in r["metrics"]))
        mean, sd = {}, {}
        for k in names:
            a = np.array([r["metrics"][k] for r in rs if k in r["metrics"]], dtype=float)
            mean[k], sd[k] = np.nanmean(a, 0).tolist(), np.nanstd(a, 0).tolist()
        secs = [s for r in rs for s in r["round_seconds"]]
        out.append({"policy": label, "seeds": len(rs), "mean": mean, "sd": sd,
                    "round_seconds_mean": float(np.mean(secs)) if secs else 0.0,
                    "round_seconds_max": float(np.max(secs)) if secs else 0.0})
    return out


def write_response_results(path: str | Path, protocol: dict, world: str, rows: list[dict],
                           metrics: Sequence[str] | None = None) -> tuple[Path, Path]:
    """`results.json` and a PNG beside it: one panel per metric, each policy's mean curve (+- sd over
    seeds) with the baselines (fitted on the same observations) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"protocol": protocol, "world": world, "results": rows}, indent=1))
    summary = summarise_response(rows)
    available = set(summary[0]["mean"]) if summary else set()
    metrics = [m for m in (metrics or PRIMARY_METRICS) if m in available]
    if not metrics:
        metrics = [m for m in ("mse", "hit_ratio") if m in available]
    if protocol.get("objective") == "maximize" and "hit_ratio" in available and "hit_ratio" not in metrics:
        metrics = [*metrics, "hit_ratio"]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.6 * max(len(metrics), 1), 3.8), dpi=110, squeeze=False)
    ref = next((s["policy"] for s in summary if s["policy"] == "random"), summary[0]["policy"] if summary else None)
    for ax, m in zip(axes[0], metrics):
        lo, hi = np.inf, -np.inf
        for s in summary:
            ys, sd = np.array(s["mean"][m]), np.array(s["sd"][m])
            lo, hi = min(lo, float((ys - sd).min())), max(hi, float((ys + sd).max()))
        span = max(hi - lo, 1e-12)
        for s in summary:
            ys, sd = np.array(s["mean"][m]), np.array(s["sd"][m])
            n_obs = np.mean([r["n_observed"] for r in rows if r["policy"] == s["policy"]], axis=0)
            xs = n_obs[: len(ys)]
            line, = ax.plot(xs, ys, marker="o", ms=3, label=f"{s['policy']} ({protocol['surrogate']['kind']})")
            ax.fill_between(xs, ys - sd, ys + sd, alpha=0.15, color=line.get_color())
            if s["policy"] == ref:  # baselines fitted on the reference (random) policy's observations
                for b in protocol.get("baselines", []):
                    key = f"{m}@{b}"
                    if key not in s["mean"]:
                        continue
                    yb = np.array(s["mean"][key][: len(xs)])
                    if yb.min() > hi + 2 * span or yb.max() < lo - 2 * span:  # far off: name it, keep the scale
                        ax.plot([], [], ls="--", lw=1, label=f"{b} baseline: {yb[-1]:.3g} (off scale)")
                        continue
                    ax.plot(xs, yb, ls="--", lw=1, label=f"{b} baseline ({ref} picks)")
        ax.set_title(m)
        ax.set_xlabel("pairs measured (all singles measured first)" if protocol.get("space") == "pairs"
                      else "perturbations measured")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    title = f"{world}: {protocol['rounds']} x {protocol['batch']} after {protocol['initial']} initial, {protocol['seeds']} seeds"
    if protocol.get("synthetic"):
        title += " (SYNTHETIC world)"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png = path.with_suffix(".png")
    fig.savefig(png)
    plt.close(fig)
    return path, png


HIGHER_IS_BETTER = ("pearson", "hit_ratio", "best_score")


def higher_is_better(metric: str) -> bool:
    return any(metric.startswith(p) or p in metric for p in HIGHER_IS_BETTER)


def table_metrics(rows: Sequence[dict]) -> list[str]:
    """Metrics shown in tables: the primary ones present (+ interaction for pairs, hit ratio for maximize)."""
    have = set(rows[0]["metrics"]) if rows else set()
    order = [*PRIMARY_METRICS, "interaction_pearson", "mse", "hit_ratio"]
    out = [m for m in order if m in have]
    if "mse_top20_de" in have:
        out = [m for m in out if m != "mse"]
    return out


TIE = 0.01  # within 1% of the best baseline (relative) is reported as a tie, not a win


def beats_baselines(metric: str, value: float, baselines: Mapping[str, float]) -> bool | str | None:
    """True / False / "tie" (within `TIE` of the best baseline) / None (no baselines)."""
    if not baselines:
        return None
    hib = higher_is_better(metric)
    best = max(baselines.values()) if hib else min(baselines.values())
    if abs(value - best) <= TIE * max(abs(best), 1e-12):
        return "tie"
    return bool(value > best) if hib else bool(value < best)


def final_table(rows: Sequence[dict]) -> list[dict]:
    """Per policy and metric: the model's value after the last round (mean +- sd over seeds), after
    round 0, and each baseline's after the last round (fitted on the same policy's observations),
    with whether the model beats every baseline (`beats_baselines`)."""
    out = []
    summary = summarise_response(rows)
    for s in summary:
        for m in table_metrics(rows):
            base = {k.split("@", 1)[1]: v[-1] for k, v in s["mean"].items() if k.startswith(m + "@")}
            if m == "l2_top_expressed" and "l2_additive" in s["mean"]:
                base.setdefault("additive", s["mean"]["l2_additive"][-1])
            final = s["mean"][m][-1]
            beats = beats_baselines(m, final, base)
            out.append({"policy": s["policy"], "metric": m, "first": s["mean"][m][0], "final": final,
                        "final_sd": s["sd"][m][-1], "baselines": base, "beats_baselines": beats,
                        "round_seconds_mean": s["round_seconds_mean"]})
    return out


def response_table(name: str, protocol: dict, rows: Sequence[dict]):
    """A rich Table of `final_table` (the CLI's summary)."""
    from rich.table import Table

    fin = final_table(rows)
    baselines = list(dict.fromkeys(b for r in fin for b in r["baselines"]))
    t = Table(title=f"{name}: {protocol['initial']} initial + {protocol['rounds']} x {protocol['batch']}, "
                    f"{protocol['seeds']} seeds, surrogate {protocol['surrogate']['kind']}, {protocol['n_test']} held out"
                    + (" [SYNTHETIC]" if protocol.get("synthetic") else ""), title_justify="left")
    for col in ("policy", "metric", "round 0", "final (model)", *[f"final ({b})" for b in baselines], "beats baselines",
                "s/round"):
        t.add_column(col, justify="right")
    for r in fin:
        t.add_row(r["policy"], r["metric"] + (" ^" if higher_is_better(r["metric"]) else " v"), f"{r['first']:.4f}",
                  f"{r['final']:.4f} +- {r['final_sd']:.4f}",
                  *[f"{r['baselines'][b]:.4f}" if b in r["baselines"] else "-" for b in baselines],
                  {True: "yes", False: "NO", None: "-", "tie": "tie"}[r["beats_baselines"]], f"{r['round_seconds_mean']:.2f}")
    return t
