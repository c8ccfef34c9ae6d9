"""The gate's rules (design stage 6): one class per kind, each with its own check.

A rule is a config value (``gate.rules`` in YAML, told apart by its ``kind``) that knows how to
judge the evidence: :meth:`Rule.evaluate` returns one or more :class:`RuleResult`, each naming
its threshold and what was observed. Two families:

- :class:`CandidateRule`: judged on the candidate alone (value thresholds, budgets);
- :class:`ChampionRule`: judged against the champion re-evaluated on the same test images;
  skipped while there is no champion, failed when the two label sets differ.

A new rule is one class here, added to :data:`GateRule`, plus its test; nothing else names the
kinds. A rule whose metric is missing (or not a finite number) fails and says why; it is never
skipped. Shared layer: pydantic and the standard library only, so the config tree can hold the
rules and :mod:`tlops.decision.gate` decides with them.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tlops.safetext import class_metric

#: A p-value limit: strictly between 0 and 1.
PValue = Annotated[float, Field(gt=0.0, lt=1.0)]
#: A recall drop: a fraction between 0 and 1.
RecallDrop = Annotated[float, Field(ge=0.0, le=1.0)]


class RuleResult(BaseModel):
    """One rule's outcome: passed, failed, or skipped (``passed is None``)."""

    model_config = ConfigDict(frozen=True)

    rule: str
    kind: str = Field(description="the rule's kind (``identity``: the copy-of-champion check)")
    threshold: str
    observed: str
    passed: bool | None
    reason: str = ""

    @property
    def status(self) -> str:
        """``pass``, ``FAIL`` or ``skipped``."""
        return "skipped" if self.passed is None else ("pass" if self.passed else "FAIL")


class Evidence(BaseModel):
    """One model measured on the candidate's test split."""

    model_config = ConfigDict(frozen=True)

    metrics: dict[str, float]
    correct: list[bool] = Field(description="per test image, in the test split's order")
    classes: list[str]
    fingerprint: str = Field("", description="data + config + code identity; '' = unknown")
    version: str | None = Field(None, description="registered version (the champion's)")
    checks: list[RuleResult] = Field(
        default_factory=list,
        description="checks made on the candidate before the gate (an export's parity): any "
        "failed one rejects it, whatever the rules",
    )


def _fmt(value: float) -> str:
    """A metric value for a verdict table."""
    return f"{value:.4g}"


class Rule(BaseModel):
    """Base of every gate rule: immutable, unknown keys are errors, ``kind`` tells them apart."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = Field(description="which rule this is (each class narrows it to its Literal)")

    @property
    def name(self) -> str:
        """The rule's name in the verdict."""
        raise NotImplementedError

    def result(
        self, threshold: str, observed: str, passed: bool | None, reason: str = ""
    ) -> RuleResult:
        """A :class:`RuleResult` of this rule, under its name and kind."""
        return RuleResult(
            rule=self.name, kind=self.kind, threshold=threshold, observed=observed,
            passed=passed, reason=reason,
        )  # fmt: skip

    def evaluate(self, candidate: Evidence, champion: Evidence | None) -> list[RuleResult]:
        """This rule's results on the evidence (``champion`` None: no champion yet)."""
        raise NotImplementedError


class CandidateRule(Rule):
    """A rule on the candidate alone: judged with or without a champion."""

    def evaluate(self, candidate: Evidence, champion: Evidence | None) -> list[RuleResult]:
        """:meth:`check` on the candidate."""
        return self.check(candidate)

    def check(self, candidate: Evidence) -> list[RuleResult]:
        """The rule's results on ``candidate``."""
        raise NotImplementedError


class ChampionRule(Rule):
    """A rule against the champion: skipped without one, failed when the label sets differ."""

    def evaluate(self, candidate: Evidence, champion: Evidence | None) -> list[RuleResult]:
        """:meth:`check` against ``champion``, once there is one with the same label set."""
        if champion is None:
            return [self.result("-", "-", None, "no champion yet")]
        if champion.classes != candidate.classes:
            reason = (
                f"label sets differ: champion {champion.classes} vs candidate {candidate.classes}"
            )
            return [self.result("-", "-", False, reason)]
        return self.check(candidate, champion)

    def check(self, candidate: Evidence, champion: Evidence) -> list[RuleResult]:
        """The rule's results on ``candidate`` against ``champion`` (same label set)."""
        raise NotImplementedError


class ValueRule(CandidateRule):
    """A threshold on one metric of the candidate, e.g. ``{kind: value, metric: test_accuracy,
    min: 0.9}``.

    Budgets are value rules too: ``{kind: value, metric: latency_ms_batch1, max: 20}``,
    ``{kind: value, metric: model_size_mb, max: 10}``.
    """

    kind: Literal["value"] = "value"
    metric: str = Field(min_length=1, description="a logged metric, e.g. test_accuracy")
    min: float | None = Field(None, description="pass when value >= min")
    max: float | None = Field(None, description="pass when value <= max")

    @model_validator(mode="after")
    def _one_bound(self) -> ValueRule:
        """A rule needs a bound."""
        if self.min is None and self.max is None:
            raise ValueError("a value rule needs min or max")
        return self

    @property
    def name(self) -> str:
        """The metric's name."""
        return self.metric

    def check(self, candidate: Evidence) -> list[RuleResult]:
        """``metric >= min`` and/or ``metric <= max`` on the candidate."""
        bounds = [f">= {_fmt(self.min)}"] if self.min is not None else []
        bounds += [f"<= {_fmt(self.max)}"] if self.max is not None else []
        threshold = " and ".join(bounds)
        metrics = candidate.metrics
        if self.metric not in metrics:
            known = ", ".join(sorted(metrics)[:8])
            why = f"no metric named {self.metric!r} (known: {known}...)"
            return [self.result(threshold, "missing", False, why)]
        value = metrics[self.metric]
        if not math.isfinite(value):
            return [
                self.result(threshold, _fmt(value), False, f"{self.metric} is not a finite number")
            ]
        ok = (self.min is None or value >= self.min) and (self.max is None or value <= self.max)
        return [self.result(threshold, _fmt(value), ok)]


class ChangeRule(ChampionRule):
    """A change against the champion re-evaluated on the same test split.

    ``delta`` = candidate - champion (``direction: higher``) or champion - candidate
    (``direction: lower``, e.g. latency), divided by the champion's value when ``relative``.
    Pass when delta >= ``min_delta``: 0 = no worse, 0.01 = at least one point better,
    -0.01 = at most one point worse.

    A relative rule against a champion value of exactly 0 has no ratio to take: it compares
    the absolute delta with ``min_delta`` instead (the verdict says so), so a worse candidate
    still fails. A metric missing on either side, or not a finite number, fails the rule.
    """

    kind: Literal["change"] = "change"
    metric: str = Field(min_length=1)
    direction: Literal["higher", "lower"] = "higher"
    min_delta: float = 0.0
    relative: bool = False

    @property
    def name(self) -> str:
        """``<metric> vs champion``."""
        return f"{self.metric} vs champion"

    def check(self, candidate: Evidence, champion: Evidence) -> list[RuleResult]:
        """The candidate's change against the champion on the metric."""
        unit = " (relative)" if self.relative else ""
        sign = "+" if self.direction == "higher" else "-"
        threshold = f"{sign}delta >= {_fmt(self.min_delta)}{unit}"
        missing = [who for who, e in (("candidate", candidate), ("champion", champion))
                   if self.metric not in e.metrics]  # fmt: skip
        if missing:
            why = f"{' and '.join(missing)} has no metric {self.metric!r}"
            return [self.result(threshold, "missing", False, why)]
        new, old = candidate.metrics[self.metric], champion.metrics[self.metric]
        if not (math.isfinite(new) and math.isfinite(old)):
            why = f"{self.metric} is not a finite number on both sides"
            return [self.result(threshold, f"{_fmt(new)} vs {_fmt(old)}", False, why)]
        delta = new - old if self.direction == "higher" else old - new
        reason = ""
        if self.relative and old == 0:
            reason = "champion value is 0: absolute delta compared"
        elif self.relative:
            delta = delta / abs(old)
        observed = f"{_fmt(new)} vs {_fmt(old)} (delta {delta:+.4g})"
        return [self.result(threshold, observed, delta >= self.min_delta, reason)]


def mcnemar(candidate: list[bool], champion: list[bool]) -> tuple[int, int, float]:
    """Exact McNemar test on paired correctness: (champion-only right, candidate-only right, p).

    The two-sided p-value of the exact binomial test on the discordant pairs (p = 0.5): twice
    the smaller tail, at most 1, computed with integers (the value of scipy's ``binomtest``).
    """
    if len(candidate) != len(champion):
        raise ValueError("paired predictions must cover the same images")
    b = sum(1 for new, old in zip(candidate, champion, strict=True) if old and not new)
    c = sum(1 for new, old in zip(candidate, champion, strict=True) if new and not old)
    n, low = b + c, min(b, c)
    if n == 0 or 2 * low == n:
        return b, c, 1.0
    tail, term = 0, 1  # sum of C(n, i) for i <= low, with term = C(n, i)
    for i in range(low + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return b, c, min(1.0, 2 * tail / 2**n)


class McNemarRule(ChampionRule):
    """The candidate must be significantly better than the champion on the same test images:
    an exact McNemar test on paired predictions, ``{kind: mcnemar, p_value: 0.05}``.

    Without paired predictions on both sides, or with predictions of different lengths
    (not the same images), the rule fails and says why.
    """

    kind: Literal["mcnemar"] = "mcnemar"
    p_value: PValue = Field(
        description="pass when p < p_value and the candidate wins more of the discordant pairs"
    )

    @property
    def name(self) -> str:
        """What is tested."""
        return "McNemar (paired test predictions)"

    def check(self, candidate: Evidence, champion: Evidence) -> list[RuleResult]:
        """The McNemar test of the candidate's paired predictions against the champion's."""
        threshold = f"p < {self.p_value:g} and candidate wins more pairs"
        n_new, n_old = len(candidate.correct), len(champion.correct)
        if not n_new or not n_old or n_new != n_old:
            why = (
                "no paired predictions" if not n_new or not n_old
                else "paired predictions cover different images"
            )  # fmt: skip
            return [
                self.result(
                    threshold, "missing", False, f"{why}: candidate {n_new}, champion {n_old}"
                )
            ]
        b, c, p = mcnemar(candidate.correct, champion.correct)
        observed = f"p = {p:.4g}; only candidate right {c}, only champion right {b}"
        return [self.result(threshold, observed, p < self.p_value and c > b)]


class RecallDropRule(ChampionRule):
    """No class may lose more recall than ``max_drop`` against the champion,
    ``{kind: recall_drop, max_drop: 0.05}``: one result per class.

    Recalls are looked up under :func:`tlops.safetext.class_metric`, the key they were
    written under. A class whose recall is missing (or not a finite number) on either side
    fails its rule; no classes at all fail the one rule.
    """

    kind: Literal["recall_drop"] = "recall_drop"
    max_drop: RecallDrop = Field(description="largest recall a class may lose vs the champion")

    @property
    def name(self) -> str:
        """The rule as a whole (each class gets its own result)."""
        return "recall per class vs champion"

    def check(self, candidate: Evidence, champion: Evidence) -> list[RuleResult]:
        """One result per class of the candidate."""
        threshold = f"drop <= {_fmt(self.max_drop)}"
        if not candidate.classes:
            return [self.result(threshold, "missing", False, "the candidate has no classes")]
        out = []
        for name in candidate.classes:
            key, rule = class_metric("recall", name), f"recall of class {name} vs champion"
            missing = [who for who, e in (("candidate", candidate), ("champion", champion))
                       if not math.isfinite(e.metrics.get(key, math.nan))]  # fmt: skip
            if missing:
                why = f"{' and '.join(missing)} has no value for {key!r}"
                observed, passed = "missing", False
            else:
                new, old = candidate.metrics[key], champion.metrics[key]
                why, observed, passed = (
                    "",
                    f"{_fmt(new)} vs {_fmt(old)}",
                    old - new <= self.max_drop,
                )
            result = RuleResult(
                rule=rule, kind=self.kind, threshold=threshold, observed=observed, passed=passed,
                reason=why,
            )  # fmt: skip
            out.append(result)
        return out


#: Every kind of gate rule, told apart by ``kind`` (a new rule: one class, added here).
GateRule = Annotated[
    ValueRule | ChangeRule | McNemarRule | RecallDropRule, Field(discriminator="kind")
]
