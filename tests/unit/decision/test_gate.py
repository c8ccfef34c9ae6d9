"""The gate's rules and decisions on hand-made evidence."""

from __future__ import annotations

import pytest

from tlops.config import GateConfig, load_config
from tlops.decision.gate import Evidence, RuleResult, decide, mcnemar
from tlops.errors import ConfigError


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


def test_recall_rule_finds_the_sanitized_key_of_non_ascii_and_punctuated_classes() -> None:
    from tlops.model.metrics import compute_metrics

    classes = ["café", "thé", "cat:1"]
    labels = [0, 1, 2, 0, 1, 2]
    perfect = [[1.0 if i == y else 0.0 for i in range(3)] for y in labels]
    half = [[1.0 if i == (y if n < 3 else (y + 1) % 3) else 0.0 for i in range(3)]
            for n, y in enumerate(labels)]  # fmt: skip
    old = compute_metrics(labels, perfect, classes, 1).scalars()
    new = compute_metrics(labels, half, classes, 1).scalars()
    champion = Evidence(metrics=old, correct=[True] * 6, classes=classes, version="1")
    candidate = Evidence(metrics=new, correct=[True] * 3 + [False] * 3, classes=classes)
    verdict = decide(gate(max_recall_drop=0.1), candidate, champion)
    assert verdict.decision == "reject"
    assert [r.rule for r in verdict.results] == [f"recall of class {c} vs champion"
                                                 for c in classes]  # fmt: skip
    assert all(r.passed is False and r.observed == "0.5 vs 1" for r in verdict.results)


def test_a_rule_whose_metric_is_missing_fails_with_the_reason() -> None:
    champion = evidence(0.8, [True, True], version="1", test_recall_a=0.9, test_recall_b=0.9)
    # the candidate lacks class b's recall
    candidate = evidence(0.9, [True, True], test_recall_a=0.9)
    verdict = decide(gate(max_recall_drop=0.5), candidate, champion)
    assert verdict.decision == "reject"
    (failed,) = verdict.failed_rules
    assert failed.rule == "recall of class b vs champion"
    assert failed.reason == "candidate has no value for 'test_recall_b'"
    # a change rule on a metric the champion lacks
    rules = gate(changes=[{"metric": "test_macro_f1", "min_delta": -1.0}])
    lacking = decide(rules, evidence(0.9, [True], test_macro_f1=0.5), evidence(0.8, [True], "1"))
    assert lacking.decision == "reject"
    assert lacking.failed_rules[0].reason == "champion has no metric 'test_macro_f1'"
    # a value rule on a metric that is not a number
    nan = decide(gate(values=[{"metric": "test_accuracy", "max": 1.0}]),
                 evidence(float("nan"), [True]), None)  # fmt: skip
    assert nan.decision == "reject" and "not a finite number" in nan.failed_rules[0].reason


@pytest.mark.parametrize(
    ("candidate", "champion", "why"),
    [
        ([], [True, False], "no paired predictions: candidate 0, champion 2"),
        ([True, True, True], [True, False], "paired predictions cover different images"),
    ],
)
def test_mcnemar_without_matching_paired_predictions_fails(
    candidate: list[bool], champion: list[bool], why: str
) -> None:
    verdict = decide(
        gate(mcnemar_p=0.05), evidence(0.9, candidate), evidence(0.5, champion, version="1")
    )
    assert verdict.decision == "reject"
    (failed,) = verdict.failed_rules
    assert failed.kind == "mcnemar" and why in failed.reason


@pytest.mark.parametrize("direction", ["higher", "lower"])
def test_relative_change_against_a_zero_champion_compares_the_absolute_delta(
    direction: str,
) -> None:
    rules = gate(changes=[{"metric": "test_loss", "direction": direction, "relative": True,
                           "min_delta": -0.05}])  # fmt: skip
    champion = evidence(0.5, [True], version="1", test_loss=0.0)
    worse = -0.5 if direction == "higher" else 0.5
    rejected = decide(rules, evidence(0.6, [True], test_loss=worse), champion)
    assert rejected.decision == "reject"
    (failed,) = rejected.failed_rules
    assert failed.reason == "champion value is 0: absolute delta compared"
    assert "delta -0.5" in failed.observed
    slightly = -0.01 if direction == "higher" else 0.01  # within the allowed -0.05
    assert decide(rules, evidence(0.6, [True], test_loss=slightly), champion).passed
    better = decide(rules, evidence(0.6, [True], test_loss=-worse), champion)
    assert better.passed and "delta +0.5" in better.results[0].observed


def export_check(passed: bool) -> RuleResult:
    return RuleResult(
        rule="onnx export parity", kind="export", threshold="argmax 1", observed="argmax 0.98",
        passed=passed,
    )  # fmt: skip


def test_a_failed_export_check_rejects_even_without_rules() -> None:
    failing = evidence(0.99, [True]).model_copy(update={"checks": [export_check(False)]})
    for rules in (GateConfig(), gate(values=[{"metric": "test_accuracy", "min": 0.5}])):
        verdict = decide(rules, failing, None)
        assert verdict.decision == "reject" and not verdict.passed
        assert "onnx export parity (argmax 0.98)" in verdict.reason
        assert [r.rule for r in verdict.failed_rules] == ["onnx export parity"]


def test_passed_export_checks_are_listed_and_export_metrics_are_rules_like_any() -> None:
    candidate = evidence(0.9, [True], onnx_latency_ms_batch1=3.0, litert_size_mb=12.0)
    candidate = candidate.model_copy(update={"checks": [export_check(True)]})
    rules = gate(values=[{"metric": "onnx_latency_ms_batch1", "max": 5},
                         {"metric": "litert_size_mb", "max": 10}])  # fmt: skip
    verdict = decide(rules, candidate, None)
    assert verdict.decision == "reject"
    assert [(r.rule, r.status) for r in verdict.results] == [
        ("onnx export parity", "pass"), ("onnx_latency_ms_batch1", "pass"),
        ("litert_size_mb", "FAIL"),
    ]  # fmt: skip
    no_export = decide(gate(values=[{"metric": "onnx_latency_ms_batch1", "max": 5}]),
                       evidence(0.9, [True]), None)  # fmt: skip
    assert no_export.decision == "reject"  # a rule on an export that was not made fails
    assert "no metric named 'onnx_latency_ms_batch1'" in no_export.results[0].reason
