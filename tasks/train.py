"""Stages 4-5 and tracking: start the MLflow run, train, evaluate, record."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tlops.adapters.tracking import shown_tracking_uri
from tlops.jobs.context import RunContext
from tlops.jobs.export import ExportOutcome, export_run
from tlops.jobs.train import (
    EvalSummary,
    TrainSummary,
    evaluate_run,
    fail_run,
    open_run,
    record_run,
    run_name,
    train_run,
)


@task(name="start-tracking", cache_policy=NO_CACHE)
def start_tracking_task(ctx: RunContext) -> str:
    """Open the context's MLflow run (:func:`tlops.jobs.train.open_run`); return its id.

    The run is named ``<model>-<backbone>-<data md5[:8]>`` in the experiment of the config's
    name and tagged ``tlops.trigger`` (schedule, ci or manual) for filtering in the UI, and
    with the policy's hash and origin (``policy.*``, carried on to a registered version).
    """
    run_id = open_run(ctx)
    get_run_logger().info("MLflow run %s (%s) at %s", run_id, run_name(ctx), shown_tracking_uri())
    return run_id


@task(name="train", cache_policy=NO_CACHE)
def train_task(ctx: RunContext) -> TrainSummary:
    """Train the classifier, logging every epoch and system metrics to the run; the suspected
    label errors (found from the frozen features) become the ``label-suspects`` artifact."""
    trained = train_run(ctx)
    get_run_logger().info(
        "trained on %s: kept phase %s, best %s %s, feature cache %s",
        trained.device, trained.kept_phase, ctx.config.train.monitor, trained.phase_best,
        trained.feature_cache,
    )  # fmt: skip
    if trained.label_review:
        get_run_logger().info("%s", trained.label_review)
    for path in trained.label_files:
        if path.endswith(".md"):
            create_markdown_artifact(
                markdown=Path(path).read_text(encoding="utf-8"), key="label-suspects",
                description=trained.label_review[:500],
            )  # fmt: skip
    return trained


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(ctx: RunContext, trained: TrainSummary) -> EvalSummary:
    """Evaluate the trained model on the test split."""
    evaluated = evaluate_run(ctx, trained)
    m = evaluated.metrics
    get_run_logger().info(
        "test accuracy %.4f, macro F1 %.4f", m["test_accuracy"], m["test_macro_f1"]
    )
    return evaluated


@task(name="record", cache_policy=NO_CACHE)
def record_task(ctx: RunContext, trained: TrainSummary, evaluated: EvalSummary) -> str:
    """Log metrics, artifacts and the model to the run; finish it."""
    return record_run(ctx, trained, evaluated)


@task(name="export", cache_policy=NO_CACHE)
def export_task(ctx: RunContext, trained: TrainSummary) -> ExportOutcome:
    """Export the model as ``registry.exports`` says and check each format's parity."""
    outcome = export_run(ctx, trained)
    for line in outcome.lines():
        get_run_logger().info("export %s", line)
    return outcome


@task(name="fail-tracking", cache_policy=NO_CACHE)
def fail_tracking_task(run_id: str) -> None:
    """Mark the run FAILED after an error."""
    fail_run(run_id)
