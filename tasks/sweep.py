"""Sweep tasks: the parent MLflow run, each trial's place under it, one trial, the sweep's end."""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.train import evaluate_task, record_task, train_task
from tlops.adapters import tracking
from tlops.jobs import sweep
from tlops.jobs.context import RunContext
from tlops.jobs.register import PromotionResult


@task(name="start-sweep", cache_policy=NO_CACHE)
def start_sweep_task(ctx: RunContext, grid: sweep.Grid, cluster: str) -> str:
    """Open the sweep's parent MLflow run in the config's experiment: the grid as tags."""
    run_id = sweep.open_parent_run(ctx, grid, cluster)
    get_run_logger().info(
        "sweep %s: parent MLflow run %s, grid %s",
        sweep.parent_run_name(ctx, grid), run_id, grid.describe(),
    )  # fmt: skip
    return run_id


@task(name="nest-trial", cache_policy=NO_CACHE)
def nest_trial_task(run_id: str, parent_run_id: str, trial: sweep.Trial) -> None:
    """Make a trial's MLflow run a child of the sweep's run, named after its grid point."""
    name = f"{trial.config.name}-trial{trial.index + 1} {trial.label}"
    tags = {"sweep.trial": str(trial.index + 1), "sweep.point": json.dumps(trial.point)}
    tracking.nest_run(run_id, parent_run_id, name, tags)


@task(name="trial", task_run_name="trial {trial.number}: {trial.label}", cache_policy=NO_CACHE)
def trial_task(
    trial: sweep.Trial, ctx: RunContext, environment: dict[str, str]
) -> sweep.TrialResult:
    """Train, evaluate and record one grid point into its MLflow run (the trial's context):
    stages 4-5 of the train flow, as its tasks (nested task runs), in one Dask worker process.

    ``environment`` is the flow's (:func:`tlops.jobs.sweep.worker_environment`): a worker that logs
    elsewhere fails here, before training.
    """
    sweep.check_worker_environment(environment)
    trained = train_task(ctx)
    evaluated = evaluate_task(ctx, trained)
    model_uri = record_task(ctx, trained, evaluated)
    return sweep.TrialResult(
        index=trial.index, run_id=ctx.run_id, model_uri=model_uri, out_dir=ctx.out_dir,
        trained=trained, evaluated=evaluated,
    )  # fmt: skip


@task(name="finish-sweep", cache_policy=NO_CACHE)
def finish_sweep_task(
    parent: RunContext, trials: list[sweep.Trial], results: list[sweep.TrialResult],
    best: sweep.TrialResult, promotion: PromotionResult,
) -> None:  # fmt: skip
    """Record the chosen trial and the promotion on the parent run, finish it, and publish the
    trials table as a Prefect artifact."""
    markdown = sweep.finish_parent_run(parent, trials, results, best, promotion)
    name, chosen = parent.config.name, trials[best.index]
    create_markdown_artifact(
        key="sweep-" + "".join(c if c.isalnum() else "-" for c in name.lower()),
        markdown=markdown,
        description=f"{name}: chosen trial {chosen.number} ({chosen.label})"[:500],
    )  # fmt: skip
    get_run_logger().info("chose trial %s (%s): %s", chosen.number, chosen.label, promotion.line())
