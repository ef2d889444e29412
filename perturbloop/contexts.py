"""Multi-context screens and the (perturbation x context) design space.

A *context* is a cell type, a condition or a timepoint (hours since stimulation, ordered) in which a
perturbation can be measured, at a cost per perturbation. A `ContextScreen` holds one score per measured
(gene, context) pair, with its standard error where the source reports one; a pair the source did not
measure is absent (a world replaying it fails that measurement).

Readers (`read_context_screen`), detected from the header:
  * long CSV/TSV: `gene,context,score` (optional `se`), one row per measured pair;
  * MAGeCK-style gene summary with one column group per context: `id` (or `gene`) and
    `neg|lfc.<context>` (optional `neg|se.<context>`), e.g. `neg|lfc.Resting_Teff`; an empty cell is a pair
    not measured.
Both refuse, naming the problem: a missing column, a non-numeric or infinite score (with its line), a
negative standard error, the same (gene, context) twice, no rows.

The GWT CD4+ T-cell tables (Zhu, Dann et al. 2025; registry `gwt_cd4_polarization`, `gwt_cd4_aging`) load
with `load_gwt`: regulator coefficients on a signature per context, `coef_sem` as the standard error.

A pair's label is `GENE@@context` (`PAIR_SEP`): no gene symbol contains it (`HOXA@` does contain `@`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from perturbloop.context_labels import PAIR_SEP, pair_label, split_label  # noqa: F401 (re-exported)
from perturbloop.errors import ConfigError, ScreenFormatError

MAGECK_SCORE = "neg|lfc."  # column group prefix of a context's score in a MAGeCK-style multi-context summary
MAGECK_SE = "neg|se."
# Time since stimulation of the GWT culture conditions; K562 is another cell type (no time).
GWT_HOURS: dict[str, float | None] = {"Rest": 0.0, "Stim8hr": 8.0, "Stim48hr": 48.0, "K562": None}
GWT_TABLES = {"polarization": "gwt_cd4_polarization", "aging": "gwt_cd4_aging"}


@dataclass(frozen=True)
class Context:
    """A context: its name, hours since stimulation (None: not a timepoint) and cost per perturbation."""

    name: str
    cost: float = 1.0
    hours: float | None = None


@dataclass
class ContextScreen:
    """Scores of one screen measured in several contexts.

    Attributes:
        name: registry name or file stem.
        table: long table with columns `gene`, `context`, `score`, `se` (NaN when not reported); one row per
            measured pair, unique on (gene, context).
    """

    name: str
    table: pd.DataFrame

    @property
    def contexts(self) -> list[str]:
        return list(dict.fromkeys(self.table["context"]))

    @property
    def genes(self) -> list[str]:
        return sorted(set(self.table["gene"]))

    def scores(self, context: str) -> pd.Series:
        """gene -> score in one context (measured genes only)."""
        self.check_contexts([context])
        t = self.table[self.table["context"] == context]
        return pd.Series(t["score"].to_numpy(), index=t["gene"].to_numpy(), name=context)

    def check_contexts(self, contexts: Sequence[str]) -> None:
        unknown = [c for c in contexts if c not in self.contexts]
        if unknown:
            raise ConfigError(f"unknown context(s) {', '.join(map(repr, unknown))} in screen {self.name!r}; "
                              f"its contexts: {', '.join(self.contexts)}")

    def restrict(self, contexts: Sequence[str], genes: Sequence[str] | None = None) -> ContextScreen:
        """The same screen on `contexts` (in that order) and optionally a gene subset."""
        self.check_contexts(contexts)
        t = self.table[self.table["context"].isin(list(contexts))]
        if genes is not None:
            t = t[t["gene"].isin(set(genes))]
        order = {c: i for i, c in enumerate(contexts)}
        t = t.sort_values(["context", "gene"], key=lambda s: s.map(order) if s.name == "context" else s, kind="stable")
        return ContextScreen(self.name, t.reset_index(drop=True))

    def write_long(self, path: str | os.PathLike) -> Path:
        """Write as a long CSV `gene,context,score,se`."""
        path = Path(path)
        self.table[["gene", "context", "score", "se"]].to_csv(path, index=False)
        return path

    def write_mageck(self, path: str | os.PathLike) -> Path:
        """Write as a MAGeCK-style summary: `id`, then `neg|lfc.<context>` and `neg|se.<context>` per context."""
        path = Path(path)
        wide = self.table.pivot(index="gene", columns="context", values=["score", "se"])
        out = pd.DataFrame({"id": wide.index})
        for c in self.contexts:
            out[MAGECK_SCORE + c] = wide[("score", c)].to_numpy()
            out[MAGECK_SE + c] = wide[("se", c)].to_numpy()
        out.to_csv(path, sep="\t", index=False)
        return path


def _numeric(values: pd.Series, what: str, path: Path, lines: np.ndarray, *, allow_nan: bool) -> pd.Series:
    num = pd.to_numeric(values, errors="coerce")
    bad = (num.isna() & values.notna() & (values.astype(str).str.strip() != "")) | ~np.isfinite(num.fillna(0))
    if not allow_nan:
        bad |= num.isna()
    if bad.any():
        shown = ", ".join(f"line {ln} ({values.iloc[i]!r})" for i, ln in enumerate(lines) if bad.iloc[i])
        raise ScreenFormatError(f"{path}: {what} is not a finite number at {shown[:400]}")
    return num.astype(float)


def read_context_screen(path: str | os.PathLike, *, name: str | None = None) -> ContextScreen:
    """Read a long `gene,context,score[,se]` table or a MAGeCK-style multi-context summary (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ScreenFormatError(f"screen file {str(path)!r} does not exist")
    sep = "\t" if path.suffix in {".txt", ".tsv"} or path.name.endswith((".txt.gz", ".tsv.gz")) else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ScreenFormatError(f"{path}: not a readable table ({e})") from None
    cols = {c.strip().lower(): c for c in df.columns}
    lines = df.index.to_numpy() + 2
    if {"gene", "context", "score"} <= set(cols):
        long = pd.DataFrame({"gene": df[cols["gene"]], "context": df[cols["context"]],
                             "score": _numeric(df[cols["score"]], "score", path, lines, allow_nan=False),
                             "se": _numeric(df[cols["se"]], "se", path, lines, allow_nan=True) if "se" in cols
                             else np.nan, "line": lines})
    elif any(c.startswith(MAGECK_SCORE) for c in df.columns):
        gene_col = next((cols[k] for k in ("id", "gene") if k in cols), None)
        if gene_col is None:
            raise ScreenFormatError(f"{path}: a MAGeCK-style summary needs a gene column `id` (or `gene`)")
        parts = []
        for col in [c for c in df.columns if c.startswith(MAGECK_SCORE)]:
            ctx = col[len(MAGECK_SCORE):].strip()
            if not ctx:
                raise ScreenFormatError(f"{path}: column {col!r} names no context")
            score = _numeric(df[col], col, path, lines, allow_nan=True)
            se_col = MAGECK_SE + ctx
            se = _numeric(df[se_col], se_col, path, lines, allow_nan=True) if se_col in df.columns else np.nan
            part = pd.DataFrame({"gene": df[gene_col], "context": ctx, "score": score, "se": se, "line": lines})
            parts.append(part[score.notna().to_numpy()])
        long = pd.concat(parts, ignore_index=True)
    else:
        raise ScreenFormatError(f"{path}: unrecognised multi-context screen (columns {list(df.columns)[:6]}); expected "
                                f"a long table `gene,context,score[,se]` or a MAGeCK-style summary with "
                                f"`id` and `{MAGECK_SCORE}<context>` columns")
    if long.empty:
        raise ScreenFormatError(f"{path}: no data rows")
    long["gene"] = long["gene"].astype("string").str.strip().str.upper()
    long["context"] = long["context"].astype("string").str.strip()
    empty = long["gene"].isna() | (long["gene"] == "") | long["context"].isna() | (long["context"] == "")
    if empty.any():
        raise ScreenFormatError(f"{path}: empty gene or context at line(s) {', '.join(map(str, long['line'][empty][:10]))}")
    if (long["se"] < 0).any():
        raise ScreenFormatError(f"{path}: negative standard error at line(s) "
                                f"{', '.join(map(str, long['line'][long['se'] < 0][:10]))}")
    dup = long.duplicated(["gene", "context"], keep=False)
    if dup.any():
        d = long[dup].head(10)
        raise ScreenFormatError(f"{path}: (gene, context) listed more than once: " + ", ".join(
            f"{g} in {c} (line {ln})" for g, c, ln in zip(d["gene"], d["context"], d["line"])))
    table = long.drop(columns="line").astype({"gene": str, "context": str}).reset_index(drop=True)
    return ContextScreen(name or path.name.split(".")[0], table)


def load_gwt(table: str = "polarization", *, signature: str = "activation", data_dir=None) -> ContextScreen:
    """A GWT CD4+ T-cell coefficient table as a ContextScreen: `table` `polarization` (signature `activation` or
    `ota`, contexts Rest / Stim8hr / Stim48hr) or `aging` (signature `CD4T`, contexts K562 and the three)."""
    from perturbloop.data.registry import resolve

    if table not in GWT_TABLES:
        raise ConfigError(f"unknown GWT table {table!r}; choose {', '.join(GWT_TABLES)}")
    path, = resolve(GWT_TABLES[table], data_dir)
    df = pd.read_csv(path, index_col=0)
    sigs = sorted(set(df["signature"]))
    if signature not in sigs:
        raise ConfigError(f"GWT {table} table has no signature {signature!r}; it has {', '.join(sigs)}")
    df = df[df["signature"] == signature]
    long = pd.DataFrame({"gene": df["regulator"].astype(str).str.upper(), "context": df["celltype"].astype(str),
                         "score": df["coef_mean"].astype(float), "se": df["coef_sem"].astype(float)})
    long = long.dropna(subset=["score"]).drop_duplicates(["gene", "context"], keep="first").reset_index(drop=True)
    return ContextScreen(f"gwt_{table}_{signature}", long)


def context_list(names: Sequence[str], costs: Sequence[float] | None = None,
                 hours: dict[str, float | None] | None = None) -> list[Context]:
    """Contexts from names and costs (one per name, > 0), hours from `hours` (default: the GWT timepoints)."""
    names = [n.strip() for n in names]
    if not names or any(not n for n in names):
        raise ConfigError("contexts: name at least one context (comma-separated, none empty)")
    if len(set(names)) != len(names):
        raise ConfigError(f"contexts: a context is named twice in {', '.join(names)}")
    costs = [1.0] * len(names) if costs is None else list(costs)
    if len(costs) != len(names):
        raise ConfigError(f"costs: {len(costs)} cost(s) for {len(names)} context(s) ({', '.join(names)}); "
                          "give one cost per context")
    bad = [f"{n}={c}" for n, c in zip(names, costs) if not (np.isfinite(c) and c > 0)]
    if bad:
        raise ConfigError(f"costs: each context's cost must be a positive number, got {', '.join(bad)}")
    hours = GWT_HOURS if hours is None else hours
    return [Context(n, float(c), hours.get(n)) for n, c in zip(names, costs)]


class ContextSpace:
    """The design space of (gene, context) pairs: `G` genes x `C` contexts, in gene-major order.

    Features of pair `(g, c)`: the gene's feature row `gene_X[g]` (`G x d`, float64) and the context index `c`
    (the multi-task models' task column). `offered[g, c]` is False where the pair cannot be run (a simulated world
    never offers an unmeasured pair). Labels: `GENE@@context`.
    """

    def __init__(self, genes: Sequence[str], gene_X, contexts: Sequence[Context], offered: np.ndarray | None = None):
        import torch

        self.genes = list(genes)
        self.contexts = list(contexts)
        self.gene_X = torch.as_tensor(gene_X, dtype=torch.float64)
        if self.gene_X.shape[0] != len(self.genes):
            raise ValueError(f"gene_X has {self.gene_X.shape[0]} rows for {len(self.genes)} genes")
        self.offered = np.ones((len(self.genes), len(self.contexts)), bool) if offered is None else np.asarray(offered, bool)
        self._gene_index = {g: i for i, g in enumerate(self.genes)}
        self._ctx_index = {c.name: i for i, c in enumerate(self.contexts)}

    @property
    def context_names(self) -> list[str]:
        return [c.name for c in self.contexts]

    @property
    def costs(self) -> np.ndarray:
        return np.array([c.cost for c in self.contexts])

    def context_index(self, name: str) -> int:
        try:
            return self._ctx_index[name]
        except KeyError:
            raise ConfigError(f"unknown context {name!r}; the design space has {', '.join(self.context_names)}") from None

    def gene_index(self, gene: str) -> int:
        try:
            return self._gene_index[gene]
        except KeyError:
            raise KeyError(f"gene {gene!r} is not in the design space") from None

    def __len__(self) -> int:
        return len(self.genes) * len(self.contexts)

    def label(self, g: int, c: int) -> str:
        return pair_label(self.genes[g], self.contexts[c].name)

    def parse(self, label: str) -> tuple[int, int]:
        """`GENE@@context` -> (gene index, context index); a KeyError/ConfigError naming what is unknown."""
        gene, ctx = split_label(label)
        return self.gene_index(gene), self.context_index(ctx)

    # the DesignSpace protocol (perturbloop.design_space), so a campaign's loop fits and stores pairs like any
    # candidate: candidate `i = g * C + c` is gene `g` in context `c`; its feature row is `[gene_X[g], g, c]`
    kind = "contexts"

    @property
    def dim(self) -> int:
        return self.gene_X.shape[1] + 2

    @property
    def labels(self) -> list[str]:
        """Every (gene, context) pair in candidate order, offered or not (`offered_labels`: those a round may run)."""
        return [self.label(g, c) for g in range(len(self.genes)) for c in range(len(self.contexts))]

    @property
    def offered_labels(self) -> list[str]:
        return [self.label(g, c) for g, c in zip(*np.nonzero(self.offered))]

    def labels_at(self, idx) -> list[str]:
        C = len(self.contexts)
        return [self.label(int(i) // C, int(i) % C) for i in idx]

    def indices(self, labels: Sequence[str]):
        """Candidate indices (`g * C + c`) of `GENE@@context` labels; a KeyError naming one outside the space."""
        import torch

        out = []
        for lab in labels:
            try:
                g, c = self.parse(lab)
            except (KeyError, ValueError) as e:  # a ConfigError is a ValueError
                raise KeyError(f"{lab!r} is not in the design space ({e})") from None
            out.append(g * len(self.contexts) + c)
        return torch.tensor(out, dtype=torch.long)

    def features(self, idx):
        """`n x (d + 2)` float64: the gene's features, then its gene index and its context index."""
        import torch

        idx = torch.as_tensor(idx, dtype=torch.long)
        C = len(self.contexts)
        g, c = idx // C, idx % C
        return torch.cat([self.gene_X[g], g.to(torch.float64)[:, None], c.to(torch.float64)[:, None]], -1)

    def offset(self, idx) -> None:
        return None

    def measured_mask(self, labels: Sequence[str]) -> np.ndarray:
        """`G x C` bool: True for the pairs among `labels` (labels outside the space are ignored)."""
        out = np.zeros((len(self.genes), len(self.contexts)), bool)
        for lab in labels:
            try:
                g, c = self.parse(lab)
            except (KeyError, ValueError):
                continue
            out[g, c] = True
        return out

    def check_allowed(self, allowed: Sequence[str] | None) -> list[int]:
        """Indices of the contexts a round may use (all when `allowed` is None)."""
        if allowed is None:
            return list(range(len(self.contexts)))
        if not allowed:
            raise ConfigError("a round must be allowed at least one context")
        return [self.context_index(c) for c in allowed]


def context_space(screen: ContextScreen, contexts: Sequence[Context], *, features: Sequence[str] = ("go",),
                  data_dir=None, go_dims: int = 32) -> ContextSpace:
    """The design space over the screen's genes measured in at least one of `contexts`, gene features from
    `perturbloop.features.build_gene_pool` (standardised), offered = measured in the screen."""
    from perturbloop.features import build_gene_pool

    names = [c.name for c in contexts]
    sub = screen.restrict(names)
    genes = sub.genes
    pool = build_gene_pool(genes, features=features, data_dir=data_dir, go_dims=go_dims)
    offered = pd.crosstab(sub.table["gene"], sub.table["context"]).reindex(index=genes, columns=names, fill_value=0)
    return ContextSpace(genes, pool.X, contexts, offered.to_numpy() > 0)


def load_context_screen(name_or_path: str | os.PathLike, data_dir=None) -> ContextScreen:
    """A registry table (`gwt_cd4_polarization` [activation], `gwt_cd4_polarization/ota`, `gwt_cd4_aging`) or a
    multi-context screen file (`read_context_screen`)."""
    text = str(name_or_path)
    base, _, signature = text.partition("/")
    by_name = {v: k for k, v in GWT_TABLES.items()}
    if base in by_name and not Path(text).exists():
        table = by_name[base]
        return load_gwt(table, signature=signature or {"polarization": "activation", "aging": "CD4T"}[table],
                        data_dir=data_dir)
    return read_context_screen(name_or_path)
