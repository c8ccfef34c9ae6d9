"""Stages 4-5 and tracking: start the MLflow run, train, evaluate, record."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tlops.adapters import tracking
from tlops.config import RunConfig
from tlops.data.version import DataVersion
from tlops.jobs.policy import PolicyOrigin
from tlops.jobs.train import (
    EvalSummary,
    TrainSummary,
    evaluate_model,
    record_run,
    run_tags,
    train_model,
)
from tlops.jobs.validate import ManifestInfo


@task(name="start-tracking", cache_policy=NO_CACHE)
def start_tracking_task(
    config: RunConfig, data: DataVersion, manifest: ManifestInfo, flow_run_id: str,
    trigger: str = "manual", policy: PolicyOrigin | None = None,
) -> str:  # fmt: skip
    """Open the MLflow run: params (the whole config), tags, the dataset input.

    The run is named ``<model>-<backbone>-<data md5[:8]>`` in the experiment of the config's
    name and tagged ``tlops.trigger`` (schedule, ci or manual) for filtering in the UI, and
    with the policy's hash and origin (``policy.*``, carried on to a registered version).
    """
    run_name = f"{config.model_name}-{config.backbone.name}-{data.md5[:8]}"
    tags = {**run_tags(config, data, flow_run_id, policy), "tlops.trigger": trigger}
    run_id = tracking.start_run(config.name, run_name, config.flat(), tags)
    tracking.log_dataset(run_id, data, manifest.digest, context="train")
    where = tracking.shown_tracking_uri()
    get_run_logger().info("MLflow run %s (%s) at %s", run_id, run_name, where)
    return run_id


@task(name="train", cache_policy=NO_CACHE)
def train_task(
    config: RunConfig, data: DataVersion, manifest: ManifestInfo, out_dir: str, run_id: str
) -> TrainSummary:
    """Train the classifier, logging every epoch and system metrics to the run."""
    with tracking.system_metrics(run_id):
        trained = train_model(config, data, manifest, Path(out_dir), run_id)
    get_run_logger().info(
        "trained on %s: kept phase %s, best %s %s, feature cache %s",
        trained.device, trained.kept_phase, config.train.monitor, trained.phase_best,
        trained.feature_cache,
    )  # fmt: skip
    return trained


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    config: RunConfig,
    trained: TrainSummary,
    data: DataVersion,
    manifest: ManifestInfo,
    out_dir: str,
) -> EvalSummary:
    """Evaluate the trained model on the test split."""
    evaluated = evaluate_model(config, trained, data, manifest, Path(out_dir))
    m = evaluated.metrics
    get_run_logger().info(
        "test accuracy %.4f, macro F1 %.4f", m["test_accuracy"], m["test_macro_f1"]
    )
    return evaluated


@task(name="record", cache_policy=NO_CACHE)
def record_task(
    run_id: str,
    config: RunConfig,
    trained: TrainSummary,
    evaluated: EvalSummary,
    out_dir: str,
    contract_report: str,
) -> str:
    """Log metrics, artifacts and the model to the run; finish it."""
    model_uri = record_run(run_id, config, trained, evaluated, Path(out_dir), contract_report)
    tracking.finish_run(run_id, "FINISHED")
    return model_uri


@task(name="fail-tracking", cache_policy=NO_CACHE)
def fail_tracking_task(run_id: str) -> None:
    """Mark the run FAILED after an error."""
    tracking.finish_run(run_id, "FAILED")
