"""The `perturbloop` command line. Heavy libraries are imported inside commands (fast start-up)."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from perturbloop.errors import PerturbloopError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Closed-loop active learning for CRISPR perturbation campaigns.")
data_app = typer.Typer(no_args_is_help=True, help="The data registry: list and fetch datasets.")
app.add_typer(data_app, name="data")
policy_app = typer.Typer(no_args_is_help=True, help="Learned (RL) acquisition policies: train on simulated campaigns.")
app.add_typer(policy_app, name="policy")

StoreOpt = Annotated[Optional[str], typer.Option("--store", help="SQLAlchemy URL or SQLite path (default runs/perturbloop.db)")]
DataDirOpt = Annotated[Optional[str], typer.Option("--data-dir", help="data directory (default $PERTURBLOOP_DATA_DIR, then the user cache)")]
BaselineOpt = Annotated[bool, typer.Option(help="also run the same campaign with random picks")]

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "examples" / "il2_demo.toml"


def _quiet_prefect() -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("PREFECT_LOGGING_SERVER_LEVEL", "ERROR")
    # Prefect's temporary server gives up after 20 s; on a loaded 2-core machine it can take longer to start
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


PIPE_WIDTH = 100_000  # written to a log or a pipe there is no screen to fit: every table takes its natural width


def _console():
    """Rich output; written to a log or a pipe (not a terminal), tables keep their natural width, one line per row
    (rich would cut them to 80 columns or `$COLUMNS`: `mse_top2…`)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)


def _guarded(command):
    """`command` with a user-facing error (bad input, a file or store that cannot be used) as one `error:` line
    and exit status 2, never a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PerturbloopError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except OSError as e:  # a file the command needed (missing, unreadable, unwritable), named by the OS
            where = f": {e.filename!r}" if e.filename else ""
            typer.echo(f"error: {e.strerror or e}{where}", err=True)
            raise typer.Exit(2) from None

    return run


def _csv(text: str | None, sep: str = ",") -> list[str]:
    """The non-empty items of a `sep`-separated option (none where it is not given)."""
    return [t.strip() for t in (text or "").split(sep) if t.strip()]


def _table(title: str, columns, *, justify: str = "right", left: tuple[str, ...] = ()):
    """A rich Table titled `title` (on the left) with `columns`, justified by `justify` but those in `left`."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="left" if col in left else justify)
    return t


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.2f} s"


def _round_table(title: str, rows: list[dict]):
    """Per round: hits are shown once the round is measured; `round time` is work time (fit and propose, the lab,
    ingest), the hours its proposals waited for approval apart."""
    t = _table(title, ("round", "status", "picks", "new hits", "hit ratio", "Spearman (unmeasured)", "fit s",
                       "select s", "round time", "approval wait"), left=("status",))
    for r in rows:
        measured = r.get("status") in ("ingested", "rejected")
        t.add_row(str(r["round"]), r.get("status", "-"), str(r["picks"]), str(r["new_hits"]) if measured else "-",
                  _fmt(r["hit_ratio"]) if measured else "-", _fmt(r["spearman_unmeasured"]),
                  _fmt(r["fit_seconds"], ".2f"), _fmt(r["select_seconds"], ".2f"), _duration(r["seconds"]),
                  _duration(r.get("approval_wait_seconds")))
    return t


RESPONSE_COLUMNS = ("mse_top20_de", "pearson_delta", "l2_top_expressed", "interaction_pearson", "hit_ratio")


def _response_table(title: str, rows: list[dict]):
    """Per round and held-out score: the model, and each baseline fitted on the same observations."""
    metrics = [m for m in RESPONSE_COLUMNS if any(m in r["metrics"] for r in rows)]
    baselines = sorted({k.split("@", 1)[1] for r in rows for k in r["metrics"] if "@" in k})
    t = _table(title, ("round", "measured", "failed", "metric", "model", *baselines, "round s"), left=("metric",))
    for r in rows:
        m = r["metrics"]
        head = ["initial" if r["round"] == 1 else str(r["round"] - 1), _fmt(m.get("n_measured"), ".0f"),
                str(r["failed"])]
        for j, k in enumerate(metrics or ["-"]):
            cells = [_fmt(m.get(k), ".4f")] + [_fmt(m.get(f"{k}@{b}"), ".4f") for b in baselines]
            t.add_row(*(head if j == 0 else ["", "", ""]), k, *cells,
                      _fmt(r["seconds"], ".2f") if j == 0 else "", end_section=j == len(metrics) - 1)
    return t


def _contexts_table(title: str, rows: list[dict], config):
    """Per round of a campaign across contexts: pairs measured, failed, target hits found, cost spent (in total and
    per context) of the budget."""
    names = config.contexts.contexts
    t = _table(title, ("round", "measured", "failed", f"hits in {config.contexts.target}", "cost spent",
                       *[f"spent {c}" for c in names], "round s"))
    for r in rows:
        m = r["metrics"]
        t.add_row("initial" if r["round"] == 1 and config.initial else str(r["round"] - (1 if config.initial else 0)),
                  _fmt(m.get("n_measured"), ".0f"), str(r["failed"]),
                  str(r["hits_total"]),
                  f"{_fmt(m.get('cost_spent'), 'g')} / {config.contexts.budget:g}",
                  *[_fmt(m.get(f"spent:{c}"), "g") for c in names], _fmt(r["seconds"], ".2f"))
    return t


def _campaign_table(config, title: str, rows: list[dict]):
    """The round table of `config`'s kind of campaign: screen, response or across contexts."""
    if config.is_contexts:
        return _contexts_table(title, rows, config)
    return (_response_table if config.is_response else _round_table)(title, rows)


def _header(config, url: str) -> str:
    """The campaign `run` starts, in one line."""
    w, t = config.world, config.contexts
    if not config.is_response:
        what = f"[cyan]{config.data.screen}[/], {config.rounds} rounds x {config.batch_size}"
    elif config.is_contexts:
        over = ", ".join(f"{c.name} (cost {c.cost:g})" for c in t.context_list())
        what = (f"[cyan]{w.kind}[/] {w.dataset or ''}, (gene, context) pairs over {over}, target {t.target}, "
                f"budget {t.budget:g} cost units, {config.initial} initial genes + {config.rounds} rounds")
    else:
        synthetic = " [magenta](SYNTHETIC world)[/]" if w.kind == "synthetic_grn" else ""
        what = (f"[cyan]{w.kind}[/] {w.dataset or ''}{synthetic}, design {config.design.space}, "
                f"{config.initial} initial + {config.rounds} rounds x {config.batch_size}")
    return (f"[bold]{config.name}[/]: {config.objective} on {what}, surrogate {config.surrogate.kind}, "
            f"policy {config.acquisition.kind}; store {url}")


def _check_datasets(config) -> None:
    """The registry datasets a config names by name exist: an unknown name is refused in a second, before the
    store, torch or Prefect are loaded (a path is read, and checked, with the data)."""
    from perturbloop.data.registry import REGISTRY, get_spec

    for name in (config.data.screen if config.data else None, config.world.dataset if config.world else None):
        if name and name not in REGISTRY and not (Path(name).suffix or os.sep in name or Path(name).exists()):
            get_spec(name)  # UnknownDatasetError naming it and the known datasets


def _check_before_flow(config, store, data_dir: str | None):
    """Bad input (an unknown dataset or gene, a malformed file, a config that differs from the stored one)
    fails here, in seconds, before any Prefect machinery starts. Returns the config the campaign runs under
    (a stored campaign keeps the defaults it started with)."""
    from agent.context import build_context
    from agent.runner import check_stored_campaign, with_stored_defaults

    config = with_stored_defaults(config, store)
    if store.get_campaign(config.name) is not None:  # a new campaign is written only once its input is valid
        check_stored_campaign(config, store)
    build_context(config, store, data_dir)
    return config


def _preflight(store: str | None, screen: bool) -> None:
    """What `run` needs besides its config, checked before the store is opened and before any Prefect flow
    starts (a problem is one `error:` line and nothing is written): existing campaign checkpoints can be
    read, and (screens) the feature cache can be written."""
    from agent.graph import open_checkpointer
    from agent.runner import checkpoint_path
    from perturbloop.store import store_url

    where = checkpoint_path(store_url(store))
    if isinstance(where, Path) and where.exists():
        with open_checkpointer(where):
            pass
    if screen:
        from perturbloop.data.registry import writable_cache

        writable_cache("features")


def _run(config_path: Path, store: str | None, data_dir: str | None, baseline: bool) -> None:
    """Run (or resume) a campaign and its random baseline through the Prefect flow, a progress bar for each; bad
    input is refused before the flow starts."""
    _quiet_prefect()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from perturbloop.config import load_config
    from perturbloop.store import Store, display_url

    console = _console()
    config = load_config(config_path)
    _check_datasets(config)
    _preflight(store, screen=not config.is_response)
    st = Store(store)
    if config.is_response:  # named before its input is checked
        console.print(_header(config, display_url(st.url)))
        _check_before_flow(config, st, data_dir)
    else:
        config = _check_before_flow(config, st, data_dir)
        console.print(_header(config, display_url(st.url)))
    from flows.campaign import campaign_flow
    from flows.prefect_server import shared_api

    total = config.rounds + (1 if config.is_response else 0)  # a response campaign's round 0: the initial design
    with shared_api(), Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=console, transient=False) as progress:
        main_task = progress.add_task(f"{config.name} ({config.acquisition.kind})", total=total)
        base_task = progress.add_task("random baseline", total=total, visible=baseline)
        results = campaign_flow(
            config, st.url, data_dir, baseline=baseline,
            on_round=lambda r: progress.update(main_task, completed=r["round"]),
            on_baseline_round=lambda r: progress.update(base_task, completed=r["round"]),
        )
    _print_results(console, config, results, st)


def _print_results(console, config, results: dict, st) -> None:
    """The run's summary: the campaign's round table and its random baseline's; a screen campaign that has
    finished adds the comparison and the hit-curve PNG, a paused one says what it waits for (no comparison of a
    campaign that has not measured its rounds yet with a baseline that has)."""
    from perturbloop.store import sqlite_path

    main, base = results["campaign"], results.get("baseline")
    if not config.is_response:
        scored = f" ({main.n_hits} hits in the screen)"
    elif config.is_contexts:
        scored = f", hits found in {config.contexts.target} per cost spent"
    elif config.lab.kind == "simulator":
        scored = ", scores on the held-out perturbations (never run) after each round"
    else:
        scored = f", {config.lab.kind} lab: nothing held out, no scores"
    console.print(_campaign_table(config, f"{config.name}: {config.acquisition.kind}{scored}", main.rounds))
    if main.status != "finished":
        console.print(f"campaign status: [yellow]{main.status}[/]")
    if main.status == "awaiting_approval" and not config.is_response:
        console.print(f"a proposal awaits approval: [bold]perturbloop review {config.name}[/], then "
                      f"[bold]perturbloop approve {config.name}[/] (the comparison with random follows the last round)")
    if base is not None:
        console.print(_campaign_table(config, f"{base.campaign_id}: random picks, same campaign", base.rounds))
    if config.is_response or main.hit_ratio is None or main.status != "finished":
        return  # a paused campaign has no result to compare yet
    line = f"[bold]hit ratio after {len(main.rounds)} rounds: {config.acquisition.kind} {main.hit_ratio:.3f}"
    if base is not None and base.hit_ratio:
        line += f" vs random {base.hit_ratio:.3f} ({main.hit_ratio / base.hit_ratio:.1f}x)"
    console.print(line + "[/]")
    from perturbloop.plots import plot_hit_curves

    curves = {kind: [r["hit_ratio"] or 0.0 for r in res.rounds]
              for kind, res in ((config.acquisition.kind, main), ("random", base)) if res is not None}
    db = sqlite_path(st.url)
    out_dir = db.parent if db is not None else Path("runs")
    png = plot_hit_curves(curves, config.batch_size, out_dir / f"{config.name}.hit_curve.png",
                          title=f"{config.data.screen}: {config.rounds} x {config.batch_size}")
    console.print(f"hit curve: {png}")


@app.command()
@_guarded
def demo(store: StoreOpt = None, data_dir: DataDirOpt = None, baseline: BaselineOpt = True) -> None:
    """A 5-round x 128-gene hit-discovery campaign on the Schmidt 2021 IL2 screen, beside random picks."""
    _run(DEMO_CONFIG, store, data_dir, baseline)


@app.command()
@_guarded
def run(config: Annotated[Path, typer.Argument(help="campaign config (TOML)")], store: StoreOpt = None,
        data_dir: DataDirOpt = None, baseline: BaselineOpt = True) -> None:
    """Run (or resume) a campaign from a TOML config."""
    _run(config, store, data_dir, baseline)


@app.command()
@_guarded
def status(store: StoreOpt = None, as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Campaigns in the store: rounds, picks, hits so far and each round's lab jobs."""
    from agent.report import campaign_overview
    from perturbloop.store import Store, display_url

    st = Store.for_reading(store)  # a store this process cannot write is still read
    out = campaign_overview(st)
    if as_json:
        typer.echo(json.dumps({"store": display_url(st.url), "campaigns": out}, indent=2))
        return
    from rich.markup import escape

    console = _console()
    if not out:
        console.print(f"no campaigns in {display_url(st.url)}")
        return
    for c in out:
        t = _table(escape(f"{c['campaign']} [{c['status']}] {c['screen']}, policy {c['policy']}: ")
                   + f"{len(c['rounds'])}/{c['rounds_planned']} rounds, {c['picks']} picks, {c['hits']} hits",
                   ("round", "status", "picks", "observed", "failed", "hits", "hits so far", "decision", "round time",
                    "approval wait", "lab job"), justify="left")
        for r in c["rounds"]:
            jobs = ", ".join(f"{j['adapter']}:{j['external_id']} ({j['status']})" for j in r["lab_jobs"]) or "-"
            said = "; ".join(f"{d['action']} by {d['by']} {d['when']}" + (f" ({d['note']})" if d["note"] else "")
                             for d in r["decisions"]) or "-"
            t.add_row(str(r["round"]), r["status"], str(r["picks"]), str(r["observed"]), str(r["failed"]), str(r["hits"]),
                      "-" if r["hits_so_far"] is None else str(r["hits_so_far"]), said, _duration(r["seconds"]),
                      _duration(r["approval_wait_seconds"]), jobs)
        console.print(t)
        if c.get("contexts"):  # a campaign across contexts: measurements (and cost spent) per context
            console.print(escape("per context: " + "; ".join(
                f"{x['context']} {x['measured']} measured, {x['failed']} failed"
                + (f", spent {x['spent']:g} (cost {x['cost']:g} each)" if x.get("spent") is not None else "")
                for x in c["contexts"]) + (f"; budget {c['context_budget']:g}" if c.get("context_budget") else "")),
                soft_wrap=True)


def _write_hit_ratios(console, out: Path, protocol: dict, screen: str, rows: list[dict], title: str) -> None:
    """A screen benchmark's results (JSON + PNG) written and its table printed; per policy: final hit ratio (mean
    +- sd over seeds), the mean curve, seconds per round, x random."""
    from perturbloop.benchmark_report import summarise, write_results

    path, png = write_results(out, protocol, screen, rows)
    t = _table(title, ("policy", "hit ratio", *[f"r{i + 1}" for i in range(protocol["rounds"])], "s/round (max)",
                       "x random"))
    summary = summarise(rows)
    base = next((s["hit_ratio_mean"] for s in summary if s["policy"] == "random"), None)
    for s in summary:
        t.add_row(s["policy"], f"{s['hit_ratio_mean']:.3f} +- {s['hit_ratio_sd']:.3f}",
                  *[f"{v:.3f}" for v in s["per_round_mean"]],
                  f"{s['round_seconds_mean']:.2f} ({s['round_seconds_max']:.2f})",
                  f"{s['hit_ratio_mean'] / base:.1f}" if base else "-")
    console.print(t)
    console.print(f"results: {path}\ncurves: {png}")


def _benchmark_pairs(screen, hits, rounds, batch, seeds, policy, features, data_dir, out, runner, address,
                     fit_iter) -> None:
    """A pair screen file on the combinatorial protocol (agent.benchmark.pair_screen_config); results in the
    screen benchmark's schema (hit ratio per round, round 1 = the random design)."""
    from agent.benchmark import pair_screen_config
    from flows.evaluation import run_response_sweep
    from perturbloop.benchmark_report import protocol_of

    policies = _csv(policy)
    config = pair_screen_config(screen, hits=hits, rounds=rounds, batch=batch, seeds=seeds, policies=policies,
                                features=_csv(features), fit_iter=fit_iter)
    console = _console()
    with console.status(f"{len(config.evaluation.policies)} policies x {seeds} seeds on pair screen {screen}"):
        raw = run_response_sweep(config, data_dir, runner=runner, address=address)
    label = {"program": "best (program)"} if "best" in policies else {}
    rows = [{"policy": label.get(r["policy"], r["policy"]), "seed": r["seed"], "hit_ratio": r["metrics"]["hit_ratio"][-1],
             "per_round": r["metrics"]["hit_ratio"], "round_seconds": r["round_seconds"],
             "n_hits": r["n_hits"], "picks": r["picks"]} for r in raw]
    protocol = {**protocol_of(config, raw), "name": "BioDiscoveryAgent combinatorial (pairs)", "rounds": rounds,
                "batch": batch, "hits": hits or "top 5% by |score|", "round_1": "random",
                "n_hits": rows[0]["n_hits"] if rows else None}
    _write_hit_ratios(console, out, protocol, screen, rows,
                      f"{Path(screen).name}: {rounds} x {batch} pairs, {seeds} seeds, {protocol['n_hits']} hits")


def _benchmark_response(config_path: Path, out: Path, data_dir: str | None, runner: str, address: str | None,
                        seeds: int | None = None) -> None:
    from flows.evaluation import run_response_sweep
    from perturbloop.benchmark_report import protocol_of, response_table, write_response_results
    from perturbloop.config import load_config

    config = load_config(config_path)
    if seeds is not None:  # --seeds given: it overrides the file's evaluation.seeds
        config = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"seeds": seeds})})
    if not config.is_response:
        raise PerturbloopError(f"{config_path}: not a response campaign (needs a [world] table; screen campaigns are "
                               "benchmarked with --screen)")
    if config.is_contexts:
        return _benchmark_contexts(config, out, data_dir)
    console = _console()
    ev = config.evaluation
    with console.status(f"{len(ev.policies)} policies x {ev.seeds} seeds, {config.world.kind} world ({runner} runner)"):
        rows = run_response_sweep(config, data_dir, runner=runner, address=address)
    protocol = protocol_of(config, rows)
    path, png = write_response_results(out, protocol, config.name, rows)
    console.print(response_table(config.name, protocol, rows))
    console.print(f"results: {path}\ncurves: {png}")


def _contexts_summary(title: str, rows: list[dict], names: list[str]):
    """Per variant, mean +- sd over seeds: target hits found, hits per 100 cost units, the goal's scores (held-out
    NRMSE per context, or context-specific genes found), mean spend per context."""
    from perturbloop.benchmark_report import summarise_contexts

    summary = summarise_contexts(rows)
    errors = [c for c in names if summary and c in summary[0].get("errors", {})]
    found = bool(summary) and "found_mean" in summary[0]
    t = _table(title, ["policy", "hits found", "hits / 100 cost", *[f"NRMSE {c}" for c in errors],
                       *(["specific found"] if found else []), *[f"spent {c}" for c in names], "s/round (max)"])
    for s in summary:
        t.add_row(s["policy"], f"{s['hits_found_mean']:.1f} +- {s['hits_found_sd']:.1f}",
                  f"{s['hits_per_100_cost_mean']:.2f} +- {s['hits_per_100_cost_sd']:.2f}",
                  *[f"{s['errors'][c]['nrmse_mean']:.2f} +- {s['errors'][c]['nrmse_sd']:.2f}" for c in errors],
                  *([f"{s['found_mean']:.1f} +- {s['found_sd']:.1f}"] if found else []),
                  *[f"{s['spend_mean'][c]:.0f}" for c in names], f"{s['round_seconds_max']:.1f}")
    return t


def _benchmark_contexts(config, out: Path, data_dir: str | None, variants: list[str] | None = None) -> None:
    """A campaign across contexts (`[contexts]`): every variant (agent.benchmark.context_variants, or `variants`) x
    seed run by the shipped loop; learning curves (the goal's score against cost spent) to JSON + PNG, rewritten
    after every seed; the results file's `protocol` records the campaign."""
    from agent.benchmark import check_context_variants, context_variants, contexts_sweep
    from perturbloop.benchmark_report import write_contexts_results

    t = config.contexts
    variants = list(variants or context_variants(config))
    check_context_variants(config, variants)
    meta = {"name": "campaigns across contexts (campaign loop)", "config": config.name, "goal": t.goal,
            "contexts": t.contexts, "costs": [c.cost for c in t.context_list()], "target": t.target,
            "budget": t.budget, "rounds": config.rounds, "initial": config.initial, "allowed": t.allowed,
            "seeds": config.evaluation.seeds, "hits": config.world.hits or f"top {t.hit_fraction:.0%} by |score| in "
            "the target", "test_genes": t.test_genes if t.goal == "matrix" else None,
            "features": config.design.features, "max_iter": config.surrogate.max_iter, "variants": variants}
    dataset = str(config.world.dataset)

    def save(rows: list[dict], done: int):
        return write_contexts_results(out, {**meta, "seeds": done}, dataset, rows)

    console = _console()
    with console.status(f"{len(variants)} variants x {config.evaluation.seeds} seeds on {dataset}, target {t.target}, "
                        f"goal {t.goal}, through the campaign loop"):
        rows = contexts_sweep(config, data_dir, variants=variants, on_seed=save)
    path, png = save(rows, config.evaluation.seeds)
    console.print(_contexts_summary(f"{dataset}: target {t.target}, budget {t.budget:g}, "
                                    f"{config.evaluation.seeds} seeds, {rows[0]['n_hits'] if rows else 0} hits",
                                    rows, t.contexts))
    console.print(f"results: {path}\ncurves: {png}")


def _contexts_benchmark_config(screen: str, contexts: str, target_context: str, costs: str | None, *,
                               budget: float | None, initial: int, allowed: str | None, hits: str | None, rounds: int,
                               batch: int, seeds: int, features: str | None):
    """The campaign across contexts that `benchmark --screen FILE --contexts A,B,C --target-context C` runs: a
    `world.kind = "contexts"` config replaying `screen` (a file or a registry table), the hit-discovery goal in the
    target, the multi-task model with cost-aware picks, `seeds` seeds; a ConfigError names a bad option."""
    from perturbloop.config import parse_config

    names = [c.strip() for c in contexts.split(",")]
    try:
        cost_list = [float(c) for c in costs.split(",")] if costs else None
    except ValueError:
        raise PerturbloopError(f"--costs: {costs!r} is not a comma-separated list of numbers") from None
    target_cost = cost_list[names.index(target_context)] if cost_list and target_context in names and \
        len(cost_list) == len(names) else 1.0
    path = Path(screen).expanduser()
    if hits and not Path(hits).expanduser().is_file():
        raise PerturbloopError(f"--hits: file {hits!r} does not exist")
    return parse_config({
        "name": f"contexts-{path.stem}", "initial": initial, "rounds": rounds, "seed": 0,
        "world": {"kind": "contexts", "dataset": str(path.resolve()) if path.is_file() else screen,
                  "hits": str(Path(hits).expanduser().resolve()) if hits else None},
        "contexts": {"contexts": names, "costs": cost_list, "target": target_context,
                     "budget": budget if budget is not None else rounds * batch * target_cost,
                     "allowed": [c.strip() for c in allowed.split(",")] if allowed else None},
        "design": {"features": ["go"] if features in (None, "go,screens") else _csv(features), "go_dims": 16},
        "surrogate": {"kind": "multitask", "max_iter": 15}, "acquisition": {"kind": "cost_aware"},
        "evaluation": {"seeds": seeds}}, "benchmark options")


@app.command()
@_guarded
def benchmark(
    out: Annotated[Path, typer.Option(help="results JSON (a PNG of the curves is written beside it)")],
    screen: Annotated[Optional[str], typer.Option(help="registry screen name, a MAGeCK gene summary / Gene,Score CSV, "
                                                  "or a pair screen (gene_a,gene_b,score or A+B,score)")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="a response-campaign TOML (Perturb-seq / pairs / "
                                                   "contexts): "
                                                   "world, policies, seeds and baselines come from the file")] = None,
    hits: Annotated[Optional[str], typer.Option(help="file with one hit gene (pair screens: A+B) per line (default: top "
                                                "5% by |score|)")] = None,
    rounds: Annotated[int, typer.Option(min=1)] = 5,
    batch: Annotated[int, typer.Option(min=1)] = 128,
    seeds: Annotated[Optional[int], typer.Option(min=1, help="seeds per policy (default 10; with --config, the "
                                                 "file's evaluation.seeds unless given)")] = None,
    policy: Annotated[str, typer.Option(help="comma-separated policies; `best` is the recommended one")] = "best,random",
    nonessential: Annotated[bool, typer.Option("--nonessential", help="drop core-essential genes from hits and picks")] = False,
    features: Annotated[Optional[str], typer.Option(help="go, screens, essential, embedding (comma-separated; default "
                                                    "go,screens; a pair screen file: go)")] = None,
    prior_screens: Annotated[Optional[str], typer.Option(help="screens used as prior features (default: all but the target)")] = None,
    embeddings: Annotated[Optional[str], typer.Option(help="gene embeddings for feature 'embedding' (CSV: gene + one column a dimension, or NPY)")] = None,
    target: Annotated[str, typer.Option(help="what the surrogate models: abs (log |score|) or hit (the lab's hit call, 0/1)")] = "abs",
    fit_iter: Annotated[Optional[int], typer.Option(min=1, help="GP hyperparameter (L-BFGS-B) iterations per round (default 10)")] = None,
    aggregate: Annotated[Optional[str], typer.Option(help="rows of a --screen file naming the same gene: error (default: "
                                                      "refuse rows that disagree), mean or first")] = None,
    phenotype: Annotated[Optional[str], typer.Option(help="the screen's phenotype in words: the prior from matching "
                                                     "GO / Reactome / Hallmark / HPO terms picks round 1")] = None,
    prior_terms: Annotated[Optional[str], typer.Option(help="GO / Reactome / Hallmark / HPO terms (ids or names, "
                                                       "comma-separated; ';' when a name holds a comma) the prior "
                                                       "favours")] = None,
    known_positives: Annotated[Optional[str], typer.Option(help="genes known to matter: comma-separated, or a file "
                                                           "with one gene a line")] = None,
    prior_share: Annotated[float, typer.Option(min=0.01, max=1.0, help="share of round 1 from the top of the prior "
                                               "(the rest random)")] = 1.0,
    data_dir: DataDirOpt = None,
    runner: Annotated[str, typer.Option(help="local (threads) or dask (prefect-dask); with --config also inline "
                                              "(this process, no Prefect)")] = "local",
    address: Annotated[Optional[str], typer.Option(help="address of an existing Dask scheduler")] = None,
    network: Annotated[bool, typer.Option("--network", help="the GP adds the STRING network kernel (needs features "
                                          "string or knowledge)")] = False,
    contexts: Annotated[Optional[str], typer.Option(help="contexts of a multi-context --screen (comma-separated): "
                                                    "hit discovery in --target-context, the others at their --costs")] = None,
    target_context: Annotated[Optional[str], typer.Option(help="the context whose hits count")] = None,
    costs: Annotated[Optional[str], typer.Option(help="cost per perturbation of each context (comma-separated, "
                                                 "default 1 each)")] = None,
    budget: Annotated[Optional[float], typer.Option(help="contexts: cost units per campaign (default rounds x batch x "
                                                    "target cost)")] = None,
    initial: Annotated[int, typer.Option(min=0, help="contexts: genes measured in every context first")] = 16,
    allowed_contexts: Annotated[Optional[str], typer.Option(help="contexts: the contexts rounds may use (default all)")] = None,
) -> None:
    """Simulated campaigns on the BioDiscoveryAgent protocol: policies beside random, results to JSON + PNG.

    With --config FILE.toml: simulated response campaigns (Perturb-seq / gene pairs), learning curves
    of each policy in the file beside random, baselines beside the model (same results schema); a
    campaign across contexts ([contexts]): target hits against cost spent for the multi-task model,
    the independent and pooled baselines, random picks and, with a K562 context, K562 first.
    """
    _quiet_prefect()
    seeds_given, seeds = seeds, 10 if seeds is None else seeds
    if contexts is not None or target_context is not None or costs is not None:
        if screen is None or contexts is None or target_context is None:
            raise PerturbloopError("a benchmark across contexts needs --screen, --contexts and --target-context")
        config = _contexts_benchmark_config(screen, contexts, target_context, costs, budget=budget, initial=initial,
                                            allowed=allowed_contexts, hits=hits, rounds=rounds, batch=batch,
                                            seeds=seeds, features=features)
        variants = None if policy == "best,random" else \
            list(dict.fromkeys("multitask" if p == "best" else p for p in _csv(policy)))
        return _benchmark_contexts(config, out, data_dir, variants)
    if config is not None:
        if screen is not None:
            raise PerturbloopError("give --screen or --config, not both")
        return _benchmark_response(config, out, data_dir, runner, address, seeds_given)
    if screen is None:
        raise PerturbloopError("name a --screen (pooled screen) or a --config (response campaign)")
    from simulators.pair_screen import is_pair_screen_file

    if is_pair_screen_file(screen):
        return _benchmark_pairs(screen, hits, rounds, batch, seeds, policy, features or "go", data_dir, out, runner,
                                address, fit_iter)
    from agent.benchmark import PolicySpec, WorldSpec, benchmark_config
    from flows.evaluation import run_sweep
    from perturbloop.phenotype_prior import read_gene_list
    from surrogates.gp import MAX_FIT_ITER

    policies = [PolicySpec.parse(p) for p in _csv(policy)]
    if not policies:
        raise PerturbloopError("--policy: name at least one policy")
    feats = tuple(_csv(features or "go,screens"))
    priors = tuple(_csv(prior_screens)) if prior_screens else None
    spec = WorldSpec(screen=screen, hits_file=hits, nonessential=nonessential, features=feats, prior_screens=priors,
                     data_dir=data_dir, embeddings=str(Path(embeddings).expanduser().resolve()) if embeddings else None,
                     target=target, fit_iter=fit_iter, aggregate=aggregate, phenotype=phenotype,
                     prior_terms=tuple(_csv(prior_terms, ";" if ";" in (prior_terms or "") else ",")),
                     known_positives=tuple(read_gene_list(known_positives)), prior_share=prior_share,
                     network=network)
    benchmark_config(spec, policies[0], 0, rounds, batch)  # a setting the campaign config refuses: one error, now
    console = _console()
    if spec.phenotype or spec.prior_terms or spec.known_positives:  # bad prior input fails here, before any run
        import warnings

        from agent.benchmark import build_screen_world
        from perturbloop.phenotype_prior import PhenotypePriorWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PhenotypePriorWarning)  # printed once, here
            notes = build_screen_world(spec).pool.phenotype_prior.warnings
        for w in notes:
            console.print(f"[yellow]warning:[/] {w}")
    with console.status(f"{len(policies)} policies x {seeds} seeds on {screen} ({runner} runner)"):
        rows = run_sweep(spec, policies, seeds, rounds, batch, runner=runner, address=address)
    protocol = {"name": "BioDiscoveryAgent", "rounds": rounds, "batch": batch, "seeds": seeds,
                "hits": hits or "top 5% by |score|", "nonessential": nonessential, "features": list(feats),
                "prior_screens": list(priors) if priors is not None else "all registry screens but the target",
                "embeddings": spec.embeddings, "target": "hit call (0/1)" if target == "hit" else "log |score|",
                "gp_fit_iter": fit_iter or MAX_FIT_ITER, "phenotype": spec.phenotype,
                "prior_terms": list(spec.prior_terms), "known_positives": list(spec.known_positives),
                "prior_share": prior_share, "network_kernel": network,
                "n_hits": rows[0]["n_hits"] if rows else None}
    _write_hit_ratios(console, out, protocol, screen, rows,
                      f"{screen}: {rounds} x {batch}, {seeds} seeds, {protocol['n_hits']} hits")


@app.command()
@_guarded
def review(campaign: str, store: StoreOpt = None) -> None:
    """Show the proposal a campaign is waiting on: predicted effect +- sd, acquisition value, rationale."""
    from rich.markup import escape

    from agent.approval import pending_proposal
    from agent.report import pending_view
    from perturbloop.store import Store

    st = Store.for_reading(store)
    view = pending_view(st, campaign)
    if view is None:
        pending_proposal(st, campaign)  # raises: no proposal awaits approval
    cols = ["#", "perturbation", *([view["label"]] if view["has_value"] else []), *(["P(hit)"] if view["has_p_hit"] else []),
            "acq value", "policy", "rationale"]
    t = _table(f"{campaign}: round {view['round']} proposal awaiting approval ({len(view['items'])} perturbations)",
               map(escape, cols), justify="left")
    for p in view["items"]:  # names and notes are shown as written (no rich markup)
        t.add_row(str(p["rank"]), escape(p["perturbation"]), *([p["shown"]] if view["has_value"] else []),
                  *([_fmt(p["p_hit"], ".2f")] if view["has_p_hit"] else []), _fmt(p["acq_value"]), p["policy"],
                  escape(p["rationale"]))
    _console().print(t)
    what = "GENE@@context" if any("@@" in p["perturbation"] for p in view["items"]) else "GENE"
    typer.echo(f"approve: perturbloop approve {campaign} [--drop {what} ...] [--veto {what} ...] [--add {what} ...] "
               "[--reject] [--note TEXT] [--by NAME]")


@app.command()
@_guarded
def approve(
    campaign: str,
    drop: Annotated[Optional[list[str]], typer.Option("--drop", help="remove a gene from this batch, not now (repeatable; it may be proposed again later)")] = None,
    add: Annotated[Optional[list[str]], typer.Option("--add", help="add a gene to the batch (repeatable)")] = None,
    veto: Annotated[Optional[list[str]], typer.Option("--veto", help="never propose this gene again in the campaign (drops it from this batch; repeatable; --note says why)")] = None,
    reject: Annotated[bool, typer.Option("--reject", help="reject the whole batch: the round is proposed again without it")] = False,
    note: Annotated[str, typer.Option(help="why")] = "",
    by: Annotated[str, typer.Option(help="who decides")] = os.environ.get("USER", "scientist"),
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Record a decision on the pending proposal (approve, edit or reject) and continue the campaign."""
    _quiet_prefect()
    from agent.approval import decide
    from perturbloop.config import parse_config
    from perturbloop.store import Store, display_url

    st = Store(store)
    c = st.get_campaign(campaign)
    if c is None:
        raise PerturbloopError(f"no campaign {campaign!r} in {display_url(st.url)}")
    config = parse_config(c.config, f"stored config of {campaign}")
    st.check_files(campaign, config.named_files())  # a file changed behind the campaign: refused before any decision
    edits = {"drop": drop or [], "add": add or [], "veto": veto or [], "reject": reject, "note": note, "by": by,
             "data_dir": data_dir}
    if not config.is_response:  # a bad edit is refused in a second: checked against the screen's genes (a superset
        from perturbloop.data.screen_genes import screen_genes  # of the design space; cached by the run, no pandas)

        decide(st, campaign, screen_genes(config.data.screen, data_dir, aggregate=config.data.aggregate), **edits)
    elif config.is_contexts:  # the same for a campaign across contexts: the screen's measured (gene, context) pairs
        from perturbloop.contexts import load_context_screen, pair_label

        t = load_context_screen(config.world.dataset, data_dir).table
        t = t[t["context"].isin(config.contexts.contexts)]
        decide(st, campaign, list(map(pair_label, t["gene"], t["context"])), **edits)
    from agent.context import build_context
    from agent.runner import run_campaign

    ctx = build_context(config, st, data_dir)
    decision = decide(st, campaign, ctx.candidate_labels(), **edits)
    typer.echo(f"{decision['action']} by {by}: "
               + ("the round will be proposed again without these perturbations" if reject
                  else f"{len(decision['final'])} perturbations")
               + (f" (dropped {', '.join(decision['dropped'])})" if decision["dropped"] else "")
               + (f" (added {', '.join(decision['added'])})" if decision["added"] else "")
               + (f" (vetoed for the rest of the campaign: {', '.join(decision['vetoed'])})" if decision["vetoed"] else ""))
    res = run_campaign(config, st, data_dir, resume=decision, context=ctx)
    _console().print(_campaign_table(config, f"{campaign}: {config.acquisition.kind}", res.rounds))
    typer.echo(f"campaign status: {res.status}")


@app.command()
@_guarded
def web(
    store: StoreOpt = None,
    host: Annotated[str, typer.Option(help="address to bind (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8765,
    token_file: Annotated[Optional[Path], typer.Option(help="file holding the access token (else $PERTURBLOOP_WEB_TOKEN)")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """The review web app: campaigns, pending proposals with a plot, approve / edit / reject (token required)."""
    _quiet_prefect()
    from agent.web import serve
    from perturbloop.store import display_url, store_url

    if token_file is not None:
        if not token_file.is_file():
            raise PerturbloopError(f"--token-file: {str(token_file)!r} does not exist")
        token = token_file.read_text().strip()
    else:
        token = os.environ.get("PERTURBLOOP_WEB_TOKEN", "").strip()
    if not token:
        raise PerturbloopError("web: set the access token in $PERTURBLOOP_WEB_TOKEN or pass --token-file FILE")
    typer.echo(f"perturbloop review on http://{host}:{port}/ (store {display_url(store_url(store))})")
    serve(store, token, host=host, port=port, data_dir=data_dir)


@app.command()
@_guarded
def serve(
    folder: Annotated[Path, typer.Argument(help="folder of campaign configs (*.toml)")],
    cron: Annotated[str, typer.Option(help="cron schedule for configs without a `schedule` field")] = "0 * * * *",
    timezone: Annotated[Optional[str], typer.Option(help="time zone of the cron schedules (default UTC)")] = None,
    store: StoreOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Register a Prefect deployment per campaign config, on a cron schedule, and run them as they come due.

    Needs a Prefect server: `prefect server start`, and PREFECT_API_URL=http://127.0.0.1:4200/api.
    """
    from flows.schedule import campaign_configs, serve_campaigns
    from perturbloop.store import display_url, store_url

    configs = campaign_configs(folder)  # validate every config before registering anything
    url = store_url(store)  # absolute: scheduled runs may start in another directory
    typer.echo(f"serving {len(configs)} campaigns from {folder} (store {display_url(url)}): " + ", ".join(c.name for _, c in configs))
    serve_campaigns(folder, url, str(Path(data_dir).resolve()) if data_dir else None, cron, timezone)


@data_app.command("list")
@_guarded
def data_list(data_dir: DataDirOpt = None) -> None:
    """Names of the registry's datasets, and whether each is available locally."""
    from perturbloop.data.registry import REGISTRY, _find, data_dirs

    dirs = data_dirs(data_dir)
    for name, spec in REGISTRY.items():
        here = all(_find(f, dirs) is not None for f in spec.files)
        typer.echo(f"{name:24s} {spec.kind:11s} {'local ' if here else 'remote'}  {spec.description}")


@data_app.command("fetch")
@_guarded
def data_fetch(name: str, force: Annotated[bool, typer.Option(help="download again even if cached")] = False) -> None:
    """Download a dataset into the user cache (sha256-checked)."""
    from perturbloop.data.registry import fetch

    for p in fetch(name, force=force):
        typer.echo(str(p))


@policy_app.command("train")
@_guarded
def policy_train(
    out: Annotated[Path, typer.Option(help="checkpoint to write (state dict + JSON config)")],
    worlds: Annotated[Optional[str], typer.Option(help="training screens, comma-separated (default: every registry screen)")] = None,
    holdout: Annotated[Optional[str], typer.Option(help="screens held out entirely (target of a leave-one-screen-out evaluation): never a world, never a feature")] = None,
    synthetic: Annotated[int, typer.Option(min=0, help="synthetic screens on the training worlds' gene pools")] = 3,
    iterations: Annotated[int, typer.Option(min=0, help="policy-gradient steps (each `group` episodes)")] = 200,
    bc_iterations: Annotated[int, typer.Option(min=0, help="imitation steps before the policy gradient")] = 100,
    warm_start: Annotated[str, typer.Option(help="policy imitated first: greedy, ucb, prob_hit, prior or none")] = "greedy",
    group: Annotated[int, typer.Option(min=2, help="episodes per step on one world and pool (the baseline group)")] = 8,
    pool_size: Annotated[int, typer.Option(min=64, help="genes per training episode (a random subsample of the world)")] = 4096,
    rounds: Annotated[int, typer.Option(min=2)] = 5,
    batch: Annotated[int, typer.Option(min=1, help="deployed batch size (scaled to the episode pool in training)")] = 128,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 2e-3,
    seed: Annotated[int, typer.Option()] = 0,
    evaluate: Annotated[bool, typer.Option(help="report greedy hit ratios in the training worlds beside the greedy policy")] = False,
    fit_iter: Annotated[Optional[int], typer.Option(min=1, help="GP hyperparameter iterations per round in the training worlds (default 10)")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Train an RL acquisition policy (REINFORCE) on simulated campaigns; use it with `acquisition.kind = "rl"`."""
    import time

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from acquisition.rl import save_policy
    from acquisition.rl.features import reference_score
    from acquisition.rl.train import evaluate as evaluate_policy
    from acquisition.rl.train import train_policy
    from acquisition.rl.worlds import build_worlds
    from perturbloop.data.priors import registry_screens
    from perturbloop.device import default_device
    from surrogates import make_surrogate

    names = _csv(worlds) if worlds else registry_screens()
    held = _csv(holdout)
    warm = None if warm_start in ("", "none") else warm_start
    device = default_device()
    console = _console()
    t0 = time.perf_counter()

    def gp(bounds, params):  # the benchmark's surrogate: exact GP on log(|score| + median)
        kw = {"max_iter": fit_iter} if fit_iter else {}
        return make_surrogate("gp", bounds=bounds, init_params=params, target_transform="log", device=torch.device("cpu"),
                              **kw)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console) as progress:
        wt = progress.add_task("training worlds", total=len(names) + synthetic, info="")
        train_worlds = build_worlds(names, holdout=held, synthetic=synthetic, data_dir=data_dir, make_surrogate=gp,
                                    rounds=rounds, batch=batch, seed=seed,
                                    on_world=lambda w: progress.update(wt, advance=1, info=w.name))
        progress.update(wt, total=len(train_worlds), completed=len(train_worlds))
        world_seconds = time.perf_counter() - t0
        bc = progress.add_task(f"imitation ({warm})", total=bc_iterations if warm else 0, info="", visible=bool(warm))
        rl = progress.add_task("REINFORCE", total=iterations, info="")
        recent: list[float] = []

        def step(i: int, row: dict) -> None:
            recent.append(row["return"])
            del recent[:-20]
            info = f"{row['world']}  return (mean of last {len(recent)}) {sum(recent) / len(recent):.3f}"
            progress.update(bc if row["phase"] == "imitation" else rl, completed=i + 1, info=info)

        res = train_policy(train_worlds, rounds=rounds, batch=batch, pool_size=pool_size, iterations=iterations,
                           group=group, lr=lr, seed=seed, warm_start=warm, bc_iterations=bc_iterations, device=device,
                           on_iteration=step, meta={"holdout": held, "synthetic": synthetic})
    res.config.training.update(world_seconds=round(world_seconds, 1),
                               total_minutes=round((time.perf_counter() - t0) / 60, 2),
                               torch_threads=torch.get_num_threads())
    if evaluate:
        pol = evaluate_policy(train_worlds, res.net, rounds=rounds, batch=batch, pool_size=pool_size)
        ref = evaluate_policy(train_worlds, rounds=rounds, batch=batch, pool_size=pool_size,
                              scorer=lambda f: reference_score("greedy", f))
        res.config.training["evaluation"] = {"rl": pol, "greedy": ref}
        t = _table("greedy hit ratio in the training worlds (subsampled pools, fixed episodes)",
                   ("world", "rl", "greedy (reference)"), justify="left")
        for w in pol:
            t.add_row(w, f"{pol[w]:.3f}", f"{ref[w]:.3f}")
        console.print(t)
    path = save_policy(res.net, res.config, out)
    console.print(f"policy: {path} ({len(train_worlds)} worlds, {res.config.training['episodes']} episodes, "
                  f"{res.config.training['total_minutes']:.1f} min on {device}, {torch.get_num_threads()} threads)")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
