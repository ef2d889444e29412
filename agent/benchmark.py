"""Simulated screen campaigns (the BioDiscoveryAgent protocol) composed from plain parameters.

A `WorldSpec` names the screen, hits and features; a `PolicySpec` the policy. `build_screen_world`
makes the candidate pool and the replayed screen once per process (cached), so a sweep task can run
in any worker process without shipping tensors; `simulated_campaign_row` runs one policy and seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from acquisition import make_policy
from agent.simulate import simulate_campaign
from perturbloop.errors import ConfigError, PerturbloopError
from surrogates import make_surrogate


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
    aggregate: str | None = None  # rows of the screen file naming one gene: error | mean | first (load_screen)


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
class ScreenWorld:
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
def build_screen_world(spec: WorldSpec) -> ScreenWorld:
    from perturbloop.data import load_screen
    from perturbloop.data.priors import prior_screen_names
    from perturbloop.features import build_gene_pool, essential_genes
    from simulators import ScreenReplay

    screen = load_screen(spec.screen, spec.data_dir, aggregate=spec.aggregate)
    if spec.nonessential:
        ess = essential_genes(spec.data_dir)
        screen = screen.subset([g for g in screen.genes if g not in ess])
    priors = []
    names: list[str] = []
    if "screens" in spec.features:
        names = prior_screen_names(spec.screen, None if spec.prior_screens is None else list(spec.prior_screens),
                                   "--prior-screens")
        priors = [load_screen(n, spec.data_dir) for n in names]
    if "embedding" in spec.features and not spec.embeddings:
        raise ConfigError("--features embedding needs --embeddings FILE (CSV: gene, then one column per dimension; or NPY)")
    if spec.target not in ("abs", "hit"):
        raise ConfigError(f"--target: unknown target {spec.target!r}; choose abs or hit")
    pool = build_gene_pool(screen.genes, features=list(spec.features), prior_screens=priors, data_dir=spec.data_dir,
                           embeddings=spec.embeddings)
    hits = read_hits_file(spec.hits_file, screen.genes, spec.data_dir) if spec.hits_file else None
    replay = ScreenReplay(screen, hit_fraction=spec.hit_fraction, hits=hits)
    return ScreenWorld(pool, replay, names)


def simulated_campaign_row(world_spec: WorldSpec, policy: PolicySpec, seed: int, rounds: int, batch: int) -> dict:
    """One campaign of one policy and seed; returns a results row."""
    torch.set_num_threads(max(1, int(os.environ.get("PERTURBLOOP_TASK_THREADS", "0")) or torch.get_num_threads()))
    world = build_screen_world(world_spec)
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
            "round_seconds": run.round_seconds, "n_hits": len(world.replay.hits & set(pool.labels)), "picks": run.picks}
