"""Replay of a multi-context screen: measuring (gene, context) reveals that pair's published effect, with noise.

A run of `GENE@@context` returns `y = s(g, c) + e`, `e ~ N(0, se(g, c)^2)` with `se` the source's reported
standard error (no noise where it reports none, or with `noise=False`), drawn from a generator seeded by
(seed, label, attempt): the same campaign state sees the same values after a restart, a repeated run a new draw.
A pair the screen did not measure, an unknown context or a label that is not `GENE@@context` fails with its
reason. The truth (`truth`, `hits`) is for scoring only.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from perturbloop.contexts import ContextScreen, pair_label, split_label
from simulators.world import Measurement, top_by_magnitude


class ContextReplay:
    """The World protocol over a `ContextScreen` restricted to `contexts` (see module docstring).

    Hits (scoring only): `hits` if given, else the top `hit_fraction` of genes by |score| in `target`.
    """

    readouts = ["score"]

    def __init__(self, screen: ContextScreen, contexts: Sequence[str], target: str, *, seed: int = 0,
                 noise: bool = True, hit_fraction: float = 0.05, hits: set[str] | None = None):
        screen.check_contexts([*contexts, target])
        if target not in contexts:
            raise ValueError(f"target context {target!r} is not among the contexts {', '.join(contexts)}")
        self.screen = screen.restrict(list(contexts))
        self.name = self.screen.name
        self.contexts = list(contexts)
        self.target = target
        self.seed = seed
        self.noise = noise
        t = self.screen.table
        self._score = dict(zip(map(pair_label, t["gene"], t["context"]), t["score"].astype(float)))
        self._se = dict(zip(map(pair_label, t["gene"], t["context"]), t["se"].astype(float)))
        self._attempts: dict[str, int] = {}
        target_scores = self.screen.scores(target)
        if hits is None:
            hits = set(top_by_magnitude(target_scores, hit_fraction).index)
        elif missing := sorted(set(hits) - set(target_scores.index)):
            raise ValueError(f"hit gene(s) not measured in the target context {target!r}: {', '.join(missing[:10])}")
        self.hits = frozenset(hits)  # hit genes in the target context (scoring only)

    @property
    def candidates(self) -> list[str]:
        """Every measured (gene, context) pair, as `GENE@@context`."""
        return list(self._score)

    def measure(self, labels: Sequence[str]) -> dict[str, Measurement]:
        out: dict[str, Measurement] = {}
        for label in labels:
            try:
                gene, ctx = split_label(label)
            except ValueError as e:
                out[label] = Measurement.failed(str(e))
                continue
            if ctx not in self.contexts:
                out[label] = Measurement.failed(f"unknown context {ctx!r}; this world has {', '.join(self.contexts)}")
            elif label not in self._score:
                out[label] = Measurement.failed(f"{gene} was not measured in context {ctx} of {self.name}")
            else:
                out[label] = Measurement(np.array([self._draw(label)]))
        return out

    def _draw(self, label: str) -> float:
        attempt = self._attempts.get(label, 0)
        self._attempts[label] = attempt + 1
        se = self._se[label]
        if not self.noise or not np.isfinite(se) or se == 0:
            return self._score[label]
        rng = np.random.default_rng([self.seed, zlib.crc32(label.encode()), attempt])
        return float(self._score[label] + se * rng.standard_normal())

    def truth(self, labels: Sequence[str]) -> pd.Series:
        """Published scores of `labels` (NaN where not measured); scoring only."""
        return pd.Series([self._score.get(lab, np.nan) for lab in labels], index=list(labels), dtype=float)


def context_world(config, data_dir=None, *, genes: Sequence[str] | None = None) -> ContextReplay:
    """The world of a campaign across contexts (`world.kind = "contexts"`): `world.dataset` (a registry table or a
    multi-context screen file) on the `[contexts]` contexts (and `genes` when given), noise seeded by `config.seed`,
    hits the genes of `world.hits` (one a line, `#` comments allowed), else the top `contexts.hit_fraction` in the
    target. An unknown context, or a hit gene not measured in the target, is a ConfigError naming the field."""
    from perturbloop.contexts import load_context_screen
    from perturbloop.errors import ConfigError

    t = config.contexts
    names = [c.name for c in t.context_list()]
    screen = load_context_screen(config.world.dataset, data_dir)
    unknown = [c for c in names if c not in screen.contexts]
    if unknown:
        raise ConfigError(f"contexts.contexts: unknown context(s) {', '.join(map(repr, unknown))}: screen "
                          f"{screen.name!r} has {', '.join(screen.contexts)}")
    hits = None
    if config.world.hits:
        from pathlib import Path

        from perturbloop.genes import read_gene_file

        path = Path(config.world.hits).expanduser()
        if not path.is_file():
            raise ConfigError(f"world.hits: file {config.world.hits!r} does not exist")
        hits = {g.upper() for g in read_gene_file(path)}
        if not hits:
            raise ConfigError(f"world.hits: {config.world.hits} lists no genes")
    try:
        return ContextReplay(screen.restrict(names, genes), names, t.target, seed=config.seed,
                             hit_fraction=t.hit_fraction, hits=hits)
    except ValueError as e:
        raise ConfigError(f"world.hits: {e}") from None
