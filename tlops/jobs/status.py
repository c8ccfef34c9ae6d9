"""``tlops status``: where a registered model stands, from the MLflow registry and runs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tlops.adapters import registry, tracking
from tlops.decision.changes import compare_parts
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


class LastRetrain(BaseModel):
    """The model's latest retrain, a run or a no-op (which leaves no run), and which parts of
    its fingerprint (data, config, code, lock) differ from the champion it was compared with:
    the one its gate compared it with, else the champion of the time."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["run", "no-op"]
    started: str
    run_id: str | None
    #: the champion version compared with; None: there was no champion to compare with
    compared_with: str | None
    changed: list[str]
    #: parts that one side does not record (versions older than the part tags: config)
    unknown: list[str]
    #: ``data, config``, ``nothing: a no-op``, ``nothing`` (a forced retrain), ...
    summary: str


class ModelStatus(BaseModel):
    """The champion, when it was promoted, what it was trained on, the last runs, and what
    changed for the last retrain."""

    model_config = ConfigDict(frozen=True)

    name: str
    champion: registry.VersionInfo | None
    promoted_at: str | None
    promoted_why: str | None
    runs: list[RunLine]
    last_retrain: LastRetrain | None = None


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


def _version(
    name: str, version: str, champion: registry.VersionInfo | None
) -> registry.VersionInfo | None:
    """Version ``version`` of ``name`` (the champion itself when it is that one); the current
    champion when that version is no longer registered."""
    if champion is not None and champion.version == version:
        return champion
    try:
        return registry.resolve(f"models:/{name}/{version}")
    except ConfigError:
        return champion


def _compared_champion(
    name: str, tags: Mapping[str, str], run_id: str, champion: registry.VersionInfo | None
) -> registry.VersionInfo | None:
    """The champion a run is compared with: the version its gate compared it with
    (``gate.champion_compared``; ``none``: no champion then), else (a run stopped before its
    gate) the current champion unless the run is that champion's own."""
    compared = tags.get("gate.champion_compared", "")
    if compared == "none":
        return None
    if compared.isdigit():
        return _version(name, compared, champion)
    return None if champion is None or champion.run_id == run_id else champion


def _retrain(
    kind: Literal["run", "no-op"], started: str, run_id: str | None, tags: Mapping[str, str],
    against: registry.VersionInfo | None,
) -> LastRetrain:  # fmt: skip
    """A retrain's tags compared part by part with those of the champion ``against``.

    A no-op changed nothing by definition (its whole fingerprint is the champion's), even
    where the champion is too old to record every part."""
    if against is None:
        return LastRetrain(
            kind=kind, started=started, run_id=run_id, compared_with=None, changed=[],
            unknown=[], summary="no champion to compare with",
        )  # fmt: skip
    change = compare_parts(tags, against.tags)
    if kind == "no-op":
        change = change.model_copy(update={"changed": [], "unknown": []})
    return LastRetrain(
        kind=kind, started=started, run_id=run_id, compared_with=against.version,
        changed=change.changed, unknown=change.unknown, summary=change.describe(kind == "no-op"),
    )  # fmt: skip


def last_retrain(
    name: str, runs: list[Any], champion: registry.VersionInfo | None
) -> LastRetrain | None:
    """The latest retrain: the newer of the newest run (``runs`` newest first; reproductions
    are no retrains) and the model's last no-op record (:func:`registry.last_noop`)."""
    run = next((r for r in runs if "tlops.reproduces" not in r.data.tags), None)
    noop = registry.last_noop(name) if champion is not None else None
    if noop is not None and (run is None or noop.when_ms >= (run.info.start_time or 0)):
        against = _version(name, noop.champion, champion)
        return _retrain("no-op", _when(noop.when_ms), None, noop.tags, against)
    if run is None:
        return None
    tags, run_id = run.data.tags, run.info.run_id
    against = _compared_champion(name, tags, run_id, champion)
    return _retrain("run", _when(run.info.start_time), run_id, tags, against)


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
        last_retrain=last_retrain(name, list(runs), champion),
    )  # fmt: skip


def retrain_lines(retrain: LastRetrain | None) -> list[str]:
    """The status line of the last retrain: what it was, and what changed since the champion,
    e.g. ``last retrain: run 0123456789ab (2025-...) vs champion v1, changed: data, config``."""
    if retrain is None:
        return []
    what = "no-op" if retrain.run_id is None else f"run {retrain.run_id[:12]}"
    against = f" vs champion v{retrain.compared_with}, changed" if retrain.compared_with else ""
    return [f"  last retrain: {what} ({retrain.started}){against}: {retrain.summary}"]


def render_status(status: ModelStatus, schedule_lines: list[str]) -> str:
    """Plain text for the console: champion, lineage headline, what the last retrain
    changed, recent runs, schedule."""
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
    lines += retrain_lines(status.last_retrain)
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
