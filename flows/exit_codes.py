"""How a ``tlops`` command ends: an expected failure becomes one line and its exit code.

Exit codes (design section 7): 0 success, 2 bad config or usage, 3 data contract failed,
4 gate rejected the candidate, 5 an external service failed, 1 a bug.

An expected failure is a :class:`~tlops.errors.TlopsError` (its kind carries the code), an
unreachable or failing Prefect API (5), or a storage failure anywhere in a run (full disk,
read-only or forbidden folder: 5). :func:`guard` says it on stderr in one line, credentials
redacted, and exits with its code. Anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer

from tlops.errors import ServiceError, TlopsError
from tlops.paths import storage_error
from tlops.redact import redact_text

T = TypeVar("T")


def expected_failure(exc: BaseException) -> TlopsError | None:
    """The expected failure ``exc`` is, as a :class:`TlopsError`; None for a bug.

    A storage failure (full disk, read-only or forbidden folder, :data:`STORAGE_ERRNOS`) is
    one, anywhere in a run: flows and tasks raise the task's own exception, unwrapped.
    """
    import httpx  # (Prefect's HTTP client: imported only once something failed)

    if isinstance(exc, TlopsError):
        return exc
    if isinstance(exc, httpx.HTTPError):
        return ServiceError(f"Prefect API unreachable or failing: {exc}")
    return storage_error(exc)


def fail(exc: TlopsError) -> typer.Exit:
    """Print a one-line cause to stderr and turn it into the exit code of its kind."""
    typer.secho(f"error: {redact_text(str(exc))}", fg=typer.colors.RED, err=True)
    return typer.Exit(exc.exit_code)


def guard(action: Callable[[], T], on_error: Callable[[TlopsError], None] | None = None) -> T:
    """Run a command body, mapping expected failures to their exit codes (``on_error`` first
    sees the failure, e.g. to write a CI report; its own storage failure is said, not raised)."""
    try:
        return action()
    except Exception as exc:
        error = expected_failure(exc)
        if error is None:
            raise
        if on_error is not None:
            try:
                on_error(error)
            except OSError as report_exc:
                why = storage_error(report_exc) or report_exc
                typer.secho(f"error: writing the report: {why}", fg=typer.colors.RED, err=True)
        raise fail(error) from None
