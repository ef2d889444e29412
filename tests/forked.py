"""Campaign runs and `perturbloop` commands in processes of their own, without a new interpreter for each.

A killed-run test runs a campaign in a process that `PERTURBLOOP_KILL_AT` SIGKILLs, then resumes it in
another; a command-line test runs `perturbloop ...` several times. A new interpreter imports torch, BoTorch,
LangGraph, anndata and the loop again: seconds per process on two shared cores, most of such a test's time.
`multiprocessing`'s forkserver imports them once, in a server process that runs nothing else (no model fitted,
no thread started); each run is a fork of it. A run is still a process of its own: a SIGKILL ends it alone (its
exit status is the signal), it has the environment and working directory it is given, its own stdin, stdout
and stderr, exit handlers run as at an interpreter's exit, and nothing of the test process's state (caches,
open stores, torch settings) is in it. Modules that read settings when imported (Prefect, `perturbloop.cli`)
are not preloaded: the run imports them under its own environment.

A test of the interpreter start itself (`python -m perturbloop.cli`, a server a test talks to) starts a real
subprocess instead.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

PRELOAD = ["perturbloop.config", "agent.runner"]
_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(PRELOAD)


def _child(fn: Callable[..., None], args: tuple, env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """The forked process: the given environment and working directory, stdout and stderr into files, then
    `fn(*args)`; exit handlers run at the end (as at an interpreter's exit)."""
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
    try:
        fn(*args)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        atexit._run_exitfuncs()


def _campaign(cfg: str, store: str, data_dir: str | None) -> None:
    from agent.runner import run_campaign
    from perturbloop.config import load_config

    print("STATUS", run_campaign(load_config(cfg), store, data_dir).status, flush=True)


def _command(args: list[str]) -> None:
    sys.argv = ["perturbloop", *args]
    from perturbloop.cli import main

    main()


class Started:
    """A run started in a process of its own (`start`): `wait` gives what `subprocess.run` would, `kill` ends it."""

    def __init__(self, fn: Callable[..., None], args: tuple, what: list[str], env: dict[str, str] | None,
                 cwd: Path | None):
        self.what = what
        self._dir = tempfile.TemporaryDirectory(prefix="perturbloop-run-")
        self._out, self._err = Path(self._dir.name) / "stdout", Path(self._dir.name) / "stderr"
        self.process = _CTX.Process(target=_child, args=(fn, args, dict(os.environ if env is None else env),
                                                         str(cwd or os.getcwd()), str(self._out), str(self._err)))
        self.process.start()
        self.pid = self.process.pid

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """Its exit status, stdout and stderr once it has ended; killed, `subprocess.TimeoutExpired`, after `timeout`."""
        self.process.join(timeout)
        try:
            if self.process.exitcode is None:
                self.kill()
                raise subprocess.TimeoutExpired(self.what, timeout, _read(self._out), _read(self._err))
            return subprocess.CompletedProcess(self.what, self.process.exitcode, _read(self._out), _read(self._err))
        finally:
            self._dir.cleanup()

    def kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()


def _run(fn: Callable[..., None], args: tuple, what: list[str], env: dict[str, str] | None, cwd: Path | None,
         timeout: float) -> subprocess.CompletedProcess:
    return Started(fn, args, what, env, cwd).wait(timeout)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def run_campaign_process(cfg: Path, store: Path | str, data_dir: Path | None = None, *, env: dict[str, str] | None = None,
                         cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`run_campaign(load_config(cfg), store, data_dir)` in a fresh process, printing `STATUS <status>`; its exit
    status (`-SIGKILL` where the fault hook killed it), stdout and stderr, as `subprocess.run` gives them.
    Raises `subprocess.TimeoutExpired` (the process killed) after `timeout` seconds."""
    args = (str(cfg), str(store), data_dir and str(data_dir))
    return _run(_campaign, args, ["run_campaign", *map(str, args)], env, cwd, timeout)


def perturbloop(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                timeout: float = 400) -> subprocess.CompletedProcess:
    """`perturbloop ARGS` (the command line's entry point) in a fresh process, as `subprocess.run` gives it."""
    return _run(_command, (list(args),), ["perturbloop", *args], env, cwd, timeout)


def start_perturbloop(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Started:
    """`perturbloop ARGS` started in a process of its own, not waited for (runs side by side)."""
    return Started(_command, (list(args),), ["perturbloop", *args], env, cwd)
