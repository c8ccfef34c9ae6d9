"""Stage 6 as Prefect tasks: the gate (and the check that nothing changed since the champion)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tlops.adapters.registry import VersionInfo
from tlops.config import RunConfig
from tlops.data.version import DataVersion
from tlops.errors import TlopsError
from tlops.jobs.context import RunContext
from tlops.jobs.export import ExportOutcome
from tlops.jobs.gate import GateOutcome, judge_candidate, record_unchanged, unchanged_champion
from tlops.jobs.train import EvalSummary, TrainSummary


def artifact_key(model_name: str) -> str:
    """The stable Prefect artifact key of a model's runs (lowercase letters, digits, dashes):
    the Prefect UI lists every run's report under it, newest first."""
    return "gate-" + "".join(c if c.isalnum() else "-" for c in model_name.lower())


@task(name="check-unchanged", cache_policy=NO_CACHE)
def unchanged_task(config: RunConfig, data: DataVersion) -> VersionInfo | None:
    """The champion when it was trained on this data, config and code (then nothing to do,
    recorded on the registered model for ``tlops status``; a failure to record is a warning)."""
    champion = unchanged_champion(config, data.md5, Path.cwd())
    if champion is not None:
        try:
            record_unchanged(config, data.md5, champion, Path.cwd())  # for tlops status
        except TlopsError as exc:
            get_run_logger().warning("no-op not recorded for tlops status: %s", exc)
        text = (
            f"## tlops: {config.model_name}: nothing changed\n\nSame data (md5 `{data.md5}`),"
            f" config and code as champion v{champion.version}: not retrained.\n"
        )
        create_markdown_artifact(
            key=artifact_key(config.model_name), markdown=text,
            description=f"{config.model_name}: unchanged, not retrained",
        )  # fmt: skip
        get_run_logger().info("unchanged since champion v%s: not retraining", champion.version)
    return champion


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(
    ctx: RunContext, trained: TrainSummary, evaluated: EvalSummary, exports: ExportOutcome
) -> GateOutcome:
    """Judge the candidate (with its exports' parity and figures) against the current champion,
    re-evaluated on the same test split (:func:`tlops.jobs.gate.judge_candidate`); publish the
    report as a Prefect artifact."""
    outcome = judge_candidate(ctx, trained, evaluated, exports)
    name, verdict = ctx.config.model_name, outcome.verdict
    create_markdown_artifact(
        key=artifact_key(name), markdown=outcome.markdown(),
        description=f"{name}: {verdict.decision} ({verdict.reason})"[:500],
    )  # fmt: skip
    get_run_logger().info("gate: %s (%s)", verdict.decision, verdict.reason)
    return outcome
