"""Campaign runs in processes of their own, without a new interpreter for each (the crash-injection tests).

A killed-run test runs a campaign in a process that `PERTURBLOOP_KILL_AT` SIGKILLs, then resumes it in
another. A new interpreter imports torch, BoTorch, LangGraph, anndata and the loop again: seconds per run on
two shared cores, most of such a test's time. `multiprocessing`'s forkserver imports them once, in a server
process that runs nothing else (no model fitted, no thread started); each run is a fork of it. A run is still
a process of its own: a SIGKILL ends it alone (its exit status is the signal), it has the environment and
working directory it is given, and nothing of the test process's state (caches, open stores, torch settings).
Modules that read settings at import (Prefect) are not preloaded: runs here use none.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import tempfile
from pathlib import Path

PRELOAD = ["perturbloop.config", "agent.runner"]
_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(PRELOAD)


def _run_campaign(cfg: str, store: str, data_dir: str | None, env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """The child: the given environment and working directory, output into files, then the campaign to its end
    or to the wait for a lab (printed as `STATUS <status>`, as a script would)."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    if env.get("OMP_NUM_THREADS"):  # read by torch when the interpreter starts, i.e. in the forkserver: set it here
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    from agent.runner import run_campaign
    from perturbloop.config import load_config

    print("STATUS", run_campaign(load_config(cfg), store, data_dir).status, flush=True)


def run_campaign_process(cfg: Path, store: Path | str, data_dir: Path | None = None, *, env: dict[str, str] | None = None,
                         cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`run_campaign(load_config(cfg), store, data_dir)` in a fresh process; its exit status (`-SIGKILL` where the
    fault hook killed it), stdout and stderr, as `subprocess.run` gives them. Fails the caller on a timeout."""
    env = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory(prefix="perturbloop-run-") as d:
        out, err = Path(d) / "stdout", Path(d) / "stderr"
        proc = _CTX.Process(target=_run_campaign, args=(str(cfg), str(store), data_dir and str(data_dir), env,
                                                        str(cwd or os.getcwd()), str(out), str(err)))
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["run_campaign", str(cfg)], timeout, _read(out), _read(err))
        return subprocess.CompletedProcess(["run_campaign", str(cfg), str(store), str(data_dir)], proc.exitcode,
                                           _read(out), _read(err))


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
