"""The evaluation gate (design stage 6): does a candidate earn promotion over the champion?

Pure logic on evidence already measured: the candidate's test metrics and per-image
correctness, and the champion's, re-evaluated on the same test images. Every rule of
``gate.rules`` (the classes of :mod:`tlops.rules`, each with its own check) yields
:class:`RuleResult` s naming its threshold and what was observed; :func:`decide` turns them
into a :class:`Verdict`. ``Evidence``, ``RuleResult`` and ``mcnemar`` live in
:mod:`tlops.rules` (the config tree holds the rules) and are re-exported here.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tlops.config import GateConfig
from tlops.rules import Evidence, RuleResult, mcnemar

__all__ = [
    "UNKNOWN_CODE", "Decision", "Evidence", "RuleResult", "Verdict", "decide", "mcnemar",
    "same_as_champion",
]  # fmt: skip

Decision = Literal["promote", "reject", "no_rules", "unchanged"]


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

    0. a failed check made before the gate (an export's parity): rejected;
    1. no rules configured: nothing is promoted;
    2. same data, config and code as the champion: nothing to promote (a copy);
    3. every rule in order: rules on the candidate alone always; rules against the champion
       (change, significance, per-class) skipped without a champion, failed when the label
       sets differ; a rule whose metric is missing fails;
    4. promote when no rule failed.
    """
    version = champion.version if champion else None
    checks_failed = [c for c in candidate.checks if c.passed is False]
    if checks_failed:
        return Verdict(
            decision="reject", results=list(candidate.checks), champion_version=version,
            reason="failed: " + "; ".join(f"{c.rule} ({c.observed})" for c in checks_failed),
        )  # fmt: skip
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
    results = list(candidate.checks)
    results += [result for rule in gate.rules for result in rule.evaluate(candidate, champion)]
    failed = [r for r in results if r.passed is False]
    if failed:
        return Verdict(
            decision="reject", results=results, champion_version=version,
            reason="failed: " + "; ".join(f"{r.rule} ({r.observed})" for r in failed),
        )  # fmt: skip
    why = "all rules passed" + ("" if champion else " (no champion yet: change rules skipped)")
    return Verdict(decision="promote", results=results, champion_version=version, reason=why)
