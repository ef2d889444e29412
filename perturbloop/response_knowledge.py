"""Gene knowledge for response campaigns (`design.features` of a Perturb-seq or pair campaign).

The perturbed gene's embedding (for a pair, each gene's; `design_space.PairSpace` pools the two rows):
the screen knowledge blocks (`perturbloop.knowledge_features`: string, pathways, hpo, literature, depmap,
paralogs; `knowledge` = all six), and `gwt`: perturbation effects of the same gene learned from another
data set, the genome-wide CRISPRi Perturb-seq in primary human CD4+ T cells (Zhu, Dann et al. 2025;
`contexts/gwt_cd4_2025` in the data dir).

`gwt` columns, per gene `g` (Ahlmann-Eltze et al. 2025: embeddings of the perturbation from other data):
- `gwt_{activation,ota}_{Rest,Stim8hr,Stim48hr}`: the regulator's coefficient on the T-cell activation and
  Th2-vs-Th1 signatures at each timepoint (polarization table, `coef_mean`);
- `gwt_aging_{K562,Rest,Stim8hr,Stim48hr}`: its coefficient on the CD4 ageing signature (ageing table);
- `gwt_log_degs_{K562,Rest,Stim8hr,Stim48hr}`: `log(1 + n)` DE genes in K562 (Replogle 2022) and in T cells
  (K562 comparison table);
- `gwt_{polarization,aging,k562}_missing`: 1 where that table does not list the gene.

Each value column is standardised over the genes its table lists, `z = (v - mean) / sd`, and a value the
table lacks is 0 (the table's mean) — so an absent gene is all zeros plus its missing flags.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from perturbloop.data.registry import REGISTRY, resolve
from perturbloop.errors import PerturbloopError

Block = tuple[np.ndarray, list[str]]
DataDir = str | os.PathLike | None

GWT_DIR = "contexts/gwt_cd4_2025"
GWT_FILES = {name: Path(REGISTRY[name].files[0].path).name  # registry name -> its file in GWT_DIR
             for name in ("gwt_cd4_polarization", "gwt_cd4_aging", "gwt_cd4_k562_comparison")}
TIMEPOINTS = ("Rest", "Stim8hr", "Stim48hr")
AGING_CELLS = ("K562", *TIMEPOINTS)
GWT_NAMES = ([f"gwt_{s}_{t}" for s in ("activation", "ota") for t in TIMEPOINTS]
             + [f"gwt_aging_{c}" for c in AGING_CELLS] + [f"gwt_log_degs_{c}" for c in AGING_CELLS]
             + ["gwt_polarization_missing", "gwt_aging_missing", "gwt_k562_missing"])


def gwt_path(name: str, data_dir: DataDir = None) -> Path:
    """Local path of one GWT table (the registry's `name`, never downloaded); a PerturbloopError naming the
    dataset and where it was looked for when it is missing."""
    return resolve(name, data_dir, download=False)[0]


def _read(name: str, data_dir: DataDir, columns: Sequence[str]) -> pd.DataFrame:
    path = gwt_path(name, data_dir)
    try:
        df = pd.read_csv(path, index_col=0)
    except (OSError, ValueError) as e:
        raise PerturbloopError(f"{path}: cannot read {name} ({e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PerturbloopError(f"{path}: {name} lacks column(s) {', '.join(missing)}")
    return df


@lru_cache(maxsize=4)
def _gwt_table(data_dir: str | None) -> pd.DataFrame:
    """Genes (upper-case symbols) x the 14 raw value columns of GWT_NAMES, NaN where a table lacks the value,
    plus boolean `in_polarization`, `in_aging`, `in_k562`."""
    pol = _read("gwt_cd4_polarization", data_dir, ["regulator", "signature", "celltype", "coef_mean"])
    pol = pol[pol["signature"].isin(["activation", "ota"]) & pol["celltype"].isin(TIMEPOINTS)]
    pol = pol.assign(col="gwt_" + pol["signature"] + "_" + pol["celltype"], gene=pol["regulator"].str.upper())
    pol = pol.pivot_table(index="gene", columns="col", values="coef_mean", aggfunc="mean")

    age = _read("gwt_cd4_aging", data_dir, ["regulator", "celltype", "coef_mean"])
    age = age[age["celltype"].isin(AGING_CELLS)]
    age = age.assign(col="gwt_aging_" + age["celltype"], gene=age["regulator"].str.upper())
    age = age.pivot_table(index="gene", columns="col", values="coef_mean", aggfunc="mean")

    deg_cols = [f"n_degs_MASH_{c}" for c in AGING_CELLS]
    k562 = _read("gwt_cd4_k562_comparison", data_dir, ["target_contrast_gene_name", *deg_cols])
    k562 = k562.assign(gene=k562["target_contrast_gene_name"].str.upper()).groupby("gene")[deg_cols].first()
    k562 = np.log1p(k562.clip(lower=0)).rename(columns=dict(zip(deg_cols, [f"gwt_log_degs_{c}" for c in AGING_CELLS])))

    table = pd.concat([pol, age, k562], axis=1).reindex(columns=GWT_NAMES[:-3])
    table["in_polarization"] = table.index.isin(pol.index)
    table["in_aging"] = table.index.isin(age.index)
    table["in_k562"] = table.index.isin(k562.index)
    return table


def gwt_block(genes: Sequence[str], data_dir: DataDir = None) -> Block:
    """`len(genes) x 17` GWT embedding of each gene (module docstring): 14 standardised values, 3 missing flags."""
    table = _gwt_table(str(data_dir) if data_dir else os.environ.get("PERTURBLOOP_DATA_DIR"))
    values = table[GWT_NAMES[:-3]]
    z = (values - values.mean()) / values.std().where(values.std() > 0, 1.0)
    rows = z.reindex([str(g).upper() for g in genes])
    flags = table[["in_polarization", "in_aging", "in_k562"]].reindex(rows.index, fill_value=False).to_numpy(bool)
    out = np.hstack([rows.fillna(0.0).to_numpy(float), (~flags).astype(float)])
    return out, list(GWT_NAMES)


def response_knowledge_features(genes: Sequence[str], name: str, *, data_dir: DataDir = None) -> Block:
    """One gene-knowledge block of a response campaign by name: `gwt`, a knowledge block or `knowledge`."""
    if name == "gwt":
        return gwt_block(genes, data_dir)
    from perturbloop.knowledge_features import knowledge_features

    return knowledge_features(list(genes), name, data_dir=data_dir)
