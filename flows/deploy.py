"""Deployments of the retrain flow and what the Prefect API knows about their schedules.

``tlops deploy`` registers ``flows/retrain.py:retrain_flow`` for a work pool with the config
*path* as its parameter: the YAML stays the single source of the run's values; ``tlops status``
shows their schedules (:func:`schedule_lines`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from tlops.config import load_config
from tlops.errors import ConfigError, ServiceError
from tlops.jobs.policy import refuse_policy_overrides

MODEL_TAG = "tlops-model:"


class DeploymentInfo(BaseModel):
    """A retrain deployment and its next run."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    work_pool: str | None
    cron: list[str]
    paused: bool
    config_path: str
    next_run: str | None


def _inside(project: Path, config: Path) -> str:
    """``config`` relative to the project (a deployment runs from the project folder)."""
    try:
        return config.resolve().relative_to(project.resolve()).as_posix()
    except ValueError:
        raise ConfigError(f"{config}: the config must be inside the project {project}") from None


def ensure_process_pool(pool: str) -> bool:
    """Create ``pool`` as a process work pool when it does not exist; True when created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            return True


def deploy_retrain(
    config: Path, name: str, pool: str, cron: str | None, overrides: list[str], project: Path
) -> str:
    """Create or update the deployment ``tlops-retrain/NAME``; return its id.

    1. load the config (a bad one, or an override of the gate / registry policy, which
       the deployment's runs would refuse, exits 2 before anything is created);
    2. make sure the work pool exists (a local process pool is created if missing);
    3. deploy the retrain flow by its module path (``flows.retrain``, importable wherever
       tlops is installed) with the project folder as the run's working directory and the
       config path as its parameter, tagged with the model's name for ``tlops status``.
    """
    cfg = load_config(config, overrides)  # before Prefect is imported: a bad config fails fast
    refuse_policy_overrides(overrides, cfg, "a deployment")
    relative = _inside(project, config)
    if cron is not None:
        _check_cron(cron)
    from prefect.types.entrypoint import EntrypointType

    from flows.retrain import retrain_flow

    ensure_process_pool(pool)
    deployment_id = retrain_flow.deploy(
        name=name,
        work_pool_name=pool,
        cron=cron,
        job_variables={"working_dir": str(project.resolve())},
        entrypoint_type=EntrypointType.MODULE_PATH,
        parameters={"config_path": relative, "overrides": overrides},
        tags=["tlops", f"{MODEL_TAG}{cfg.model_name}"],
        description=f"Retrain {cfg.model_name} from {relative} (tlops deploy)",
        build=False,
        push=False,
        print_next_steps=False,
        ignore_warnings=True,
    )
    return str(deployment_id)


def _check_cron(expr: str) -> None:
    """A cron expression Prefect accepts, else a :class:`ConfigError` naming ``--cron``."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=expr)
    except ValueError as exc:
        raise ConfigError(f"--cron {expr!r}: not a valid cron expression ({exc})") from None


def next_from_cron(expr: str, timezone: str | None) -> str | None:
    """The next time ``expr`` fires after now (ISO 8601), computed like Prefect's scheduler."""
    from prefect.server.schemas.schedules import CronSchedule

    schedule = CronSchedule(cron=expr, timezone=timezone or "UTC")
    dates = asyncio.run(schedule.get_dates(n=1, start=dt.datetime.now(dt.UTC)))
    return dates[0].isoformat() if dates else None


def model_deployments(model_name: str) -> list[DeploymentInfo]:
    """The retrain deployments of ``model_name`` with their next run (scheduled or computed)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        DeploymentFilterTags,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.client.schemas.sorting import FlowRunSort

    out = []
    tags = DeploymentFilterTags(all_=[f"{MODEL_TAG}{model_name}"])
    try:
        with get_client(sync_client=True) as client:
            found = client.read_deployments(deployment_filter=DeploymentFilter(tags=tags))
            for dep in found:
                crons = [
                    (s.schedule.cron, s.schedule.timezone)
                    for s in dep.schedules
                    if isinstance(s.schedule, CronSchedule) and s.active
                ]
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                        )
                    ),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                    limit=1,
                )
                start = runs[0].expected_start_time if runs else None
                nxt = start.isoformat() if start else None
                if nxt is None and crons and not dep.paused:
                    computed = (next_from_cron(c, tz) for c, tz in crons)
                    nxt = min(filter(None, computed), default=None)
                out.append(
                    DeploymentInfo(
                        id=str(dep.id), name=dep.name, work_pool=dep.work_pool_name,
                        cron=[c for c, _ in crons], paused=bool(dep.paused),
                        config_path=str(dep.parameters.get("config_path", "?")), next_run=nxt,
                    )
                )  # fmt: skip
    except OSError as exc:
        raise ServiceError(f"Prefect API unreachable: {exc}") from None
    return out


def schedule_lines(model_name: str) -> list[str]:
    """The ``tlops status`` lines of ``model_name``'s deployments; none without a Prefect API.

    Without ``PREFECT_API_URL`` there is no server whose scheduler would run a deployment, so
    nothing is asked (and no temporary server is started just for this).
    """
    if not os.environ.get("PREFECT_API_URL"):
        return ["  schedule: PREFECT_API_URL not set (deployments live on a Prefect server)"]
    lines = []
    for d in model_deployments(model_name):
        cron = ", ".join(d.cron) or "no schedule"
        state = " (paused)" if d.paused else ""
        lines.append(
            f"  deployment tlops-retrain/{d.name}{state}: {cron}, pool {d.work_pool},"
            f" config {d.config_path}; next run: {d.next_run or 'none scheduled'}"
        )
    return lines
