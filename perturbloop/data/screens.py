"""Pooled-screen loaders: MAGeCK RRA / MLE gene summaries and `Gene,Score` tables.

A :class:`Screen` holds one score per gene (current HGNC symbols, outdated ones mapped through
the alias table) and, when the source has them, per-replicate scores (donors, replicates).

A gene listed more than once in one file (the same symbol twice, or an outdated symbol beside its
current one) is refused when its rows disagree, naming the gene and the lines, unless the caller
says how to combine them (`aggregate`: ``"mean"`` or ``"first"``). Registry screens whose outdated
symbols collide declare their aggregation in the registry (``loader["aggregate"]``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from perturbloop.data.registry import get_spec, resolve
from perturbloop.data.screen_genes import is_screen_file, remember_screen_genes
from perturbloop.errors import ConfigError, ScreenFormatError

Aggregate = Literal["error", "mean", "first"]
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
MAX_DUPLICATES_SHOWN = 10
CONTROL_IDS = {"NO-TARGET", "NON-TARGETING", "NONTARGETING", "NON_TARGETING", "SAFE-TARGETING"}  # not CTRL: a real gene
_EXCEL_DATE = r"^\d{1,2}[.-](JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)$"


@dataclass
class Screen:
    """Scores of one pooled screen.

    Attributes:
        name: registry name or file stem.
        scores: gene -> score (float), index = current upper-case symbols, unique, no NaN.
        replicates: gene x replicate scores (same index) or None.
        unmapped: source symbols with no HGNC entry, kept under their own (upper-case) name.
    """

    name: str
    scores: pd.Series
    replicates: pd.DataFrame | None = None
    unmapped: list[str] = field(default_factory=list)

    @property
    def genes(self) -> list[str]:
        return list(self.scores.index)

    def hits(self, fraction: float = 0.05) -> set[str]:
        """Top `fraction` of genes by |score| (the BioDiscoveryAgent / GeneDisco hit definition)."""
        if not 0 < fraction < 1:
            raise ValueError(f"hit fraction must be in (0, 1), got {fraction}")
        n = max(1, int(round(fraction * len(self.scores))))
        return set(self.scores.abs().sort_values(ascending=False, kind="stable").index[:n])

    def subset(self, genes: list[str]) -> Screen:
        reps = self.replicates.loc[genes] if self.replicates is not None else None
        return Screen(self.name, self.scores.loc[genes], reps, [g for g in self.unmapped if g in set(genes)])


def _read_table(path: Path) -> pd.DataFrame:
    """Tab-separated for `.txt` / `.tsv` (gzipped too), else comma-separated unless the header holds tabs."""
    tab = path.suffix in {".txt", ".tsv"} or path.name.endswith((".tsv.gz", ".txt.gz"))
    try:
        df = pd.read_csv(path, sep="\t" if tab else ",", encoding="utf-8-sig")
        if not tab and len(df.columns) == 1 and "\t" in str(df.columns[0]):
            tab = True
            df = pd.read_csv(path, sep="\t", encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ScreenFormatError(f"{path}: cannot be parsed as a {'tab' if tab else 'comma'}-separated table "
                                f"({e})") from e
    return df


def _numeric(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    vals = pd.to_numeric(df[col], errors="coerce")
    bad = vals.isna() & df[col].notna()
    if bad.any():
        rows = (bad[bad].index[:5] + 2).tolist()  # 1-based, after the header
        raise ScreenFormatError(f"{path}: column {col!r} has non-numeric values (lines {rows})")
    return vals


def read_screen_file(path: str | os.PathLike, *, loader: dict | None = None, name: str | None = None) -> tuple[pd.Series, pd.DataFrame | None]:
    """Read raw gene scores from one file (symbols as in the file, not yet mapped).

    Formats, detected from the header unless `loader` says:
      * MAGeCK RRA gene summary (`id`, `neg|lfc`, ...): score = `neg|lfc` (gene LFC);
      * MAGeCK MLE gene summary (`Gene`, `<rep>|beta`, ...): score = mean `|beta` (or `|z`) over replicates;
      * `Gene,Score` table (BioDiscoveryAgent format).

    Returns (scores indexed by symbol, replicate table or None); a symbol may repeat.
    """
    return _read_screen(Path(path), loader=loader, name=name)[:2]


def _read_screen(path: Path, *, loader: dict | None, name: str | None) -> tuple[pd.Series, pd.DataFrame | None, np.ndarray]:
    """`read_screen_file` plus each row's line number in the file (n ints, 1-based, header = line 1)."""
    if not path.is_file():
        raise ScreenFormatError(f"screen file {str(path)!r} does not exist")
    df = _read_table(path)
    cols = list(df.columns)
    loader = dict(loader or {})
    fmt = loader.get("format")
    if fmt is None:
        if "id" in cols and "neg|lfc" in cols:
            fmt, loader["column"] = "mageck_rra", "neg|lfc"
        elif "Gene" in cols and any(c.endswith("|beta") for c in cols):
            fmt, loader["column"] = "mageck_mle", "beta"
        elif {c.lower() for c in cols[:2]} == {"gene", "score"}:
            fmt = "table"
            gene = next(c for c in cols[:2] if c.lower() == "gene")
            loader.update(gene=gene, column=next(c for c in cols[:2] if c != gene))
        else:
            raise ScreenFormatError(
                f"{path}: unrecognised screen format (columns {cols[:6]}); expected a MAGeCK gene summary "
                "(`id`, `neg|lfc`, ...), a MAGeCK MLE summary (`Gene`, `<rep>|beta`, ...) or a CSV with header `Gene,Score`"
            )
    gene_col = {"mageck_rra": "id", "mageck_mle": "Gene"}.get(fmt, loader.get("gene", "Gene"))
    col = loader["column"]
    if gene_col not in cols:
        raise ScreenFormatError(f"{path}: missing gene column {gene_col!r}")
    if df.empty:
        raise ScreenFormatError(f"{path}: no data rows")
    genes = df[gene_col].astype(str).str.strip()
    if (genes == "").any() or df[gene_col].isna().any():
        raise ScreenFormatError(f"{path}: empty gene symbol(s) in column {gene_col!r}")
    reps = None
    if fmt == "mageck_mle":
        rep_cols = [c for c in cols if c.endswith(f"|{col}")]
        if not rep_cols:
            raise ScreenFormatError(f"{path}: no `<replicate>|{col}` columns")
        reps = pd.DataFrame({c.split("|")[0]: _numeric(df, c, path).to_numpy() for c in rep_cols}, index=genes)
        values = reps.mean(axis=1)
    else:
        if col not in cols:
            raise ScreenFormatError(f"{path}: missing score column {col!r}")
        values = pd.Series(_numeric(df, col, path).to_numpy(), index=genes)
    if loader.get("transform") == "neglog":
        if (values <= 0).any():
            raise ScreenFormatError(f"{path}: column {col!r} must be positive to take -log")
        values = -np.log(values)
    values = values * float(loader.get("sign", 1.0))
    if values.isna().any():
        raise ScreenFormatError(f"{path}: missing score for gene(s) {', '.join(values.index[values.isna()][:10])}")
    if not np.isfinite(values.to_numpy()).all():
        raise ScreenFormatError(f"{path}: infinite score values")
    lines = df.index.to_numpy() + 2  # 1-based, after the header
    # control guides (`NO-TARGET`) and gene names a spreadsheet turned into dates (`01.SEP`) are not genes
    keep = ~(values.index.str.upper().isin(CONTROL_IDS) | values.index.str.match(_EXCEL_DATE, flags=re.IGNORECASE))
    values, lines = values[keep], lines[keep]
    reps = reps[keep] if reps is not None else None
    values.name = name or path.stem
    return values.astype(float), reps, lines


def _combine_duplicates(path: Path, values: pd.Series, reps: pd.DataFrame | None, lines: np.ndarray,
                        data_dir, aggregate: str) -> tuple[pd.Series, pd.DataFrame | None]:
    """One file's rows with each gene (after symbol mapping) once, as `aggregate` says.

    ``"error"`` refuses a gene whose rows disagree (rows that agree are kept, as one); ``"first"``
    keeps the first row of each gene; ``"mean"`` keeps every row (`_map_symbols` averages them).
    """
    if aggregate not in AGGREGATES:
        raise ConfigError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    if aggregate == "mean":
        return values, reps
    from perturbloop.genes import gene_index

    raw = [str(s) for s in values.index]
    mapped = pd.Series(list(map(gene_index(data_dir).current, raw)))
    repeated = mapped.duplicated(keep=False).to_numpy()
    if not repeated.any():
        return values, reps
    if aggregate == "first":
        keep = ~mapped.duplicated(keep="first").to_numpy()
        return values[keep], reps[keep] if reps is not None else None
    rows = pd.DataFrame({"gene": mapped, "raw": raw, "line": lines, "value": values.to_numpy()})
    if reps is not None:
        rows = pd.concat([rows, pd.DataFrame(reps.to_numpy(), columns=[f"rep:{c}" for c in reps.columns])], axis=1)
    rows = rows[repeated]
    compared = [c for c in rows.columns if c == "value" or c.startswith("rep:")]
    conflicts = [(g, grp) for g, grp in rows.groupby("gene", sort=False) if len(grp[compared].drop_duplicates()) > 1]
    if conflicts:
        shown = [f"{g} on lines " + ", ".join(f"{r.line} ({r.raw} = {r.value:g})" for r in grp.itertuples())
                 for g, grp in conflicts[:MAX_DUPLICATES_SHOWN]]
        more = f"; and {len(conflicts) - MAX_DUPLICATES_SHOWN} more" if len(conflicts) > MAX_DUPLICATES_SHOWN else ""
        raise ScreenFormatError(
            f"{path}: {len(conflicts)} gene(s) listed more than once with different scores (an outdated symbol "
            f"counts as its current one): {'; '.join(shown)}{more}. Keep one row per gene, or say how to combine "
            "them: aggregate 'mean' or 'first' (data.aggregate in a campaign config, --aggregate for "
            "perturbloop benchmark)")
    return values, reps  # repeated rows that agree: `_map_symbols` takes them as one


def _map_symbols(scores: pd.Series, reps: pd.DataFrame | None, data_dir) -> tuple[pd.Series, pd.DataFrame | None, list[str]]:
    from perturbloop.genes import gene_index

    idx = gene_index(data_dir)
    raw = [str(s) for s in scores.index]
    unmapped = [s for s in raw if idx.map(s) is None]
    new = list(map(idx.current, raw))
    scores = pd.Series(scores.to_numpy(), index=new, name=scores.name).groupby(level=0, sort=True).mean()
    if reps is not None:
        reps = pd.DataFrame(reps.to_numpy(), index=new, columns=reps.columns).groupby(level=0, sort=True).mean()
    return scores, reps, unmapped


def load_screen(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None, *,
                aggregate: Aggregate | None = None) -> Screen:
    """Load a registry screen by name, or any screen file by path, with symbols mapped to HGNC.

    Args:
        aggregate: how rows naming the same gene in one file combine: ``"error"`` (rows that
            disagree are refused, naming the gene and lines), ``"mean"`` or ``"first"`` (the
            first row). None: what the registry declares for its screen, else ``"error"``.
    """
    p = Path(name_or_path)
    if is_screen_file(name_or_path):
        scores, reps = _combine_duplicates(p, *_read_screen(p, loader=None, name=None), data_dir, aggregate or "error")
        name = p.stem
    else:
        spec = get_spec(str(name_or_path))
        if spec.kind != "screen":
            raise ScreenFormatError(f"dataset {spec.name!r} is a {spec.kind} dataset, not a screen")
        how = aggregate or spec.loader.get("aggregate", "error")
        parts = [_combine_duplicates(path, *_read_screen(path, loader=spec.loader, name=None), data_dir, how)
                 for path in resolve(spec.name, data_dir)]
        if len(parts) == 1:
            scores, reps = parts[0]
        else:  # one file per donor / replicate: average them, keep each as a replicate
            reps = pd.concat([s.groupby(level=0).mean().rename(f"rep{i + 1}") for i, (s, _) in enumerate(parts)], axis=1, join="inner")
            scores = reps.mean(axis=1)
        name = spec.name
    scores, reps, unmapped = _map_symbols(scores, reps, data_dir)
    scores.name = name
    remember_screen_genes(name_or_path, data_dir, aggregate, list(scores.index))  # for `screen_genes`
    return Screen(name, scores, reps, unmapped)
