"""The gate's rules and decisions on hand-made evidence."""

from __future__ import annotations

import pytest

from tlops.config import GateConfig, load_config
from tlops.errors import ConfigError
from tlops.gate import Evidence, decide, mcnemar


def evidence(
    acc: float, correct: list[bool], version: str | None = None, **extra: float
) -> Evidence:
    metrics = {"test_accuracy": acc, "latency_ms_batch1": 5.0, **extra}
    return Evidence(
        metrics=metrics, correct=correct, classes=["a", "b"], fingerprint=f"fp-{acc}",
        version=version,
    )  # fmt: skip


def gate(**tree: object) -> GateConfig:
    return GateConfig.model_validate(tree)


def test_no_rules_promotes_nothing() -> None:
    verdict = decide(GateConfig(), evidence(0.99, [True]), None)
    assert verdict.decision == "no_rules" and not verdict.passed
    assert "no gate rules" in verdict.reason


def test_value_rules_and_budgets() -> None:
    rules = gate(values=[{"metric": "test_accuracy", "min": 0.8},
                         {"metric": "latency_ms_batch1", "max": 4.0}])  # fmt: skip
    verdict = decide(rules, evidence(0.9, [True]), None)
    assert verdict.decision == "reject"
    (failed,) = verdict.failed_rules
    assert (failed.rule, failed.threshold, failed.observed) == ("latency_ms_batch1", "<= 4", "5")
    assert "latency_ms_batch1" in verdict.reason
    ok = decide(gate(values=[{"metric": "test_accuracy", "min": 0.8}]), evidence(0.9, [True]), None)
    assert ok.passed and ok.results[0].status == "pass"


def test_unknown_metric_fails_naming_it() -> None:
    verdict = decide(gate(values=[{"metric": "test_acc", "min": 0.1}]), evidence(0.9, [True]), None)
    assert not verdict.passed and "no metric named 'test_acc'" in verdict.failed_rules[0].reason


def test_change_rules_skip_without_champion_and_apply_with_one() -> None:
    rules = gate(changes=[{"metric": "test_accuracy", "min_delta": 0.01}])
    first = decide(rules, evidence(0.5, [True, False]), None)
    assert first.passed and first.results[0].passed is None
    assert "no champion yet" in first.results[0].reason
    champion = evidence(0.8, [True, True], version="3")
    worse = decide(rules, evidence(0.805, [True, False]), champion)
    assert worse.decision == "reject" and worse.champion_version == "3"
    assert "delta +0.005" in worse.failed_rules[0].observed
    better = decide(rules, evidence(0.85, [True, True]), champion)
    assert better.passed
    lower = gate(changes=[{"metric": "latency_ms_batch1", "direction": "lower", "min_delta": -0.1,
                           "relative": True}])  # fmt: skip
    slower = evidence(0.9, [True], latency_ms_batch1=5.0)
    faster_champion = Evidence(**{**champion.model_dump(), "metrics": {"latency_ms_batch1": 4.0}})
    result = decide(lower, slower, faster_champion).results[0]
    assert result.passed is False and "delta -0.25" in result.observed


def test_identical_candidate_is_not_promoted() -> None:
    rules = gate(changes=[{"metric": "test_accuracy"}])
    champion = evidence(0.9, [True], version="1")
    copy = Evidence(**{**champion.model_dump(), "version": None})
    verdict = decide(rules, copy, champion)
    assert verdict.decision == "unchanged" and not verdict.passed
    assert "nothing changed since champion v1" in verdict.reason


def test_label_sets_differ_refuses_change_rules() -> None:
    rules = gate(changes=[{"metric": "test_accuracy"}])
    champion = Evidence(metrics={"test_accuracy": 0.1}, correct=[True], classes=["a", "c"],
                        version="2")  # fmt: skip
    verdict = decide(rules, evidence(0.9, [True]), champion)
    assert verdict.decision == "reject" and "label sets differ" in verdict.failed_rules[0].reason


def test_mcnemar_needs_a_significant_win() -> None:
    b, c, p = mcnemar([True] * 30 + [False] * 2, [False] * 30 + [True] * 2)
    assert (b, c) == (2, 30) and p < 1e-5
    assert mcnemar([True, False], [True, False]) == (0, 0, 1.0)
    rules = gate(mcnemar_p=0.05)
    champion = evidence(0.5, [True] * 10 + [False] * 10, version="1")
    noise = decide(rules, evidence(0.55, [True] * 11 + [False] * 9), champion)
    assert noise.decision == "reject" and noise.failed_rules[0].kind == "mcnemar"
    clear = decide(rules, evidence(0.95, [True] * 19 + [False]), champion)
    assert clear.passed


def test_per_class_recall_drop() -> None:
    rules = gate(max_recall_drop=0.05)
    champion = evidence(0.8, [True], version="1", test_recall_a=0.9, test_recall_b=0.7)
    candidate = evidence(0.85, [True], test_recall_a=0.8, test_recall_b=0.9)
    verdict = decide(rules, candidate, champion)
    assert [r.rule for r in verdict.failed_rules] == ["recall of class a vs champion"]


def test_verdict_markdown_names_every_rule() -> None:
    rules = gate(values=[{"metric": "test_accuracy", "min": 0.95}],
                 changes=[{"metric": "test_accuracy"}])  # fmt: skip
    text = decide(rules, evidence(0.9, [True]), None).markdown()
    assert "| test_accuracy | >= 0.95 | 0.9 | FAIL |" in text
    assert "skipped (no champion yet)" in text


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("gate.values=[{metric: test_accuracy}]", "gate.values.0"),
        ("gate.changes=[{metric: test_accuracy, direction: up}]", "gate.changes.0.direction"),
        ("gate.mcnemar_p=2", "gate.mcnemar_p"),
        ("registry.champion_alias='has space'", "registry.champion_alias"),
    ],
)
def test_bad_gate_config_names_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])
