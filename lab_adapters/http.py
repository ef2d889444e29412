"""HttpLab: a lab reached through a small REST API (the "perturbloop-compatible lab API").

Endpoints (JSON bodies; ``Authorization: Bearer TOKEN`` when the lab needs a token):

- ``POST /jobs`` with ``{"idempotency_key": K, "perturbations": [...]}`` and the header
  ``Idempotency-Key: K`` -> ``{"job_id": ID, "status": S}``. A batch of (gene, context) pairs (labels
  ``GENE@@context``, a campaign across contexts) also carries ``"items": [{"perturbation", "gene", "context"}, ...]``,
  one per label in order. The same key with the same batch
  returns the same job; the same key with another batch is refused with 409.
- ``GET /jobs/{ID}`` -> ``{"status": S}``, S one of submitted | running | partial | complete | failed.
- ``GET /jobs/{ID}/results`` -> ``{"results": [{"perturbation", "value", "replicates", "response", "error"}, ...]}``:
  the results received so far; a non-empty ``error`` marks that perturbation failed. ``response`` (optional)
  is the perturbation's response vector over the campaign's readout genes, in their order (a Perturb-seq
  pseudobulk LFC, a pair's GI score as ``[gi]``); with it ``value`` may be left out (it then defaults to the
  vector's one element, or its L2 norm). The campaign checks the vector's length against its readout genes.
  Optional keys ``status`` and ``perturbations`` (the batch) let the client check for unknown and missing ones.
  A result of a (gene, context) pair names it by ``perturbation`` (``GENE@@context``), by ``gene`` and ``context``,
  or both (they must agree); a context the batch does not have, or none, is an error naming the result.

Connection errors, timeouts, 5xx and 429 are retried with exponential backoff (`retries` times);
other 4xx are not (`LabRequestError`, or `LabKeyConflictError` for 409). A lab still unreachable
after the retries is a `LabUnavailableError`; a malformed results payload a `LabResultError`.
Re-sending a POST after a timeout is safe: the idempotency key makes it the same job.

`lab_adapters/http_server.py` is a reference server for this API over any simulated world.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any
from urllib.parse import quote

import httpx

from lab_adapters.base import (JOB_STATUSES, MAX_PROBLEMS_SHOWN, JobRef, JobStatus, LabError, LabResult,
                               problems_error, response_value)
from lab_adapters.context_columns import context_batch, contexts_of, lab_key, result_key
from perturbloop.contexts import PAIR_SEP, split_label
from perturbloop.errors import LabKeyConflictError, LabRequestError, LabResultError, LabUnavailableError
from perturbloop.perturbation import CONTROL

DEFAULT_TIMEOUT = 30.0  # seconds per request (connect, read, write)
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5  # seconds before the first retry, doubled each time
MAX_BACKOFF = 30.0
RETRY_STATUSES = frozenset({429})  # and every 5xx


def _detail(resp: httpx.Response) -> str:
    """The server's own explanation of an error response, kept short."""
    with suppress(ValueError):
        body = resp.json()
        if isinstance(body, dict) and ("error" in body or "detail" in body):
            return str(body.get("error") or body.get("detail"))[:300]
    return (resp.text or resp.reason_phrase or "").strip()[:300]


class HttpLab:
    """Client of a lab's REST API (see module docstring).

    Example:
        >>> lab = HttpLab("https://lab.example.org/api", token=os.environ["LAB_TOKEN"])
        >>> job = lab.submit("il2/round-0", ["VAV1", "CD3G"])
        >>> lab.poll(job), lab.collect(job)
    """

    name = "http"

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF, token_hint: str = ""):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"lab URL {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._token_hint = token_hint  # where the token comes from (an env var name), for error messages
        headers = {"Accept": "application/json", "User-Agent": "perturbloop-httplab"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def __repr__(self) -> str:  # never shows the token
        return f"HttpLab({self.base_url!r}, timeout={self.timeout}, retries={self.retries})"

    def close(self) -> None:
        self._client.close()

    # transport ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None) -> Any:
        """One API call with retries on connection errors, timeouts, 5xx and 429; the decoded JSON body."""
        what = f"{method} {self.base_url}{path}"
        last = ""
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF))
            try:
                resp = self._client.request(method, path, json=json, headers=headers)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:g} s"
                continue
            except httpx.TransportError as e:
                last = f"connection failed ({type(e).__name__}: {e})"
                continue
            code = resp.status_code
            if code >= 500 or code in RETRY_STATUSES:
                last = f"HTTP {code}: {_detail(resp)}"
                continue
            if code >= 400:
                msg = f"{what}: the lab refused the request (HTTP {code}: {_detail(resp)})"
                if code == 409:
                    raise LabKeyConflictError(msg)
                if code in (401, 403):
                    msg += "; check the lab token" + (f" in ${self._token_hint}" if self._token_hint else "")
                raise LabRequestError(msg, code)
            try:
                return resp.json()
            except ValueError:
                raise LabResultError(f"{what}: the lab's response is not JSON ({resp.text[:200]!r})") from None
        raise LabUnavailableError(f"{what}: no answer after {attempts} attempt(s); last: {last}")

    # the LabAdapter protocol -------------------------------------------------------------------
    def submit(self, round_key: str, perturbations: Sequence[str]) -> JobRef:
        """POST the batch under its idempotency key; the same key returns the same job."""
        body: dict[str, Any] = {"idempotency_key": round_key, "perturbations": list(perturbations)}
        if context_batch(body["perturbations"]):
            body["items"] = [dict(zip(("perturbation", "gene", "context"), (label, *split_label(label))))
                             for label in body["perturbations"]]
        out = self._request("POST", "/jobs", json=body, headers={"Idempotency-Key": round_key})
        job_id = out.get("job_id") if isinstance(out, dict) else None
        if not isinstance(job_id, str | int) or isinstance(job_id, bool) or str(job_id) == "":
            raise LabResultError(f"POST {self.base_url}/jobs: the lab's response has no job_id ({str(out)[:200]})")
        return JobRef(self.name, str(job_id), round_key)

    def _path(self, job: JobRef) -> str:
        return f"/jobs/{quote(job.external_id, safe='')}"

    def poll(self, job: JobRef) -> JobStatus:
        out = self._request("GET", self._path(job))
        status = out.get("status") if isinstance(out, dict) else None
        if status not in JOB_STATUSES:
            raise LabResultError(f"GET {self.base_url}{self._path(job)}: unknown job status {status!r} "
                                 f"(expected one of {', '.join(JOB_STATUSES)})")
        return status  # type: ignore[return-value]

    def collect(self, job: JobRef) -> dict[str, LabResult | LabError]:
        """The results received so far, validated (see module docstring)."""
        path = self._path(job) + "/results"
        return parse_results(self._request("GET", path), f"GET {self.base_url}{path}")


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _vector(raw: Any) -> tuple[list[float] | None, str | None]:
    """A result's `response`: the finite numbers it holds, or the problem with it (None, None when absent)."""
    if raw is None:
        return None, None
    if not isinstance(raw, list) or not raw:
        return None, f"response {str(raw)[:60]!r} is not a non-empty list of numbers"
    values = [_number(v) for v in raw]
    bad = [i for i, v in enumerate(values) if v is None]
    if bad:
        shown = ", ".join(f"[{i}] = {raw[i]!r}" for i in bad[:3]) + (", ..." if len(bad) > 3 else "")
        return None, f"response has {len(bad)} of {len(raw)} entries that are not finite numbers ({shown})"
    return [v for v in values if v is not None], None


def _item_result(label: str, item: dict) -> tuple[LabResult | LabError | None, str | None]:
    """One item of the results JSON as a result, or the problem with it."""
    if item.get("error") not in (None, ""):
        return LabError(label, str(item["error"])), None
    response, problem = _vector(item.get("response"))
    given, reps_raw = item.get("value"), item.get("replicates") or []
    value = response_value(response) if given is None and response is not None else _number(given)
    reps = [_number(r) for r in reps_raw if r is not None] if isinstance(reps_raw, list) else [None]
    if problem is None and value is None:
        problem = f"value {given!r} is not a finite number"
    if problem is None and None in reps:
        problem = f"replicates {reps_raw!r} are not all finite numbers"
    return (None, problem) if problem else (LabResult(label, value, reps, response=response), None)  # type: ignore[arg-type]


def parse_results(payload: Any, source: str) -> dict[str, LabResult | LabError]:
    """Validate a results payload (`{"results": [...], "status"?, "perturbations"?}`); errors name the items.

    A result with a `response` vector may leave out `value`: it is then the vector's one element, or its L2 norm.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
        raise LabResultError(f"{source}: expected an object with a 'results' list, got {str(payload)[:200]}")
    order = payload.get("perturbations")
    by_canon = {lab_key(p): str(p) for p in order} if isinstance(order, list) else None
    contexts = contexts_of(map(str, order)) if isinstance(order, list) else None
    out: dict[str, LabResult | LabError] = {}
    problems: list[str] = []
    for i, item in enumerate(payload["results"]):
        if not isinstance(item, dict) or not isinstance(item.get("perturbation") or "", str):
            problems.append(f"result {i}: not an object with a 'perturbation' name")
            continue
        raw, gene, context = (v.strip() if isinstance(v := item.get(k), str) else ""
                              for k in ("perturbation", "gene", "context"))
        pair = bool(contexts) or (by_canon is None and (PAIR_SEP in raw or bool(context)))
        if not (raw or (pair and gene)):
            problems.append(f"result {i}: not an object with a 'perturbation' name"
                            + (" (or a gene and a context)" if pair else ""))
            continue
        where = f"result {i} ({raw or gene + PAIR_SEP + context})"
        key, problem = result_key(raw, gene, context, contexts or None) if pair else (lab_key(raw), None)
        label = key if by_canon is None else by_canon.get(key or "")
        if problem is None and (label is None or label == CONTROL):
            problem = "not in the batch of this job"
        if problem is None:
            res, problem = _item_result(label, item)
        if problem is None and label in out and out[label] != res:
            problem = f"a second, different result for {label}"
        if problem is not None:
            problems.append(f"{where}: {problem}")
            continue
        out[label] = res
    if by_canon is not None and payload.get("status") == "complete" and not problems:
        missing = [p for p in by_canon.values() if p not in out]
        if missing:
            problems.append(f"the job is complete but {len(missing)} perturbation(s) have no result: "
                            + ", ".join(missing[:MAX_PROBLEMS_SHOWN]))
    if problems:
        raise problems_error(source, problems, " in the lab's results, nothing was ingested")
    return out
