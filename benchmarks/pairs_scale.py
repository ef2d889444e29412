"""Seconds and peak memory to score ~1M gene-pair candidates (perturbloop.design_space, acquisition.response).

    python benchmarks/pairs_scale.py                       # 1,415 genes -> 1,000,405 pairs, writes results
    python benchmarks/pairs_scale.py --genes 300 --quick   # a smoke run
    python benchmarks/pairs_scale.py --threads 2 --quick --append   # the same ensemble run on 2 threads

Set-up (the size of a genome-scale pair campaign's design space, synthetic numbers; the cost does
not depend on the values): `n` genes with 64 gene features, single-gene responses over `G` = 1,000
genes (the additive prior; 8 PCs of them become pair features: 2 x 64 + 2 x 8 + 1 = 145 features
per pair), and a surrogate fitted on 500 observed pairs. Then one batch of 100 is picked from
all pairs, each measurement in a fresh process (peak RSS = `ru_maxrss` of that process; the
increment is over the RSS right before scoring, i.e. what scoring the pool costs):

- `uncertainty` (ensemble of 5 MLPs, total predictive variance) and `uncertainty` with the
  low-rank GP (8 PCs, exact posterior from a cached Cholesky), per-gene cap 2;
- `program` (UCB of a 20-gene program score with the additive prior, via singles' scores);
- chunk sizes 4,096 / 16,384 / 65,536 (memory grows with the chunk, not with the pool).

A dense alternative would hold 1M x 145 float64 features (1.2 GB) and 1M x 1,000 offsets (8 GB).
Writes benchmarks/results/pairs_scale.json and the section of benchmarks/PERTURBSEQ_RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "pairs_scale.json"
G = 1000
D = 64
N_OBS = 500
BATCH = 100


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(n_genes: int, surrogate: str, policy: str, chunk: int, threads: int) -> dict:
    """One measurement (run in its own process by `main`)."""
    import torch

    torch.set_num_threads(threads)
    from acquisition.response import ProgramPolicy, UncertaintyPolicy
    from perturbloop.device import default_device
    from perturbloop.design_space import PairSpace
    from surrogates.response import EnsembleResponse, LowRankGPResponse

    g = torch.Generator().manual_seed(0)
    genes = [f"G{i:05d}" for i in range(n_genes)]
    gx = torch.randn(n_genes, D, generator=g, dtype=torch.float64)
    singles = torch.randn(n_genes, G, generator=g, dtype=torch.float64) * 0.3
    space = PairSpace(genes, gx, None, singles, device=default_device())
    obs = torch.randperm(len(space), generator=g)[:N_OBS]
    X, off = space.features(obs).cpu(), space.offset(obs).cpu()
    Y = off + 0.2 * torch.tanh(X[:, :8]) @ torch.randn(8, G, generator=g, dtype=torch.float64)
    t0 = time.perf_counter()
    model = EnsembleResponse(seed=0) if surrogate == "ensemble" else LowRankGPResponse(max_iter=30)
    model.fit(X, Y, off)
    fit_s = time.perf_counter() - t0
    observed = dict.fromkeys(space.labels_at(obs))
    if policy == "uncertainty":
        pol = UncertaintyPolicy(max_per_gene=2, chunk=chunk)
    else:
        w = torch.zeros(G, dtype=torch.float64)
        w[:20] = 1 / 20
        pol = ProgramPolicy(weights=w, beta=1.0, max_per_gene=2, chunk=chunk)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    prop = pol.select(model, space, observed, BATCH)
    score_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert len(prop.labels) == BATCH and not set(prop.labels) & set(observed)
    return {"n_genes": n_genes, "n_pairs": len(space), "features": space.dim, "surrogate": surrogate, "policy": policy,
            "chunk": chunk, "threads": threads, "device": str(default_device()), "fit_seconds": round(fit_s, 2),
            "select_seconds": round(score_s, 2), "pairs_per_second": round(len(space) / score_s),
            "rss_before_mb": round(rss0), "peak_rss_mb": round(peak), "peak_increment_mb": round(peak - rss0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, default=1415)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one configuration only")
    ap.add_argument("--one", nargs=3, metavar=("SURROGATE", "POLICY", "CHUNK"), help=argparse.SUPPRESS)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--append", action="store_true", help="add these runs to the results file instead of replacing it")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.genes, args.one[0], args.one[1], int(args.one[2]), args.threads)))
        return
    if not args.table_only:
        runs = [("ensemble", "uncertainty", 16384)]
        if not args.quick:
            runs += [("ensemble", "uncertainty", 4096), ("ensemble", "uncertainty", 65536),
                     ("ensemble", "program", 16384), ("gp", "uncertainty", 16384)]
        rows = []
        for s, p, c in runs:
            cmd = [sys.executable, __file__, "--genes", str(args.genes), "--threads", str(args.threads), "--one", s, p, str(c)]
            print("$", " ".join(cmd[1:]), flush=True)
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ}).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        if args.append and OUT.is_file():
            rows = json.loads(OUT.read_text())["runs"] + rows
        OUT.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                               "load_avg_at_end": os.getloadavg()}, "runs": rows}, indent=1))
    print(table())


def table() -> str:
    if not OUT.is_file():
        return "(no pair-scale results yet: run `python benchmarks/pairs_scale.py`)"
    res = json.loads(OUT.read_text())
    rows = res["runs"]
    lines = ["| pairs | features | surrogate | policy | chunk | threads | device | fit s (500 pairs) | select s | pairs/s | "
             "RSS before MB | peak RSS MB | peak - before MB |", "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r['n_pairs']:,} | {r['features']} | {r['surrogate']} | {r['policy']} | {r['chunk']:,} | "
                     f"{r['threads']} | {r['device']} | {r['fit_seconds']} | {r['select_seconds']} | "
                     f"{r['pairs_per_second']:,} | {r['rss_before_mb']} | {r['peak_rss_mb']} | {r['peak_increment_mb']} |")
    m = res.get("machine", {})
    lines.append("")
    lines.append(f"Machine: {m.get('cpus')} CPU cores shared with other work (load average at the end "
                 f"{', '.join(f'{x:.1f}' for x in m.get('load_avg_at_end', []))}), Python {m.get('python')}, no GPU. "
                 "With the other core busy, two torch threads are several times slower than one (OpenMP threads "
                 "wait on each other for these small matrix products): run sweeps with PERTURBLOOP_TASK_THREADS=1 "
                 "on shared cores. Select = score every pair in chunks, keep a running top-k, apply the per-gene "
                 "cap, build the proposal. On a GPU (`perturbloop.device`) the features and the ensemble run there.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
