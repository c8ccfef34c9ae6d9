"""``tlops status`` (:func:`tlops.jobs.status.model_status`) against a real SQLite MLflow
store: the champion with its ledger entry, the recent runs, and the rendered text."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tlops.adapters import registry, tracking
from tlops.errors import ConfigError
from tlops.jobs.status import model_status, render_status

#: the real SQLite MLflow store of this module (see tests/unit/mlflow_fixtures.py)
pytest_plugins = ["unit.mlflow_fixtures"]


def unique(prefix: str) -> str:
    """A model or experiment name no other test of the module uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def finished_run(experiment: str, tags: dict[str, str], accuracy: float | None) -> str:
    """A finished run with tags and, maybe, a test accuracy."""
    run_id = tracking.start_run(experiment, f"run-{len(tags)}", {}, tags)
    if accuracy is not None:
        tracking.log_metrics(run_id, {"test_accuracy": accuracy})
    tracking.finish_run(run_id)
    time.sleep(0.01)  # distinct start times, for the order
    return run_id


def test_an_unknown_model_is_a_config_error(store: str) -> None:
    with pytest.raises(ConfigError) as caught:
        model_status(unique("nobody"))
    assert caught.value.exit_code == 2 and "no registered model or experiment" in str(caught.value)


def test_runs_without_a_champion(store: str) -> None:
    name = unique("runs")
    first = finished_run(name, {"tlops.trigger": "manual", "gate.decision": "reject"}, 0.5)
    second = finished_run(name, {"tlops.trigger": "schedule"}, None)
    status = model_status(name)
    assert status.champion is None and status.promoted_at is None
    assert [r.run_id for r in status.runs] == [second, first]  # newest first
    newest, oldest = status.runs
    assert (oldest.trigger, oldest.decision, oldest.test_accuracy) == ("manual", "reject", 0.5)
    assert (newest.trigger, newest.decision, newest.test_accuracy) == ("schedule", "-", None)
    assert oldest.status == "FINISHED" and oldest.started.endswith("+00:00")
    assert [r.run_id for r in model_status(name, last=1).runs] == [second]
    text = render_status(status, [])
    assert "champion: none yet" in text and "last 2 runs:" in text
    assert "gate reject" in text and "acc 0.5000" in text and "acc -" in text
    assert text.splitlines()[-1] == "  schedule: no deployment (tlops deploy CONFIG --name NAME)"


def test_the_champion_and_when_it_was_promoted(model_run: Any) -> None:
    name = unique("champ")
    experiment = unique("elsewhere")  # the champion's run lives in another experiment
    run_id = model_run(experiment)
    tags = {"data.md5": "m" * 32, "git.commit": "c" * 40, "metric.test_accuracy": "0.9"}
    info = registry.register(name, run_id, f"runs:/{run_id}/model", tags, "")
    registry.move_alias(name, "champion", info.version, "gate passed: better", "flow", run_id)
    tracking.set_tags(run_id, {"registered.version": info.version})
    status = model_status(name)
    assert status.champion is not None and status.champion.version == "1"
    assert status.promoted_why == "gate passed: better" and status.promoted_at
    assert [(r.run_id, r.registered) for r in status.runs] == [(run_id, "1")]
    text = render_status(status, ["  schedule: nightly"])
    assert f"champion: v1 (run {run_id}), promoted {status.promoted_at}" in text
    assert "why: gate passed: better" in text and f"md5 {'m' * 32}" in text
    assert f"commit {'c' * 12} " in text and "test accuracy: 0.9" in text
    assert f"-> v1  run ({run_id[:12]})" in text
    assert text.splitlines()[-1] == "  schedule: nightly"


def test_a_champion_without_a_ledger_entry(model_run: Any) -> None:
    name = unique("manual")
    run_id = model_run(name)
    info = registry.register(name, run_id, f"runs:/{run_id}/model", {}, "")
    registry.set_alias(name, "champion", info.version)  # by hand: no ledger entry
    status = model_status(name)
    assert status.champion is not None and status.promoted_at is None
    assert "promoted ?" in render_status(status, [])


def test_a_registered_model_without_a_champion_is_no_error(model_run: Any) -> None:
    name = unique("nochamp")
    run_id = model_run(unique("trained-elsewhere"))  # its experiment is named otherwise
    registry.register(name, run_id, f"runs:/{run_id}/model", {}, "")
    status = model_status(name)  # the model exists: it has no champion yet
    assert status.champion is None and status.runs == []
    assert "champion: none yet" in render_status(status, [])


def champion_with_parts(model_run: Any, name: str, tags: dict[str, str]) -> registry.VersionInfo:
    """A registered champion of ``name`` carrying ``tags``, promoted through the ledger."""
    run_id = model_run(name)
    info = registry.register(name, run_id, f"runs:/{run_id}/model", tags, "")
    registry.move_alias(name, "champion", info.version, "gate passed", "flow", run_id)
    return info


def test_the_last_retrain_names_the_parts_it_changed_then_a_no_op_none(model_run: Any) -> None:
    from pathlib import Path

    from tlops.config import load_config
    from tlops.jobs.gate import fingerprint_tags, record_unchanged

    name = unique("parts")
    smoke = Path(__file__).resolve().parents[3] / "configs" / "smoke.yaml"
    cfg = load_config(smoke, [f"name={name}"])
    code = {"code.sha256": "a" * 64, "lock.sha256": "b" * 64}
    champion = champion_with_parts(model_run, name, fingerprint_tags(cfg, "d" * 32, code))
    # 1. a retrain on new data with another seed, judged against v1: data and config changed
    changed = fingerprint_tags(load_config(smoke, [f"name={name}", "train.seed=5"]), "e" * 32, code)
    retrain = finished_run(name, {**changed, "gate.champion_compared": "1"}, 0.7)
    found = model_status(name).last_retrain
    assert found is not None and (found.kind, found.run_id) == ("run", retrain)
    assert (found.compared_with, found.changed, found.unknown) == ("1", ["data", "config"], [])
    line = f"  last retrain: run {retrain[:12]} ({found.started}) vs champion v1, changed: data"
    assert f"{line}, config" in render_status(model_status(name), []).splitlines()
    # 2. then a retrain that found nothing changed (it leaves no run, only its record)
    time.sleep(0.01)
    record_unchanged(cfg, "d" * 32, champion, Path.cwd())
    status = model_status(name)
    noop = status.last_retrain
    assert noop is not None and (noop.kind, noop.run_id, noop.compared_with) == ("no-op", None, "1")
    assert noop.changed == [] and noop.summary == "nothing: a no-op"
    assert "vs champion v1, changed: nothing: a no-op" in render_status(status, [])
    assert status.runs[0].run_id == retrain  # the runs are unchanged
    assert '"summary":"nothing: a no-op"' in status.model_dump_json()


def test_a_champion_older_than_the_part_tags_still_compares(model_run: Any) -> None:
    name = unique("oldparts")
    old = {"data.md5": "d" * 32, "code.sha256": "a" * 64, "lock.sha256": "b" * 64,
           "tlops.fingerprint": "x.y"}  # fmt: skip
    champion_with_parts(model_run, name, old)
    parts = {"fingerprint.data": "d" * 12, "fingerprint.config": "c" * 12,
             "fingerprint.code": "f" * 12, "fingerprint.lock": "b" * 12}  # fmt: skip
    finished_run(name, {**parts, "gate.champion_compared": "1"}, None)
    found = model_status(name).last_retrain
    assert found is not None and found.summary == "code; not recorded: config"
    first = unique("first")  # a first model: nothing to compare with
    finished_run(first, {**parts, "gate.champion_compared": "none"}, None)
    alone = model_status(first)
    assert alone.last_retrain is not None and alone.last_retrain.compared_with is None
    assert ": no champion to compare with" in render_status(alone, [])
