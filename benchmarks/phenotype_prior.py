"""The scientist's prior on the real screens: knowledge features with vs without the phenotype sentence.

    python benchmarks/phenotype_prior.py --screens schmidt2021_il2,schmidt2021_ifng --seeds 3
    python benchmarks/phenotype_prior.py --table-only

Per screen, three arms on the BioDiscoveryAgent protocol (5 rounds x 128, hits = top 5% by |score|),
features `go,knowledge` (what a user knows before screening: no prior screens):
`best` without a phenotype (round 1 random), `best` with the screen's sentence from
`benchmarks/phenotypes.toml` (written before any run; round 1 from the prior, so the arm is deterministic:
one seed), and `random`. Each arm is one `perturbloop benchmark` command (printed before it
runs). Results: benchmarks/results/phenotype_prior/<screen>.<arm>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "phenotype_prior"
FEATURES = "go,knowledge"


def phenotypes() -> dict[str, str]:
    data = tomllib.loads((HERE / "phenotypes.toml").read_text())
    return {screen: entry["phenotype"] for screen, entry in data.items()}


def arms(screen: str, seeds: int) -> dict[str, list[str]]:
    base = ["--screen", screen, "--rounds", "5", "--batch", "128", "--features", FEATURES]
    return {"knowledge": [*base, "--policy", "best,random", "--seeds", str(seeds)],
            # deterministic (round 1 from the prior, then the greedy GP): one seed is every seed
            "knowledge+phenotype": [*base, "--policy", "best", "--seeds", "1",
                                    "--phenotype", phenotypes()[screen]],
            # half of round 1 from the prior, half random (seeded): a representative first fit for the model
            "knowledge+phenotype_half": [*base, "--policy", "best", "--seeds", str(seeds),
                                         "--phenotype", phenotypes()[screen], "--prior-share", "0.5"]}


def run(screens: list[str], seeds: int, data_dir: str | None, only: list[str] | None = None) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for screen in screens:
        for arm, args in arms(screen, seeds).items():
            out = OUT / f"{screen}.{arm}.json"
            if only and arm not in only:
                continue
            cmd = [sys.executable, "-m", "perturbloop.cli", "benchmark", *args, "--out", str(out)]
            cmd += ["--data-dir", data_dir] if data_dir else []
            print("$ perturbloop", " ".join(repr(a) if " " in a else a for a in cmd[3:]), flush=True)
            subprocess.run(cmd, check=False)  # a failed arm is reported by its missing file


def prior_alone(screen: str, data_dir: str | None, picks: int = 5 * 128) -> float:
    """Hit ratio of the prior's top `picks` genes with no model (the sentence alone)."""
    import warnings

    import numpy as np

    from perturbloop.data import load_screen
    from perturbloop.phenotype_prior import phenotype_prior
    from simulators import ScreenReplay

    sc = load_screen(screen, data_dir)
    hits = ScreenReplay(sc, hit_fraction=0.05).hits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = phenotype_prior(sc.genes, phenotype=phenotypes()[screen], data_dir=data_dir).score
    return sum(sc.genes[i] in hits for i in np.argsort(-p, kind="stable")[:picks]) / len(hits)


def table(data_dir: str | None = None) -> str:
    lines = ["| screen | hits | random | best, go+knowledge | best, + phenotype | best, + phenotype, half of round 1 "
             "random | prior alone (top 640, no model) | round 1 (no / with / half) | seeds (no phenotype, random) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(OUT.glob("*.knowledge.json")):
        screen = path.name.split(".")[0]
        without = json.loads(path.read_text())
        with_path = OUT / f"{screen}.knowledge+phenotype.json"
        withp = json.loads(with_path.read_text()) if with_path.is_file() else None
        half_path = OUT / f"{screen}.knowledge+phenotype_half.json"
        half = json.loads(half_path.read_text()) if half_path.is_file() else None

        def stat(res: dict | None, policy: str, key: str = "hit_ratio") -> str:
            rs = [r for r in (res or {"results": []})["results"] if r["policy"] == policy]
            if not rs:
                return "-"
            v = [r[key] if key == "hit_ratio" else r["per_round"][0] for r in rs]
            m = sum(v) / len(v)
            return f"{m:.3f} +- {(sum((x - m) ** 2 for x in v) / len(v)) ** 0.5:.3f}"

        lines.append(f"| {screen} | {without['protocol']['n_hits']} | {stat(without, 'random')} | {stat(without, 'best')} "
                     f"| {stat(withp, 'best')} | {stat(half, 'best')} | {prior_alone(screen, data_dir):.3f} "
                     f"| {stat(without, 'best', 'r1')} / "
                     f"{stat(withp, 'best', 'r1')} / {stat(half, 'best', 'r1')} "
                     f"| {len([r for r in without['results'] if r['policy'] == 'best'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--screens", default="schmidt2021_il2,schmidt2021_ifng")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--data-dir", default=os.environ.get("PERTURBLOOP_DATA_DIR"))
    ap.add_argument("--arms", default=None, help="comma-separated arms to run (default: all)")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if not args.table_only:
        run(args.screens.split(","), args.seeds, args.data_dir, args.arms.split(",") if args.arms else None)
    text = HEADER + table(args.data_dir)
    (OUT / "TABLE.md").write_text(text)
    print(text)


HEADER = """# The scientist's prior on the real screens

BioDiscoveryAgent protocol, 5 rounds x 128 genes, hits = top 5% by |score|, hit ratio after round 5 (mean +- sd
over seeds); features go + knowledge (no prior screens); `best` = the recommended policy (greedy GP).
Phenotype sentences: `benchmarks/phenotypes.toml` (written before any run). With the whole of round 1 from the
prior the arm is deterministic (one seed); `half` takes half of round 1 from the prior and half at random
(`--prior-share 0.5`, 3 seeds; tried after seeing the IL-2 result). Generated by
`python benchmarks/phenotype_prior.py --table-only`.

"""


if __name__ == "__main__":
    main()
