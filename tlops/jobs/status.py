"""``tlops status``: where a registered model stands, from the MLflow registry and runs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict

from tlops.adapters import registry, tracking
from tlops.errors import ConfigError


class RunLine(BaseModel):
    """One recent run of the model's experiment."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    name: str
    started: str
    status: str
    trigger: str
    decision: str
    test_accuracy: float | None
    registered: str | None


class ModelStatus(BaseModel):
    """The champion, when it was promoted, what it was trained on, and the last runs."""

    model_config = ConfigDict(frozen=True)

    name: str
    champion: registry.VersionInfo | None
    promoted_at: str | None
    promoted_why: str | None
    runs: list[RunLine]


def _when(millis: int | None) -> str:
    """An MLflow timestamp (ms) as UTC ISO 8601 to the second."""
    if not millis:
        return "?"
    stamp = dt.datetime.fromtimestamp(millis / 1000, dt.UTC)
    return stamp.isoformat(timespec="seconds")


def _run_line(run: Any) -> RunLine:
    """A run as a status line."""
    tags, metrics = run.data.tags, run.data.metrics
    return RunLine(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        started=_when(run.info.start_time),
        status=run.info.status,
        trigger=tags.get("tlops.trigger", "-"),
        decision=tags.get("gate.decision", "-"),
        test_accuracy=metrics.get("test_accuracy"),
        registered=tags.get("registered.version"),
    )


def _experiment_ids(client: Any, name: str, champion: registry.VersionInfo | None) -> list[str]:
    """The champion run's experiment and the experiment named like the model."""
    ids = []
    if champion and champion.run_id:
        ids.append(client.get_run(champion.run_id).info.experiment_id)
    found = client.get_experiment_by_name(name)
    if found is not None and found.experiment_id not in ids:
        ids.append(found.experiment_id)
    return ids


def model_status(name: str, champion_alias: str = "champion", last: int = 5) -> ModelStatus:
    """Read the registry and the model's experiment(s); a model unknown to both is an error."""
    champion = registry.version_by_alias(name, champion_alias)
    with tracking.service(f"read the status of {name}"):
        client = tracking.client()
        ids = _experiment_ids(client, name, champion)
        runs = (
            client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=last)
            if ids
            else []
        )
    if champion is None and not ids and registry.description(name) is None:
        raise ConfigError(f"{name}: no registered model or experiment of that name")
    promoted = None
    if champion is not None:
        moves = [
            e for e in registry.ledger(name)
            if e.alias == champion_alias and e.to_version == champion.version
        ]  # fmt: skip
        promoted = moves[-1] if moves else None
    return ModelStatus(
        name=name, champion=champion, promoted_at=promoted.when if promoted else None,
        promoted_why=promoted.why if promoted else None, runs=[_run_line(r) for r in runs],
    )  # fmt: skip


def render_status(status: ModelStatus, schedule_lines: list[str]) -> str:
    """Plain text for the console: champion, lineage headline, recent runs, schedule."""
    c = status.champion
    lines = [f"{status.name}"]
    if c is None:
        lines.append("  champion: none yet")
    else:
        t = c.tags
        lines += [
            f"  champion: v{c.version} (run {c.run_id}), promoted {status.promoted_at or '?'}",
            f"    why: {status.promoted_why or '?'}",
            f"    data: md5 {t.get('data.md5', '?')} rev {t.get('data.rev', '?')[:12]}"
            f" ({t.get('data.nfiles', '?')} files, remote {t.get('data.remote', '?')})",
            f"    backbone: {t.get('backbone', '?')} weights {t.get('backbone.weights', '?')}",
            f"    code: commit {t.get('git.commit', '?')[:12]} dirty {t.get('git.dirty', '?')}",
            f"    test accuracy: {t.get('metric.test_accuracy', '?')}",
        ]
    lines.append(f"  last {len(status.runs)} runs:" if status.runs else "  runs: none")
    for r in status.runs:
        acc = "-" if r.test_accuracy is None else f"{r.test_accuracy:.4f}"
        version = f" -> v{r.registered}" if r.registered else ""
        lines.append(
            f"    {r.started}  {r.status:<8} {r.trigger:<8} gate {r.decision:<9} acc {acc}"
            f"{version}  {r.name} ({r.run_id[:12]})"
        )
    lines += schedule_lines or ["  schedule: no deployment (tlops deploy CONFIG --name NAME)"]
    return "\n".join(lines)
