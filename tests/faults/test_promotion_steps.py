"""The promotion state machine against a real `mlflow server`: a failure at every step, and
every shape a killed process can leave, end in one consistent registry (design section 7b)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tlops.adapters import registry
from tlops.config import RunConfig
from tlops.decision.gate import Verdict
from tlops.errors import ServiceError
from tlops.jobs.reconcile import reconcile
from tlops.jobs.register import promote

PASSED = Verdict(decision="promote", results=[], champion_version=None, reason="all rules passed")
STEPS_BEFORE_ALIAS = ["after_register", "after_gate_tags", "after_intent"]
STEPS_FROM_ALIAS = ["after_alias", "after_ledger", "after_complete"]


def _run_with_model(tmp_path: Path) -> tuple[str, str]:
    """A real MLflow run holding a ``model`` artifact folder: (run id, model URI)."""
    client = registry.client()
    experiment = client.get_experiment_by_name("promotion-steps")
    exp_id = experiment.experiment_id if experiment else client.create_experiment("promotion-steps")
    run = client.create_run(exp_id)
    model = tmp_path / "model.txt"
    model.write_text("weights", encoding="utf-8")
    client.log_artifact(run.info.run_id, str(model), "model")
    return run.info.run_id, f"runs:/{run.info.run_id}/model"


def _promote(name: str, tmp_path: Path, champion: str | None) -> str | None:
    """Promote a fresh candidate of ``name`` whose gate passed; returns the new version."""
    cfg = RunConfig.model_validate({"name": name})
    run_id, uri = _run_with_model(tmp_path)
    verdict = PASSED.model_copy(update={"champion_version": champion})

    def judge(_: registry.VersionInfo | None) -> Verdict:
        raise AssertionError("the champion did not move: no re-judging")

    def tags_for(v: Verdict) -> dict[str, str]:
        return {"gate.decision": v.decision, "tlops.fingerprint": run_id}

    return promote(cfg, run_id, uri, verdict, judge, tags_for, "flow-run").version


def _aliases(name: str) -> dict[str, str]:
    model = registry.client().get_registered_model(name)
    return {a: str(v) for a, v in (model.aliases or {}).items()}


def assert_consistent(name: str) -> None:
    """Every version complete with its ledger entry (or gone), no unsettled intent, every
    alias on a complete, gate-passed version."""
    entries = registry.ledger(name)
    assert [e for e in entries if e.state == "intent"] == []
    versions = {v.version: v for v in registry.versions(name)}
    confirmed = {e.to_version for e in entries if e.state == "confirmed"}
    for v in versions.values():
        assert registry.state_of(v) == "complete", (v.version, v.tags)
        assert v.version in confirmed, f"v{v.version} has no confirmed ledger entry"
    for alias, version in _aliases(name).items():
        assert version in versions, f"@{alias} on a missing v{version}"
        assert versions[version].tags.get("gate.decision") == "promote"


@pytest.mark.parametrize("point", STEPS_BEFORE_ALIAS + STEPS_FROM_ALIAS)
def test_failure_at_any_step_keeps_the_champion(
    point: str, tracked: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"steps-{point.replace('_', '-')}"
    first = _promote(name, tmp_path, None)
    assert _aliases(name) == {"champion": first}

    monkeypatch.setenv(registry.FAULT_ENV, point)
    with pytest.raises(ServiceError, match=f"injected failure at {point}"):
        _promote(name, tmp_path, first)
    monkeypatch.delenv(registry.FAULT_ENV)

    # the champion was never lost, the ledger has no unsettled intent
    assert _aliases(name) == {"champion": first}
    assert [e.state for e in registry.ledger(name) if e.state == "intent"] == []
    left = [v for v in registry.versions(name) if v.version != first]
    if point in STEPS_BEFORE_ALIAS:
        assert left == []  # no alias call was issued: the version is deleted at once
    else:
        # the alias call was issued: the version is kept, marked aborted, never deleted here
        assert [registry.state_of(v) for v in left] == ["aborted"]
        assert any(e.state == "aborted" for e in registry.ledger(name))
    reconcile(name)
    assert_consistent(name)
    assert [v.version for v in registry.versions(name)] == [first]


def test_previous_alias_and_description_failures_are_warnings(
    tracked: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "steps-after-promotion"
    first = _promote(name, tmp_path, None)
    monkeypatch.setenv(registry.FAULT_ENV, "previous_alias")
    cfg = RunConfig.model_validate({"name": name})
    run_id, uri = _run_with_model(tmp_path)
    result = promote(
        cfg, run_id, uri, PASSED.model_copy(update={"champion_version": first}),
        lambda _: PASSED, lambda v: {"gate.decision": v.decision}, "flow-run",
    )  # fmt: skip
    assert result.version is not None and result.version != first
    assert "warning: @previous not moved" in result.line()
    assert _aliases(name) == {"champion": result.version}
    monkeypatch.delenv(registry.FAULT_ENV)
    done = reconcile(name)
    assert f"@previous set to v{first}" in done.actions
    assert _aliases(name) == {"champion": result.version, "previous": first}
    assert_consistent(name)


def _pending(name: str, tmp_path: Path, owner: str) -> registry.VersionInfo:
    """A version registered as pending by ``owner`` (what a killed promotion leaves)."""
    run_id, uri = _run_with_model(tmp_path)
    tags = {
        registry.STATE_TAG: "pending", registry.OWNER_TAG: owner,
        registry.STARTED_TAG: "0", "gate.decision": "promote",
    }  # fmt: skip
    return registry.register(name, run_id, uri, tags, "")


def _dead_owner() -> str:
    """The owner tag of a process of this machine that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.dumps({**json.loads(registry.owner()), "pid": done.stdout.strip(), "start": ""})


def test_reconcile_settles_every_crash_shape(tracked: str, tmp_path: Path) -> None:
    name = "steps-crash-shapes"
    first = _promote(name, tmp_path, None)
    dead = _dead_owner()

    # killed after register: pending, no intent -> removed
    orphan = _pending(name, tmp_path, dead)
    # killed after the intent, before the alias moved -> intent aborted, version removed
    unmoved = _pending(name, tmp_path, dead)
    registry.intend_move(name, "champion", unmoved.version, first, "gate passed", "f", None)
    done = reconcile(name)
    assert _aliases(name) == {"champion": first}
    assert {v.version for v in registry.versions(name)} == {first}
    assert f"v{orphan.version} removed (aborted)" in done.actions
    assert_consistent(name)

    # killed after the alias moved, before the ledger confirmation -> rolled forward
    moved = _pending(name, tmp_path, dead)
    registry.intend_move(name, "champion", moved.version, first, "gate passed", "f", None)
    registry.set_alias(name, "champion", moved.version)
    done = reconcile(name)
    assert any("promotion completed" in a for a in done.actions), done.actions
    assert _aliases(name) == {"champion": moved.version, "previous": first}
    assert_consistent(name)

    # killed after the ledger confirmation, before the version was tagged complete
    confirmed = _pending(name, tmp_path, dead)
    entry = registry.intend_move(name, "champion", confirmed.version, moved.version, "g", "f", None)
    registry.set_alias(name, "champion", confirmed.version)
    registry.write_ledger(name, entry.settle("confirmed"))
    done = reconcile(name)
    assert f"v{confirmed.version} held @champion by a confirmed move: promotion completed" in (
        done.actions
    )
    assert _aliases(name) == {"champion": confirmed.version, "previous": moved.version}
    assert_consistent(name)

    # a version an older tlops registered but never promoted (no state, no ledger entry)
    run_id, uri = _run_with_model(tmp_path)
    legacy = registry.register(name, run_id, uri, {"tlops.fingerprint": "x"}, "")
    done = reconcile(name)
    assert f"v{legacy.version} removed (registered but never promoted)" in done.actions
    assert_consistent(name)

    # a pending version of a live process is left alone
    live = _pending(name, tmp_path, registry.owner())
    assert reconcile(name).actions == []
    assert live.version in {v.version for v in registry.versions(name)}
    registry.delete_version(name, live.version)


def test_ledger_entries_of_older_tlops_read_as_confirmed(tracked: str, tmp_path: Path) -> None:
    name = "steps-old-ledger"
    first = _promote(name, tmp_path, None)
    old = {
        "when": "2026-01-01T00:00:00Z", "alias": "champion", "from_version": None,
        "to_version": first, "why": "gate passed", "flow_run_id": "f", "run_id": None,
    }  # fmt: skip
    key = f"{registry.LEDGER_PREFIX}00000000000000000001.champion.{first}"
    registry.client().set_registered_model_tag(name, key, json.dumps(old))
    assert next(e.state for e in registry.ledger(name)) == "confirmed"
