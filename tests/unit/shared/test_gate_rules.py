"""Gate rules as a discriminated union: every kind's check passes and fails, a missing metric
fails every kind, and the YAML of ``gate.rules`` (and today's keys) loads to the same rules."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import TypeAdapter

from tlops.config import GateConfig, config_schema, dump_config, load_config
from tlops.decision.gate import Evidence, decide, mcnemar
from tlops.errors import ConfigError
from tlops.rules import GateRule, Rule

ROOT = Path(__file__).resolve().parents[3]
#: Every rule class of the union, found by introspection (a new kind is covered automatically).
KINDS: dict[str, type[Rule]] = {
    cls.model_fields["kind"].default: cls for cls in get_args(get_args(GateRule)[0])
}


def ev(
    acc: float = 0.9, correct: list[bool] | None = None, version: str | None = None,
    **extra: float,
) -> Evidence:  # fmt: skip
    """Evidence of a two-class model."""
    metrics = {"test_accuracy": acc, "test_recall_a": 0.9, "test_recall_b": 0.9, **extra}
    return Evidence(
        metrics=metrics, correct=correct if correct is not None else [True], classes=["a", "b"],
        fingerprint=f"fp-{acc}-{version}", version=version,
    )  # fmt: skip


TEN_TEN = [True] * 10 + [False] * 10
#: kind -> (the rule as YAML writes it, (candidate, champion) passing, the same failing).
CASES: dict[str, tuple[dict[str, Any], tuple[Evidence, Evidence], tuple[Evidence, Evidence]]] = {
    "value": (
        {"kind": "value", "metric": "test_accuracy", "min": 0.8},
        (ev(0.9), ev(0.5, version="1")),
        (ev(0.7), ev(0.5, version="1")),
    ),
    "change": (
        {"kind": "change", "metric": "test_accuracy", "min_delta": 0.0},
        (ev(0.9), ev(0.8, version="1")),
        (ev(0.7), ev(0.8, version="1")),
    ),
    "mcnemar": (
        {"kind": "mcnemar", "p_value": 0.05},
        (ev(0.95, [True] * 19 + [False]), ev(0.5, TEN_TEN, version="1")),
        (ev(0.55, [True] * 11 + [False] * 9), ev(0.5, TEN_TEN, version="1")),
    ),
    "recall_drop": (
        {"kind": "recall_drop", "max_drop": 0.05},
        (ev(0.9, test_recall_a=0.88), ev(0.8, version="1")),
        (ev(0.9, test_recall_a=0.8), ev(0.8, version="1")),
    ),
}


def rule_of(kind: str) -> Rule:
    """The example rule of ``kind``, validated through the union as a config would be."""
    assert kind in CASES, f"gate rule kind {kind!r} has no case in CASES: add its test"
    rule = TypeAdapter(GateRule).validate_python(CASES[kind][0])
    assert isinstance(rule, KINDS[kind])
    return rule


def test_every_kind_of_the_union_has_a_case() -> None:
    assert set(KINDS) == set(CASES)
    assert len(KINDS) == len(get_args(get_args(GateRule)[0]))  # kinds are distinct


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_passes_and_fails_its_check(kind: str) -> None:
    rule = rule_of(kind)
    gate = GateConfig(rules=[rule])
    passing, failing = CASES[kind][1], CASES[kind][2]
    good = decide(gate, *passing)
    assert good.passed, good.markdown()
    assert good.results and all(r.passed and r.kind == kind for r in good.results)
    bad = decide(gate, *failing)
    assert bad.decision == "reject", bad.markdown()
    assert bad.failed_rules and all(r.kind == kind for r in bad.failed_rules)
    assert rule.name in bad.markdown() or kind == "recall_drop"  # (per class: named by class)
    assert bad.failed_rules[0].rule in bad.reason


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_fails_with_its_reason_when_its_metric_is_missing(kind: str) -> None:
    rule = rule_of(kind)
    empty = Evidence(metrics={}, correct=[], classes=["a", "b"], fingerprint="x")
    champion = Evidence(metrics={}, correct=[], classes=["a", "b"], fingerprint="y", version="1")
    results = rule.evaluate(empty, champion)
    assert results and all(r.passed is False and r.reason for r in results), results
    assert decide(GateConfig(rules=[rule]), empty, champion).decision == "reject"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_champion_rules_skip_without_a_champion_and_value_rules_do_not(kind: str) -> None:
    rule = rule_of(kind)
    (result, *_) = rule.evaluate(CASES[kind][1][0], None)
    if kind == "value":
        assert result.passed is True
    else:
        assert result.passed is None and result.reason == "no champion yet"
        assert (result.rule, result.threshold, result.observed) == (rule.name, "-", "-")
        other = Evidence(metrics={}, correct=[True], classes=["a", "c"], version="1")
        (refused,) = rule.evaluate(CASES[kind][1][0], other)
        assert refused.passed is False and "label sets differ" in refused.reason


def test_rules_yaml_loads_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "gate.yaml"
    rules = ", ".join(json.dumps(case[0]) for case in CASES.values())
    path.write_text(f"gate:\n  rules: [{rules}]\n", encoding="utf-8")
    cfg = load_config(path)
    assert [r.kind for r in cfg.gate.rules] == list(CASES)
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg), encoding="utf-8")
    assert load_config(again) == cfg
    assert "discriminator" in json.dumps(config_schema())  # `tlops schema` names the kinds


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("gate.rules=[{kind: valu, metric: test_accuracy, min: 0}]", "gate.rules.0"),
        ("gate.rules=[{metric: test_accuracy, min: 0}]", "gate.rules.0"),
        ("gate.rules=[{kind: value, metric: test_accuracy}]", "gate.rules.0.value"),
        ("gate.rules=[{kind: mcnemar, p_value: 1.5}]", "gate.rules.0.mcnemar.p_value"),
        ("gate.rules=[{kind: change, metric: a, direction: up}]", "gate.rules.0.change.direction"),
        ("gate.rules=3", "gate.rules"),
        ("gate.max_recall_drop=2", "gate.max_recall_drop"),
    ],
)
def test_a_bad_rule_is_named(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_todays_keys_load_as_the_same_rules_in_the_same_order() -> None:
    legacy = GateConfig.model_validate(
        {"max_recall_drop": 0.05, "mcnemar_p": 0.05, "changes": [{"metric": "test_accuracy"}],
         "values": [{"metric": "test_accuracy", "min": 0.8}]}
    )  # fmt: skip
    assert [r.kind for r in legacy.rules] == ["value", "change", "mcnemar", "recall_drop"]
    new = GateConfig.model_validate(
        {"rules": [{"kind": "value", "metric": "test_accuracy", "min": 0.8},
                   {"kind": "change", "metric": "test_accuracy"},
                   {"kind": "mcnemar", "p_value": 0.05}, {"kind": "recall_drop", "max_drop": 0.05}]}
    )  # fmt: skip
    assert legacy == new
    assert GateConfig.model_validate({"mcnemar_p": None, "values": []}) == GateConfig()


def test_a_todays_key_replaces_the_rules_of_its_kind_only() -> None:
    demo = ROOT / "configs" / "demo.yaml"  # rules: a value rule, then a change rule
    assert [r.kind for r in load_config(demo).gate.rules] == ["value", "change"]
    only_change = load_config(demo, ["gate.values=[]"]).gate.rules
    assert [r.kind for r in only_change] == ["change"]
    assert not load_config(demo, ["gate.values=[]", "gate.changes=[]"]).gate.configured
    assert not load_config(demo, ["gate.rules=[]"]).gate.configured
    swapped = load_config(demo, ["gate.values=[{metric: test_macro_f1, min: 0.5}]"]).gate.rules
    assert [(r.kind, getattr(r, "metric", None)) for r in swapped] == [
        ("value", "test_macro_f1"), ("change", "test_accuracy"),
    ]  # fmt: skip
    added = load_config(demo, ["gate.mcnemar_p=0.01"]).gate.rules
    assert [r.kind for r in added] == ["value", "change", "mcnemar"]


def test_mcnemar_p_is_scipys_exact_binomial_test() -> None:
    from scipy.stats import binomtest

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 400)
        new = [rng.random() < 0.7 for _ in range(n)]
        old = [rng.random() < 0.6 for _ in range(n)]
        b, c, p = mcnemar(new, old)
        expected = 1.0 if b + c == 0 else binomtest(c, b + c, 0.5).pvalue
        assert p == pytest.approx(expected, rel=1e-9, abs=1e-300), (b, c)
