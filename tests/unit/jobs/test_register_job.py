"""The promotion state machine (:func:`tlops.jobs.register.promote`) called directly against
a real SQLite MLflow store: what a promotion leaves (versions, states, aliases, ledger,
description), re-judging when the champion moved, and every undo path of the fault hook."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tlops.adapters import registry
from tlops.config import RunConfig
from tlops.decision.gate import Verdict
from tlops.errors import ServiceError
from tlops.jobs.register import PromotionResult, promote

#: the real SQLite MLflow store of this module (see tests/unit/mlflow_fixtures.py)
pytest_plugins = ["unit.mlflow_fixtures"]

PASSED = Verdict(decision="promote", results=[], champion_version=None, reason="all rules passed")
REJECTED = Verdict(decision="reject", results=[], champion_version=None, reason="worse")
BEFORE_ALIAS = ["after_register", "after_gate_tags", "after_intent"]
FROM_ALIAS = ["after_alias", "after_ledger", "after_complete"]


def unique(prefix: str) -> str:
    """A model name no other test of the module uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def tags_for(v: Verdict) -> dict[str, str]:
    """The version tags of a verdict (the lineage tags' gate part, and one more)."""
    return {"gate.decision": v.decision, "gate.reason": v.reason, "data.md5": "d" * 32}


def no_rejudge(_: registry.VersionInfo | None) -> Verdict:
    raise AssertionError("the champion did not move: no re-judging")


def run_promote(
    model_run: Any, name: str, champion: str | None = None, verdict: Verdict = PASSED,
    judge: Any = no_rejudge, **kwargs: Any,
) -> PromotionResult:  # fmt: skip
    """Promote a fresh candidate run of ``name`` judged against ``champion``."""
    cfg = RunConfig.model_validate({"name": name})
    run_id = model_run(name)
    judged = verdict.model_copy(update={"champion_version": champion})
    return promote(cfg, run_id, f"runs:/{run_id}/model", judged, judge, tags_for, "flow-run",
                   **kwargs)  # fmt: skip


def aliases(name: str) -> dict[str, str]:
    return {a: v.version for v in registry.versions(name) for a in v.aliases}


def states(name: str) -> dict[str, str | None]:
    return {v.version: registry.state_of(v) for v in registry.versions(name)}


def test_first_and_second_promotion(model_run: Any) -> None:
    name = unique("promote")
    first = run_promote(model_run, name)
    assert (first.version, first.previous_version, first.warnings) == ("1", None, [])
    assert first.line() == f"promoted: {name} v1 is champion"
    assert aliases(name) == {"champion": "1"} and states(name) == {"1": "complete"}
    info = registry.resolve(f"models:/{name}/1")
    assert info.tags["gate.decision"] == "promote" and info.tags["data.md5"] == "d" * 32
    assert registry.OWNER_TAG in info.tags and registry.STARTED_TAG in info.tags
    (entry,) = registry.ledger(name)
    assert (entry.alias, entry.from_version, entry.to_version, entry.state) == (
        "champion", None, "1", "confirmed",
    )  # fmt: skip
    assert entry.why == "gate passed: all rules passed" and entry.flow_run_id == "flow-run"
    assert entry.run_id == info.run_id
    description = registry.description(name)
    assert description is not None and description.startswith(f"## {name} v1")

    second = run_promote(model_run, name, champion="1")
    assert (second.version, second.previous_version) == ("2", "1")
    assert second.line() == f"promoted: {name} v2 is champion (previous: v1)"
    assert aliases(name) == {"champion": "2", "previous": "1"}
    assert states(name) == {"1": "complete", "2": "complete"}
    moves = [(e.alias, e.from_version, e.to_version, e.state) for e in registry.ledger(name)]
    assert moves == [
        ("champion", None, "1", "confirmed"), ("champion", "1", "2", "confirmed"),
        ("previous", None, "1", "confirmed"),
    ]  # fmt: skip
    assert registry.description(name).startswith(f"## {name} v2")  # type: ignore[union-attr]


def test_a_rejected_candidate_is_never_registered(model_run: Any) -> None:
    name = unique("rejected")
    result = run_promote(model_run, name, verdict=REJECTED)
    assert result.version is None and result.line() == "not promoted (reject): worse"
    assert registry.versions(name) == []


def test_a_moved_champion_is_judged_again(model_run: Any) -> None:
    name = unique("moved")
    run_promote(model_run, name)
    seen: list[str | None] = []

    def judge(champion: registry.VersionInfo | None) -> Verdict:
        seen.append(champion.version if champion else None)
        return REJECTED.model_copy(update={"champion_version": seen[-1]})

    # judged against no champion, but v1 holds the alias now: judged again, and rejected
    result = run_promote(model_run, name, champion=None, judge=judge)
    assert seen == ["1"] and result.rejudged == 1 and result.version is None
    assert result.verdict.decision == "reject"
    assert [v.version for v in registry.versions(name)] == ["1"] and aliases(name) == {
        "champion": "1"
    }

    def passes(champion: registry.VersionInfo | None) -> Verdict:
        current = champion.version if champion else None
        return PASSED.model_copy(update={"champion_version": current})

    again = run_promote(model_run, name, champion=None, judge=passes)
    assert (again.rejudged, again.version, again.previous_version) == (1, "2", "1")
    assert aliases(name) == {"champion": "2", "previous": "1"}


def test_a_champion_moved_while_registering_is_judged_again(model_run: Any) -> None:
    name = unique("racing")
    run_promote(model_run, name)
    run_promote(model_run, name, champion="1")  # v2 champion, v1 previous
    cfg = RunConfig.model_validate({"name": name})
    run_id = model_run(name)
    calls: list[str] = []

    def racing_tags(v: Verdict) -> dict[str, str]:
        if not calls:  # another flow moves the champion just as this one registers
            registry.set_alias(name, "champion", "1")
        calls.append(v.decision)
        return tags_for(v)

    def judge(champion: registry.VersionInfo | None) -> Verdict:
        assert champion is not None and champion.version == "1"
        return REJECTED.model_copy(update={"champion_version": "1"})

    judged = PASSED.model_copy(update={"champion_version": "2"})
    result = promote(cfg, run_id, f"runs:/{run_id}/model", judged, judge, racing_tags, "flow")
    assert (result.version, result.rejudged, result.verdict.decision) == (None, 1, "reject")
    assert sorted(states(name)) == ["1", "2"]  # the registered v3 was deleted again
    assert aliases(name) == {"champion": "1", "previous": "1"}


def test_a_champion_that_keeps_moving_gives_up(model_run: Any) -> None:
    name = unique("moving")
    run_promote(model_run, name)

    def stale(_: registry.VersionInfo | None) -> Verdict:
        return PASSED  # always judged against "no champion": never current

    with pytest.raises(ServiceError) as caught:
        run_promote(model_run, name, champion=None, judge=stale, max_rejudge=2)
    assert caught.value.exit_code == 5 and "gave up after 2 checks" in str(caught.value)
    assert [v.version for v in registry.versions(name)] == ["1"]


@pytest.mark.parametrize("point", BEFORE_ALIAS)
def test_a_failure_before_the_alias_deletes_the_version(
    point: str, model_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique(point.replace("_", "-"))
    run_promote(model_run, name)
    monkeypatch.setenv(registry.FAULT_ENV, point)
    with pytest.raises(ServiceError, match=point):
        run_promote(model_run, name, champion="1")
    assert states(name) == {"1": "complete"}  # v2 is gone
    assert aliases(name) == {"champion": "1"}
    entries = registry.ledger(name)
    if point == "after_intent":  # the intent was written: it is aborted, never left open
        assert [(e.to_version, e.state) for e in entries] == [("1", "confirmed"), ("2", "aborted")]
        assert "promotion failed: injected failure" in entries[-1].why
    else:
        assert [(e.to_version, e.state) for e in entries] == [("1", "confirmed")]


@pytest.mark.parametrize("point", FROM_ALIAS)
def test_a_failure_from_the_alias_on_restores_it_and_aborts(
    point: str, model_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique(point.replace("_", "-"))
    run_promote(model_run, name)
    monkeypatch.setenv(registry.FAULT_ENV, point)
    with pytest.raises(ServiceError, match=point):
        run_promote(model_run, name, champion="1")
    # the alias call was issued: the version stays, aborted, and the old champion is back
    assert states(name) == {"1": "complete", "2": "aborted"}
    assert aliases(name) == {"champion": "1"}
    last = registry.ledger(name)[-1]
    assert (last.to_version, last.state) == ("2", "aborted")
    assert last.why.endswith("; alias restored")
    monkeypatch.delenv(registry.FAULT_ENV)
    # the next promotion of the model first settles what is left: the aborted v2 is removed
    result = run_promote(model_run, name, champion="1")
    assert any("v2 removed" in action for action in result.reconciled), result.reconciled
    assert (result.version, result.previous_version) == ("3", "1")
    assert states(name) == {"1": "complete", "3": "complete"}
    assert [e for e in registry.ledger(name) if e.state == "intent"] == []


def test_a_first_promotion_failing_at_the_alias_leaves_no_champion(
    model_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("first-alias")
    monkeypatch.setenv(registry.FAULT_ENV, "after_alias")
    with pytest.raises(ServiceError):
        run_promote(model_run, name)
    assert aliases(name) == {} and states(name) == {"1": "aborted"}


@pytest.mark.parametrize(("point", "warning"), [
    ("previous_alias", "@previous not moved"), ("description", "description not updated"),
])  # fmt: skip
def test_after_the_promotion_failures_are_warnings(
    point: str, warning: str, model_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique(point.replace("_", "-"))
    run_promote(model_run, name)
    monkeypatch.setenv(registry.FAULT_ENV, point)
    result = run_promote(model_run, name, champion="1")
    assert result.version == "2" and len(result.warnings) == 1
    assert result.warnings[0].startswith(warning)
    assert f"warning: {warning}" in result.line()
    assert aliases(name)["champion"] == "2" and states(name) == {"1": "complete", "2": "complete"}
    if point == "previous_alias":
        assert "previous" not in aliases(name)
    else:
        assert registry.description(name).startswith(f"## {name} v1")  # type: ignore[union-attr]
    monkeypatch.delenv(registry.FAULT_ENV)
    # the next reconcile (first thing of the next promotion, or status) catches up
    from tlops.jobs.lineage import lineage_card
    from tlops.jobs.reconcile import reconcile

    fixed = reconcile(name, "champion", "previous", lineage_card)
    assert fixed.actions, "nothing reconciled"
    assert aliases(name) == {"champion": "2", "previous": "1"}
    assert registry.description(name).startswith(f"## {name} v2")  # type: ignore[union-attr]
