"""Papalexi `learn_response` with gene knowledge as features: `mse_top20_de` at the final round of the shipped
model (examples/papalexi_learn.toml: ensemble, acquisition `uncertainty`) per feature set, beside the mean and
linear baselines fitted on the same observations, over a few seeds (each seed its own split and initial design).

    PYTHONPATH=. PERTURBLOOP_DATA_DIR=... PERTURBLOOP_TASK_THREADS=1 \
        python benchmarks/papalexi_response_knowledge.py --seeds 3 --out results/papalexi_response_knowledge.json
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path

import numpy as np

from agent.benchmark import response_sweep
from perturbloop.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
FEATURE_SETS = {
    "default": ["go", "expression_pca"],
    "default+knowledge+gwt": ["go", "expression_pca", "knowledge", "gwt"],
    "default+knowledge": ["go", "expression_pca", "knowledge"],
    "default+gwt": ["go", "expression_pca", "gwt"],
    "knowledge+gwt": ["knowledge", "gwt"],
    "gwt": ["gwt"],
}
METRIC = "mse_top20_de"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sets", default=",".join(FEATURE_SETS))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    raw = tomllib.loads((ROOT / "examples" / "papalexi_learn.toml").read_text())
    out = json.loads(args.out.read_text()) if args.out.is_file() else {}  # other feature sets of earlier runs stay
    for name in args.sets.split(","):
        raw["design"]["features"] = FEATURE_SETS[name]
        config = parse_config(raw, "papalexi_learn.toml")
        t0 = time.time()
        rows = response_sweep(config, policies=[config.acquisition.kind], seeds=args.seeds)
        final = {k: [r["metrics"][k][-1] for r in rows] for k in (METRIC, f"{METRIC}@mean", f"{METRIC}@linear")}
        diff = np.array(final[METRIC]) - np.array(final[f"{METRIC}@mean"])
        out[name] = {"features": FEATURE_SETS[name], "policy": config.acquisition.kind, "seeds": args.seeds,
                     "final": final, "model_minus_mean": diff.tolist(), "seconds": time.time() - t0}
        print(f"{name}: model {np.mean(final[METRIC]):.4f} +- {np.std(final[METRIC], ddof=1) / np.sqrt(len(rows)):.4f} (se)"
              f" | mean {np.mean(final[f'{METRIC}@mean']):.4f} | linear {np.mean(final[f'{METRIC}@linear']):.4f}"
              f" +- {np.std(final[f'{METRIC}@linear'], ddof=1) / np.sqrt(len(rows)):.4f}"
              f" | model - mean {diff.mean():+.4f} +- {diff.std(ddof=1) / np.sqrt(len(rows)):.4f}"
              f" ({time.time() - t0:.0f} s)", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
