"""Simulated campaigns for benchmarks, run by the shipped LangGraph loop (agent.runner) against a temporary
store: a benchmark number is the loop's number.

Screens (the BioDiscoveryAgent protocol): a `WorldSpec` names the screen, hits and features; a `PolicySpec`
the policy. `build_screen_world` makes the candidate pool and the replayed screen once per process (cached),
so a sweep task can run in any worker process without shipping tensors; `simulated_campaign_row` runs one
policy and seed. Hit ratio after round `t` = distinct hits picked in rounds 1..t / all hits.

Response campaigns (`campaign_for`): IterPert-style learning curves for singles, Ahlmann-Eltze-style
scoring for pairs. Per seed a held-out test set (`evaluation.test_fraction`, never run) and `initial`
random candidates (pair campaigns know the singles up front: the additive prior); after every ingested
round the refit model is scored on the test set (perturbloop.response_metrics) beside the baselines
(`mean`, `linear`; `additive` for pairs) fitted on the same observations (`<metric>@<baseline>`); objective
`maximize` adds `hit_ratio` and `best_score`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from agent.context import CampaignContext, build_context
from agent.parts import ModelFactory, campaign_policy, genes_in_screen, model_factory, screen_parts
from agent.runner import run_campaign
from lab_adapters import SimulatorLab
from perturbloop.config import CampaignConfig, LabConfig, parse_config
from perturbloop.design_space import DesignSpace, SingleSpace
from perturbloop.errors import ConfigError, PerturbloopError
from perturbloop.genes import read_gene_file
from perturbloop.store import Store
from simulators import ScreenReplay


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
    network: bool = False  # the GP adds the STRING network kernel (surrogate.network; needs feature string/knowledge)
    phenotype: str | None = None  # the scientist's prior (perturbloop.phenotype_prior): picks round 1, one feature
    prior_terms: tuple[str, ...] = ()
    known_positives: tuple[str, ...] = ()
    prior_share: float = 1.0  # share of round 1 from the top of the prior (the rest random)


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
        try:
            return cls(label, kind, float(arg) if arg else 4.0)
        except ValueError:
            raise ConfigError(f"--policy {text!r}: the part after ':' must be a number (UCB beta)") from None


@dataclass
class ScreenWorld:
    pool: SingleSpace
    replay: ScreenReplay


def read_hits_file(path: str, genes: list[str], data_dir) -> set[str]:
    """One hit gene per line (`#` comments allowed); symbols mapped to HGNC; all must be in the screen."""
    p = Path(path)
    if not p.is_file():
        raise PerturbloopError(f"--hits: file {path!r} does not exist")
    raw = read_gene_file(p)
    if not raw:
        raise PerturbloopError(f"--hits: {path} lists no genes")
    return set(genes_in_screen(raw, genes, data_dir, f"hits file {path}"))


@lru_cache(maxsize=8)
def build_screen_world(spec: WorldSpec) -> ScreenWorld:
    """The candidate pool and the replayed screen of `spec`'s campaigns (those of the shipped loop,
    agent.parts.screen_parts), the hits read from `spec.hits_file` when given; built once per process."""
    from perturbloop.data.priors import prior_screen_names

    if "embedding" in spec.features and not spec.embeddings:
        raise ConfigError("--features embedding needs --embeddings FILE (CSV: gene, then one column per dimension; or NPY)")
    if spec.target not in ("abs", "hit"):
        raise ConfigError(f"--target: unknown target {spec.target!r}; choose abs or hit")
    if "screens" in spec.features and spec.prior_screens is not None:
        prior_screen_names(spec.screen, list(spec.prior_screens), "--prior-screens")  # a leak names the option
    parts = screen_parts(benchmark_config(spec, PolicySpec("random", "random"), 0, 1, 1), spec.data_dir)
    replay = parts.world
    if spec.hits_file:
        hits = read_hits_file(spec.hits_file, replay.genes, spec.data_dir)
        replay = ScreenReplay(replay.screen, hit_fraction=spec.hit_fraction, hits=hits)
    return ScreenWorld(parts.space, replay)


def benchmark_config(world_spec: WorldSpec, policy: PolicySpec, seed: int, rounds: int, batch: int) -> CampaignConfig:
    """The campaign a benchmark task runs: the shipped loop's config for this screen, policy and seed."""
    hit_calls = world_spec.target == "hit"
    optional = {"max_iter": world_spec.fit_iter, "network": world_spec.network}  # set only where given
    surrogate = {"kind": "gp", "target": "hit_call" if hit_calls else "value",
                 "target_transform": "none" if hit_calls else world_spec.target_transform,
                 **{k: v for k, v in optional.items() if v}}
    acquisition: dict = {"kind": policy.kind, "beta": policy.beta}
    if policy.path:
        acquisition["policy_path"] = policy.path
    return parse_config({
        "name": f"benchmark-{policy.kind}-{seed}", "rounds": rounds, "batch_size": batch, "seed": seed,
        "data": {"screen": world_spec.screen, "hit_fraction": world_spec.hit_fraction,
                 "nonessential": world_spec.nonessential, "aggregate": world_spec.aggregate},
        "design": {"features": list(world_spec.features), "embeddings": world_spec.embeddings,
                   "prior_screens": None if world_spec.prior_screens is None else list(world_spec.prior_screens),
                   "phenotype": world_spec.phenotype, "prior_terms": list(world_spec.prior_terms),
                   "known_positives": list(world_spec.known_positives) or None,
                   "prior_share": world_spec.prior_share},
        "surrogate": surrogate, "acquisition": acquisition}, "benchmark campaign")


def simulate(config: CampaignConfig, pool: SingleSpace, replay: ScreenReplay, policy,
             make_model: ModelFactory | None) -> tuple[list[dict], list[list[str]]]:
    """Run `config` through the shipped loop against a temporary store, `replay` answering in the simulator
    lab (its hits count, its model is not scored); returns the round rows (agent.report) and the batch
    measured in each round."""
    with tempfile.TemporaryDirectory(prefix="perturbloop-benchmark-") as tmp:
        store = Store(str(Path(tmp) / "benchmark.db"))
        ctx = CampaignContext(config, store, replay, pool, SimulatorLab(replay), policy, make_model, hits=replay.hits)
        rows = run_campaign(config, store, context=ctx).rounds
        picks = [list(store.decision(r.id).final) for r in store.rounds(config.name)]
    return rows, picks


def _set_task_threads(default: int = 0) -> None:
    """Torch threads of a benchmark task: `$PERTURBLOOP_TASK_THREADS` where set (several tasks share the cores), else
    `default` (0: torch's own choice)."""
    threads = int(os.environ.get("PERTURBLOOP_TASK_THREADS") or 0) or default
    if threads > 0:
        torch.set_num_threads(threads)


def simulated_campaign_row(world_spec: WorldSpec, policy: PolicySpec, seed: int, rounds: int, batch: int) -> dict:
    """One campaign of one policy and seed, run by the shipped LangGraph loop against a temporary store (the
    world's pool and replay are built once per process); returns a results row.

    Per round: the cumulative hit ratio, and the seconds of fitting the model and selecting the batch.
    """
    _set_task_threads(default=1)  # a screen task runs on one thread unless told otherwise, as the tables were measured
    world = build_screen_world(world_spec)
    config = benchmark_config(world_spec, policy, seed, rounds, batch)
    rows, picks = simulate(config, world.pool, world.replay, campaign_policy(config, world.replay),
                           model_factory(config, world.pool, data_dir=world_spec.data_dir))
    return {"policy": policy.label, "seed": seed, "hit_ratio": rows[-1]["hit_ratio"],
            "per_round": [r["hit_ratio"] for r in rows],
            "round_seconds": [(r["fit_seconds"] or 0.0) + (r["select_seconds"] or 0.0) for r in rows],
            "n_hits": len(world.replay.hits & set(world.pool.labels)), "picks": picks}


def campaign_for(config: CampaignConfig, policy_kind: str, seed: int, data_dir=None,
                 space: DesignSpace | None = None, *, surrogate_kind: str | None = None) -> dict:
    """One (policy, seed) response campaign from a config (`surrogate_kind`: another model than the config's), run
    by the loop against a temporary store with a fresh world and the seed's split; returns the results row (metrics
    per measured round: after the initial design and after each of the `rounds` rounds)."""
    _set_task_threads()
    update = {"name": f"benchmark-{policy_kind}-{seed}", "seed": seed, "approval": "auto",
              "acquisition": config.acquisition.model_copy(update={"kind": policy_kind}),
              "lab": LabConfig(kind="simulator")}
    if surrogate_kind is not None:
        update["surrogate"] = config.surrogate.model_copy(update={"kind": surrogate_kind})
    run_config = config.model_copy(update=update)
    with tempfile.TemporaryDirectory(prefix="perturbloop-benchmark-") as tmp:
        store = Store(str(Path(tmp) / "benchmark.db"))
        ctx = build_context(run_config, store, data_dir, space=space)
        run_campaign(run_config, store, context=ctx)
        rounds = [r for r in store.rounds(run_config.name) if r.status == "ingested"]
        fits = [store.model_fit(r.id) for r in rounds]
        picks = [list(store.decision(r.id).final) for r in rounds]
        failed = [o.perturbation for o in store.observations(run_config.name, include_failed=True) if o.failed]
    metrics: dict[str, list[float]] = {}
    for f in fits:
        for k, v in (f.metrics or {}).items():
            if k != "n_measured":
                metrics.setdefault(k, []).append(float(v))
    return {"policy": policy_kind, "seed": seed, "metrics": metrics,
            "round_seconds": [f.fit_seconds + f.select_seconds for f in fits[1:]],
            "n_observed": [int((f.metrics or {}).get("n_measured", 0)) for f in fits], "picks": picks,
            "failed": failed, "n_test": len(ctx.split.test), "n_candidates": len(ctx.space), "n_hits": len(ctx.hits)}


# a campaign across contexts, per goal (contexts.goal): variant -> (model, policy, target only); model None: the
# config's model (unused by the policy). Target only: the rounds may use the target context alone (what the other
# contexts' data, from the initial design, adds to the same model).
CONTEXT_VARIANTS: dict[str, dict[str, tuple[str | None, str, bool]]] = {
    "hits": {"multitask": ("multitask", "cost_aware", False), "multitask_target": ("multitask", "cost_aware", True),
             "independent": ("independent", "cost_aware", False), "target_gp": ("independent", "cost_aware", True),
             "pooled": ("pooled", "cost_aware", False), "random": (None, "random", False),
             "cheap_first": (None, "cheap_first", False)},
    "matrix": {"multitask": ("multitask", "variance", False), "multitask_random": ("multitask", "random_pairs", False),
               "multitask_icm_random": ("multitask_icm", "random_pairs", False),
               "independent_random": ("independent", "random_pairs", False),
               "pooled_random": ("pooled", "random_pairs", False)},
    "specific": {"multitask": ("multitask", "specific", False), "independent": ("independent", "specific", False),
                 "pooled": ("pooled", "specific", False), "random": (None, "random_genes", False)}}
CHEAP_CONTEXT = "K562"  # the "K562 first, then T cells" heuristic runs where the contexts include it


def context_variants(config: CampaignConfig) -> list[str]:
    """The variants a campaign across contexts is benchmarked with by default. Goal `hits`: the multi-task model,
    both baselines (independent per-context GPs, one pooled GP) with the same cost-aware picks, random target picks,
    and `cheap_first` where a K562 context exists; goals `matrix` and `specific`: every variant of the goal;
    `contexts.variants` when the config names them."""
    t = config.contexts
    if t.variants or t.goal != "hits":
        return list(t.variants or CONTEXT_VARIANTS[t.goal])
    return ["multitask", "independent", "pooled", "random"] + (["cheap_first"] if CHEAP_CONTEXT in t.contexts else [])


def check_context_variants(config: CampaignConfig, variants: Sequence[str]) -> None:
    """A ConfigError naming the variants the campaign's goal does not have."""
    goal = config.contexts.goal
    unknown = [v for v in variants if v not in CONTEXT_VARIANTS[goal]]
    if unknown:
        raise ConfigError(f"unknown contexts variant(s) {', '.join(map(repr, unknown))} for goal {goal!r}; choose from "
                          f"{', '.join(CONTEXT_VARIANTS[goal])}")
    if "cheap_first" in variants and len(config.contexts.contexts) < 2:
        raise ConfigError("variant 'cheap_first' needs a context besides the target")


def contexts_row(config: CampaignConfig, variant: str, seed: int, data_dir=None,
                 space: DesignSpace | None = None) -> dict:
    """One variant and seed of a campaign across contexts, run by the loop (`campaign_for`); the row of
    `perturbloop.benchmark_report.summarise_contexts`: target hits found, cost spent (per context) and the goal's
    scores (`errors` per context for `matrix`, `found` for `specific`) after the initial design and after each
    round."""
    check_context_variants(config, [variant])
    model, policy, target_only = CONTEXT_VARIANTS[config.contexts.goal][variant]
    if target_only:
        config = config.model_copy(update={"contexts": config.contexts.model_copy(
            update={"allowed": [config.contexts.target]})})
    raw = campaign_for(config, policy, seed, data_dir, space, surrogate_kind=model)
    m, names = raw["metrics"], config.contexts.contexts
    curve = []
    for i in range(len(m["cost_spent"])):
        pt = {"round": i, "cost": m["cost_spent"][i], "hits_found": int(m["hits_found"][i]),
              "spend": {c: m[f"spent:{c}"][i] for c in names}}
        if "specific_found" in m:
            pt.update(found=int(m["specific_found"][i]), n_specific=int(m["n_specific"][i]))
        errors = {c: {"nrmse": m[f"nrmse:{c}"][i], "pearson": m[f"pearson:{c}"][i]}
                  for c in names if f"nrmse:{c}" in m and len(m[f"nrmse:{c}"]) == len(m["cost_spent"])}
        if errors:
            pt["errors"] = errors
        curve.append(pt)
    last = curve[-1]
    row = {"policy": variant, "seed": seed, "goal": config.contexts.goal, "n_hits": raw["n_hits"],
           "hits_found": last["hits_found"], "hit_ratio": last["hits_found"] / max(1, raw["n_hits"]),
           "cost": last["cost"], "hits_per_100_cost": 100 * last["hits_found"] / last["cost"] if last["cost"] else 0.0,
           "spend": last["spend"], "failures": len(raw["failed"]), "curve": curve,
           "round_seconds": raw["round_seconds"], "picks": raw["picks"]}
    corr = {c: m[f"corr:{c}"][-1] for c in names if f"corr:{c}" in m}
    if corr:
        row["correlation_with_target"] = corr  # the multi-task model's, fitted for the last round
    row.update({k: last[k] for k in ("found", "n_specific", "errors") if k in last})
    return row


def contexts_sweep(config: CampaignConfig, data_dir=None, *, variants: Sequence[str] | None = None,
                   on_seed: Callable[[list[dict], int], None] | None = None) -> list[dict]:
    """Every variant x seed (seeds 0..`evaluation.seeds`-1) in this process, on one design space built once; rows
    in (seed, variant) order, `on_seed(rows so far, seeds done)` after each seed (a run cut short keeps its whole
    seeds)."""
    variants = list(variants or context_variants(config))
    check_context_variants(config, variants)
    with tempfile.TemporaryDirectory(prefix="perturbloop-benchmark-") as tmp:  # one design space for every run
        space = build_context(config, Store(str(Path(tmp) / "space.db")), data_dir).space
    rows: list[dict] = []
    for s in range(config.evaluation.seeds):
        rows += [contexts_row(config, v, s, data_dir, space) for v in variants]
        if on_seed is not None:
            on_seed(rows, s + 1)
    return rows


PAIR_POLICIES = {"best": "program", "program": "program", "random": "random", "uncertainty": "uncertainty",
                 "diversity": "diversity", "coreset": "coreset"}  # best: UCB on |score| (the Norman example's policy)
PAIR_SURROGATE = "gp"  # the low-rank GP (exact posterior); the ensemble is ~10x slower per round on 2 cores


def pair_screen_config(screen: str, *, hits: str | None, rounds: int, batch: int, seeds: int,
                       policies: Sequence[str], features: Sequence[str] = ("go",), hit_fraction: float = 0.05,
                       fit_iter: int | None = None) -> CampaignConfig:
    """The combinatorial protocol on a pair screen file (BioDiscoveryAgent's two-gene task): `rounds` x `batch`
    pairs, round 1 random (the `initial` design), then `rounds - 1` rounds of the policy; features = the genes'
    features pooled over the pair plus the singles' additive prior where the file has single-gene rows; hits =
    the `hits` file's pairs, else the top `hit_fraction` by |score|; one pair held out (a response campaign
    scores its model on held-out pairs; holding out more would hide hits)."""
    unknown = [p for p in policies if p not in PAIR_POLICIES]
    if unknown:
        raise ConfigError(f"--policy: {', '.join(unknown)} not available for a pair screen; choose from "
                          f"{', '.join(PAIR_POLICIES)}")
    if rounds < 2:
        raise ConfigError("--rounds: a pair screen campaign needs at least 2 rounds (round 1 is the random design)")
    kinds = list(dict.fromkeys(PAIR_POLICIES[p] for p in policies))
    surrogate: dict = {"kind": PAIR_SURROGATE, "rank": 1}  # one readout: one output component
    if fit_iter:
        surrogate["max_iter"] = fit_iter
    return parse_config({
        "name": f"pairs-{Path(screen).stem}", "objective": "maximize", "initial": batch, "rounds": rounds - 1,
        "batch_size": batch, "seed": 0,
        "world": {"kind": "pair_screen", "dataset": str(Path(screen).expanduser().resolve()),
                  "hits": str(Path(hits).expanduser().resolve()) if hits else None},
        "design": {"space": "pairs", "features": list(features), "go_dims": 16},
        "surrogate": surrogate, "acquisition": {"kind": kinds[0], "absolute": True, "beta": 1.0},
        "evaluation": {"seeds": seeds, "policies": kinds, "test_fraction": 0.01, "max_test": 1,
                       "baselines": ["mean"], "hit_fraction": hit_fraction}}, "pair screen benchmark")


def response_sweep(config: CampaignConfig, data_dir=None, *, policies: Sequence[str] | None = None,
                   seeds: int | None = None) -> list[dict]:
    """Every policy x seed in this process, rows in (policy, seed) order (tests, benchmarks/)."""
    policies = list(policies or config.evaluation.policies)
    seeds = seeds or config.evaluation.seeds
    return [campaign_for(config, pk, s, data_dir) for pk in policies for s in range(seeds)]
