"""Scores of the two learning objectives across timepoints (issue 12, objectives c and d); truth is for scoring only.

(c) *The regulator x time matrix*: a test set of genes, one timepoint of each held out (never offered), the others
    known; the error of the model's posterior mean on the held-out pairs, per timepoint, as
    `NRMSE_c = sqrt(mean_g (mu_gc - s_gc)^2) / sd_g(s_gc)` over the test genes held out at `c` (1 = no better than
    predicting the mean), beside the Pearson correlation of `mu` and `s` there.
(d) *Context-specific regulators*: gene `g` is specific when it is strong at one timepoint `a`
    (`|s_ga|` in the top `strong` fraction there) and weak at another `b` (`|s_gb|` below the `weak` quantile
    there); it is *found* once measured at some such strong `a` and weak `b` (both needed to tell).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STRONG_FRACTION = 0.05  # (d): strong = top 5% by |score| at a timepoint, as a hit in objectives (a) and (b)
WEAK_QUANTILE = 0.5  # (d): weak = |score| below the median at another timepoint


def heldout_design(measured: np.ndarray, n_test: int, rng: np.random.Generator) -> np.ndarray:
    """(c): `G x C` bool, True at the one held-out timepoint of each of `n_test` genes drawn among genes measured at
    every timepoint (`measured`, `G x C`); held-out timepoints cycle over the contexts so each gets ~`n_test / C`."""
    full = np.flatnonzero(measured.all(1))
    if len(full) < n_test:
        raise ValueError(f"only {len(full)} genes are measured at every timepoint; {n_test} test genes asked")
    genes = rng.choice(full, size=n_test, replace=False)
    out = np.zeros(measured.shape, bool)
    out[genes, np.arange(n_test) % measured.shape[1]] = True
    return out


def matrix_errors(mean: np.ndarray, truth: np.ndarray, heldout: np.ndarray,
                  contexts: Sequence[str]) -> dict[str, dict[str, float]]:
    """(c): per context, `nrmse` and `pearson` of `mean` against `truth` (both `G x C`) on the `heldout` pairs."""
    if not (mean.shape == truth.shape == heldout.shape):
        raise ValueError(f"mean {mean.shape}, truth {truth.shape} and heldout {heldout.shape} differ in shape")
    out = {}
    for c, name in enumerate(contexts):
        sel = heldout[:, c]
        if sel.sum() < 3:
            continue
        m, s = mean[sel, c], truth[sel, c]
        if not np.isfinite(s).all():
            raise ValueError(f"truth is missing at held-out pairs of context {name!r}")
        out[name] = {"nrmse": float(np.sqrt(np.mean((m - s) ** 2)) / s.std()),
                     "pearson": float(np.corrcoef(m, s)[0, 1]) if m.std() > 0 else 0.0, "n": int(sel.sum())}
    return out


def context_specific(truth: np.ndarray, *, strong: float = STRONG_FRACTION,
                     weak: float = WEAK_QUANTILE) -> tuple[np.ndarray, np.ndarray]:
    """(d): the `G x C` bool masks `is_strong`, `is_weak` of `truth` (`G x C`, NaN = not measured; thresholds per
    context over its measured genes). A gene is specific when some row has a strong and a weak entry."""
    a = np.abs(truth)
    hi = np.nanquantile(a, 1 - strong, axis=0)
    lo = np.nanquantile(a, weak, axis=0)
    ok = np.isfinite(a)
    return ok & (np.nan_to_num(a, nan=-np.inf) > hi), ok & (np.nan_to_num(a, nan=np.inf) < lo)


def specific_genes(is_strong: np.ndarray, is_weak: np.ndarray) -> np.ndarray:
    """(d): indices of the context-specific genes."""
    return np.flatnonzero(is_strong.any(1) & is_weak.any(1))


def specific_found(is_strong: np.ndarray, is_weak: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """(d): indices of specific genes measured at a strong and at a weak context of theirs (`measured` `G x C`)."""
    return np.flatnonzero((is_strong & measured).any(1) & (is_weak & measured).any(1))
