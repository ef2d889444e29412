"""Perturb-seq data as AnnData: loading, label canonicalisation and raw counts.

Every Perturb-seq AnnData that leaves this module looks the same, whatever its source:

- ``obs['perturbation']``: canonical labels (categorical): gene symbols upper-cased, sorted and
  joined by ``+`` (scPerturb / GEARS convention, e.g. ``KLF1+MAP2K6``); control cells ``ctrl``.
  The source label is kept in ``obs['perturbation_source']``.
- ``layers['counts']``: raw UMI counts (CSR, float32); ``X`` holds a separate copy of the same
  counts, so in-place scanpy preprocessing of ``X`` never touches ``layers['counts']``.
- ``uns['perturbseq']``: how the labels were read (source key, control labels, separators,
  symbols mapped through the alias table, cells dropped for lack of a label).

Sources differ: Papalexi 2021 (here) calls the column ``target`` and the control
``non-targeting``; scPerturb files use ``perturbation`` / ``control`` and join pairs with ``_``
(``AHR_KLF1``); GEARS uses ``condition`` / ``ctrl`` with ``A+ctrl`` for singles. Registry entries
carry these conventions (``DatasetSpec.loader``), so a registry name loads without options.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbloop.data.registry import REGISTRY, resolve
from perturbloop.errors import PerturbloopError, UnknownDatasetError, shown
from perturbloop.perturbation import CONTROL, canonical_label, label_set

DEFAULT_KEY = "perturbation"
COUNTS_LAYER = "counts"
# values checked for being whole numbers when deciding whether a matrix holds raw counts
_COUNT_CHECK_VALUES = 1_000_000


class PerturbSeqFormatError(PerturbloopError, ValueError):
    """An AnnData that cannot be read as Perturb-seq (no label column, no raw counts, ...)."""


class UnknownPerturbationError(PerturbloopError, KeyError):
    """Perturbation labels a world (replay, synthetic) cannot run; the message names them."""

    def __init__(self, labels: list[str], world: str = "", hint: str = ""):
        self.labels = list(labels)
        where = f" in {world}" if world else ""
        super().__init__(f"unknown perturbation(s){where}: {shown(self.labels)}" + (f"; {hint}" if hint else ""))

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


# --- labels -----------------------------------------------------------------------------------


def canonical_labels(values: Iterable[object] | pd.Series, *, control: str | Iterable[str] = CONTROL,
                     separators: str = "+", symbol_map: Mapping[str, str] | None = None) -> pd.Series:
    """`canonical_label` over many values (computed once per distinct value); None where missing."""
    s = (values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)).astype(object)
    return s.map({u: canonical_label(u, control=control, separators=separators, symbol_map=symbol_map)
                  for u in pd.unique(s)})


def _symbol_map(genes: Iterable[str], data_dir) -> dict[str, str]:
    """Outdated symbols among `genes` -> current HGNC symbols (unknown symbols are left alone); {} with a warning
    where the gene tables are missing."""
    from perturbloop.genes import gene_index

    try:
        idx = gene_index(data_dir)
    except PerturbloopError as e:
        warnings.warn(f"gene symbols not mapped (no gene tables: {e})", stacklevel=3)
        return {}
    return {g: m for g in genes if (m := idx.map(g)) is not None and m != g}


# --- counts -----------------------------------------------------------------------------------

def counts_matrix(adata: ad.AnnData, layer: str | None = None) -> sp.csr_matrix | np.ndarray:
    """The raw-count matrix of `adata`: `layers[layer]`, else `layers['counts']`, else `X`.

    Raises PerturbSeqFormatError when the matrix has negative or non-integer values (e.g. a
    log-normalised `X` with no counts layer).
    """
    if layer is not None and layer not in adata.layers:
        raise PerturbSeqFormatError(f"layer {layer!r} not in the AnnData (layers: {list(adata.layers)})")
    layer = layer if layer is not None else COUNTS_LAYER if COUNTS_LAYER in adata.layers else None
    m, where = (adata.X, "X") if layer is None else (adata.layers[layer], f"layers[{layer!r}]")
    if m is None:
        raise PerturbSeqFormatError("the AnnData has no expression matrix")
    vals = (m.data if sp.issparse(m) else np.asarray(m).ravel())[:_COUNT_CHECK_VALUES]
    if vals.size and (np.nanmin(vals) < 0 or not np.allclose(vals, np.round(vals))):
        raise PerturbSeqFormatError(f"{where} does not hold raw counts (negative or non-integer values, e.g. "
                                    "log-normalised data); Perturb-seq needs raw UMI counts in X or layers['counts']")
    return m


def prepare_perturbseq(adata: ad.AnnData, key: str = DEFAULT_KEY, control: str | Iterable[str] = CONTROL, *,
                       layer: str | None = None, separators: str = "+",
                       symbol_map: Mapping[str, str] | None = None) -> ad.AnnData:
    """A new AnnData in the canonical form (module docstring) from any Perturb-seq AnnData.

    Args:
        adata: cells x genes; not modified.
        key: the obs column with the source labels.
        control: the source's control label(s); ``ctrl`` is always recognised.
        layer: the layer with raw counts (default: ``layers['counts']`` if present, else ``X``).
        separators: characters that join genes of a combination in the source labels.
        symbol_map: outdated -> current symbols, applied to perturbation targets.

    Returns:
        AnnData with ``obs['perturbation']``, ``obs['perturbation_source']``, ``layers['counts']``,
        ``X`` (a copy of the counts) and ``uns['perturbseq']``. Cells without a label are dropped.
    """
    if key not in adata.obs:
        raise PerturbSeqFormatError(f"no obs column {key!r} with perturbation labels; obs columns: "
                                    + ", ".join(map(str, adata.obs.columns)))
    counts = counts_matrix(adata, layer)
    labels = canonical_labels(adata.obs[key], control=control, separators=separators, symbol_map=symbol_map)
    keep = labels.notna().to_numpy()
    n_dropped = int((~keep).sum())
    if not keep.any():
        raise PerturbSeqFormatError(f"obs[{key!r}] has no labels")
    counts = sp.csr_matrix(counts, dtype=np.float32)[keep]  # a new matrix: the input is never shared
    obs = adata.obs.loc[keep].copy()
    if not (key == DEFAULT_KEY and "perturbation_source" in obs):  # re-preparing keeps the first source
        obs["perturbation_source"] = adata.obs[key].astype(str).to_numpy()[keep]
    cats = sorted(set(labels[keep]), key=lambda x: (x != CONTROL, x))
    obs[DEFAULT_KEY] = pd.Categorical(labels[keep].to_numpy(), categories=cats)
    out = ad.AnnData(X=counts.copy(), obs=obs, var=adata.var.copy())
    out.layers[COUNTS_LAYER] = counts
    out.var_names_make_unique()
    for k, v in adata.obsm.items():
        out.obsm[k] = v[keep]
    out.uns.update(adata.uns)
    previous = adata.uns.get("perturbseq") if key == DEFAULT_KEY else None
    controls = sorted(label_set(control) | {CONTROL})
    info = dict(previous) if isinstance(previous, Mapping) else {  # re-preparing keeps the provenance
        "source_key": key, "controls": controls, "separators": separators, "symbol_map": dict(symbol_map or {})}
    info["n_dropped_unlabelled"] = int(info.get("n_dropped_unlabelled", 0)) + n_dropped
    info["n_control_cells"] = int((obs[DEFAULT_KEY] == CONTROL).sum())
    out.uns["perturbseq"] = info
    if info["n_control_cells"] == 0:
        warnings.warn(f"no control cells (labels {controls}) in obs[{key!r}]", stacklevel=2)
    return out


def load_perturbseq(path_or_name: str | os.PathLike, data_dir: str | os.PathLike | None = None, key: str = DEFAULT_KEY,
                    control: str | Iterable[str] = CONTROL, *, layer: str | None = None, separators: str | None = None,
                    map_symbols: bool = True) -> ad.AnnData:
    """Load a Perturb-seq h5ad (registry name or path) in the canonical form (module docstring).

    Args:
        path_or_name: a registry name (``papalexi2021``, ``norman2019``, ...) or an .h5ad path.
        data_dir: where registry files are looked for (else ``PERTURBLOOP_DATA_DIR``, the cache).
        key: obs column with the source labels. For a registry name whose files name it
            differently (Papalexi: ``target``) the registry's column is used when `key` is absent.
        control: the source's control label(s), added to the registry's (``ctrl`` always counts).
        layer: layer with raw counts (default ``layers['counts']``, else ``X``).
        separators: characters joining the genes of a combination (default: registry's, else ``+``).
        map_symbols: map outdated target symbols to current HGNC ones through the alias table
            (e.g. Papalexi ``MARCH8`` -> ``MARCHF8``); unknown symbols are kept as they are. Skipped
            with a warning where the gene tables are not available.

    Returns:
        AnnData with ``obs['perturbation']`` (canonical labels), raw counts in ``layers['counts']``.

    Example:
        >>> adata = load_perturbseq("papalexi2021", data_dir="../shared/data")
        >>> adata.obs["perturbation"].value_counts()["ctrl"]
        2386
    """
    opts: dict = {}
    name = str(path_or_name)
    if name in REGISTRY:
        spec = REGISTRY[name]
        if spec.kind != "perturbseq":
            raise PerturbloopError(f"dataset {name!r} is a {spec.kind} dataset, not Perturb-seq")
        path = resolve(name, data_dir)[0]
        opts = dict(spec.loader)
    else:
        path = Path(path_or_name).expanduser()
        if not path.is_file():
            if path.suffix or os.sep in name:
                raise PerturbloopError(f"Perturb-seq file {str(path)!r} does not exist")
            raise UnknownDatasetError(name, [n for n, s in REGISTRY.items() if s.kind == "perturbseq"])
    adata = ad.read_h5ad(path)
    if key not in adata.obs and key == DEFAULT_KEY and opts.get("key"):
        key = opts["key"]
    controls = label_set(control) | label_set(opts.get("control"))
    seps = separators if separators is not None else opts.get("separators", "+")
    symbol_map = None
    if map_symbols and key in adata.obs:
        raw = canonical_labels(adata.obs[key], control=controls, separators=seps).dropna()
        symbol_map = _symbol_map(sorted({g for lab in set(raw) if lab != CONTROL for g in lab.split("+")}), data_dir)
    out = prepare_perturbseq(adata, key, controls, layer=layer, separators=seps, symbol_map=symbol_map)
    out.uns["perturbseq"]["dataset"] = name if name in REGISTRY else str(path)
    return out
