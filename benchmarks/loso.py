"""Honest choice of the recommended setting with no prior screens: leave-one-screen-out over the six screens.

    python benchmarks/loso.py                     # run the grid (skips finished runs), then write the tables
    python benchmarks/loso.py --settings go+knowledge/best --screens schmidt2021_il2
    python benchmarks/loso.py --table-only        # tables from benchmarks/results/loso/*.json

Each setting is what a user can choose before screening anything (features from GO and the `knowledge`
blocks, never a screen; an acquisition policy). Each is run through the shipped loop, one
`perturbloop benchmark` command per (screen, setting), on the BioDiscoveryAgent protocol (5 rounds x 128,
hits = top 5% by |score|), `--seeds` seeds; `random` runs once per screen (features do not change it).
With no prior screens round 1 is random (seeded), so every setting is stochastic and gets every seed.
Results: benchmarks/results/loso/<screen>.<setting>.json, written after each command (a killed run loses
one command). Commands run one at a time, each printed before it runs, with `--threads` BLAS / torch threads
(default 1: on the shared 2-core machine two threads spin-wait against other jobs, ~10x slower a round,
`results/round_time_il2_*thread*.json`).

Leave-one-screen-out: for a held-out screen `T`, the chosen setting is the one with the best mean of
`hit ratio / random hit ratio` over the other screens (those with the same source as `T` are left out
too: Sanchez tau up / down are one experiment). Reported: that setting's hit ratio on `T` (mean +- sd over
seeds, x random) beside random and beside the best setting on `T` itself (the oracle, which LOSO cannot
know). Only settings finished on every screen enter the choice.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

from screens import SCREENS  # benchmarks/screens.py: the six registry screens

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "loso"
# run in this order (the most informative first, so a cut-short grid still answers "go or go + knowledge?")
GRID = ("go+knowledge/best", "go/best", "go+knowledge/ucb", "go/ucb", "knowledge/best", "go+knowledge/prob_hit",
        "go/prob_hit", "knowledge/ucb", "knowledge/prob_hit")
PHENOTYPE_ARM = "go+knowledge/best+phenotype_half"  # the screen's sentence, half of round 1 from its prior
# the chosen setting with the other real screens as features on top (never the target or its study): reported
# separately, not chosen (a user has them only where such screens exist); round 1 from the priors, deterministic
PRIOR_SCREENS_ARM = "go+knowledge+screens/best"
REPORTED = (PHENOTYPE_ARM, PRIOR_SCREENS_ARM)
TARGET = 3.0  # the target: hit ratio >= 3x random


def command(screen: str, setting: str, seeds: int) -> list[str]:
    """`perturbloop benchmark` arguments for one (screen, setting); setting = 'features/policy[+phenotype_half]'."""
    from phenotype_prior import phenotypes  # benchmarks/phenotype_prior.py: the sentences of phenotypes.toml

    features, policy = setting.split("/")
    policy, _, extra = policy.partition("+")
    cmd = ["benchmark", "--screen", screen, "--rounds", "5", "--batch", "128", "--seeds", str(seeds),
           "--features", features.replace("+", ","), "--policy", policy]
    if "screens" in features.split("+"):  # never the target, nor another readout of the same study (Schmidt IL-2/IFN-g)
        cmd += ["--prior-screens", ",".join(s for s in SCREENS if s.split("_")[0] != screen.split("_")[0])]
    if extra == "phenotype_half":
        cmd += ["--phenotype", phenotypes()[screen], "--prior-share", "0.5"]
    elif extra:
        raise ValueError(f"unknown setting suffix {extra!r} in {setting!r}")
    return cmd


def path(screen: str, setting: str) -> Path:
    return OUT / f"{screen}.{setting.replace('/', '.')}.json"


def run(screens: list[str], settings: list[str], seeds: int, data_dir: str | None, threads: int = 1) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    for setting in ["random", *settings]:
        for screen in screens:
            out = path(screen, setting)
            if out.is_file():
                continue
            cmd = command(screen, "go/random" if setting == "random" else setting, seeds) + ["--out", str(out)]
            cmd += ["--data-dir", data_dir] if data_dir else []
            print("$ perturbloop", " ".join(repr(a) if " " in a else a for a in cmd), flush=True)
            subprocess.run([sys.executable, "-m", "perturbloop.cli", *cmd], check=False, env=env)  # a failure: its file is missing


def ratios(screen: str, setting: str) -> list[float] | None:
    """Final hit ratio of each seed, or None when the run is missing."""
    p = path(screen, setting)
    if not p.is_file():
        return None
    return [r["hit_ratio"] for r in json.loads(p.read_text())["results"]]


def _ms(v: list[float]) -> str:
    return f"{statistics.mean(v):.3f} +- {statistics.pstdev(v):.3f}"


def loso(settings: list[str]) -> tuple[list[dict], list[str]]:
    """Per held-out screen: the setting with the best mean x-random over the other screens, and the oracle."""
    from perturbloop.data.priors import same_source

    rand = {s: statistics.mean(ratios(s, "random")) for s in SCREENS if ratios(s, "random")}
    done = [g for g in settings if all(ratios(s, g) for s in SCREENS) and len(rand) == len(SCREENS)]
    xr = {(s, g): statistics.mean(ratios(s, g)) / rand[s] for s in SCREENS for g in done}
    rows = []
    for t in SCREENS if done else ():
        others = [s for s in SCREENS if not same_source(s, t)]
        chosen = max(done, key=lambda g: statistics.mean(xr[s, g] for s in others))
        oracle = max(done, key=lambda g: xr[t, g])
        rows.append({"screen": t, "chosen": chosen, "chosen_ratio": ratios(t, chosen), "x_random": xr[t, chosen],
                     "random": ratios(t, "random"), "oracle": oracle, "oracle_ratio": ratios(t, oracle),
                     "oracle_x_random": xr[t, oracle], "train_screens": others})
    return rows, done


def table(settings: list[str]) -> str:
    present = [g for g in settings if any(ratios(s, g) for s in SCREENS)]
    head = "| screen | random | " + " | ".join(present) + " |"
    lines = ["## Every setting, every screen (final hit ratio, mean +- sd over seeds; x random)", "", head,
             "|" + "---|" * (2 + len(present))]
    for s in SCREENS:
        r = ratios(s, "random")
        cells = []
        for g in present:
            v = ratios(s, g)
            cells.append(f"{_ms(v)} ({statistics.mean(v) / statistics.mean(r):.1f}x, n={len(v)})" if v and r
                         else "-")
        lines.append(f"| {s} | {_ms(r) + f' (n={len(r)})' if r else '-'} | " + " | ".join(cells) + " |")
    lines += ["", "## x random (mean hit ratio / mean random hit ratio)", "",
              "| screen | " + " | ".join(present) + " |", "|" + "---|" * (1 + len(present))]
    for s in SCREENS:
        r = ratios(s, "random")
        lines.append(f"| {s} | " + " | ".join(f"{statistics.mean(v) / statistics.mean(r):.2f}" if (v := ratios(s, g)) and r
                                             else "-" for g in present) + " |")
    rows, done = loso([g for g in settings if g not in REPORTED])  # reported, not chosen
    lines += ["", f"## Leave-one-screen-out (settings finished on all six screens: {', '.join(done) or 'none'})", "",
              "| held-out screen | chosen on the other screens | its hit ratio | x random | random | oracle (best on "
              "this screen) | oracle hit ratio | oracle x random |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['screen']} | {row['chosen']} | {_ms(row['chosen_ratio'])} | {row['x_random']:.1f}x "
                     f"| {_ms(row['random'])} | {row['oracle']} | {_ms(row['oracle_ratio'])} | "
                     f"{row['oracle_x_random']:.1f}x |")
    if rows:
        picks = Counter(r["chosen"] for r in rows)
        meet = [r["screen"] for r in rows if r["x_random"] >= TARGET]
        lines += ["", f"LOSO picks: {', '.join(f'{g} ({n} of {len(rows)})' for g, n in picks.most_common())}. "
                  f"Screens at >= {TARGET:g}x random with the LOSO-chosen setting: {len(meet)} of {len(rows)}"
                  f"{' (' + ', '.join(meet) + ')' if meet else ''}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--screens", default=",".join(SCREENS))
    ap.add_argument("--settings", default=",".join(GRID), help="features/policy, e.g. go+knowledge/best")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--data-dir", default=os.environ.get("PERTURBLOOP_DATA_DIR"))
    ap.add_argument("--threads", type=int, default=1, help="BLAS / torch threads of each benchmark command")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    settings = args.settings.split(",")
    if not args.table_only:
        run(args.screens.split(","), settings, args.seeds, args.data_dir, args.threads)
    text = HEADER + table([g for g in (*GRID, *REPORTED) if g in settings or args.table_only])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "TABLE.md").write_text(text)
    print(text)


HEADER = """# Leave-one-screen-out choice of the setting, no prior screens

BioDiscoveryAgent protocol (5 rounds x 128 genes, hits = top 5% by |score|), final hit ratio; settings are
features/policy (`best` = greedy GP, `ucb`, `prob_hit`); `+phenotype_half`: the screen's sentence from
`benchmarks/phenotypes.toml`, half of round 1 from its prior (`--prior-share 0.5`), not in the LOSO choice;
`go+knowledge+screens/best`: the other real screens as features on top (never the target nor another screen of
its study: IL-2 and IFN-gamma leave each other out, tau up and down too; round 1 from the priors, so
deterministic: 3 seeds), reported separately, not in the LOSO choice.
Generated by `python benchmarks/loso.py --table-only`.

"""


if __name__ == "__main__":
    main()
