"""How long the everyday commands take to answer, as multiples of `perturbloop --help`.

    python benchmarks/cli_latency.py                 # 5 runs of each command (median)
    python benchmarks/cli_latency.py --repeats 9

Builds a small campaign in a temporary folder (a ~530-gene slice of the Schmidt 2021 IL2 screen, one round of
6 genes, `approval = "required"`), runs it to its approval pause, then times each command as a user types it
(the `perturbloop` script of this Python, a fresh process each time):

- `--help`;
- `status` and `review` of the paused campaign;
- a refused `approve` (an edit adding a gene that does not exist; exit status 2);
- a refused `run` (a config naming a dataset that does not exist; exit status 2).

Each row is the median wall time of `--repeats` runs, and that time divided by the median of `--help`. The
machine's load average is written beside the table (the numbers are only comparable at similar load).
`--compare DIR` also times another checkout of the code (e.g. `git worktree add /tmp/before main`), in the same
rounds, so that both columns see the same load. Results: benchmarks/results/cli_latency.json and .md. Not a
test: wall times depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CAMPAIGN = "latency"
TARGET = 4.0  # aim: every command within 4x `--help`


def _exe() -> list[str]:
    script = Path(sys.executable).with_name("perturbloop")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "perturbloop.cli"]


def _campaign(tmp: Path, data_dir: str | None) -> tuple[Path, Path]:
    """A slice CSV, its config (approval required) and a bad config naming an unknown dataset."""
    sys.path.insert(0, str(ROOT))
    import pandas as pd

    from perturbloop.data import load_screen

    scores = load_screen("schmidt2021_il2", data_dir).scores  # the 60 strongest genes and every 40th
    genes = scores.abs().nlargest(60).index.union(pd.Index(sorted(scores.index)[::40]), sort=False)
    scores.loc[genes].rename("Score").rename_axis("Gene").reset_index().to_csv(tmp / "slice.csv", index=False)
    cfg = tmp / "latency.toml"
    cfg.write_text(f'name = "{CAMPAIGN}"\nrounds = 1\nbatch_size = 6\napproval = "required"\n'
                   f'[data]\nscreen = "{tmp / "slice.csv"}"\n')
    bad = tmp / "unknown.toml"
    bad.write_text('name = "unknown"\nrounds = 2\nbatch_size = 4\n[data]\nscreen = "no_such_screen_2026"\n')
    return cfg, bad


def _time(cmd: list[str], env: dict, cwd: Path, expect: int) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    if proc.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)}: exit status {proc.returncode}, expected {expect}\n{proc.stdout}{proc.stderr}")
    return dt


def _env(tmp: Path, code: Path) -> dict:
    return {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PYTHONPATH": os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH")) if p)}


def measure(repeats: int, data_dir: str | None, compare: Path | None = None) -> dict:
    exe = _exe()
    with tempfile.TemporaryDirectory(prefix="pl-latency-") as t:
        tmp = Path(t)
        env = _env(tmp, ROOT)
        codes = {"this": env, **({"compare": _env(tmp, compare)} if compare else {})}
        dd = ["--data-dir", data_dir] if data_dir else []
        cfg, bad = _campaign(tmp, data_dir)
        store = ["--store", str(tmp / "pl.db")]
        setup = subprocess.run([*exe, "run", str(cfg), "--no-baseline", *store, *dd], env=env, cwd=tmp,
                               capture_output=True, text=True, timeout=900)
        if setup.returncode != 0 or "awaiting_approval" not in setup.stdout:
            raise SystemExit(f"could not set up the paused campaign:\n{setup.stdout}{setup.stderr}")
        commands = {
            "perturbloop --help": ([*exe, "--help"], 0),
            "status": ([*exe, "status", *store], 0),
            "review": ([*exe, "review", CAMPAIGN, *store], 0),
            "approve (refused: unknown gene)": ([*exe, "approve", CAMPAIGN, "--add", "NOTAGENE9", *store, *dd], 2),
            "run (refused: unknown dataset)": ([*exe, "run", str(bad), *store, *dd], 2),
        }
        times = {c: {k: [] for k in commands} for c in codes}
        load_before = os.getloadavg()
        for _ in range(repeats):  # interleaved, so a burst of load hits every command (and checkout) alike
            for name, (cmd, expect) in commands.items():
                for c, e in codes.items():
                    times[c][name].append(_time(cmd, e, tmp, expect))
        load_after = os.getloadavg()
    rows = _rows(times["this"])
    if compare:
        for r, b in zip(rows, _rows(times["compare"])):
            r.update({"compare_median_s": b["median_s"], "compare_x_help": b["x_help"]})
    return {"repeats": repeats, "rows": rows, "target_x_help": TARGET, "cpus": os.cpu_count(),
            "compare": str(compare) if compare else None,
            "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _rows(times: dict[str, list[float]]) -> list[dict]:
    help_s = statistics.median(times["perturbloop --help"])
    return [{"command": k, "median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3),
             "max_s": round(max(v), 3), "x_help": round(statistics.median(v) / help_s, 2)} for k, v in times.items()]


def table(res: dict) -> str:
    cmp = res.get("compare")
    head = "| command | median s | min-max s | x `--help` |" + (" before: median s | before: x `--help` |" if cmp else "")
    lines = [head, "|---|---:|---:|---:|" + ("---:|---:|" if cmp else "")]
    for r in res["rows"]:
        line = f"| `{r['command']}` | {r['median_s']:.2f} | {r['min_s']:.2f}-{r['max_s']:.2f} | {r['x_help']:.1f} |"
        if cmp:
            line += f" {r['compare_median_s']:.2f} | {r['compare_x_help']:.1f} |"
        lines.append(line)
    lo, hi = res["load_average_1m"]
    lines.append("")
    lines.append(f"Median of {res['repeats']} runs each, {res['date']}, {res['cpus']} CPUs, 1-minute load average "
                 f"{lo:.2f} before and {hi:.2f} after (a shared machine); aim: each under {res['target_x_help']:.0f}x "
                 f"`--help`. `python benchmarks/cli_latency.py` writes this table"
                 + (f"; \"before\": the same commands of another checkout ({Path(cmp).name}), timed in the same "
                    "rounds." if cmp else "."))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", default=os.environ.get("PERTURBLOOP_DATA_DIR"))
    ap.add_argument("--compare", type=Path, help="another checkout of the code to time alongside (e.g. main)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cli_latency")
    args = ap.parse_args()
    res = measure(args.repeats, args.data_dir, args.compare.resolve() if args.compare else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md = table(res)
    args.out.with_suffix(".md").write_text("# CLI latency\n\n" + md + "\n")
    print(md)


if __name__ == "__main__":
    main()
