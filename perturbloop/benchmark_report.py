"""Benchmark results: the JSON written, per-policy summaries, tables and plots.

Screens (`write_results`, `summarise`): `{"protocol", "screen", "results": [{"policy", "seed",
"hit_ratio", "per_round", "round_seconds", ...}]}`. Response campaigns (`write_response_results`,
`final_table`): `{"protocol", "world", "results": [{"policy", "seed", "metrics": {name: [per round]},
"round_seconds", ...}]}`; every model metric sits beside its baselines (`<metric>@<baseline>`),
fitted on the same observations.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from perturbloop.config import CampaignConfig
from perturbloop.plots import plot_hit_curves, pyplot, save_figure


PRIMARY_METRICS = ("mse_top20_de", "pearson_delta", "l2_top_expressed")  # plotted, in this order


def protocol_of(config: CampaignConfig, rows: Sequence[dict]) -> dict:
    baselines = sorted({k.split("@", 1)[1] for r in rows for k in r["metrics"] if "@" in k})
    return {"name": "response-campaign (IterPert-style learning curves)", "objective": config.objective,
            "world": config.world.model_dump(), "space": config.design.space, "initial": config.initial,
            "rounds": config.rounds, "batch": config.batch_size, "seeds": config.evaluation.seeds,
            "test_fraction": config.evaluation.test_fraction, "n_test": rows[0]["n_test"] if rows else None,
            "n_candidates": rows[0]["n_candidates"] if rows else None, "surrogate": config.surrogate.model_dump(),
            "baselines": baselines, "features": list(config.design.features),
            "synthetic": config.world.kind == "synthetic_grn", "top_de": config.evaluation.top_de,
            "top_expressed": config.evaluation.top_expressed, "de_method": config.evaluation.de_method}


def summarise_response(rows: Sequence[dict]) -> list[dict]:
    """Per policy: mean and sd over seeds of every metric per round, and seconds per round."""
    out = []
    for label in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == label]
        names = list(dict.fromkeys(k for r in rs for k in r["metrics"]))
        mean, sd = {}, {}
        for k in names:
            a = np.array([r["metrics"][k] for r in rs if k in r["metrics"]], dtype=float)
            mean[k], sd[k] = np.nanmean(a, 0).tolist(), np.nanstd(a, 0).tolist()
        secs = [s for r in rs for s in r["round_seconds"]]
        out.append({"policy": label, "seeds": len(rs), "mean": mean, "sd": sd,
                    "round_seconds_mean": float(np.mean(secs)) if secs else 0.0,
                    "round_seconds_max": float(np.max(secs)) if secs else 0.0})
    return out


def write_response_results(path: str | Path, protocol: dict, world: str, rows: list[dict]) -> tuple[Path, Path]:
    """`results.json` and a PNG beside it: one panel per metric, each policy's mean curve (+- sd over
    seeds) with the baselines (fitted on the same observations) dashed."""
    path = _write_json(path, {"protocol": protocol, "world": world, "results": rows})
    summary = summarise_response(rows)
    available = set(summary[0]["mean"]) if summary else set()
    metrics = [m for m in PRIMARY_METRICS if m in available]
    if not metrics:
        metrics = [m for m in ("mse", "hit_ratio") if m in available]
    if protocol.get("objective") == "maximize" and "hit_ratio" in available and "hit_ratio" not in metrics:
        metrics = [*metrics, "hit_ratio"]
    fig, axes = pyplot().subplots(1, max(len(metrics), 1), figsize=(4.6 * max(len(metrics), 1), 3.8), dpi=110, squeeze=False)
    ref = next((s["policy"] for s in summary if s["policy"] == "random"), summary[0]["policy"] if summary else None)
    for ax, m in zip(axes[0], metrics):
        lo, hi = np.inf, -np.inf
        for s in summary:
            ys, sd = np.array(s["mean"][m]), np.array(s["sd"][m])
            lo, hi = min(lo, float((ys - sd).min())), max(hi, float((ys + sd).max()))
        span = max(hi - lo, 1e-12)
        for s in summary:
            ys, sd = np.array(s["mean"][m]), np.array(s["sd"][m])
            n_obs = np.mean([r["n_observed"] for r in rows if r["policy"] == s["policy"]], axis=0)
            xs = n_obs[: len(ys)]
            line, = ax.plot(xs, ys, marker="o", ms=3, label=f"{s['policy']} ({protocol['surrogate']['kind']})")
            ax.fill_between(xs, ys - sd, ys + sd, alpha=0.15, color=line.get_color())
            if s["policy"] == ref:  # baselines fitted on the reference (random) policy's observations
                for b in protocol.get("baselines", []):
                    key = f"{m}@{b}"
                    if key not in s["mean"]:
                        continue
                    yb = np.array(s["mean"][key][: len(xs)])
                    if yb.min() > hi + 2 * span or yb.max() < lo - 2 * span:  # far off: name it, keep the scale
                        ax.plot([], [], ls="--", lw=1, label=f"{b} baseline: {yb[-1]:.3g} (off scale)")
                        continue
                    ax.plot(xs, yb, ls="--", lw=1, label=f"{b} baseline ({ref} picks)")
        ax.set_title(m)
        ax.set_xlabel("pairs measured (all singles measured first)" if protocol.get("space") == "pairs"
                      else "perturbations measured")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{world}: {protocol['rounds']} x {protocol['batch']} after {protocol['initial']} initial, "
                 f"{protocol['seeds']} seeds" + (" (SYNTHETIC world)" if protocol.get("synthetic") else ""), fontsize=9)
    return path, save_figure(fig, path.with_suffix(".png"))


def _write_json(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    return path


HIGHER_IS_BETTER = ("pearson", "hit_ratio", "best_score")


def higher_is_better(metric: str) -> bool:
    return any(p in metric for p in HIGHER_IS_BETTER)


def table_metrics(rows: Sequence[dict]) -> list[str]:
    """Metrics shown in tables: the primary ones present (+ interaction for pairs, hit ratio for maximize)."""
    have = set(rows[0]["metrics"]) if rows else set()
    if "mse_top20_de" in have:
        have.discard("mse")
    return [m for m in (*PRIMARY_METRICS, "interaction_pearson", "mse", "hit_ratio") if m in have]


TIE = 0.01  # within 1% of the best baseline (relative) is reported as a tie, not a win


def beats_baselines(metric: str, value: float, baselines: Mapping[str, float]) -> bool | str | None:
    """True / False / "tie" (within `TIE` of the best baseline) / None (no baselines)."""
    if not baselines:
        return None
    hib = higher_is_better(metric)
    best = max(baselines.values()) if hib else min(baselines.values())
    if abs(value - best) <= TIE * max(abs(best), 1e-12):
        return "tie"
    return bool(value > best) if hib else bool(value < best)


def final_table(rows: Sequence[dict]) -> list[dict]:
    """Per policy and metric: the model's value after the last round (mean +- sd over seeds), after
    round 0, and each baseline's after the last round (fitted on the same policy's observations),
    with whether the model beats every baseline (`beats_baselines`)."""
    out = []
    for s in summarise_response(rows):
        for m in table_metrics(rows):
            base = {k.split("@", 1)[1]: v[-1] for k, v in s["mean"].items() if k.startswith(m + "@")}
            if m == "l2_top_expressed" and "l2_additive" in s["mean"]:
                base.setdefault("additive", s["mean"]["l2_additive"][-1])
            final = s["mean"][m][-1]
            beats = beats_baselines(m, final, base)
            out.append({"policy": s["policy"], "metric": m, "first": s["mean"][m][0], "final": final,
                        "final_sd": s["sd"][m][-1], "baselines": base, "beats_baselines": beats,
                        "round_seconds_mean": s["round_seconds_mean"]})
    return out


def response_table(name: str, protocol: dict, rows: Sequence[dict]):
    """A rich Table of `final_table` (the CLI's summary)."""
    from rich.table import Table

    fin = final_table(rows)
    baselines = list(dict.fromkeys(b for r in fin for b in r["baselines"]))
    t = Table(title=f"{name}: {protocol['initial']} initial + {protocol['rounds']} x {protocol['batch']}, "
                    f"{protocol['seeds']} seeds, surrogate {protocol['surrogate']['kind']}, {protocol['n_test']} held out"
                    + (" [SYNTHETIC]" if protocol.get("synthetic") else ""), title_justify="left")
    for col in ("policy", "metric", "round 0", "final (model)", *[f"final ({b})" for b in baselines], "beats baselines",
                "s/round"):
        t.add_column(col, justify="right")
    for r in fin:
        t.add_row(r["policy"], r["metric"] + (" ^" if higher_is_better(r["metric"]) else " v"), f"{r['first']:.4f}",
                  f"{r['final']:.4f} +- {r['final_sd']:.4f}",
                  *[f"{r['baselines'][b]:.4f}" if b in r["baselines"] else "-" for b in baselines],
                  {True: "yes", False: "NO", None: "-", "tie": "tie"}[r["beats_baselines"]], f"{r['round_seconds_mean']:.2f}")
    return t


def write_results(path: str | Path, protocol: dict, screen: str, rows: list[dict]) -> tuple[Path, Path]:
    """`results.json` (schema in the module docstring of perturbloop.cli) and a PNG of mean curves (+- sd over
    seeds) beside it."""
    path = _write_json(path, {"protocol": protocol, "screen": screen, "results": rows})
    curves = {label: np.array([r["per_round"] for r in rows if r["policy"] == label])
              for label in dict.fromkeys(r["policy"] for r in rows)}
    png = plot_hit_curves({k: c.mean(0) for k, c in curves.items()}, protocol["batch"], path.with_suffix(".png"),
                          f"{screen}: {protocol['rounds']} x {protocol['batch']}, {protocol['seeds']} seeds",
                          sd={k: c.std(0) for k, c in curves.items()}, figsize=(6, 4))
    return path, png


def summarise(rows: list[dict]) -> list[dict]:
    """Per policy: hit ratio mean and sd over seeds, mean curve, mean and max seconds per round."""
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


# campaigns across contexts (agent.benchmark.contexts_row): {"protocol", "screen", "summary", "results": [{"policy",
# "seed", "hits_found", "cost", "spend", "curve", ...}]}, the goal's scores beside (`errors`, `found`)
def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std())


def summarise_contexts(rows: Sequence[dict]) -> list[dict]:
    """Per variant, mean and sd over seeds: target hits found, hit ratio, hits per 100 cost units, cost and mean
    spend per context, the slowest round; goal `matrix` adds NRMSE and Pearson r per context, goal `specific` the
    context-specific genes found (and per 100 cost units)."""
    out = []
    for p in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == p]
        (hf, hf_sd), (hpc, hpc_sd) = _mean_sd([r["hits_found"] for r in rs]), _mean_sd([r["hits_per_100_cost"] for r in rs])
        s = {"policy": p, "seeds": len(rs), "hits_found_mean": hf, "hits_found_sd": hf_sd,
             "hit_ratio_mean": float(np.mean([r["hit_ratio"] for r in rs])),
             "hits_per_100_cost_mean": hpc, "hits_per_100_cost_sd": hpc_sd,
             "cost_mean": float(np.mean([r["cost"] for r in rs])),
             "spend_mean": {c: float(np.mean([r["spend"][c] for r in rs])) for c in rs[0]["spend"]},
             "round_seconds_max": float(max((t for r in rs for t in r["round_seconds"]), default=0.0))}
        if all("errors" in r for r in rs):
            s["errors"] = {c: {f"{k}_{stat}": v for k in ("nrmse", "pearson")
                               for stat, v in zip(("mean", "sd"), _mean_sd([r["errors"][c][k] for r in rs]))}
                           for c in rs[0]["errors"]}
        if all("found" in r for r in rs):
            s["found_mean"], s["found_sd"] = _mean_sd([r["found"] for r in rs])
            s["found_per_100_cost_mean"], s["found_per_100_cost_sd"] = _mean_sd(
                [100 * r["found"] / r["cost"] if r["cost"] else 0.0 for r in rs])
        corr = [r["correlation_with_target"] for r in rs if "correlation_with_target" in r]
        if corr:
            s["correlation_with_target_mean"] = {c: float(np.mean([x[c] for x in corr])) for c in corr[0]}
        out.append(s)
    return out


def write_contexts_results(path: str | Path, protocol: dict, screen: str, rows: list[dict]) -> tuple[Path, Path]:
    """`path` (JSON: protocol, screen, summary, results) and a PNG beside it: the goal's score (target hits found,
    mean held-out NRMSE over the contexts, or context-specific genes found) against cost spent, mean +- sd over
    seeds per variant."""
    path = _write_json(path, {"protocol": protocol, "screen": screen, "summary": summarise_contexts(rows),
                              "results": rows})
    fig, ax = pyplot().subplots(figsize=(6, 4), dpi=120)
    goal = rows[0].get("goal", "hits") if rows else "hits"
    label = {"hits": f"hits found in {protocol.get('target')}", "matrix": "held-out NRMSE (mean over contexts)",
             "specific": "context-specific genes found"}[goal]

    def score(pt: dict) -> float:
        if goal == "matrix":
            return float(np.mean([e["nrmse"] for e in pt["errors"].values()])) if pt.get("errors") else np.nan
        return float(pt["found"] if goal == "specific" else pt["hits_found"])

    for p in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == p]
        n = min(len(r["curve"]) for r in rs)
        cost = np.mean([[pt["cost"] for pt in r["curve"][:n]] for r in rs], 0)
        y = np.array([[score(pt) for pt in r["curve"][:n]] for r in rs], float)
        ax.errorbar(cost, np.nanmean(y, 0), yerr=np.nanstd(y, 0), marker="o", capsize=3, label=p)
    ax.set(xlabel="cost spent", ylabel=label, title=f"{screen}: budget {protocol.get('budget', 0):g}, "
           f"{protocol.get('rounds')} rounds, {protocol.get('seeds')} seeds")
    ax.legend()
    ax.grid(alpha=0.3)
    return path, save_figure(fig, path.with_suffix(".png"))
