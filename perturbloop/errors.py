"""Errors raised for bad input. Each names the offending thing."""

from __future__ import annotations

from collections.abc import Sequence


def shown(items: Sequence[str], limit: int = 20) -> str:
    """The first `limit` items, comma-separated, and how many more (error messages name what they refuse)."""
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" (+{more} more)" if more > 0 else "")


class PerturbloopError(Exception):
    """Base class for user-facing errors (printed without a traceback by the CLI)."""


class UnknownDatasetError(PerturbloopError, KeyError):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        super().__init__(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(known))}")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


class UnknownGeneError(PerturbloopError, ValueError):
    def __init__(self, genes: list[str], context: str = ""):
        self.genes = list(genes)
        where = f" {context}" if context else ""
        super().__init__(f"unknown gene symbol(s){where}: {shown(self.genes)}")


class ScreenFormatError(PerturbloopError, ValueError):
    """A screen file that cannot be read as a MAGeCK summary or a Gene,Score table."""


class ConfigError(PerturbloopError, ValueError):
    """A campaign config that fails validation; the message names the field."""


class DataIntegrityError(PerturbloopError):
    """A downloaded file whose checksum does not match the registry."""


class StoreError(PerturbloopError):
    """An inconsistent or unexpected state of the campaign store."""


class LabAdapterError(PerturbloopError):
    """Base class of errors at the lab boundary (order sheets, results files, a lab's API)."""


class LabSubmissionError(LabAdapterError, ValueError):
    """A submission the lab (or the adapter) refuses, e.g. a different batch under a used idempotency key."""


class LabKeyConflictError(LabSubmissionError):
    """The lab already holds this idempotency key with another batch (HTTP 409, or an order sheet on file)."""


class LabResultError(LabAdapterError, ValueError):
    """Lab results that cannot be ingested; the message names the file (or URL) and the rows."""


class LabRequestError(LabAdapterError):
    """A lab API that refused a request (HTTP 4xx); not retried."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class LabUnavailableError(LabAdapterError):
    """A lab API that could not be reached (connection errors, timeouts, 5xx) after every retry."""
