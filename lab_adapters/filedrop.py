"""FileDropLab: order sheets out, results files in, through folders shared with a lab.

Order sheet (written by perturbloop): ``OUTBOX/<job>.order.csv``, where ``<job>`` is the round's
idempotency key with ``/`` replaced by ``_`` (``il2-demo/round-0`` -> ``il2-demo_round-0``)::

    round,perturbation,genes,idempotency_key
    round-0,VAV1,VAV1,il2-demo/round-0
    round-0,CD3G+LAT,CD3G;LAT,il2-demo/round-0

A campaign across contexts orders (gene, context) pairs, labelled ``GENE@@context``; its sheet has ``gene`` and
``context`` columns in place of ``genes``::

    round,perturbation,gene,context,idempotency_key
    round-1,IL2RA@@Stim48hr,IL2RA,Stim48hr,tcell/round-1

It is written atomically (a hidden temp file renamed into place) and a copy is kept in
``OUTBOX/.perturbloop/``, so the lab may move or delete the sheet once it has taken the order:
submitting the same round again returns the same job and never writes a second sheet; a different
batch under the same idempotency key is refused.

Results (written by the lab) go in INBOX, named after the order sheet, ``<job>.<kind>.csv``
(or ``.h5ad``), where ``<kind>`` is the last dot-separated part of the name:

- ``results``: ``<job>.results.csv``, the batch is done. With any partial files before it, it must
  give a row for every ordered perturbation (a missing one is an error; mark failures in ``error``).
- ``partial`` followed by letters, digits, ``_`` or ``-`` (no dot; e.g.
  ``il2-demo_round-0.partial-plate1.csv``): part of the batch. Its rows are ingested at the next
  run; the rest of the batch stays pending.

The job is everything before the kind, so two campaigns sharing an inbox never read each other's
files (``a_round-1.partial-x_round-0.results.csv`` is the final file of job
``a_round-1.partial-x_round-0``, not a partial file of job ``a_round-1``). Older names with a dot
after ``partial`` (``<job>.partial.2.csv``) still belong to the job before the last ``.partial``.
`parse_result_name` is this grammar.

CSV columns (comma-separated, UTF-8, one header row; an Excel BOM is fine):

- ``perturbation``: the label from the order sheet (case and pair order do not matter; a leading
  ``'`` that the order sheet put before ``= + - @``, see below, may be kept or dropped); for an order of
  (gene, context) pairs, the label ``GENE@@context`` or the two columns ``gene`` and ``context`` (or all three,
  then they must agree); the context is written as in the order (`lab_adapters.context_columns.result_key`),
  and a row with no context or a context the order does not have is an error naming its line;
- ``value``: the readout, a finite number;
- ``replicate*`` (optional, e.g. ``replicate_1,replicate_2``): per-replicate readouts, may be empty;
- ``error`` (optional): a non-empty reason marks the perturbation failed (its value may be empty);
  it is recorded, never trained on, and not proposed again;
- ``note`` (optional): ignored.

Perturb-seq: ``<job>.results.h5ad`` / ``<job>.partial*.h5ad``, an AnnData whose
``obs['perturbation']`` labels each cell; control cells are labelled exactly ``ctrl`` (lower case:
``CTRL`` is a gene); each ordered perturbation gets its cells in ``LabResult.cells`` (no scalar
value), the control cells come back under ``ctrl``.

A job is ``submitted`` until a results file arrives, ``partial`` while some perturbations are in,
``complete`` once every one has a value or an error. Every run reads all of the job's files, so
leave them in the inbox until the round is closed.

What is not read, or refused:

- files still being written: a temporary name (a leading dot or a ``.tmp`` suffix), a file
  modified less than ``min_age`` seconds ago, or a CSV that does not end with a newline (the last
  row may be cut short); they are read at a later run (`FileDropLab.skipped` says why);
- a symbolic link, or anything that does not resolve to a file in the inbox itself: an error,
  and nothing of the linked file is read;
- a result that differs from what an earlier run read for the same perturbation (a re-delivered
  file with a changed row): an error naming both files and lines; a delivered result never
  changes (perturbloop keeps what it read in ``OUTBOX/.perturbloop/<job>.read.json``);
- a file that cannot be ingested (perturbations not in the order, missing ones in the final file,
  empty, non-numeric or NaN values, unknown columns, a field too large, another format): a
  `LabResultError` naming the file and its lines; nothing of that job is ingested until the file
  is fixed.

Order sheet cells that a spreadsheet would run as a formula (starting with ``= + - @``, a tab or
a carriage return) are written with a leading ``'`` (`escape_cell`) and read back without it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from lab_adapters.base import JobRef, JobStatus, LabError, LabResult, problems_error
from lab_adapters.context_columns import context_batch, contexts_of, lab_key, result_key
from perturbloop.errors import (ConfigError, LabAdapterError, LabKeyConflictError, LabResultError, LabSubmissionError,
                                shown)
from perturbloop.contexts import pair_label, split_label
from perturbloop.perturbation import CONTROL

log = logging.getLogger(__name__)

ORDER_COLUMNS = ("round", "perturbation", "genes", "idempotency_key")
CONTEXT_ORDER_COLUMNS = ("round", "perturbation", "gene", "context", "idempotency_key")  # a batch of (gene, context) pairs
LEDGER_DIR = ".perturbloop"  # inside the outbox: perturbloop's own copy of every order sheet
RESULT_SUFFIXES = (".csv", ".h5ad")
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~")  # files still being written
# A results file modified more recently than this may still be being written (a copy over a network
# share, a slow save); it is read at a later run. Tests pass 0.
DEFAULT_MIN_AGE = 5.0
# A cell starting with one of these is run as a formula by spreadsheets (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_KIND = re.compile(r"results|partial[A-Za-z0-9_-]*")


def job_id(round_key: str) -> str:
    """The job id (and file stem) of a round: its idempotency key with unsafe characters as ``_``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", round_key).strip("._")
    if not slug:
        raise LabSubmissionError(f"idempotency key {round_key!r} gives an empty file name")
    return slug


def parse_result_name(name: str) -> tuple[str, str] | None:
    """(job id, kind) that a results file name stands for (module docstring), or None for another name.

    Example:
        >>> parse_result_name("a_round-1.partial-x_round-0.results.csv")
        ('a_round-1.partial-x_round-0', 'results')
        >>> parse_result_name("a_round-1.partial.2.csv")
        ('a_round-1', 'partial.2')
    """
    ext = next((e for e in RESULT_SUFFIXES if name.endswith(e)), None)
    if ext is None or name.startswith("."):
        return None
    base = name[: -len(ext)]
    job, dot, kind = base.rpartition(".")
    if dot and job and _KIND.fullmatch(kind):
        return job, kind
    job, dot, tag = base.rpartition(".partial")
    if dot and job:
        return job, "partial" + tag
    return None


def escape_cell(text: str) -> str:
    """An order-sheet cell that a spreadsheet would run as a formula, with a leading ``'`` (shown as text)."""
    return "'" + text if text.startswith(FORMULA_START) else text


def unescape_cell(text: str) -> str:
    """The inverse of `escape_cell`; text without its ``'`` comes back unchanged."""
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_START) else text


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _open_results(path: Path) -> io.BufferedReader:
    """A results file opened for reading; never through a symbolic link, never a FIFO or a device."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise LabResultError(f"{path}: cannot be opened ({e.strerror}); results files must be regular files "
                             "in the inbox, not symbolic links") from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise LabResultError(f"{path}: not a regular file")
    return f


def _folder(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        if not p.parent.is_dir():  # an unmounted share or a typo: do not create a tree silently
            raise ConfigError(f"lab.{what}: folder {str(p)!r} does not exist (nor does its parent)")
        p.mkdir(exist_ok=True)
    return p


class FileDropLab:
    """A lab reached through files: order sheets in `outbox`, results files in `inbox` (see module docstring).

    Args:
        outbox: folder for order sheets (perturbloop writes, the lab reads).
        inbox: folder for results files (the lab writes, perturbloop reads).
        min_age: seconds since its last change before a results file is read (younger ones may
            still be being written).

    Example:
        >>> lab = FileDropLab("lab/outbox", "lab/inbox")
        >>> job = lab.submit("il2/round-0", ["VAV1", "CD3G"])   # writes lab/outbox/il2_round-0.order.csv
        >>> lab.poll(job)                                      # 'submitted' until results arrive
    """

    name = "filedrop"

    def __init__(self, outbox: str | os.PathLike, inbox: str | os.PathLike, *, min_age: float = DEFAULT_MIN_AGE):
        if not min_age >= 0:
            raise ValueError(f"min_age must be >= 0 seconds, got {min_age!r}")
        self.outbox = _folder(outbox, "outbox")
        self.inbox = _folder(inbox, "inbox")
        self.ledger = self.outbox / LEDGER_DIR
        self.min_age = float(min_age)
        self.skipped: dict[Path, str] = {}  # results files the last look left for later, and why

    # submission ------------------------------------------------------------------------------
    def order_path(self, job: JobRef | str) -> Path:
        return self.outbox / f"{job if isinstance(job, str) else job.external_id}.order.csv"

    @staticmethod
    def _sheet(round_key: str, batch: Sequence[str]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        pairs = context_batch(batch)
        w.writerow(CONTEXT_ORDER_COLUMNS if pairs else ORDER_COLUMNS)
        rnd = round_key.rsplit("/", 1)[-1]
        for label in batch:
            middle = split_label(label) if pairs else (";".join(label.split("+")),)
            w.writerow([escape_cell(c) for c in (rnd, label, *middle, round_key)])
        return buf.getvalue()

    @staticmethod
    def _read_sheet(path: Path) -> tuple[str | None, list[str]]:
        """(idempotency key, ordered perturbations) of an order sheet."""
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        if "perturbation" not in (reader.fieldnames or []):
            raise LabAdapterError(f"{path}: not an order sheet (no 'perturbation' column); was it edited?")
        keys = {unescape_cell(r.get("idempotency_key") or "") for r in rows}
        return (keys.pop() if len(keys) == 1 else None), [unescape_cell(r["perturbation"]) for r in rows]

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
                    raise LabKeyConflictError(f"round {round_key!r} was already submitted with a different batch ({where})")
                if where == kept:  # the order went out; the lab may have moved the sheet since
                    return ref
                break  # the sheet went out, its copy did not (a crash between the two): keep it as is
        else:
            _atomic_write(self.order_path(jid), self._sheet(round_key, batch))
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
        """The job's results files ready to read: partial ones first, then the final one (by name).

        Files still being written are left for a later look (`skipped` says why); a symbolic link
        or a file outside the inbox is refused before anything of it is read.
        """
        stem = job.external_id
        found: list[Path] = []
        self.skipped = {}
        inbox = self.inbox.resolve()
        for p in sorted(self.inbox.glob(f"{stem}.*")):  # job ids hold no glob characters (see `job_id`)
            if p.name.endswith(IGNORED_SUFFIXES):
                continue
            parsed = parse_result_name(p.name)
            if parsed is not None and parsed[0] != stem:
                continue  # another job's file (e.g. of a campaign whose name starts like this one's)
            if parsed is None:
                if not p.name[len(stem) + 1:].startswith(("results", "partial")):
                    continue
                if not p.name.endswith(RESULT_SUFFIXES):
                    raise LabResultError(f"{p}: unsupported results format (expected .csv for screens or .h5ad for Perturb-seq)")
                raise LabResultError(f"{p}: unexpected name (the final results file is {stem}.results.csv or "
                                     f"{stem}.results.h5ad; name partial deliveries {stem}.partial-<N>.csv)")
            if p.is_symlink() or p.resolve().parent != inbox:
                raise LabResultError(f"{p}: a symbolic link (or a path leading outside the inbox {self.inbox}); "
                                     "results files must be regular files in the inbox: copy the file in instead")
            st = p.stat()
            if not stat.S_ISREG(st.st_mode):
                continue
            why = self._unfinished(p, st)
            if why:
                self.skipped[p] = why
                # a young file is routine; one without a final newline waits until the lab fixes it: say so
                (log.info if why.startswith("modified") else log.warning)("%s: not read yet: %s", p, why)
                continue
            found.append(p)
        return sorted(found, key=lambda p: (p.name[len(stem) + 1:].startswith("results"), p.name))

    def _unfinished(self, path: Path, st: os.stat_result) -> str | None:
        """Why a results file may still be being written, or None when it looks finished."""
        age = time.time() - st.st_mtime
        if age < self.min_age:
            return f"modified {max(age, 0):.1f} s ago (files are read once unchanged for {self.min_age:g} s)"
        if path.suffix == ".csv" and st.st_size:
            with _open_results(path) as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    return "does not end with a newline (its last row may be cut short)"
        return None

    def read_log(self, job: JobRef) -> Path:
        """perturbloop's record of the results it has read for `job` (to refuse a changed re-delivery)."""
        return self.ledger / f"{job.external_id}.read.json"

    def _earlier(self, job: JobRef) -> dict[str, dict]:
        path = self.read_log(job)
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LabAdapterError(f"{path}: perturbloop's record of the results it read is unreadable ({e})") from None
        return data if isinstance(data, dict) else {}

    def _gather(self, job: JobRef) -> tuple[dict[str, LabResult | LabError], bool, list[str], dict[str, tuple[Path, str]]]:
        """Every result in the job's files (validated), whether the final file is in, the order, and where each came from."""
        order = self._order(job)
        by_canon = {lab_key(label): label for label in order}
        contexts = contexts_of(order)
        merged: dict[str, LabResult | LabError] = {}
        where: dict[str, tuple[Path, str]] = {}
        final = None
        for path in self.result_files(job):
            rows = _read_h5ad(path, by_canon) if path.suffix == ".h5ad" else _read_csv(path, by_canon, contexts)
            for label, (res, line) in rows.items():
                if label == CONTROL and label in merged:  # control cells arrive with every delivery (.h5ad only)
                    import anndata as ad

                    cells = ad.concat([merged[label].cells, res.cells], index_unique="-")  # type: ignore[union-attr]
                    merged[label] = LabResult(label, None, [], cells=cells)
                    continue
                if label in merged and not _same(merged[label], res):
                    raise LabResultError(f"{path}: {line} ({label}): conflicts with the result for it in "
                                         f"{where[label][0].name} {where[label][1]}")
                merged.setdefault(label, res)
                where.setdefault(label, (path, line))
            if parse_result_name(path.name) == (job.external_id, "results"):
                final = path
        earlier = self._earlier(job)
        for label, res in merged.items():
            before = earlier.get(label)
            if before is not None and _record(res) is not None and _record(res) != before.get("result"):
                path, line = where[label]
                raise LabResultError(
                    f"{path}: {line} ({label}): {_describe(_record(res))} differs from {_describe(before.get('result'))} "
                    f"read from {before.get('file')} {before.get('line')} at an earlier run (and handed to the campaign); "
                    "a delivered result cannot change: put the earlier row back, and measure it again in a new "
                    f"round if it was wrong (what perturbloop read is kept in {self.read_log(job)})")
        if final is not None:
            missing = [label for label in order if label not in merged]
            if missing:
                raise LabResultError(
                    f"{final}: no result for {len(missing)} ordered perturbation(s): {shown(missing)}; "
                    "add a row for each (with the reason in the `error` column if it failed), or deliver part of "
                    f"the batch as {job.external_id}.partial-<N>.csv")
        return merged, final is not None, order, where

    def poll(self, job: JobRef) -> JobStatus:
        """`submitted` (no results yet), `partial` or `complete`; raises `LabResultError` on a bad file."""
        results, final, order, _ = self._gather(job)
        covered = sum(1 for label in order if label in results)
        if final or covered == len(order):
            return "complete"
        return "partial" if covered else "submitted"

    def collect(self, job: JobRef) -> dict[str, LabResult | LabError]:
        """The results received so far, per ordered perturbation (plus `ctrl` cells for Perturb-seq).

        What it returns is recorded, so a later delivery that changes it is refused (see `_gather`).
        """
        results, _, _, where = self._gather(job)
        earlier = self._earlier(job)
        new = {label: {"file": where[label][0].name, "line": where[label][1], "result": _record(res)}
               for label, res in results.items() if label not in earlier and _record(res) is not None}
        if new:
            _atomic_write(self.read_log(job), json.dumps({**earlier, **new}, indent=1))
        return results


def _record(res: LabResult | LabError) -> dict | None:
    """A scalar result as JSON (what the read log keeps); None for cells, which are not compared."""
    if isinstance(res, LabError):
        return {"error": res.reason}
    if res.cells is not None or res.value is None:
        return None
    return {"value": res.value, "replicates": list(res.replicates)}


def _describe(rec: dict | None) -> str:
    if not rec:
        return "a result"
    if "error" in rec:
        return f"error {rec['error']!r}"
    reps = f" (replicates {', '.join(map(str, rec['replicates']))})" if rec.get("replicates") else ""
    return f"value {rec['value']}{reps}"


def _same(a: LabResult | LabError, b: LabResult | LabError) -> bool:
    """Whether two results of one perturbation agree (cells never do: they are not compared)."""
    return _record(a) is not None and _record(a) == _record(b)


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


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
    reps = {h: _number(t) for h, t in replicates if t}
    bad = [f"{h} {t!r} is not a finite number" for h, t in replicates if t and reps[h] is None]
    return (None, bad[0]) if bad else (LabResult(label, value, [v for v in reps.values() if v is not None]), None)


def _read_csv(path: Path, by_canon: dict[str, str], contexts: Sequence[str] = ()
              ) -> dict[str, tuple[LabResult | LabError, str]]:
    """Rows of a results CSV, validated against the order: label -> (result, 'line N'); every problem is gathered,
    then raised. `contexts`: the order's contexts when it is of (gene, context) pairs (its rows may then name them
    by `gene` and `context` columns)."""
    with _open_results(path) as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabResultError(f"{path}: not a UTF-8 text file (save it as CSV, UTF-8)") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        col, reps = _columns(path, header, contexts)
        reader.fieldnames = header
        rows = [(f"line {reader.line_num}", row) for row in reader]
    except csv.Error as e:  # e.g. a field over the csv module's limit (131,072 characters)
        # the reader counts a line once it is parsed: the failing one is the next
        raise LabResultError(f"{path}: line {reader.line_num + 1}: not readable as CSV ({e}); "
                             "is it a results file?") from None
    out: dict[str, tuple[LabResult | LabError, str]] = {}
    problems: list[str] = []
    for line, row in rows:
        if None in row:
            problems.append(f"{line}: more fields than the header has columns")
            continue
        raw, gene, context, error, value = ((row.get(col[c]) or "").strip() if c in col else ""
                                            for c in ("perturbation", "gene", "context", "error", "value"))
        raw, gene, context = unescape_cell(raw), unescape_cell(gene), unescape_cell(context)
        if not (raw or gene or context) and not any((v or "").strip() for v in row.values()):
            continue  # blank line
        if contexts:
            key, problem = result_key(raw, gene, context, contexts)
            who = raw or (pair_label(gene, context) if gene and context else gene or context or "no gene")
        else:
            key, problem, who = lab_key(raw), None, raw or "no perturbation"
        label = by_canon.get(key) if raw or gene else None
        if problem is None and label is None:
            problem = "perturbation is empty" if not (raw or gene) else "not in the order for this job"
        if problem is None:
            res, problem = _row_result(label, error, value, [(h, (row[h] or "").strip()) for h in reps])
        if problem is None and label in out and not _same(out[label][0], res):
            problem = f"conflicts with {out[label][1]} for the same perturbation"
        if problem is not None:
            problems.append(f"{line} ({who}): {problem}")
            continue
        out.setdefault(label, (res, line))
    if problems:
        raise problems_error(str(path), problems, ", nothing from this job was ingested")
    return out


def _columns(path: Path, header: list[str], contexts: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The columns of a results CSV's header: name (lower case) -> as written, and the replicate columns."""
    if not header:
        raise LabResultError(f"{path}: empty file (expected a header row: perturbation,value[,replicate_1,...][,error])")
    if len(header) == 1 and any(sep in header[0] for sep in (";", "\t")):
        sep = "';'" if ";" in header[0] else "tabs"
        raise LabResultError(f"{path}: columns are separated by {sep}; save it as comma-separated CSV")
    lower = [h.lower() for h in header]
    named = ("perturbation", "gene", "context") if contexts else ("perturbation",)
    missing = [c for c in ("perturbation", "value") if c not in lower]
    if contexts and {"gene", "context"} <= set(lower):
        missing = [c for c in missing if c != "perturbation"]
    elif contexts and "perturbation" in missing:
        missing[missing.index("perturbation")] = "perturbation (or gene and context)"
    unknown = [h or "(unnamed)" for h, lo in zip(header, lower)
               if lo not in (*named, "value", "error", "note") and not lo.startswith("replicate")]
    dup = sorted({h for h in lower if lower.count(h) > 1})
    parts = [f"{what} column(s) {', '.join(names)}"
             for what, names in (("missing", missing), ("unknown", unknown), ("repeated", dup)) if names]
    if parts:
        expected = "perturbation (or gene,context),value" if contexts else "perturbation,value"
        raise LabResultError(f"{path}: {'; '.join(parts)} (found: {', '.join(header)}; expected {expected}, "
                             "optional replicate_1,replicate_2,..., error, note)")
    return dict(zip(lower, header)), [h for h, lo in zip(header, lower) if lo.startswith("replicate")]


def _read_h5ad(path: Path, by_canon: dict[str, str]) -> dict[str, tuple[LabResult | LabError, str]]:
    """Cells of a Perturb-seq results file, per ordered perturbation (and `ctrl`)."""
    import anndata as ad

    try:
        adata = ad.read_h5ad(path)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise LabResultError(f"{path}: not a readable .h5ad file ({type(e).__name__}: {e})") from None
    if "perturbation" not in adata.obs.columns:
        raise LabResultError(f"{path}: obs has no 'perturbation' column (found: {', '.join(map(str, adata.obs.columns)) or 'none'})")
    labels = adata.obs["perturbation"].astype(str).map(lambda s: lab_key(unescape_cell(s.strip())))
    unknown = sorted(set(labels) - set(by_canon) - {CONTROL})
    if unknown:
        hint = f" (label control cells exactly {CONTROL!r}, lower case: CTRL is a gene)" if CONTROL.upper() in unknown else ""
        raise LabResultError(f"{path}: cells of perturbation(s) not in the order for this job: {shown(unknown)}{hint}")
    out: dict[str, tuple[LabResult | LabError, str]] = {}
    for canon in [*by_canon, CONTROL]:
        mask = (labels == canon).to_numpy()
        if mask.any():
            label = by_canon.get(canon, CONTROL)
            out[label] = (LabResult(label, None, [], cells=adata[mask].copy()), f"{int(mask.sum())} cells")
    return out
