"""What a run leaves for people and CI: its summary on stdout and its Markdown report.

Every run ends with a short summary (design section 7), printed and appended to
``$GITHUB_STEP_SUMMARY`` when that is set. In CI mode (``--ci``, or ``$CI``) or with
``--report`` the full report (candidate vs champion, verdict, confusion matrix, newly
misclassified) goes to the step summary, else to ``--report`` / ``tlops-report.md``, and is
written even when the run fails. Everything written here has its credentials redacted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from tlops.errors import TlopsError
from tlops.jobs.policy import PolicyOrigin
from tlops.redact import redact_text

#: Where CI mode writes the report when ``$GITHUB_STEP_SUMMARY`` is not set (and no --report).
DEFAULT_REPORT = Path("tlops-report.md")


def ci_mode(flag: bool) -> bool:
    """``--ci``, or ``$CI`` set to anything but empty / 0 / false (as CI services do)."""
    return flag or os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def append_step_summary(markdown: str) -> bool:
    """Append to ``$GITHUB_STEP_SUMMARY``; False when it is not set."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        try:
            with Path(target).open("a", encoding="utf-8") as handle:
                handle.write(markdown + "\n")
        except OSError as exc:  # a failed flush or close names no file: name it
            raise OSError(exc.errno, exc.strerror, exc.filename or target) from None
    return bool(target)


def publish_summary(markdown: str) -> None:
    """Print a run summary and append it to ``$GITHUB_STEP_SUMMARY`` when set."""
    markdown = redact_text(markdown)
    typer.echo(markdown)
    append_step_summary(markdown)


def report_text(outcome: Any) -> str:
    """The run summary followed by the full report file when the flow wrote one."""
    text = str(outcome.summary())
    path = getattr(outcome, "report_path", None)
    if path and Path(path).is_file():
        text += "\n\n" + Path(path).read_text(encoding="utf-8")
    return text


def write_report(text: str, ci: bool, report: Path | None) -> None:
    """CI: the report to ``$GITHUB_STEP_SUMMARY``, else to ``--report`` / tlops-report.md."""
    text = redact_text(text)
    summarized, failure = False, None
    try:
        summarized = ci and append_step_summary(text)
    except OSError as exc:  # e.g. a full disk: the report file below is still written
        failure = exc
    target = report or (DEFAULT_REPORT if ci and not summarized else None)
    if target is not None:
        try:
            target.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:  # a failed flush or close names no file: name it
            raise OSError(exc.errno, exc.strerror, exc.filename or str(target)) from None
        typer.echo(f"report: {target}")
    if failure is not None:
        raise failure


def publish_run(outcome: Any, ci: bool, report: Path | None) -> None:
    """A finished flow run: its summary, and in CI mode or with ``--report`` its full report
    (:func:`write_report`); otherwise the summary also goes to the step summary."""
    if ci or report:
        typer.echo(outcome.summary())
        write_report(report_text(outcome), ci, report)
    else:
        publish_summary(outcome.summary())


def report_failure(flow_name: str, exc: TlopsError, ci: bool, report: Path | None) -> None:
    """A failed flow run, in CI mode or with ``--report``: the report names the failure and
    its exit code (nothing is written otherwise: the CLI's ``error:`` line says it)."""
    if ci or report:
        text = f"### tlops {flow_name}: failed (exit {exc.exit_code})\n\nerror: {exc}"
        write_report(redact_text(text), ci, report)


def note_policy_override(policy: PolicyOrigin) -> None:
    """Say on stderr that ``--set`` replaced policy keys (the run records it too)."""
    if policy.overrides:
        typer.secho(
            f"note: --set {', '.join(policy.overrides)} overrides the promotion policy of"
            f" {policy.file}; recorded on the run and any version as policy.source=override",
            fg=typer.colors.YELLOW, err=True,
        )  # fmt: skip
