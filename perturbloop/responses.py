"""Perturb-seq summaries with scanpy: pseudobulk log-fold-changes, top DE genes, expressed genes.

The response of a perturbation is the pseudobulk log-fold-change vs control (GEARS / IterPert
"delta" convention): counts are normalised per cell to `target_sum` and log1p-transformed
(``sc.pp.normalize_total``, ``sc.pp.log1p``), averaged over the cells of each perturbation, and
the control mean is subtracted:

    lfc[p, g] = mean_{c in p} log1p(target_sum * x_cg / n_c) - mean_{c in ctrl} log1p(target_sum * x_cg / n_c)

(natural log; ``n_c`` = the cell's total count over the AnnData's genes). Raw counts are read from
``layers['counts']`` or ``X`` (see :func:`perturbloop.perturbseq.counts_matrix`).
"""

from __future__ import annotations

import warnings
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbloop.errors import PerturbloopError
from perturbloop.perturbation import CONTROL
from perturbloop.perturbseq import counts_matrix
from perturbloop.response_metrics import TOP_DE, TOP_EXPRESSED, top_de_by_magnitude

TARGET_SUM = 1e4  # counts per cell after normalisation (scanpy / GEARS default)

DEMethod = Literal["abs_lfc", "t-test", "t-test_overestim_var", "wilcoxon"]


def log_normalised(adata: ad.AnnData, *, layer: str | None = None, target_sum: float = TARGET_SUM) -> ad.AnnData:
    """A new AnnData (same obs/var) whose X is log1p(normalize_total(counts)); `adata` is untouched."""
    import scanpy as sc

    counts = counts_matrix(adata, layer)
    X = sp.csr_matrix(counts, dtype=np.float32, copy=True) if sp.issparse(counts) else np.array(counts, np.float32)
    tmp = ad.AnnData(X=X, obs=adata.obs.copy(), var=pd.DataFrame(index=adata.var_names.copy()))
    sc.pp.normalize_total(tmp, target_sum=target_sum)
    sc.pp.log1p(tmp)
    return tmp


def _group_means(X, labels: pd.Series) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Per-label means of the rows of X (n x g): (k x g means, k labels, k cell counts)."""
    codes, uniques = pd.factorize(labels.astype(str), sort=True)
    n = np.bincount(codes, minlength=len(uniques))
    G = sp.csr_matrix((1.0 / n[codes], (codes, np.arange(len(codes)))), shape=(len(uniques), len(codes)))
    means = G @ X
    means = means.toarray() if sp.issparse(means) else np.asarray(means)
    return means, list(uniques), n


def pseudobulk_lfc(adata: ad.AnnData, key: str = "perturbation", control: str = CONTROL, target_sum: float = TARGET_SUM,
                   min_cells: int = 1, *, layer: str | None = None) -> pd.DataFrame:
    """Pseudobulk log-fold-change of every perturbation vs control (module docstring).

    Args:
        adata: cells x genes with labels in ``obs[key]`` and raw counts; must contain control cells.
        key: obs column with the (canonical) labels.
        control: the control label.
        target_sum: counts per cell after normalisation.
        min_cells: perturbations with fewer cells are left out.
        layer: layer with raw counts (default ``layers['counts']``, else ``X``).

    Returns:
        DataFrame, index = perturbation labels (control excluded, sorted), columns = genes
        (``adata.var_names``), float64. ``.attrs['n_cells']`` maps each label (and the control)
        to its number of cells.

    Example:
        >>> lfc = pseudobulk_lfc(adata)            # adata from load_perturbseq / PerturbSeqReplay.run
        >>> lfc.loc["STAT1"].nsmallest(3)
    """
    if key not in adata.obs:
        raise PerturbloopError(f"no obs column {key!r}; obs columns: {', '.join(map(str, adata.obs.columns))}")
    labels = adata.obs[key].astype(str)
    if not (labels == control).any():
        raise PerturbloopError(f"no control cells ({key} == {control!r}): a log-fold-change needs them")
    logn = log_normalised(adata, layer=layer, target_sum=target_sum)
    means, groups, n = _group_means(logn.X, labels)
    ci = groups.index(control)
    lfc = means - means[ci]
    keep = [i for i, g in enumerate(groups) if g != control and n[i] >= min_cells]
    out = pd.DataFrame(lfc[keep].astype(np.float64), index=pd.Index([groups[i] for i in keep], name=key),
                       columns=pd.Index(adata.var_names, name="gene"))
    out.attrs["n_cells"] = {g: int(c) for g, c in zip(groups, n)}
    out.attrs["target_sum"] = target_sum
    return out


def _top_by_abs(lfc: pd.DataFrame, n: int) -> dict[str, list[str]]:
    """Per row, the `n` columns of largest |LFC| (NaN last)."""
    cols, order = np.asarray(lfc.columns), top_de_by_magnitude(lfc.to_numpy(float), n)
    return {str(lab): [str(c) for c in cols[o]] for lab, o in zip(lfc.index, order)}


def top_de_genes(adata_or_lfc: ad.AnnData | pd.DataFrame, n: int = TOP_DE, *, key: str = "perturbation",
                 control: str = CONTROL, method: DEMethod = "abs_lfc", target_sum: float = TARGET_SUM,
                 min_cells: int = 2, layer: str | None = None) -> dict[str, list[str]]:
    """Top-`n` differentially expressed genes of each perturbation vs control.

    Args:
        adata_or_lfc: a Perturb-seq AnnData, or a pseudobulk LFC table (perturbations x genes).
        n: genes per perturbation.
        method: ``"abs_lfc"``: largest |pseudobulk lfc| (ties keep gene order); or a
            ``sc.tl.rank_genes_groups`` test vs the control (``"t-test"``, the GEARS convention,
            ``"t-test_overestim_var"``, ``"wilcoxon"``), ranked by absolute score. Tests need an
            AnnData.
        min_cells: perturbations with fewer cells are left out (a test needs at least 2).

    Returns:
        label -> list of `n` gene names, most changed first.
    """
    if isinstance(adata_or_lfc, pd.DataFrame):
        if method != "abs_lfc":
            raise PerturbloopError(f"method {method!r} needs cells (an AnnData), not an LFC table")
        return _top_by_abs(adata_or_lfc, n)
    if method == "abs_lfc":
        return _top_by_abs(pseudobulk_lfc(adata_or_lfc, key, control, target_sum, min_cells, layer=layer), n)
    if method not in ("t-test", "t-test_overestim_var", "wilcoxon"):
        raise PerturbloopError(f"unknown DE method {method!r}; choose abs_lfc, t-test, t-test_overestim_var or "
                               "wilcoxon")
    import scanpy as sc

    logn = log_normalised(adata_or_lfc, layer=layer, target_sum=target_sum)
    labels = logn.obs[key].astype(str)
    counts = labels.value_counts()
    groups = [g for g in sorted(counts.index) if g != control and counts[g] >= max(min_cells, 2)]
    if control not in counts.index:
        raise PerturbloopError(f"no control cells ({key} == {control!r})")
    if not groups:
        return {}
    logn.obs["_group"] = pd.Categorical(labels)
    with warnings.catch_warnings():  # scanpy fills its result frame column by column
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        sc.tl.rank_genes_groups(logn, "_group", groups=groups, reference=control, method=method,
                                rankby_abs=True, n_genes=min(n, logn.n_vars), use_raw=False)
    names = logn.uns["rank_genes_groups"]["names"]
    return {g: [str(x) for x in names[g]] for g in groups}


def most_expressed_genes(adata: ad.AnnData, n: int = TOP_EXPRESSED, *, key: str = "perturbation",
                         control: str | None = None, target_sum: float = TARGET_SUM,
                         layer: str | None = None) -> list[str]:
    """The `n` genes with the highest mean normalised log1p expression, highest first.

    Args:
        control: if given, average over the cells with ``obs[key] == control`` only (e.g. for a
            gene set fixed before any perturbation is run); else over all cells.
    """
    logn = log_normalised(adata, layer=layer, target_sum=target_sum)
    X = logn.X
    if control is not None:
        mask = (logn.obs[key].astype(str) == control).to_numpy()
        if not mask.any():
            raise PerturbloopError(f"no control cells ({key} == {control!r})")
        X = X[mask]
    mean = np.asarray(X.mean(axis=0)).ravel()
    order = np.argsort(-mean, kind="stable")[:n]
    return [str(logn.var_names[i]) for i in order]


def summarise_delivery(cells: dict[str, ad.AnnData], control: ad.AnnData | None, readout: list[str], *,
                       min_cells: int, source: str, batch_key: str = "batch") -> dict[str, np.ndarray]:
    """Response vectors (pseudobulk LFC over the `readout` genes) of the perturbations in one lab delivery.

    Each perturbation's cells are compared with the control cells of the same delivery; when the cells carry
    `obs[batch_key]`, batch by batch (`lfc_p = sum_b n_pb lfc_pb / sum_b n_pb`, each `lfc_pb` against the
    control cells of batch `b`), so a batch effect does not read as a response. Errors (a `PerturbloopError`
    naming `source`): no or too few control cells (in a batch that has perturbed cells), a perturbation with
    fewer than `min_cells` cells, readout genes the delivery did not measure.
    """
    if control is None or control.n_obs < min_cells:
        n = 0 if control is None else control.n_obs
        raise PerturbloopError(f"{source}: {n} control cells (label {CONTROL!r}); a delivery needs at least "
                               f"{min_cells} to summarise its perturbations")
    few = {label: a.n_obs for label, a in cells.items() if a.n_obs < min_cells}
    if few:
        shown = ", ".join(f"{k} ({v})" for k, v in sorted(few.items())[:20])
        raise PerturbloopError(f"{source}: too few cells (at least {min_cells} needed): {shown}")
    merged = ad.concat([control, *cells.values()], join="inner", merge="first", index_unique="-")
    missing = [g for g in readout if g not in set(merged.var_names)]
    if missing:
        raise PerturbloopError(f"{source}: {len(missing)} of the campaign's {len(readout)} readout genes were not "
                               f"measured in every file of the delivery: {', '.join(missing[:20])}")
    merged.obs["perturbation"] = np.concatenate([np.full(control.n_obs, CONTROL)]
                                                + [np.full(a.n_obs, label) for label, a in cells.items()])
    batches = merged.obs[batch_key].astype(str) if batch_key in merged.obs else pd.Series("all", index=merged.obs_names)
    total: dict[str, np.ndarray] = {}
    weight: dict[str, int] = {}
    for b in pd.unique(batches):
        sub = merged[(batches == b).to_numpy()]
        labels = set(sub.obs["perturbation"]) - {CONTROL}
        if not labels:
            continue
        n_ctrl = int((sub.obs["perturbation"] == CONTROL).sum())
        if n_ctrl < min_cells:
            raise PerturbloopError(f"{source}: batch {b!r} has {n_ctrl} control cells (at least {min_cells} needed) "
                                   f"for its perturbed cells ({', '.join(sorted(labels)[:10])})")
        lfc = pseudobulk_lfc(sub, "perturbation", CONTROL)[readout]
        for label in lfc.index:
            n = lfc.attrs["n_cells"][label]
            total[label] = total.get(label, 0.0) + n * lfc.loc[label].to_numpy(dtype=np.float64)
            weight[label] = weight.get(label, 0) + n
    return {label: total[label] / weight[label] for label in cells}
