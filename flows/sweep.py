"""The sweep flow: validate once, train a grid of trials in parallel on Dask, gate the best.

Each trial is the train flow's stages 4-5 in its own MLflow run, a child of one parent run; the
trials run as Prefect task runs on a Dask task runner (a local cluster of single-threaded worker
processes, as Keras' global state asks, or an existing scheduler). Only the trial with the best
validation score goes through the gate and registration.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect_dask.task_runners import DaskTaskRunner
from pydantic import BaseModel, ConfigDict

from flows.validate import validate_flow
from tasks.gate import gate_task
from tasks.register import register_task
from tasks.sweep import finish_sweep_task, nest_trial_task, start_sweep_task, trial_task
from tasks.train import export_task, fail_tracking_task, start_tracking_task
from tlops.adapters.tracking import shown_tracking_uri
from tlops.config import RunConfig
from tlops.decision.gate import Verdict
from tlops.errors import ConfigError
from tlops.jobs.context import RunContext
from tlops.jobs.policy import PolicyOrigin
from tlops.jobs.register import PromotionResult
from tlops.jobs.sweep import (
    Grid,
    Trial,
    TrialResult,
    check_scheduler,
    choose_best,
    expand_grid,
    markdown_table,
    trial_failure,
    worker_environment,
)
from tlops.jobs.validate import ValidationOutcome
from tlops.paths import run_dir


class SweepOutcome(BaseModel):
    """What the sweep flow returns."""

    model_config = ConfigDict(frozen=True)

    validation: ValidationOutcome
    parent_run_id: str
    cluster: str
    monitor: str
    trials: list[Trial]
    results: list[TrialResult]
    best: TrialResult
    verdict: Verdict
    promotion: PromotionResult
    tracking_uri: str

    @property
    def exit_code(self) -> int:
        """4 when the gate rejected the chosen trial (design section 7), else 0."""
        return 4 if self.verdict.decision == "reject" else 0

    def summary(self) -> str:
        """A short Markdown summary for the console and CI: the trials, the choice, the gate."""
        chosen, m = self.trials[self.best.index], self.best.evaluated.metrics
        score = self.best.score() or float("nan")
        return "\n".join(
            [
                f"### tlops sweep: done ({len(self.trials)} trials on {self.cluster})",
                "",
                markdown_table(self.trials, self.results, self.best.index, self.monitor),
                "",
                f"- chosen: trial {chosen.number} ({chosen.label}), run `{self.best.run_id}`:"
                f" best validation {self.monitor} {score:.4f}, test accuracy"
                f" {m['test_accuracy']:.4f} (chosen on validation; test is for the gate)",
                f"- data: md5 `{self.validation.data.md5}` rev `{self.validation.data.rev[:12]}`",
                f"- MLflow parent run `{self.parent_run_id}` at {self.tracking_uri};"
                f" model {self.best.model_uri}",
                f"- **{self.promotion.line()}**",
                "",
                self.verdict.markdown(),
            ]
        )


def _open_trial(base: RunContext, trial: Trial) -> RunContext:
    """A trial's context: its config, its own folder under the flow run's, its MLflow run."""
    ctx = base.for_trial(trial.config, str(run_dir(f"{base.flow_run_id}/trial-{trial.index + 1}")))
    return ctx.with_run(start_tracking_task(ctx))


def _run_trials(trials: list[Trial], contexts: list[RunContext]) -> list[TrialResult]:
    """Submit every trial (in its context: config, folder, MLflow run) to the task runner, wait
    for all, and return their results.

    A failed trial has its run marked FAILED; once all have ended, the first failure is raised
    (the others' runs stay as they finished).
    """
    environment = worker_environment()
    futures = [
        trial_task.submit(trial, ctx, environment)
        for trial, ctx in zip(trials, contexts, strict=True)
    ]
    results: list[TrialResult] = []
    failures: list[tuple[Trial, BaseException]] = []
    for trial, ctx, future in zip(trials, contexts, futures, strict=True):
        try:
            results.append(future.result())
        except Exception as exc:
            get_run_logger().error("trial %s (%s) failed: %s", trial.number, trial.label, exc)
            fail_tracking_task(ctx.run_id)
            failures.append((trial, exc))
    if failures:
        raise trial_failure(failures, len(trials))
    return results


@flow(name="tlops-sweep")
def sweep_flow(
    config: RunConfig, grid: Grid, cluster: str = "local", policy: PolicyOrigin | None = None
) -> SweepOutcome:
    """Train every grid point of ``config`` as a trial, in parallel; gate and register the best.

    1. expand the grid (every point validated) and validate the data once (subflow);
    2. open the parent MLflow run and, under it, one child run per trial;
    3. train, evaluate and record the trials on the flow's task runner (Dask);
    4. choose the best trial on validation; export it (``registry.exports``), gate and register
       it alone; finish the parent.

    A failed trial fails the sweep once the others have ended: no gate on part of a grid.
    ``cluster`` only says where the trials ran (a parent run tag); ``policy`` is where the
    gate / registry policy came from (tagged on every trial's run, see :mod:`tlops.jobs.policy`).
    """
    flow_run_id = str(flow_run.get_id() or "local")
    trials = expand_grid(config, grid)
    validation = validate_flow(config)
    base = RunContext.of(config, validation, flow_run_id, policy)
    parent = base.with_run(start_sweep_task(base, grid, cluster))
    try:
        contexts = [_open_trial(base, trial) for trial in trials]
        for trial, ctx in zip(trials, contexts, strict=True):
            nest_trial_task(ctx.run_id, parent.run_id, trial)
        results = _run_trials(trials, contexts)
        best = choose_best(results, config.train.monitor)
        chosen = contexts[best.index]
        exports = export_task(chosen, best.trained)
        gate = gate_task(chosen, best.trained, best.evaluated, exports)
        promotion = register_task(chosen, gate, best.model_uri)
        finish_sweep_task(parent, trials, results, best, promotion)
    except BaseException:
        fail_tracking_task(parent.run_id)
        raise
    return SweepOutcome(
        validation=validation, parent_run_id=parent.run_id, cluster=cluster,
        monitor=config.train.monitor, trials=trials, results=results, best=best,
        verdict=promotion.verdict, promotion=promotion, tracking_uri=shown_tracking_uri(),
    )  # fmt: skip


@contextmanager
def shared_prefect_api(remote: bool) -> Iterator[None]:
    """Let Dask workers report their task runs to the API this process uses.

    prefect-dask sends the flow's settings with every task (Prefect's serialized settings
    context). Without ``PREFECT_API_URL`` those settings name no API and every worker would
    start a temporary API server of its own; so the temporary server is started here and its
    URL put into the settings. Workers of a remote cluster cannot reach it: they need a real
    server (``PREFECT_API_URL``).
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        temporary_settings,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield
        return
    if remote:
        raise ConfigError(
            "--address: set PREFECT_API_URL to a Prefect server the Dask workers can reach"
        )
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


@contextmanager
def quiet_dask() -> Iterator[None]:
    """Keep Dask's warnings but not its INFO logs (every start and stop of the scheduler,
    nannies and workers), which would bury the flow's own logs."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_sweep(
    config: RunConfig, grid: Grid, workers: int = 2, address: str | None = None,
    policy: PolicyOrigin | None = None,
) -> SweepOutcome:  # fmt: skip
    """Run :func:`sweep_flow` on a Dask task runner: a temporary local cluster of ``workers``
    single-threaded processes, or the scheduler at ``address`` (whose workers must share this
    machine's MLflow store and tlops folders, e.g. on shared storage)."""
    with shared_prefect_api(remote=bool(address)), quiet_dask():
        if address:
            check_scheduler(address)
            runner, cluster = DaskTaskRunner(address=address), address
        else:
            options = {"n_workers": workers, "threads_per_worker": 1, "processes": True}
            runner = DaskTaskRunner(cluster_kwargs=options)
            cluster = f"local Dask, {workers} workers"
        # prefect-dask subclasses TaskRunner without naming its future type (mypy sees the default)
        on_dask = sweep_flow.with_options(task_runner=runner)  # type: ignore[arg-type]
        outcome: SweepOutcome = on_dask(config, grid, cluster, policy)
    return outcome
