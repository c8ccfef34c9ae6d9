"""The evaluation gate (design stage 6): does a candidate earn promotion over the champion?

Pure logic on evidence already measured: the candidate's test metrics and per-image
correctness, and the champion's, re-evaluated on the same test images. Every rule yields a
:class:`RuleResult` naming its threshold and what was observed; :func:`decide` turns them into
a :class:`Verdict`.
"""

from __future__ import annotations

import json
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tlops.config import ChangeRule, GateConfig, ValueRule
from tlops.safetext import class_metric

Decision = Literal["promote", "reject", "no_rules", "unchanged"]


class Evidence(BaseModel):
    """One model measured on the candidate's test split."""

    model_config = ConfigDict(frozen=True)

    metrics: dict[str, float]
    correct: list[bool] = Field(description="per test image, in the test split's order")
    classes: list[str]
    fingerprint: str = Field("", description="data + config + code identity; '' = unknown")
    version: str | None = Field(None, description="registered version (the champion's)")


class RuleResult(BaseModel):
    """One rule's outcome: passed, failed, or skipped (``passed is None``)."""

    model_config = ConfigDict(frozen=True)

    rule: str
    kind: Literal["value", "change", "mcnemar", "recall_drop", "identity"]
    threshold: str
    observed: str
    passed: bool | None
    reason: str = ""

    @property
    def status(self) -> str:
        """``pass``, ``FAIL`` or ``skipped``."""
        return "skipped" if self.passed is None else ("pass" if self.passed else "FAIL")


class Verdict(BaseModel):
    """The gate's decision with every rule's result."""

    model_config = ConfigDict(frozen=True)

    decision: Decision
    results: list[RuleResult]
    champion_version: str | None
    reason: str

    @property
    def passed(self) -> bool:
        """Whether the candidate is promoted."""
        return self.decision == "promote"

    @property
    def failed_rules(self) -> list[RuleResult]:
        """The rules that failed."""
        return [r for r in self.results if r.passed is False]

    def markdown(self) -> str:
        """A Markdown table of the rules and the decision."""
        champion = f"v{self.champion_version}" if self.champion_version else "none"
        lines = [
            f"**gate: {self.decision}** ({self.reason}); champion compared: {champion}",
            "",
            "| rule | threshold | observed | result |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r.rule} | {r.threshold} | {r.observed} | {r.status}"
            f"{' (' + r.reason + ')' if r.reason else ''} |"
            for r in self.results
        ]
        return "\n".join(lines)

    def to_json(self) -> str:
        """The verdict as JSON (logged as an artifact)."""
        return json.dumps(self.model_dump(mode="json"), indent=2)


def _fmt(value: float) -> str:
    """A metric value for a verdict table."""
    return f"{value:.4g}"


def value_rule(rule: ValueRule, metrics: dict[str, float]) -> RuleResult:
    """``metric >= min`` and/or ``metric <= max`` on the candidate."""
    bounds = [f">= {_fmt(rule.min)}"] if rule.min is not None else []
    bounds += [f"<= {_fmt(rule.max)}"] if rule.max is not None else []
    threshold = " and ".join(bounds)
    if rule.metric not in metrics:
        return RuleResult(
            rule=rule.metric, kind="value", threshold=threshold, observed="missing", passed=False,
            reason=f"no metric named {rule.metric!r} (known: {', '.join(sorted(metrics)[:8])}...)",
        )  # fmt: skip
    value = metrics[rule.metric]
    if not math.isfinite(value):
        return RuleResult(
            rule=rule.metric, kind="value", threshold=threshold, observed=_fmt(value),
            passed=False, reason=f"{rule.metric} is not a finite number",
        )  # fmt: skip
    ok = (rule.min is None or value >= rule.min) and (rule.max is None or value <= rule.max)
    return RuleResult(
        rule=rule.metric, kind="value", threshold=threshold, observed=_fmt(value), passed=ok
    )


def change_rule(rule: ChangeRule, candidate: Evidence, champion: Evidence) -> RuleResult:
    """The candidate's change against the champion on one metric.

    A metric missing on either side, or not a finite number, fails the rule. A relative rule
    against a champion value of 0 compares the absolute delta with ``min_delta`` (and says so
    in ``reason``): there is no ratio to take, and a worse candidate must still fail.
    """
    unit = " (relative)" if rule.relative else ""
    sign = "+" if rule.direction == "higher" else "-"
    name = f"{rule.metric} vs champion"
    threshold = f"{sign}delta >= {_fmt(rule.min_delta)}{unit}"
    missing = [who for who, e in (("candidate", candidate), ("champion", champion))
               if rule.metric not in e.metrics]  # fmt: skip
    if missing:
        return RuleResult(
            rule=name, kind="change", threshold=threshold, observed="missing", passed=False,
            reason=f"{' and '.join(missing)} has no metric {rule.metric!r}",
        )  # fmt: skip
    new, old = candidate.metrics[rule.metric], champion.metrics[rule.metric]
    if not (math.isfinite(new) and math.isfinite(old)):
        return RuleResult(
            rule=name, kind="change", threshold=threshold, observed=f"{_fmt(new)} vs {_fmt(old)}",
            passed=False, reason=f"{rule.metric} is not a finite number on both sides",
        )  # fmt: skip
    delta = new - old if rule.direction == "higher" else old - new
    reason = ""
    if rule.relative and old == 0:
        reason = "champion value is 0: absolute delta compared"
    elif rule.relative:
        delta = delta / abs(old)
    observed = f"{_fmt(new)} vs {_fmt(old)} (delta {delta:+.4g})"
    return RuleResult(
        rule=name, kind="change", threshold=threshold, observed=observed,
        passed=delta >= rule.min_delta, reason=reason,
    )  # fmt: skip


def mcnemar(candidate: list[bool], champion: list[bool]) -> tuple[int, int, float]:
    """Exact McNemar test on paired correctness: (champion-only right, candidate-only right, p).

    The two-sided p-value of the binomial test on the discordant pairs (p = 0.5).
    """
    from scipy.stats import binomtest

    if len(candidate) != len(champion):
        raise ValueError("paired predictions must cover the same images")
    b = sum(1 for new, old in zip(candidate, champion, strict=True) if old and not new)
    c = sum(1 for new, old in zip(candidate, champion, strict=True) if new and not old)
    p = 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5).pvalue)
    return b, c, p


def mcnemar_rule(p_limit: float, candidate: Evidence, champion: Evidence) -> RuleResult:
    """The candidate must be significantly better than the champion on the same images.

    Without paired predictions on both sides, or with predictions of different lengths
    (not the same images), the rule fails and says why.
    """
    rule = "McNemar (paired test predictions)"
    threshold = f"p < {p_limit:g} and candidate wins more pairs"
    n_new, n_old = len(candidate.correct), len(champion.correct)
    if not n_new or not n_old or n_new != n_old:
        why = (
            "no paired predictions" if not n_new or not n_old
            else "paired predictions cover different images"
        )  # fmt: skip
        return RuleResult(
            rule=rule, kind="mcnemar", threshold=threshold, observed="missing", passed=False,
            reason=f"{why}: candidate {n_new}, champion {n_old}",
        )  # fmt: skip
    b, c, p = mcnemar(candidate.correct, champion.correct)
    return RuleResult(
        rule=rule,
        kind="mcnemar",
        threshold=threshold,
        observed=f"p = {p:.4g}; only candidate right {c}, only champion right {b}",
        passed=p < p_limit and c > b,
    )


def recall_rules(max_drop: float, candidate: Evidence, champion: Evidence) -> list[RuleResult]:
    """No class may lose more than ``max_drop`` recall against the champion.

    Recalls are looked up under :func:`tlops.safetext.class_metric`, the key they were
    written under. A class whose recall is missing (or not a finite number) on either side
    fails its rule; no classes at all fail the one rule.
    """
    threshold = f"drop <= {_fmt(max_drop)}"
    if not candidate.classes:
        return [
            RuleResult(rule="recall per class vs champion", kind="recall_drop",
                       threshold=threshold, observed="missing", passed=False,
                       reason="the candidate has no classes")
        ]  # fmt: skip
    out = []
    for name in candidate.classes:
        key, rule = class_metric("recall", name), f"recall of class {name} vs champion"
        missing = [who for who, e in (("candidate", candidate), ("champion", champion))
                   if not math.isfinite(e.metrics.get(key, math.nan))]  # fmt: skip
        if missing:
            out.append(RuleResult(
                rule=rule, kind="recall_drop", threshold=threshold, observed="missing",
                passed=False, reason=f"{' and '.join(missing)} has no value for {key!r}",
            ))  # fmt: skip
            continue
        new, old = candidate.metrics[key], champion.metrics[key]
        out.append(RuleResult(
            rule=rule, kind="recall_drop", threshold=threshold,
            observed=f"{_fmt(new)} vs {_fmt(old)}", passed=old - new <= max_drop,
        ))  # fmt: skip
    return out


def _champion_rules(
    gate: GateConfig, candidate: Evidence, champion: Evidence | None
) -> list[RuleResult]:
    """Change, significance and per-class rules; skipped without a champion, refused when the
    label sets differ."""
    wanted: list[tuple[str, str]] = [(f"{r.metric} vs champion", "change") for r in gate.changes]
    if gate.mcnemar_p is not None:
        wanted.append(("McNemar (paired test predictions)", "mcnemar"))
    if gate.max_recall_drop is not None:
        wanted.append(("recall per class vs champion", "recall_drop"))
    if champion is None or not wanted:
        return [
            RuleResult(rule=rule, kind=kind, threshold="-", observed="-", passed=None,
                       reason="no champion yet")
            for rule, kind in wanted
        ]  # fmt: skip
    if champion.classes != candidate.classes:
        reason = f"label sets differ: champion {champion.classes} vs candidate {candidate.classes}"
        return [
            RuleResult(rule=rule, kind=kind, threshold="-", observed="-", passed=False,
                       reason=reason)
            for rule, kind in wanted
        ]  # fmt: skip
    out = [change_rule(rule, candidate, champion) for rule in gate.changes]
    if gate.mcnemar_p is not None:
        out.append(mcnemar_rule(gate.mcnemar_p, candidate, champion))
    if gate.max_recall_drop is not None:
        out += recall_rules(gate.max_recall_drop, candidate, champion)
    return out


#: The code part of a fingerprint (``<inputs>.<code>``) whose source hash is unknown.
UNKNOWN_CODE = "unknown"


def same_as_champion(candidate: str, champion: str) -> bool:
    """Whether fingerprints (``<inputs>.<code>``, :func:`tlops.jobs.gate.change_fingerprint`)
    make the candidate a copy of the champion: equal, or the same data and config while the
    code state of either is unknown (a tie that cannot be told apart is never promoted).
    '' (no fingerprint) is never a copy."""
    if not candidate or not champion:
        return False
    inputs, _, code = candidate.partition(".")
    champion_inputs, _, champion_code = champion.partition(".")
    unknown = UNKNOWN_CODE in (code, champion_code)
    return candidate == champion or (unknown and inputs == champion_inputs)


def decide(gate: GateConfig, candidate: Evidence, champion: Evidence | None) -> Verdict:
    """The verdict on ``candidate`` against ``champion`` (None: no champion yet).

    1. no rules configured: nothing is promoted;
    2. same data, config and code as the champion: nothing to promote (a copy);
    3. value rules on the candidate; change / significance / per-class rules on both (skipped
       without a champion, failed when the label sets differ);
    4. promote when no rule failed.
    """
    version = champion.version if champion else None
    if not gate.configured:
        return Verdict(
            decision="no_rules", results=[], champion_version=version,
            reason="no gate rules configured: nothing is promoted",
        )  # fmt: skip
    if champion and same_as_champion(candidate.fingerprint, champion.fingerprint):
        same = RuleResult(
            rule="same data, config and code as champion", kind="identity", threshold="differ",
            observed=f"fingerprint {candidate.fingerprint[:12]}", passed=False,
        )  # fmt: skip
        return Verdict(
            decision="unchanged", results=[same], champion_version=version,
            reason=f"nothing changed since champion v{version}: not promoting a copy",
        )  # fmt: skip
    results = [value_rule(rule, candidate.metrics) for rule in gate.values]
    results += _champion_rules(gate, candidate, champion)
    failed = [r for r in results if r.passed is False]
    if failed:
        return Verdict(
            decision="reject", results=results, champion_version=version,
            reason="failed: " + "; ".join(f"{r.rule} ({r.observed})" for r in failed),
        )  # fmt: skip
    why = "all rules passed" + ("" if champion else " (no champion yet: change rules skipped)")
    return Verdict(decision="promote", results=results, champion_version=version, reason=why)
