"""Evaluation sweeps: many simulated campaigns (policies x seeds) as parallel Prefect tasks.

The BioDiscoveryAgent protocol: `rounds` x `batch` genes; hits = the given hit list, else
the top 5% of genes by |score|; hit ratio = distinct hits picked over all rounds / all hits;
round 1 is chosen from priors alone; `nonessential` drops core-essential genes (CEGv2) from
hits and picks. Tasks run on Prefect's thread pool, or on a Dask cluster via prefect-dask
(`runner="dask"`: a local cluster, or `address` of an existing scheduler).

Each task rebuilds its world from plain parameters (cached per process), so it can run in any
worker process without shipping tensors.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from perturbloop.errors import ConfigError, PerturbloopError

RECOMMENDED = "greedy"  # most consistent across the six screens (benchmarks/RESULTS.md); chosen on those same screens
ALIASES = {"best": RECOMMENDED}


@dataclass(frozen=True)
class WorldSpec:
    """Everything that defines a simulated screen campaign's world and candidate pool."""

    screen: str
    hits_file: str | None = None
    nonessential: bool = False
    features: tuple[str, ...] = ("go", "screens")
    prior_screens: tuple[str, ...] | None = None
    data_dir: str | None = None
    hit_fraction: float = 0.05
    target_transform: str = "log"
    embeddings: str | None = None  # a gene-embedding CSV/NPY for feature "embedding"
    target: str = "abs"  # what the surrogate models: abs = |score| (log-transformed), hit = the lab's hit call (0/1)
    fit_iter: int | None = None  # GP hyperparameter iterations per round (None: surrogates.gp.MAX_FIT_ITER)


@dataclass
class PolicySpec:
    """`kind[:beta]` on the command line (e.g. `ucb:0.25`); `best` is the recommended policy;
    `rl:PATH` (and the permuted-feedback control `rl_permuted:PATH`) a trained RL policy checkpoint,
    labelled `rl:<file stem>`."""

    label: str
    kind: str
    beta: float = 4.0
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> PolicySpec:
        from acquisition import POLICIES

        label = text.strip()
        resolved = ALIASES.get(label, label)
        kind, _, arg = resolved.partition(":")
        if kind not in POLICIES:
            raise ConfigError(f"--policy: unknown policy {kind!r}; available: {', '.join([*POLICIES, *ALIASES])}")
        if kind in ("rl", "rl_permuted"):
            if not arg:
                raise ConfigError(f"--policy {text!r}: give the checkpoint, e.g. {kind}:policy.pt")
            if not Path(arg).expanduser().is_file():
                raise ConfigError(f"--policy {text!r}: checkpoint {arg!r} does not exist")
            return cls(f"{kind}:{Path(arg).stem}", kind, path=str(Path(arg).expanduser().resolve()))
        beta = 4.0
        if arg:
            try:
                beta = float(arg)
            except ValueError:
                raise ConfigError(f"--policy {text!r}: the part after ':' must be a number (UCB beta)") from None
        return cls(label, kind, beta)


@dataclass
class World:
    pool: object
    replay: object
    prior_names: list[str] = field(default_factory=list)


def read_hits_file(path: str, genes: list[str], data_dir) -> set[str]:
    """One hit gene per line (`#` comments allowed); symbols mapped to HGNC; all must be in the screen."""
    from perturbloop.errors import UnknownGeneError
    from perturbloop.genes import gene_index

    p = Path(path)
    if not p.is_file():
        raise PerturbloopError(f"--hits: file {path!r} does not exist")
    raw = [line.split(",")[0].strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if raw and raw[0].lower() in ("gene", "genes", "hit", "hits"):
        raw = raw[1:]
    if not raw:
        raise PerturbloopError(f"--hits: {path} lists no genes")
    mapped = gene_index(data_dir).canonical(raw, context=f"in hits file {path}", allowed=genes)
    in_screen = set(genes)
    outside = [r for r, m in zip(raw, mapped) if m not in in_screen]
    if outside:
        raise UnknownGeneError(outside, f"in hits file {path} (not in the screen)")
    return set(mapped)


@lru_cache(maxsize=8)
def build_world(spec: WorldSpec) -> World:
    from agent.context import default_prior_screens, derived_from
    from perturbloop.data import REGISTRY, load_screen
    from perturbloop.features import build_gene_pool, essential_genes
    from simulators import ScreenReplay

    screen = load_screen(spec.screen, spec.data_dir)
    if spec.nonessential:
        ess = essential_genes(spec.data_dir)
        screen = screen.subset([g for g in screen.genes if g not in ess])
    priors = []
    names: list[str] = []
    if "screens" in spec.features:
        names = list(spec.prior_screens) if spec.prior_screens is not None else default_prior_screens(spec.screen)
        leak = [n for n in names if n == spec.screen or (spec.screen in REGISTRY and n in REGISTRY and derived_from(n, spec.screen))]
        if leak:
            raise ConfigError(f"--prior-screens: {', '.join(leak)} is the target screen (or derived from it)")
        priors = [load_screen(n, spec.data_dir) for n in names]
    if "embedding" in spec.features and not spec.embeddings:
        raise ConfigError("--features embedding needs --embeddings FILE (CSV: gene, then one column per dimension; or NPY)")
    if spec.target not in ("abs", "hit"):
        raise ConfigError(f"--target: unknown target {spec.target!r}; choose abs or hit")
    pool = build_gene_pool(screen.genes, features=list(spec.features), prior_screens=priors, data_dir=spec.data_dir,
                           embeddings=spec.embeddings)
    hits = read_hits_file(spec.hits_file, screen.genes, spec.data_dir) if spec.hits_file else None
    replay = ScreenReplay(screen, hit_fraction=spec.hit_fraction, hits=hits)
    return World(pool, replay, names)


@task(name="simulated-campaign", cache_policy=NO_CACHE)
def simulated_campaign(world_spec: WorldSpec, policy: PolicySpec, seed: int, rounds: int, batch: int) -> dict:
    """One campaign of one policy and seed; returns a results row."""
    import math

    from acquisition import make_policy
    from agent.simulate import simulate_campaign
    from surrogates import make_surrogate

    torch.set_num_threads(max(1, int(os.environ.get("PERTURBLOOP_TASK_THREADS", "0")) or torch.get_num_threads()))
    world = build_world(world_spec)
    pool = world.pool
    bounds = torch.stack([pool.X.min(0).values, pool.X.max(0).values])
    make = None
    hit_calls = world_spec.target == "hit"
    transform = "none" if hit_calls else world_spec.target_transform
    if policy.kind not in ("random", "coreset", "prior"):
        def make(params):  # noqa: ANN001, ANN202
            kw = {"max_iter": world_spec.fit_iter} if world_spec.fit_iter else {}
            return make_surrogate("gp", bounds=bounds, init_params=params, target_transform=transform, **kw)
    run = simulate_campaign(pool, world.replay, make_policy(policy.kind, seed=seed, beta=policy.beta, policy_path=policy.path,
                                                                rounds=rounds), make,
                            rounds=rounds, batch_size=batch, seed=seed, objective=abs, hit_calls=hit_calls)
    return {"policy": policy.label, "seed": seed, "hit_ratio": run.hit_ratio, "per_round": run.per_round,
            "round_seconds": run.round_seconds, "n_hits": len(world.replay.hits & set(pool.labels))}


def _task_runner(runner: str, address: str | None):
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": int(os.environ.get("PERTURBLOOP_DASK_WORKERS", "2")),
                                              "threads_per_worker": 1, "processes": True})
    if runner == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=int(os.environ.get("PERTURBLOOP_THREADS", "1")))
    raise ConfigError(f"--runner: unknown runner {runner!r}; choose local or dask")


def run_sweep(world_spec: WorldSpec, policies: list[PolicySpec], seeds: int, rounds: int, batch: int,
              runner: str = "local", address: str | None = None) -> list[dict]:
    """Run every policy x seed as tasks of one Prefect flow; rows in (policy, seed) order."""
    build_world(world_spec)  # fail fast on bad input, before any task starts

    @flow(name="perturbloop-benchmark", task_runner=_task_runner(runner, address), log_prints=False)
    def sweep() -> list[dict]:
        futures = [simulated_campaign.submit(world_spec, p, s, rounds, batch) for p in policies for s in range(seeds)]
        return [f.result() for f in futures]

    return sweep()


def write_results(path: str | Path, protocol: dict, screen: str, rows: list[dict]) -> tuple[Path, Path]:
    """`results.json` (schema in the module docstring of perturbloop.cli) and a PNG of mean curves beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"protocol": protocol, "screen": screen, "results": rows}, indent=1))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label in dict.fromkeys(r["policy"] for r in rows):
        curves = np.array([r["per_round"] for r in rows if r["policy"] == label])
        xs = protocol["batch"] * np.arange(0, curves.shape[1] + 1)
        mean = np.concatenate([[0.0], curves.mean(0)])
        sd = np.concatenate([[0.0], curves.std(0)])
        ax.plot(xs, mean, marker="o", label=label)
        ax.fill_between(xs, mean - sd, mean + sd, alpha=0.2)
    ax.set_xlabel("genes tested")
    ax.set_ylabel("cumulative hit ratio")
    ax.set_title(f"{screen}: {protocol['rounds']} x {protocol['batch']}, {protocol['seeds']} seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = path.with_suffix(".png")
    fig.savefig(png)
    plt.close(fig)
    return path, png


def summarise(rows: list[dict]) -> list[dict]:
    """Per policy: hit ratio mean and sd over seeds, mean curve, mean and max seconds per round."""
    import numpy as np

    out = []
    for label in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == label]
        hr = np.array([r["hit_ratio"] for r in rs])
        secs = np.array([s for r in rs for s in r["round_seconds"]])
        out.append({"policy": label, "hit_ratio_mean": float(hr.mean()), "hit_ratio_sd": float(hr.std()),
                    "per_round_mean": np.mean([r["per_round"] for r in rs], axis=0).tolist(),
                    "round_seconds_mean": float(secs.mean()), "round_seconds_max": float(secs.max()),
                    "campaign_seconds_mean": float(np.mean([sum(r["round_seconds"]) for r in rs])), "seeds": len(rs)})
    return out
