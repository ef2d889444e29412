"""A reference lab server for the perturbloop-compatible lab API (see `lab_adapters/http.py`).

It wraps any simulated world (simulators.world.World: `measure(labels)` per label a response over its
`readouts`, or a failure with its reason) and serves the API from a thread on 127.0.0.1 (port 0: any free
port): a one-readout world (`ScreenReplay`, a pair screen) answers with values and replicates, a world of
several readouts (Perturb-seq: `CellWorld`) with response vectors (``"response"`` in the results JSON).
Tests use it, and it is a demo of what a lab's API must do::

    python -m lab_adapters.http_server --screen schmidt2021_il2 --port 8780 [--token-env LAB_TOKEN]
    python -m lab_adapters.http_server --config examples/norman_gi_pairs.toml --port 8780

(``--config``: the world of a campaign config, Perturb-seq and pairs included, built as the campaign
builds it), then set ``[lab] kind = "http"``, ``url = "http://127.0.0.1:8780"`` (and ``token_env``) in a
campaign config. Jobs complete at once unless the server is made with ``auto_release=False``:
then `release(job_id, perturbations)` hands results out piece by piece (partial results).
For tests it can also fail the next requests (`fail_next`, `fail_status`) or answer them late
(`delay_next`, `delay_seconds`).
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import threading
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import numpy as np

from lab_adapters.context_columns import lab_key
from simulators.world import World
from perturbloop.contexts import PAIR_SEP, pair_label, split_label


def _item(label: str, *, value: float | None = None, replicates: Iterable[float] = (), error: str | None = None,
          response: list[float] | None = None) -> dict[str, Any]:
    """One result as the results JSON carries it; `response` only for a world of several readouts."""
    item = {"perturbation": label, "value": value, "replicates": list(replicates), "error": error}
    if PAIR_SEP in label and lab_key(label):  # a (gene, context) pair: named by its gene and context too
        item["gene"], item["context"] = split_label(label)
    if response is not None:
        item["response"] = response  # the client takes its magnitude as the value
    return item


def run_batch(world: World, batch: list[str]) -> dict[str, dict[str, Any]]:
    """The world's results for a batch (results-JSON items), per label as sent. The world measures the labels it
    offers (`candidates`, compared canonically); the others fail with the reason, as does a run without a usable
    response. A one-readout world's response is the item's `value`."""
    offered = {lab_key(c): c for c in world.candidates}
    out = {lab: _item(lab, error=f"{lab} is not offered by this lab: not measured in world {getattr(world, 'name', '?')}")
           for lab in batch if lab_key(lab) not in offered}
    to_run = {offered[lab_key(lab)]: lab for lab in batch if lab not in out}
    measured = world.measure(list(to_run))
    for c, lab in to_run.items():
        m = measured.get(c)
        y = None if m is None or m.response is None else np.asarray(m.response, dtype=np.float64).ravel()
        if y is None:
            out[lab] = _item(lab, error=(m.error if m is not None else None) or "run failed (no usable cells)")
        elif not np.all(np.isfinite(y)):
            out[lab] = _item(lab, error="non-finite response")
        elif len(world.readouts) == 1:
            out[lab] = _item(lab, value=float(y[0]), replicates=m.replicates)
        else:
            out[lab] = _item(lab, response=y.tolist())
    return out


def _items_disagree(items: Any, batch: list[str]) -> str | None:
    """Why a request's `items` (gene and context of each pair label, in order) do not match its batch, or None."""
    if items is None:
        return None
    if not isinstance(items, list) or len(items) != len(batch):
        return f"items must list the gene and context of each of the {len(batch)} perturbation(s), in order"
    for i, (it, label) in enumerate(zip(items, batch)):
        ok = (isinstance(it, dict) and it.get("perturbation") == label and isinstance(it.get("gene"), str)
              and isinstance(it.get("context"), str) and pair_label(it["gene"], it["context"]) == label)
        if not ok:
            return f"items[{i}] {str(it)[:120]} does not name the gene and context of {label!r}"
    return None


@dataclass
class _Job:
    job_id: str
    key: str
    perturbations: list[str]
    readings: dict[str, dict[str, Any]]  # label -> its results-JSON item
    released: set[str] = field(default_factory=set)
    failed: str | None = None

    @property
    def status(self) -> str:
        if self.failed:
            return "failed"
        if not self.released:
            return "submitted"
        return "complete" if len(self.released) == len(self.perturbations) else "partial"

    def results(self) -> list[dict]:
        return [dict(self.readings[p]) for p in self.perturbations if p in self.released]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    lab: LabServer

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 - a client that gave up is not an error
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - as do_POST: `self.command` is the method
        lab = self.server.lab
        n = int(self.headers.get("Content-Length") or 0)
        status, payload = lab._handle(self.command, self.path, self.headers, self.rfile.read(n) if n else b"")
        with lab._lock:
            lab.requests.append((self.command, self.path, status))
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out meanwhile
            pass

    do_POST = do_GET  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass


class LabServer:
    """The reference lab API over `world`, served from a background thread (see module docstring).

    Example:
        >>> with LabServer(ScreenReplay(screen)) as server:
        ...     lab = HttpLab(server.url)
    """

    def __init__(self, world: World, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 auto_release: bool = True):
        self.world = world
        self.token = token
        self.auto_release = auto_release
        self.jobs: dict[str, _Job] = {}
        self.keys: dict[str, str] = {}  # idempotency key -> job id
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self.fail_next = 0  # answer the next N requests with `fail_status`
        self.fail_status = 500
        self.delay_next = 0  # answer the next N requests after `delay_seconds`
        self.delay_seconds = 0.0
        self._lock = threading.Lock()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.lab = self

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LabServer:
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> LabServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # the lab's side ------------------------------------------------------------------------------
    def release(self, job_id: str, perturbations: Iterable[str] | None = None) -> None:
        """Make the results of these perturbations (default: all) available."""
        with self._lock:
            job = self.jobs[job_id]
            job.released |= set(job.perturbations if perturbations is None else perturbations) & set(job.perturbations)

    def fail_job(self, job_id: str, reason: str) -> None:
        with self._lock:
            self.jobs[job_id].failed = reason

    def job_for(self, key: str) -> _Job:
        return self.jobs[self.keys[key]]

    # HTTP ----------------------------------------------------------------------------------------
    def _handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict]:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return self.fail_status, {"error": "injected failure"}
            delay = self.delay_seconds if self.delay_next > 0 else 0.0
            self.delay_next = max(0, self.delay_next - 1)
        if delay:
            time.sleep(delay)
        if self.token is not None:
            auth = headers.get("Authorization") or ""
            if not hmac.compare_digest(auth.encode(), f"Bearer {self.token}".encode()):
                return 401, {"error": "missing or wrong token"}
        parts = [unquote(p) for p in path.split("?", 1)[0].strip("/").split("/") if p]
        if method == "GET" and not parts:
            return 200, {"name": "perturbloop-compatible lab API", "jobs": len(self.jobs),
                         "readouts": list(self.world.readouts)}
        if method == "POST" and parts == ["jobs"]:
            return self._submit(headers, body)
        if method == "GET" and len(parts) in (2, 3) and parts[0] == "jobs" and parts[2:] in ([], ["results"]):
            with self._lock:
                job = self.jobs.get(parts[1])
                if job is None:
                    return 404, {"error": f"no job {parts[1]!r}"}
                about = {"job_id": job.job_id, "status": job.status, "perturbations": job.perturbations}
                if len(parts) == 2:
                    return 200, {**about, "idempotency_key": job.key, "error": job.failed}
                return 200, {**about, "results": job.results()}
        return 404, {"error": f"no endpoint {method} {path}"}

    def _submit(self, headers: Any, body: bytes) -> tuple[int, dict]:
        try:
            data = json.loads(body or b"null")
        except ValueError:
            return 400, {"error": "body is not JSON"}
        key = data.get("idempotency_key") if isinstance(data, dict) else None
        batch = data.get("perturbations") if isinstance(data, dict) else None
        if not isinstance(key, str) or not key or not isinstance(batch, list) or not all(isinstance(p, str) for p in batch):
            return 400, {"error": "expected {idempotency_key: str, perturbations: [str, ...]}"}
        if headers.get("Idempotency-Key") not in (None, key):
            return 400, {"error": "Idempotency-Key header and body idempotency_key differ"}
        if wrong := _items_disagree(data.get("items"), batch):
            return 400, {"error": wrong}
        with self._lock:
            if key in self.keys:
                job = self.jobs[self.keys[key]]
                if job.perturbations != batch:
                    return 409, {"error": f"idempotency key {key!r} was already used for a different batch"}
                return 200, {"job_id": job.job_id, "status": job.status}
            job_id = f"job-{len(self.jobs) + 1:05d}"
            job = _Job(job_id, key, list(batch), run_batch(self.world, list(batch)),
                       released=set(batch) if self.auto_release else set())
            self.jobs[job_id], self.keys[key] = job, job_id
            return 201, {"job_id": job_id, "status": job.status}


def world_for(config_path: str, data_dir: str | None, *, noise: str = "none") -> tuple[World, str]:
    """The world a campaign config runs against (a response world built as the campaign builds it, or the
    config's screen), and a name for it."""
    from perturbloop.config import load_config

    config = load_config(config_path)
    if config.is_response:
        from simulators.response_worlds import build_world

        return build_world(config, data_dir), f"{config.world.kind} world of {config_path}"
    from perturbloop.data import load_screen
    from simulators import ScreenReplay

    screen = load_screen(config.data.screen, data_dir, aggregate=config.data.aggregate)
    return ScreenReplay(screen, noise=noise), f"screen {config.data.screen} of {config_path}"


def main(argv: list[str] | None = None) -> None:
    """Serve a registry screen, a screen file or a campaign config's world as a lab until Ctrl-C."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--screen", help="registry screen name or screen file")
    what.add_argument("--config", help="campaign config (TOML) whose world to serve: Perturb-seq, pairs or a screen")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--port", type=int, default=8780)
    ap.add_argument("--noise", choices=["none", "donor"], default="none", help="screens: screen mean, or one donor")
    ap.add_argument("--token-env", default=None, help="environment variable holding the token clients must send")
    args = ap.parse_args(argv)
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        ap.error(f"environment variable {args.token_env} is not set")
    if args.config:
        world, name = world_for(args.config, args.data_dir, noise=args.noise)
    else:
        from perturbloop.data import load_screen
        from simulators import ScreenReplay

        world, name = ScreenReplay(load_screen(args.screen, args.data_dir), noise=args.noise), args.screen
    with LabServer(world, port=args.port, token=token) as server:
        print(f"perturbloop-compatible lab API for {name} on {server.url} (Ctrl-C stops)", flush=True)
        with suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
