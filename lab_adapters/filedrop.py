"""FileDropLab: order sheets out, results files in, through folders shared with a lab.

Order sheet (written by perturbloop): ``OUTBOX/<job>.order.csv``, where ``<job>`` is the round's
idempotency key with ``/`` replaced by ``_`` (``il2-demo/round-0`` -> ``il2-demo_round-0``)::

    round,perturbation,genes,idempotency_key
    round-0,VAV1,VAV1,il2-demo/round-0
    round-0,CD3G+LAT,CD3G;LAT,il2-demo/round-0

It is written atomically (a hidden temp file renamed into place) and a copy is kept in
``OUTBOX/.perturbloop/``, so the lab may move or delete the sheet once it has taken the order:
submitting the same round again returns the same job and never writes a second sheet; a different
batch under the same idempotency key is refused.

Results (written by the lab) go in INBOX, named after the order sheet:

- ``<job>.results.csv``: the batch is done. With any partial files before it, it must give a row
  for every ordered perturbation (a missing one is an error; mark failures in ``error``).
- ``<job>.partial<anything>.csv`` (e.g. ``il2-demo_round-0.partial-plate1.csv``): part of the
  batch. Its rows are ingested at the next run; the rest of the batch stays pending.

CSV columns (comma-separated, UTF-8, one header row; an Excel BOM is fine):

- ``perturbation``: the label from the order sheet (case and pair order do not matter);
- ``value``: the readout, a finite number;
- ``replicate*`` (optional, e.g. ``replicate_1,replicate_2``): per-replicate readouts, may be empty;
- ``error`` (optional): a non-empty reason marks the perturbation failed (its value may be empty);
  it is recorded, never trained on, and not proposed again;
- ``note`` (optional): ignored.

Perturb-seq: ``<job>.results.h5ad`` / ``<job>.partial*.h5ad``, an AnnData whose
``obs['perturbation']`` labels each cell (control cells ``ctrl``); each ordered perturbation gets
its cells in ``LabResult.cells`` (no scalar value), the control cells come back under ``ctrl``.

A job is ``submitted`` until a results file arrives, ``partial`` while some perturbations are in,
``complete`` once every one has a value or an error. Every run reads all of the job's files, so
leave them in the inbox until the round is closed. Write results under a temporary name (a
leading dot or a ``.tmp`` suffix) and rename them when done: such files are ignored. A file that
cannot be ingested (perturbations not in the order, missing ones in the final file, empty,
non-numeric or NaN values, unknown columns, another format) raises `LabResultError` naming the file
and its lines; nothing of that job is ingested until the file is fixed.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from lab_adapters.base import JobRef, JobStatus, LabError, LabResult, canonical
from perturbloop.errors import ConfigError, LabAdapterError, LabResultError, LabSubmissionError
from perturbloop.perturbation import CONTROL

ORDER_COLUMNS = ("round", "perturbation", "genes", "idempotency_key")
LEDGER_DIR = ".perturbloop"  # inside the outbox: perturbloop's own copy of every order sheet
RESULT_SUFFIXES = (".csv", ".h5ad")
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~")  # files still being written
MAX_PROBLEMS_SHOWN = 20


def job_id(round_key: str) -> str:
    """The job id (and file stem) of a round: its idempotency key with unsafe characters as ``_``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", round_key).strip("._")
    if not slug:
        raise LabSubmissionError(f"idempotency key {round_key!r} gives an empty file name")
    return slug


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _folder(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        if not p.parent.is_dir():  # an unmounted share or a typo: do not create a tree silently
            raise ConfigError(f"lab.{what}: folder {str(p)!r} does not exist (nor does its parent)")
        p.mkdir(exist_ok=True)
    return p


class FileDropLab:
    """A lab reached through files: order sheets in `outbox`, results files in `inbox` (see module docstring).

    Example:
        >>> lab = FileDropLab("lab/outbox", "lab/inbox")
        >>> job = lab.submit("il2/round-0", ["VAV1", "CD3G"])   # writes lab/outbox/il2_round-0.order.csv
        >>> lab.poll(job)                                      # 'submitted' until results arrive
    """

    name = "filedrop"

    def __init__(self, outbox: str | os.PathLike, inbox: str | os.PathLike):
        self.outbox = _folder(outbox, "outbox")
        self.inbox = _folder(inbox, "inbox")
        self.ledger = self.outbox / LEDGER_DIR

    # submission ------------------------------------------------------------------------------
    def order_path(self, job: JobRef | str) -> Path:
        return self.outbox / f"{job if isinstance(job, str) else job.external_id}.order.csv"

    @staticmethod
    def _sheet(round_key: str, batch: Sequence[str]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(ORDER_COLUMNS)
        rnd = round_key.rsplit("/", 1)[-1]
        for label in batch:
            w.writerow([rnd, label, ";".join(label.split("+")), round_key])
        return buf.getvalue()

    @staticmethod
    def _read_sheet(path: Path) -> tuple[str | None, list[str]]:
        """(idempotency key, ordered perturbations) of an order sheet."""
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        if "perturbation" not in (reader.fieldnames or []):
            raise LabAdapterError(f"{path}: not an order sheet (no 'perturbation' column); was it edited?")
        keys = {r.get("idempotency_key") for r in rows}
        return (keys.pop() if len(keys) == 1 else None), [r["perturbation"] for r in rows]

    def submit(self, round_key: str, perturbations: Sequence[str]) -> JobRef:
        """Write the order sheet (once per `round_key`); returns the job."""
        batch = list(perturbations)
        jid = job_id(round_key)
        ref = JobRef(self.name, jid, round_key)
        kept = self.ledger / f"{jid}.order.csv"
        for where in (kept, self.order_path(jid)):
            if where.is_file():
                key, ordered = self._read_sheet(where)
                if key not in (None, round_key):
                    raise LabSubmissionError(f"{where}: order sheet belongs to idempotency key {key!r}, not {round_key!r}")
                if ordered != batch:
                    raise LabSubmissionError(f"round {round_key!r} was already submitted with a different batch ({where})")
                if where == kept:  # the order went out; the lab may have moved the sheet since
                    return ref
                break  # the sheet went out, its copy did not (a crash between the two): keep it as is
        else:
            _atomic_write(self.order_path(jid), self._sheet(round_key, batch))
        self.ledger.mkdir(exist_ok=True)
        _atomic_write(kept, self._sheet(round_key, batch))
        return ref

    def _order(self, job: JobRef) -> list[str]:
        for where in (self.ledger / f"{job.external_id}.order.csv", self.order_path(job)):
            if where.is_file():
                return self._read_sheet(where)[1]
        raise LabAdapterError(f"unknown job {job.external_id}: no order sheet for it in {self.outbox} (nor a copy in "
                              f"{self.ledger}); was it submitted to this lab, or was the outbox emptied?")

    # results ---------------------------------------------------------------------------------
    def result_files(self, job: JobRef) -> list[Path]:
        """The job's results files in the inbox: partial ones first, then the final one (by name)."""
        stem = job.external_id
        found: list[Path] = []
        for p in sorted(self.inbox.glob(f"{stem}.*")):  # job ids hold no glob characters (see `job_id`)
            rest = p.name[len(stem) + 1:]
            if not (rest.startswith("results") or rest.startswith("partial")) or p.name.startswith("."):
                continue
            if p.name.endswith(IGNORED_SUFFIXES) or not p.is_file():
                continue
            if not p.name.endswith(RESULT_SUFFIXES):
                raise LabResultError(f"{p}: unsupported results format (expected .csv for screens or .h5ad for Perturb-seq)")
            if rest.startswith("results") and rest not in ("results.csv", "results.h5ad"):
                raise LabResultError(f"{p}: unexpected name (the final results file is {stem}.results.csv or "
                                     f"{stem}.results.h5ad; name partial deliveries {stem}.partial-<N>.csv)")
            found.append(p)
        return sorted(found, key=lambda p: (p.name[len(stem) + 1:].startswith("results"), p.name))

    def _gather(self, job: JobRef) -> tuple[dict[str, LabResult | LabError], bool, list[str]]:
        """Every result in the job's files (validated), whether the final file is in, and the order."""
        order = self._order(job)
        by_canon = {canonical(label): label for label in order}
        merged: dict[str, LabResult | LabError] = {}
        where: dict[str, str] = {}
        final = None
        for path in self.result_files(job):
            rows = _read_h5ad(path, by_canon) if path.suffix == ".h5ad" else _read_csv(path, by_canon)
            for label, (res, line) in rows.items():
                if label == CONTROL and label in merged:  # control cells arrive with every delivery
                    merged[label] = _concat_cells(merged[label], res)
                    continue
                if label in merged and not _same(merged[label], res):
                    raise LabResultError(f"{path}: {line} ({label}): conflicts with the result for it in {where[label]}")
                merged.setdefault(label, res)
                where.setdefault(label, f"{path.name} {line}")
            if path.name.startswith(f"{job.external_id}.results"):
                final = path
        if final is not None:
            missing = [label for label in order if label not in merged]
            if missing:
                raise LabResultError(
                    f"{final}: no result for {len(missing)} ordered perturbation(s): {_shown(missing)}; "
                    "add a row for each (with the reason in the `error` column if it failed), or deliver part of "
                    f"the batch as {job.external_id}.partial-<N>.csv")
        return merged, final is not None, order

    def poll(self, job: JobRef) -> JobStatus:
        """`submitted` (no results yet), `partial` or `complete`; raises `LabResultError` on a bad file."""
        results, final, order = self._gather(job)
        covered = sum(1 for label in order if label in results)
        if final or covered == len(order):
            return "complete"
        return "partial" if covered else "submitted"

    def collect(self, job: JobRef) -> dict[str, LabResult | LabError]:
        """The results received so far, per ordered perturbation (plus `ctrl` cells for Perturb-seq)."""
        return self._gather(job)[0]


def _shown(items: Sequence[str]) -> str:
    return ", ".join(items[:MAX_PROBLEMS_SHOWN]) + (f" (+{len(items) - MAX_PROBLEMS_SHOWN} more)" if len(items) > MAX_PROBLEMS_SHOWN else "")


def _same(a: LabResult | LabError, b: LabResult | LabError) -> bool:
    if isinstance(a, LabError) or isinstance(b, LabError):
        return a == b
    return a.cells is None and b.cells is None and a.value == b.value and a.replicates == b.replicates


def _concat_cells(a: LabResult | LabError, b: LabResult | LabError) -> LabResult | LabError:
    import anndata as ad

    if isinstance(a, LabResult) and isinstance(b, LabResult) and a.cells is not None and b.cells is not None:
        return LabResult(a.perturbation, None, [], cells=ad.concat([a.cells, b.cells], index_unique="-"))
    return a


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _fail(path: Path, problems: list[str]) -> None:
    shown = problems[:MAX_PROBLEMS_SHOWN]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    raise LabResultError(f"{path}: {len(problems)} problem(s), nothing from this job was ingested:\n  "
                         + "\n  ".join(shown) + more)


def _row_result(label: str, error: str, value_text: str, replicates: list[tuple[str, str]]
                ) -> tuple[LabResult | LabError | None, str | None]:
    """One results row as a result, or the problem with it."""
    if error:
        return LabError(label, error), None
    value = _number(value_text)
    if value is None:
        if not value_text:
            return None, "value is empty (fill it in, or give the reason in the `error` column to mark it failed)"
        return None, f"value {value_text!r} is not a finite number"
    reps = []
    for h, t in replicates:
        if t:
            v = _number(t)
            if v is None:
                return None, f"{h} {t!r} is not a finite number"
            reps.append(v)
    return LabResult(label, value, reps), None


def _read_csv(path: Path, by_canon: dict[str, str]) -> dict[str, tuple[LabResult | LabError, str]]:
    """Rows of a results CSV, validated against the order: label -> (result, 'line N')."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LabResultError(f"{path}: not a UTF-8 text file (save it as CSV, UTF-8)") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise LabResultError(f"{path}: empty file (expected a header row: perturbation,value[,replicate_1,...][,error])")
    if len(header) == 1 and any(sep in header[0] for sep in (";", "\t")):
        sep = "';'" if ";" in header[0] else "tabs"
        raise LabResultError(f"{path}: columns are separated by {sep}; save it as comma-separated CSV")
    reader.fieldnames = header
    lower = [h.lower() for h in header]
    missing = [c for c in ("perturbation", "value") if c not in lower]
    unknown = [h for h, lo in zip(header, lower)
               if lo not in ("perturbation", "value", "error", "note") and not lo.startswith("replicate")]
    dup = sorted({h for h in lower if lower.count(h) > 1})
    if missing or unknown or dup:
        parts = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + \
                ([f"unknown column(s) {', '.join(h or '(unnamed)' for h in unknown)}"] if unknown else []) + \
                ([f"repeated column(s) {', '.join(dup)}"] if dup else [])
        raise LabResultError(f"{path}: {'; '.join(parts)} (found: {', '.join(header)}; expected perturbation,value, "
                             "optional replicate_1,replicate_2,..., error, note)")
    col = dict(zip(lower, header))
    reps = [h for h, lo in zip(header, lower) if lo.startswith("replicate")]
    out: dict[str, tuple[LabResult | LabError, str]] = {}
    problems: list[str] = []
    for row in reader:
        line = f"line {reader.line_num}"
        if None in row:
            problems.append(f"{line}: more fields than the header has columns")
            continue
        raw = (row.get(col["perturbation"]) or "").strip()
        if not raw and not any((v or "").strip() for v in row.values()):
            continue  # blank line
        label = by_canon.get(canonical(raw)) if raw else None
        where = f"{line} ({raw or 'no perturbation'})"
        if label is None:
            problems.append(f"{where}: " + ("perturbation is empty" if not raw else "not in the order for this job"))
            continue
        error = (row.get(col["error"]) or "").strip() if "error" in col else ""
        res, problem = _row_result(label, error, (row.get(col["value"]) or "").strip(),
                                   [(h, (row.get(h) or "").strip()) for h in reps])
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        if label in out and not _same(out[label][0], res):
            problems.append(f"{where}: conflicts with {out[label][1]} for the same perturbation")
            continue
        out.setdefault(label, (res, line))
    if problems:
        _fail(path, problems)
    return out


def _read_h5ad(path: Path, by_canon: dict[str, str]) -> dict[str, tuple[LabResult | LabError, str]]:
    """Cells of a Perturb-seq results file, per ordered perturbation (and `ctrl`)."""
    import anndata as ad

    try:
        adata = ad.read_h5ad(path)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise LabResultError(f"{path}: not a readable .h5ad file ({type(e).__name__}: {e})") from None
    if "perturbation" not in adata.obs.columns:
        raise LabResultError(f"{path}: obs has no 'perturbation' column (found: {', '.join(map(str, adata.obs.columns)) or 'none'})")
    labels = adata.obs["perturbation"].astype(str).map(canonical)
    unknown = sorted(set(labels) - set(by_canon) - {CONTROL})
    if unknown:
        raise LabResultError(f"{path}: cells of perturbation(s) not in the order for this job: {_shown(unknown)}")
    out: dict[str, tuple[LabResult | LabError, str]] = {}
    for canon in [*by_canon, CONTROL]:
        mask = (labels == canon).to_numpy()
        if mask.any():
            label = by_canon.get(canon, CONTROL)
            out[label] = (LabResult(label, None, [], cells=adata[mask].copy()), f"{int(mask.sum())} cells")
    return out
