"""Metrics of predicted transcriptome responses on held-out perturbations.

All responses are log-fold-changes vs control (`delta = log expr(pert) - log expr(ctrl)`), one
row per perturbation, one column per measured gene; prediction and truth share the gene order.

Singles (IterPert, Huang et al. 2024; GEARS, Roohani et al. 2024), averaged over perturbations:

- `mse_top20_de`: `mean_p mean_{g in DE_p} (yhat_pg - y_pg)^2`, `DE_p` = the perturbation's top-20
  differentially expressed genes (from the truth, never from the prediction). Differences of LFCs
  are differences of log expression, so this is GEARS' `mse_de`.
- `pearson_delta`: `mean_p corr_g(yhat_p, y_p)` over all genes (GEARS' `pearson_delta`: the
  correlation of predicted and true change from control).
- `pearson_delta_top20_de`: the same correlation over `DE_p` only.

Pairs (Ahlmann-Eltze, Huber & Anders 2025): `l2_top_expressed` = `mean_p ||yhat_p - y_p||_2`
over the `n` most expressed genes (1,000 in the paper; all genes when fewer are measured). The
additive baseline (sum of the two single LFCs) is scored the same way; `l2_ratio_vs_additive`
= model L2 / additive L2 (below 1 = better than additive).

Interactions (pairs): `interaction_pearson` = correlation of the predicted and true deviation
from the additive prediction, `yhat - add` vs `y - add`: per pair over genes (mean over pairs),
or, for a single-output phenotype (pair fitness, `g = 1`), across pairs (the genetic-interaction
score, Norman et al. 2019). An additive model scores 0 here by construction.

A constant row (zero variance, e.g. a mean predictor with one training row) has no correlation;
it scores 0 rather than NaN so curves stay finite (documented, and the truth is never constant).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from perturbloop.errors import ConfigError
from perturbloop.config import CampaignConfig

if TYPE_CHECKING:
    from perturbloop.design import Split
    from perturbloop.design_space import DesignSpace
    from simulators.response_worlds import ResponseWorld

TOP_DE = 20  # IterPert / GEARS
TOP_EXPRESSED = 1000  # Ahlmann-Eltze et al. 2025


def _as2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[None, :] if a.ndim == 1 else a


def _check(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = _as2d(pred), _as2d(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} must have the same shape "
                         "(perturbations x genes)")
    if not np.isfinite(pred).all():
        raise ValueError("prediction has non-finite values")
    return pred, truth


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`n` Pearson correlations between matching rows of `a` and `b` (`n x g`); 0 where a row is constant."""
    a, b = _as2d(a), _as2d(b)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    num = (a * b).sum(1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def mse_top_de(pred: np.ndarray, truth: np.ndarray, de_idx: Sequence[Sequence[int]]) -> float:
    """`mean_p mean_{g in DE_p} (pred - truth)^2` (see module docstring)."""
    pred, truth = _check(pred, truth)
    m = np.zeros((len(de_idx), truth.shape[1]), dtype=bool)
    for i, idx in enumerate(de_idx):
        m[i, list(idx)] = True
    if (m.sum(1) == 0).any():
        raise ValueError("every perturbation needs at least one DE gene")
    se = np.where(m, (pred - truth) ** 2, 0.0)
    return float((se.sum(1) / m.sum(1)).mean())


def pearson_delta(pred: np.ndarray, truth: np.ndarray, de_idx: Sequence[Sequence[int]] | None = None) -> float:
    """Mean over perturbations of the correlation of predicted and true LFC (all genes, or `de_idx` per row)."""
    pred, truth = _check(pred, truth)
    if de_idx is None:
        return float(rowwise_pearson(pred, truth).mean())
    return float(np.mean([rowwise_pearson(pred[i, list(idx)], truth[i, list(idx)])[0] for i, idx in enumerate(de_idx)]))


def l2_top_expressed(pred: np.ndarray, truth: np.ndarray, expressed_idx: Sequence[int] | None = None) -> float:
    """`mean_p ||pred_p - truth_p||_2` over the genes `expressed_idx` (all genes when None)."""
    pred, truth = _check(pred, truth)
    cols = slice(None) if expressed_idx is None else list(expressed_idx)
    return float(np.sqrt(((pred[:, cols] - truth[:, cols]) ** 2).sum(1)).mean())


def top_de_by_magnitude(truth: np.ndarray, n: int = TOP_DE) -> list[list[int]]:
    """Per row, the `n` genes with largest |truth LFC| (a stand-in when no test-based DE list is given)."""
    truth = _as2d(truth)
    n = min(n, truth.shape[1])
    return np.argsort(-np.abs(truth), axis=1, kind="stable")[:, :n].tolist()


def response_metrics(pred: np.ndarray, truth: np.ndarray, *, de_idx: Sequence[Sequence[int]] | None = None,
                     expressed_idx: Sequence[int] | None = None, additive: np.ndarray | None = None,
                     n_de: int = TOP_DE) -> dict[str, float]:
    """All metrics for one prediction of `n` held-out perturbations (`n x g` arrays).

    Returns `mse_top20_de`, `pearson_delta`, `pearson_delta_top20_de`, `l2_top_expressed`, `mse`
    (all genes); with `additive` (the additive prediction of the same rows) also `l2_additive`
    and `l2_ratio_vs_additive`. Single-output responses (`g = 1`, e.g. pair fitness) have no
    correlation across genes: only `mse`, `l2_top_expressed` (= mean |error|) and the additive
    comparison are returned.
    """
    pred, truth = _check(pred, truth)
    out: dict[str, float] = {"mse": float(((pred - truth) ** 2).mean())}
    if truth.shape[1] > 1:
        de = de_idx if de_idx is not None else top_de_by_magnitude(truth, n_de)
        out["mse_top20_de"] = mse_top_de(pred, truth, de)
        out["pearson_delta"] = pearson_delta(pred, truth)
        out["pearson_delta_top20_de"] = pearson_delta(pred, truth, de)
    out["l2_top_expressed"] = l2_top_expressed(pred, truth, expressed_idx)
    if additive is not None:
        add = l2_top_expressed(additive, truth, expressed_idx)
        out["l2_additive"] = add
        out["l2_ratio_vs_additive"] = out["l2_top_expressed"] / add if add > 0 else float("nan")
        out["interaction_pearson"] = interaction_pearson(pred, truth, additive)
    return out


def interaction_pearson(pred: np.ndarray, truth: np.ndarray, additive: np.ndarray) -> float:
    """Correlation of predicted and true interaction (`- additive`): per row over genes, or across rows if `g = 1`."""
    pred, truth = _check(pred, truth)
    additive = _as2d(additive)
    dp, dt = pred - additive, truth - additive
    if truth.shape[1] == 1:
        return float(rowwise_pearson(dp.T, dt.T)[0]) if truth.shape[0] > 1 else 0.0
    return float(rowwise_pearson(dp, dt).mean())


def genes_to_idx(genes: Sequence[str], lists: Mapping[str, Sequence[str]], labels: Sequence[str]) -> list[list[int]]:
    """Per label, the indices (in `genes`) of its gene list; genes outside `genes` are an error naming them."""
    pos = {g: i for i, g in enumerate(genes)}
    out = []
    for lab in labels:
        if lab not in lists:
            raise KeyError(f"no DE gene list for {lab!r}")
        missing = [g for g in lists[lab] if g not in pos]
        if missing:
            raise KeyError(f"DE genes of {lab!r} not measured: {', '.join(missing[:10])}")
        out.append([pos[g] for g in lists[lab]])
    return out


def program_weights(world: ResponseWorld, config: CampaignConfig) -> torch.Tensor:
    """`G` weights: the mean LFC of the program genes (sign by `direction`); pair fitness: the phenotype."""
    acq = config.acquisition
    sign = 1.0 if acq.direction == "up" else -1.0
    if not acq.program:
        if len(world.genes) == 1:
            return torch.tensor([sign], dtype=torch.float64)
        raise ConfigError("acquisition.program: list the program's genes")
    pos = {g: i for i, g in enumerate(world.genes)}
    idx = [pos.get(g.upper(), pos.get(g)) for g in acq.program]
    missing = [g for g, i in zip(acq.program, idx) if i is None]
    if missing:
        raise ConfigError(f"acquisition.program: genes not measured by the world: {', '.join(missing)}")
    w = torch.zeros(len(world.genes), dtype=torch.float64)
    w[idx] = sign / len(acq.program)
    return w


def program_flags(config: CampaignConfig) -> tuple[bool, bool]:
    """(interaction, absolute) of the program score. A pair screen's goal is the strongest genetic
    interactions of either sign: |GI|, or |fitness - additive| for a fitness readout."""
    a = config.acquisition
    if config.world.kind == "pair_fitness":
        return a.interaction or config.world.readout == "fitness", True
    return a.interaction, a.absolute


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


def prepare_evaluation(world: ResponseWorld, space: DesignSpace, config: CampaignConfig, split: Split,
                       w: torch.Tensor | None) -> Evaluation:
    test_idx = space.indices(split.test)
    truth = world.truth(split.test)
    de = world.de_genes(split.test, config.evaluation.top_de) if truth.shape[1] > 1 else None
    off = space.offset(test_idx)
    ev = Evaluation(split.test, test_idx, truth, de, world.expressed(config.evaluation.top_expressed),
                    None if off is None else off.cpu().numpy())
    if config.objective == "maximize" and w is not None:
        test = set(split.test)
        labels = [c for c in space.labels if c not in test]
        s = world.truth(labels) @ w.numpy()
        interaction, absolute = program_flags(config)
        off = space.offset(space.indices(labels)) if interaction else None
        if off is not None:
            s = s - off.cpu().numpy() @ w.numpy()
        if absolute:
            s = np.abs(s)
        ev.scores = dict(zip(labels, s.tolist()))
        n_hits = max(1, int(round(config.evaluation.hit_fraction * len(labels))))
        ev.hits = set(np.array(labels)[np.argsort(-s, kind="stable")[:n_hits]].tolist())
        if getattr(world, "hits", None) is not None:  # hits the world defines (a pair screen's --hits file)
            ev.hits = set(world.hits) - test
    return ev
