"""Training worlds from real screens (leave-one-screen-out) and synthetic screens.

A real training world is a screen with the pool a campaign on it would have (GO + prior-screen
features), except that the prior screens also leave out every held-out screen: with target `T`
held out, no training world, feature or reward ever reads `T`'s scores (nor those of a screen
sharing a source file with `T`, e.g. Sanchez tau up / down). The round-matched GP
hyperparameters of each world (`env.fit_world_gp`) are cached on disk by content.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np
import torch

from acquisition.rl.env import GPParams, TrainWorld, fit_world_gp, hits_of, synthetic_scores
from perturbloop.data import load_screen
from perturbloop.data.priors import default_prior_screens, same_source
from perturbloop.data.registry import cache_dir
from perturbloop.errors import ConfigError

FEATURES = ("go", "screens")


def _gp_cached(X: torch.Tensor, feature_names: Sequence[str], y: torch.Tensor, make_surrogate, rounds: int, batch: int,
               seed: int) -> list[GPParams]:
    h = hashlib.sha256()
    for a in (X.numpy(), y.numpy()):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps([list(feature_names), rounds, batch, seed]).encode())
    path = cache_dir() / "rl_gp" / f"{h.hexdigest()[:24]}.json"
    if path.is_file():
        return [GPParams(**p) for p in json.loads(path.read_text())]
    params = fit_world_gp(X, feature_names, y, make_surrogate, rounds=rounds, batch=batch, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(p) for p in params]))
    tmp.replace(path)
    return params


def real_world(name: str, *, holdout: Sequence[str] = (), data_dir=None, make_surrogate: Callable, rounds: int = 5,
               batch: int = 128, seed: int = 0) -> TrainWorld:
    """The screen `name` as a training world; prior screens = registry screens other than it and the held-out ones."""
    from perturbloop.features import build_gene_pool

    if any(same_source(name, h) for h in holdout):
        raise ConfigError(f"--worlds: {name} is held out (or shares a source file with a held-out screen)")
    screen = load_screen(name, data_dir)
    priors = default_prior_screens(name, holdout)
    pool = build_gene_pool(screen.genes, features=FEATURES, prior_screens=[load_screen(p, data_dir) for p in priors],
                           data_dir=data_dir)
    y = torch.tensor(screen.scores.abs().reindex(pool.labels).to_numpy(), dtype=torch.float64)
    gp = _gp_cached(pool.X, pool.feature_names, y, make_surrogate, rounds, batch, seed)
    return TrainWorld(screen.name, pool.X, pool.feature_names, y, hits_of(y), gp)


def synthetic_world(base: TrainWorld, seed: int, *, make_surrogate: Callable, rounds: int = 5,
                    batch: int = 128) -> TrainWorld:
    """A synthetic screen (`env.synthetic_scores`) on the gene pool and prior features of `base`."""
    y = torch.tensor(np.abs(synthetic_scores(base.X, base.feature_names, seed)[0]), dtype=torch.float64)
    gp = _gp_cached(base.X, base.feature_names, y, make_surrogate, rounds, batch, seed)
    return TrainWorld(f"synthetic{seed}@{base.name}", base.X, base.feature_names, y, hits_of(y), gp, synthetic=True)


def build_worlds(names: Sequence[str], *, holdout: Sequence[str] = (), synthetic: int = 0, data_dir=None,
                 make_surrogate: Callable, rounds: int = 5, batch: int = 128, seed: int = 0,
                 on_world: Callable[[TrainWorld], None] | None = None) -> list[TrainWorld]:
    """Real worlds `names` (minus anything held out) plus `synthetic` synthetic worlds spread over them."""
    kw = {"make_surrogate": make_surrogate, "rounds": rounds, "batch": batch}
    out: list[TrainWorld] = []
    for n in names:
        if not any(same_source(n, h) for h in holdout):
            out.append(real_world(n, holdout=holdout, data_dir=data_dir, seed=seed, **kw))
            if on_world:
                on_world(out[-1])
    if not out:
        raise ConfigError("--worlds: no training screen is left once the held-out screens are removed")
    n_real = len(out)
    for i in range(synthetic):
        out.append(synthetic_world(out[i % n_real], seed * 1000 + i, **kw))
        if on_world:
            on_world(out[-1])
    return out
