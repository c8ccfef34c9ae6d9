"""Sweep tasks: the parent MLflow run, each trial's place under it, one trial, the sweep's end."""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.train import evaluate_task, record_task, train_task
from tlops.adapters import tracking
from tlops.config import RunConfig
from tlops.data.version import DataVersion
from tlops.jobs import sweep
from tlops.jobs.register import PromotionResult
from tlops.jobs.train import run_tags
from tlops.jobs.validate import ManifestInfo


@task(name="start-sweep", cache_policy=NO_CACHE)
def start_sweep_task(
    config: RunConfig, grid: sweep.Grid, data: DataVersion, manifest: ManifestInfo,
    flow_run_id: str, cluster: str,
) -> str:  # fmt: skip
    """Open the sweep's parent MLflow run in the config's experiment: the grid as tags."""
    run_name = f"{config.name}-sweep-{grid.size}trials"
    tags = {
        **run_tags(config, data, flow_run_id),
        **sweep.parent_tags(grid, config.train.monitor, cluster),
    }
    run_id = tracking.start_run(config.name, run_name, sweep.parent_params(config, grid), tags)
    tracking.log_dataset(run_id, data, manifest.digest, context="train")
    get_run_logger().info(
        "sweep %s: parent MLflow run %s, grid %s", run_name, run_id, grid.describe()
    )
    return run_id


@task(name="nest-trial", cache_policy=NO_CACHE)
def nest_trial_task(run_id: str, parent_run_id: str, trial: sweep.Trial) -> None:
    """Make a trial's MLflow run a child of the sweep's run, named after its grid point."""
    name = f"{trial.config.name}-trial{trial.index + 1} {trial.label}"
    tags = {"sweep.trial": str(trial.index + 1), "sweep.point": json.dumps(trial.point)}
    tracking.nest_run(run_id, parent_run_id, name, tags)


@task(name="trial", task_run_name="trial {trial.number}: {trial.label}", cache_policy=NO_CACHE)
def trial_task(
    trial: sweep.Trial, data: DataVersion, manifest: ManifestInfo, out_dir: str, run_id: str,
    contract_report: str, environment: dict[str, str],
) -> sweep.TrialResult:  # fmt: skip
    """Train, evaluate and record one grid point into its MLflow run: stages 4-5 of the train
    flow, as its tasks (nested task runs), in one Dask worker process.

    ``environment`` is the flow's (:func:`tlops.jobs.sweep.worker_environment`): a worker that logs
    elsewhere fails here, before training.
    """
    sweep.check_worker_environment(environment)
    config = trial.config
    trained = train_task(config, data, manifest, out_dir, run_id)
    evaluated = evaluate_task(config, trained, data, manifest, out_dir)
    model_uri = record_task(run_id, config, trained, evaluated, out_dir, contract_report)
    return sweep.TrialResult(
        index=trial.index, run_id=run_id, model_uri=model_uri, out_dir=out_dir,
        trained=trained, evaluated=evaluated,
    )  # fmt: skip


@task(name="finish-sweep", cache_policy=NO_CACHE)
def finish_sweep_task(
    parent_run_id: str, config: RunConfig, trials: list[sweep.Trial],
    results: list[sweep.TrialResult], best: sweep.TrialResult, promotion: PromotionResult,
) -> None:  # fmt: skip
    """Record the chosen trial and the promotion on the parent run, finish it, and publish the
    trials table as a Prefect artifact."""
    monitor, chosen, score = config.train.monitor, trials[best.index], best.score()
    metrics = {"best_test_accuracy": best.evaluated.metrics["test_accuracy"]}
    if score is not None:
        metrics[f"best_{monitor}"] = score
    tracking.log_metrics(parent_run_id, metrics)
    tracking.set_tags(
        parent_run_id,
        {
            "sweep.best_run_id": best.run_id,
            "sweep.best_trial": f"{chosen.number} {chosen.label}",
            "sweep.promotion": promotion.line(),
        },
    )
    tracking.finish_run(parent_run_id, "FINISHED")
    table = sweep.markdown_table(trials, results, best.index, monitor)
    create_markdown_artifact(
        key="sweep-" + "".join(c if c.isalnum() else "-" for c in config.name.lower()),
        markdown=f"## sweep {config.name}\n\n{table}\n\n**{promotion.line()}**",
        description=f"{config.name}: chosen trial {chosen.number} ({chosen.label})"[:500],
    )  # fmt: skip
    get_run_logger().info("chose trial %s (%s): %s", chosen.number, chosen.label, promotion.line())
