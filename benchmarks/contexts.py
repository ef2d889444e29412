"""Objectives across contexts and time on the GWT CD4+ T-cell tables (issue 12), then CONTEXTS_RESULTS.md.

    python benchmarks/contexts.py                     # every objective below, then the table
    python benchmarks/contexts.py --objectives activation --seeds 3
    python benchmarks/contexts.py --table-only        # the table from results/contexts_*.json

(a) `activation`, (b) `aging`: hit discovery in 48 h T cells, each one `perturbloop benchmark --screen ...
--contexts ...` command (printed before it runs), so a figure can be reproduced on its own.
(c) `matrix`: learn the regulator x time matrix (activation signature, Rest / 8 h / 48 h); (d) `specific`: find
context-specific regulators (strong at one timepoint, weak at another); both run here in memory (`run_matrix`,
`run_specific`), scored by `perturbloop.context_objectives`. Results: benchmarks/results/contexts_<objective>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# objective -> (screen, contexts, costs, target): earlier timepoints (and K562) cheaper than 48 h T cells
OBJECTIVES = {
    "activation": ("gwt_cd4_polarization", "Rest,Stim8hr,Stim48hr", "1,1,2", "Stim48hr"),
    "aging": ("gwt_cd4_aging", "K562,Rest,Stim8hr,Stim48hr", "0.5,1,1,2", "Stim48hr"),
}
POLICIES = "multitask,multitask_target,target_gp,pooled,random"
TIMES, TIME_COSTS = ["Rest", "Stim8hr", "Stim48hr"], [1.0, 1.0, 2.0]
# (c): model + how pairs are picked ("var": largest variance per cost, "random": random affordable pairs)
MATRIX_POLICIES = {"multitask": ("multitask", "var"), "multitask_random": ("multitask", "random"),
                   "multitask_icm_random": ("multitask_icm", "random"), "independent_random": ("independent", "random"),
                   "pooled_random": ("pooled", "random")}
# (d): model + picks ("specific": expected new evidence per cost, "random_genes": random genes at every timepoint)
SPECIFIC_POLICIES = {"multitask": ("multitask", "specific"), "independent": ("independent", "specific"),
                     "pooled": ("pooled", "specific"), "random": (None, "random_genes")}
MATRIX_TEST_GENES = 90  # (c): 30 test genes per held-out timepoint; their other two timepoints are known
# What the run of 2026-12-02 (budget 400, 4 rounds, 16 initial genes) showed; rewrite after a new run.
FINDINGS = """## What this shows (run of 2026-12-02: 10 seeds each; (c) with 2 rounds to fit the time available)

**Why the multi-task policy lost to random picks (first run: activation 6.7 vs 8.4 hits, ageing 6.3 vs 10.1).**
Diagnosed on the activation objective only (seeds 0-3); ageing, (c) and (d) were not used to choose anything
(leave-one-objective-out: ageing is the held-out check of the defaults).
- *Fit start (bug).* BoTorch's task covariance starts at random factors, correlations ~0.75, and 15 L-BFGS
  iterations barely move it: from 16 genes x 3 timepoints the fitted correlations with 48 h were 0.16-0.66 (mean
  ~0.5) whatever the sample said (-0.47..0.51; truth over all genes 0.13 Rest, 0.31 8 h); 200 iterations gave
  0-0.26. So the policy believed in transfer and spent on 8 h (seed 0: 146 cost units, 3 hits). Now the first fit
  starts near zero correlation (0.13-0.27 at 15 iterations), and the fit is reproducible.
- *P(hit) ranking (poor default).* GO features do not rank 48 h hits (AUC of P(hit) among unmeasured genes
  0.45-0.53), so P(hit) follows the posterior variance, which is largest at the edge of feature space (picks' mean
  feature norm 7.5 vs 3.8 over the pool), and those genes are depleted of hits (top 2% by feature norm: 0 hits;
  5% overall). Same seeds 0-3, after the fit fix: P(hit) order 4.0 +- 2.1 hits, random 9.5 +- 1.8, Thompson order
  (a posterior draw hands out the same rates) 9.5 +- 3.2. Thompson is now the default.
- *Screening rules (bugs).* A cheap context was valued as a screen in the last round, when no screened gene can
  reach the target; and an uninformative context scored `p_g / (kappa_c + kappa_t)`, above other genes' direct
  rates. Now: last round target only; a screen counts only where it beats the same gene's direct rate.
- *The economics.* From the published tables, the top 5% at 8 h are 48 h hits 22% of the time (4.5x the 5% base
  rate; Rest 7%); screening at 8 h (cost 1) and confirming at 48 h (cost 2) yields at most ~1.3 hits per 100 cost
  against 2.5 for random picks at 48 h. Ageing: top 5% at 8 h 18%, Rest 14%, K562 11% -> at most ~0.9 per 100.
  At these costs no context is worth screening in, whatever the model.

**Where transfer helps and where it does not.**
- (a), (b) hit discovery: transfer does not help. The multi-task policy never measured the cheap contexts beyond
  the initial design (identical to `multitask_target` in all 20 campaigns), which is right by the economics above.
  After the fixes no model policy is worse than random, and none is better: activation multitask 9.6 +- 4.4,
  random 8.4 +- 2.0, target-only GP 8.5 +- 2.5, pooled 9.2 +- 3.1 (differences within one standard error, ~1.4);
  ageing (held out) multitask 9.1 +- 3.0, random 10.1 +- 3.6, target GP 9.3 +- 3.0, pooled 7.0 +- 1.7 (pooled
  wastes ~30 units on K562). The learned correlations with 48 h now sit at or below the truth (activation Rest 0.07,
  8 h 0.21; ageing K562 0.06, Rest 0.09, 8 h 0.24 vs 0.08 / 0.48 / 0.50: underestimated, never acted on).
- (c) the regulator x time matrix: transfer across time does help predict a gene at a timepoint from its other
  timepoints: held-out Pearson r 0.43 +- 0.12 at 8 h and 0.29 +- 0.12 at 48 h (multitask) vs 0.08 and 0.00
  (independent GPs, which can only use GO features and do worse than the mean, NRMSE 1.05-1.08) and 0.25 / 0.25
  (pooled). The gain in error is small (NRMSE 0.95 at 8 h, ~1.0 at 48 h) because the timepoints correlate only
  0.13-0.31; Rest is not predictable (r ~0.2). The kernel over time adds nothing measurable over the plain ICM
  with three timepoints (8 h NRMSE 0.95 vs 0.93, r 0.43 either way); it matters where a timepoint has no data
  (synthetic test: tests/test_multitask_time.py). Variance-per-cost picks match random pairs.
- (d) context-specific regulators (the picks value a two-step plan, timepoint now and another later; a one-step
  value is 0 for every unmeasured gene, which left the first version picking genes in list order): multitask
  10.0 +- 2.4 of 337 found, pooled 10.0 +- 0.9, random genes at every timepoint 8.8 +- 1.8, independent GPs
  4.4 +- 2.0. Transfer is what makes the posterior useful here (independent GPs, with no link between
  timepoints, do worst), but the gain over random is within one standard error (~0.7); multitask screens
  mostly at Rest (261 of 400 units) and confirms few at 48 h.
- Seconds per round (34-77 s max) were measured on 2 cores under a load average of ~10 from other jobs (nice 15);
  they say nothing about the 5 s target.
"""


def command(objective: str, seeds: int, budget: float, rounds: int, initial: int, policies: str) -> list[str]:
    screen, contexts, costs, target = OBJECTIVES[objective]
    return [sys.executable, "-m", "perturbloop.cli", "benchmark", "--screen", screen, "--contexts", contexts,
            "--costs", costs, "--target-context", target, "--budget", str(budget), "--rounds", str(rounds),
            "--initial", str(initial), "--seeds", str(seeds), "--policy", policies,
            "--out", str(HERE / "results" / f"contexts_{objective}.json")]


def run_hits_in_process(objective: str, seeds: int, budget: float, rounds: int, initial: int, policies: str,
                        data_dir=None) -> Path:
    """Objectives (a)/(b) as the `perturbloop benchmark --screen ... --contexts ...` command runs them (same space,
    protocol and results file), but seed-major with the file rewritten after every seed: a run cut short keeps its
    whole seeds."""
    from agent.contexts_benchmark import ContextProtocol, run_campaign, write_results
    from perturbloop.contexts import context_list, context_space, load_context_screen

    screen_name, contexts, costs, target = OBJECTIVES[objective]
    names, cost_list = contexts.split(","), [float(c) for c in costs.split(",")]
    data = load_context_screen(screen_name, data_dir)
    space = context_space(data, context_list(names, cost_list), features=["go"], data_dir=data_dir, go_dims=16)
    protocol = ContextProtocol(target, budget, rounds, initial)
    out = HERE / "results" / f"contexts_{objective}.json"
    rows: list[dict] = []
    for seed in range(seeds):
        rows += [run_campaign(space, data, protocol, pol, seed) for pol in policies.split(",")]
        meta = {"name": "hit discovery across contexts", "contexts": names, "costs": cost_list, "target": target,
                "budget": budget, "rounds": rounds, "initial": initial, "allowed": None, "seeds": seed + 1,
                "hits": "top 5% by |score| in the target", "features": ["go"], "n_genes": len(space.genes)}
        write_results(out, meta, data.name, rows)
        print(objective, "seed", seed, {r["policy"]: r["hits_found"] for r in rows[-len(policies.split(",")):]},
              flush=True)
    return out


def time_screen(data_dir=None):
    """The activation coefficients at Rest / 8 h / 48 h: screen, design space (GO features, as the CLI) and the
    `G x 3` truth (NaN where not measured)."""
    from perturbloop.contexts import context_list, context_space, load_context_screen

    screen = load_context_screen("gwt_cd4_polarization", data_dir).restrict(TIMES)
    space = context_space(screen, context_list(TIMES, TIME_COSTS), features=["go"], data_dir=data_dir, go_dims=16)
    truth = screen.table.pivot(index="gene", columns="context", values="score").reindex(index=space.genes,
                                                                                       columns=TIMES).to_numpy()
    return screen, space, truth


def _model(kind: str | None, space, max_iter: int):
    import torch

    from surrogates.multitask import CONTEXT_MODELS, MultiTaskContextGP

    if kind is None:
        return None
    common = {"bounds": torch.stack([space.gene_X.min(0).values, space.gene_X.max(0).values]), "max_iter": max_iter}
    if kind == "multitask":
        return MultiTaskContextGP(len(space.contexts), hours=[c.hours for c in space.contexts], **common)
    if kind == "multitask_icm":
        return MultiTaskContextGP(len(space.contexts), **common)
    return CONTEXT_MODELS[kind](len(space.contexts), **common)


def _campaign(screen, space, model, pick: str, seed: int, *, budget: float, rounds: int, initial: int,
              heldout=None, score=None, max_iter: int = 15) -> dict:
    """One campaign over (gene, timepoint) pairs: `heldout` pairs never offered and their genes' other timepoints
    known (measured free) at the start; `initial` random genes measured at every timepoint (cost counted); then
    `rounds` rounds of `pick` within `(budget - spent) / rounds left`. `score(post, measured)` after each round."""
    import numpy as np
    import torch

    from acquisition.cost_aware import (random_gene_picks, random_pair_picks, specificity_picks,
                                        variance_per_cost_picks)
    from perturbloop.contexts import ContextSpace
    from simulators.context_replay import ContextReplay

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    world = ContextReplay(screen, TIMES, "Stim48hr", seed=seed)
    offered = space.offered & ~(heldout if heldout is not None else False)
    space = ContextSpace(space.genes, space.gene_X, space.contexts, offered)
    measured = np.zeros(offered.shape, bool)
    obs: list[tuple[int, int, float]] = []
    spend = dict.fromkeys(TIMES, 0.0)

    def run(pairs, free: bool = False) -> None:
        labels = [space.label(g, c) for g, c in pairs]
        res = world.measure(labels)
        for (g, c), lab in zip(pairs, labels):
            measured[g, c] = True
            spend[TIMES[c]] += 0.0 if free else float(space.costs[c])
            if res[lab].ok:
                obs.append((g, c, float(res[lab].response[0])))

    if heldout is not None:
        test = heldout.any(1)
        run([(int(g), c) for g in np.flatnonzero(test) for c in range(len(TIMES)) if offered[g, c]], free=True)
    full = np.flatnonzero(offered.all(1) & ~measured.any(1))
    run([(int(g), c) for g in rng.choice(full, size=initial, replace=False) for c in range(len(TIMES))])
    model = _model(model, space, max_iter)
    curve = []
    for r in range(rounds + 1):
        post = None
        if model is not None:
            g, c, y = (torch.as_tensor(v) for v in zip(*obs))
            model.fit(space.gene_X[g], c, y.to(torch.float64), g)
            post = model.joint(space.gene_X, torch.arange(len(space.genes)))
        curve.append({"round": r, "cost": sum(spend.values()), "spend": dict(spend), **(score(post, measured) if score else {})})
        if r == rounds:
            break
        left = (budget - sum(spend.values())) / (rounds - r)
        if left < space.costs.min():
            continue
        if pick == "var":
            picks = variance_per_cost_picks(post, space, measured, left)
        elif pick == "specific":
            picks = specificity_picks(post, space, measured, left, generator=gen)
        elif pick == "random_genes":
            picks = random_gene_picks(space, measured, left, rng)
        else:
            picks = random_pair_picks(space, measured, left, rng)
        run([space.parse(p.label) for p in picks])
    return {"seed": seed, "cost": sum(spend.values()), "spend": spend, "curve": curve, **curve[-1]}


def run_matrix(screen, space, truth, policy: str, seed: int, *, budget: float = 400, rounds: int = 4,
               initial: int = 16) -> dict:
    """Objective (c): held-out NRMSE per timepoint (perturbloop.context_objectives) after each round."""
    import numpy as np

    from perturbloop.context_objectives import heldout_design, matrix_errors

    heldout = heldout_design(space.offered, MATRIX_TEST_GENES, np.random.default_rng(10_000 + seed))
    kind, pick = MATRIX_POLICIES[policy]

    def score(post, measured):
        return {"errors": matrix_errors(post.mean.numpy(), truth, heldout, TIMES)}

    return {"policy": policy, **_campaign(screen, space, kind, pick, seed, budget=budget, rounds=rounds,
                                          initial=initial, heldout=heldout, score=score)}


def run_specific(screen, space, truth, policy: str, seed: int, *, budget: float = 400, rounds: int = 4,
                 initial: int = 16) -> dict:
    """Objective (d): context-specific regulators found (perturbloop.context_objectives) after each round."""
    from perturbloop.context_objectives import context_specific, specific_found, specific_genes

    strong, weak = context_specific(truth)
    kind, pick = SPECIFIC_POLICIES[policy]

    def score(post, measured):
        return {"found": int(len(specific_found(strong, weak, measured))),
                "n_specific": int(len(specific_genes(strong, weak)))}

    return {"policy": policy, **_campaign(screen, space, kind, pick, seed, budget=budget, rounds=rounds,
                                          initial=initial, score=score)}


def table() -> str:
    lines = ["# Contexts and time (GWT CD4+ T cells)", "", "## (a), (b) Hit discovery in 48 h T cells", "",
             "Hits = top 5% of regulators by |coefficient| in the target context; a hit counts once measured there.",
             "Budget in cost units, initial design (genes measured in every context) included. Mean +- sd over seeds.",
             ""]
    for path in [HERE / "results" / f"contexts_{o}.json" for o in OBJECTIVES]:
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        p = res["protocol"]
        lines += [f"## {res['screen']}: target {p['target']}", "",
                  f"contexts {', '.join(f'{c} (cost {k:g})' for c, k in zip(p['contexts'], p['costs']))}; "
                  f"budget {p['budget']:g}, {p['rounds']} rounds, initial {p['initial']} genes, {p['seeds']} seeds, "
                  f"{res['results'][0]['n_hits']} hits among {p['n_genes']} regulators", "",
                  "| policy | hits found | hits / 100 cost | " + " | ".join(f"spent {c}" for c in p["contexts"]) +
                  " | s/round (max) |", "|---" * (4 + len(p["contexts"])) + "|"]
        for s in res["summary"]:
            lines.append(f"| {s['policy']} | {s['hits_found_mean']:.1f} +- {s['hits_found_sd']:.1f} | "
                         f"{s['hits_per_100_cost_mean']:.2f} +- {s['hits_per_100_cost_sd']:.2f} | " +
                         " | ".join(f"{s['spend_mean'][c]:.0f}" for c in p["contexts"]) +
                         f" | {s['round_seconds_max']:.1f} |")
        corr = [r["task_correlation"] for r in res["results"] if r["policy"] == "multitask" and "task_correlation" in r]
        if corr:
            import numpy as np

            c = np.mean(corr, 0)
            t = p["contexts"].index(p["target"])
            lines += ["", "Learned correlation with the target (multitask, last round, mean over seeds): " +
                      ", ".join(f"{n} {c[i, t]:.2f}" for i, n in enumerate(p["contexts"]) if i != t)]
        lines.append("")
    return "\n".join(lines + time_tables()) + "\n" + FINDINGS


def _ms(values) -> str:
    import numpy as np

    return f"{np.mean(values):.{2 if np.mean(values) < 10 else 1}f} +- {np.std(values):.2f}"


def time_tables() -> list[str]:
    """Markdown for objectives (c) and (d) from results/contexts_matrix.json and contexts_specific.json."""
    lines = []
    path = HERE / "results" / "contexts_matrix.json"
    if path.exists():
        res = json.loads(path.read_text())
        p = res["protocol"]
        rows = [r for r in res["results"] if r["seed"] < p["seeds"]]  # whole seeds only
        lines += ["## (c) The regulator x time matrix (activation signature)", "",
                  f"{p['test_genes']} test genes, one timepoint of each held out (never offered; 1/3 at each "
                  f"timepoint), their other two timepoints known from the start; budget {p['budget']:g} "
                  f"(costs {', '.join(f'{c} {k:g}' for c, k in zip(TIMES, TIME_COSTS))}), {p['rounds']} rounds, "
                  f"initial {p['initial']} genes, {p['seeds']} seeds. NRMSE = RMSE / sd of the held-out truth at "
                  "that timepoint (1 = predicting the mean); Pearson r of the posterior mean and the truth.", "",
                  "| policy | " + " | ".join(f"NRMSE {c}" for c in TIMES) + " | " +
                  " | ".join(f"r {c}" for c in TIMES) + " |", "|---" * (1 + 2 * len(TIMES)) + "|"]
        for pol in dict.fromkeys(r["policy"] for r in rows):
            rs = [r for r in rows if r["policy"] == pol]
            lines.append(f"| {pol} | " + " | ".join(_ms([r["errors"][c]["nrmse"] for r in rs]) for c in TIMES) +
                         " | " + " | ".join(_ms([r["errors"][c]["pearson"] for r in rs]) for c in TIMES) + " |")
        lines.append("")
    path = HERE / "results" / "contexts_specific.json"
    if path.exists():
        res = json.loads(path.read_text())
        p = res["protocol"]
        rows = [r for r in res["results"] if r["seed"] < p["seeds"]]
        lines += ["## (d) Context-specific regulators (activation signature)", "",
                  "Specific = |coefficient| in the top 5% at one timepoint and below the median at another "
                  f"({rows[0]['n_specific']} genes); found once measured at such a strong and such a weak "
                  f"timepoint. Budget {p['budget']:g}, {p['rounds']} rounds, initial {p['initial']} genes "
                  f"(counted), {p['seeds']} seeds.", "",
                  "| policy | found | found / 100 cost | " + " | ".join(f"spent {c}" for c in TIMES) + " |",
                  "|---" * (3 + len(TIMES)) + "|"]
        for pol in dict.fromkeys(r["policy"] for r in rows):
            rs = [r for r in rows if r["policy"] == pol]
            lines.append(f"| {pol} | {_ms([r['found'] for r in rs])} | "
                         f"{_ms([100 * r['found'] / r['cost'] for r in rs])} | " +
                         " | ".join(f"{sum(r['spend'][c] for r in rs) / len(rs):.0f}" for c in TIMES) + " |")
        lines.append("")
    return lines


def run_time_objective(objective: str, seeds: int, budget: float, rounds: int, initial: int, data_dir=None) -> Path:
    """Objective (c) `matrix` or (d) `specific`, every policy x seed; writes results/contexts_<objective>.json."""
    screen, space, truth = time_screen(data_dir)
    run, policies = (run_matrix, MATRIX_POLICIES) if objective == "matrix" else (run_specific, SPECIFIC_POLICIES)
    rows = []
    out = HERE / "results" / f"contexts_{objective}.json"
    start = 0
    if out.exists():  # resume: whole seeds of an earlier run with the same protocol are kept
        old = json.loads(out.read_text())
        if [old["protocol"][k] for k in ("budget", "rounds", "initial")] == [budget, rounds, initial]:
            start = min(old["protocol"]["seeds"], seeds)
            rows = [r for r in old["results"] if r["seed"] < start]
    for seed in range(start, seeds):  # seed-major, written after every campaign: a cut-short run keeps whole seeds
        for pol in policies:
            rows.append(run(screen, space, truth, pol, seed, budget=budget, rounds=rounds, initial=initial))
            print(objective, pol, seed, {k: v for k, v in rows[-1].items() if k != "curve"}, flush=True)
            done = seed + (pol == list(policies)[-1])
            out.write_text(json.dumps({"protocol": {"objective": objective, "budget": budget, "rounds": rounds,
                                                    "initial": initial, "seeds": done,
                                                    "test_genes": MATRIX_TEST_GENES, "contexts": TIMES,
                                                    "costs": TIME_COSTS}, "results": rows}, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objectives", default=",".join([*OBJECTIVES, "matrix", "specific"]))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=float, default=400)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--initial", type=int, default=16)
    ap.add_argument("--policy", default=POLICIES)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--in-process", action="store_true", help="(a)/(b) here, seed-major, results after every seed")
    args = ap.parse_args()
    if not args.table_only:
        for objective in args.objectives.split(","):
            if objective in ("matrix", "specific"):
                run_time_objective(objective, args.seeds, args.budget, args.rounds, args.initial,
                                   os.environ.get("PERTURBLOOP_DATA_DIR"))
                continue
            if args.in_process:
                run_hits_in_process(objective, args.seeds, args.budget, args.rounds, args.initial, args.policy,
                                    os.environ.get("PERTURBLOOP_DATA_DIR"))
                continue
            cmd = command(objective, args.seeds, args.budget, args.rounds, args.initial, args.policy)
            print(" ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True, env=dict(os.environ), cwd=HERE.parent)
    (HERE / "CONTEXTS_RESULTS.md").write_text(table())
    print(HERE / "CONTEXTS_RESULTS.md")


if __name__ == "__main__":
    main()
