"""Stage 7, the register job: register a candidate whose gate passed and move the alias.

Promotion is a small state machine (design section 7b), safe at every step:

1. reconcile what an earlier run of this model left half done (:mod:`tlops.jobs.reconcile`);
2. just before registering, re-read the champion alias; if another flow moved it since the
   candidate was judged, judge it again against the new champion;
3. register the version, tagged ``tlops.state=pending`` with its owner (host:pid);
4. re-read the alias once more (same re-judging), then tag the gate evidence;
5. write the ledger ``intent`` (alias, from, to, why);
6. move the alias;
7. confirm the ledger entry;
8. tag the version ``complete``. Then, best effort (a failure is a warning, the promotion
   stands): ``previous`` to the old champion, the description to the new card.

A failure before step 6 deletes the version (no alias call was issued). A failure from step 6
on restores the old alias, aborts the ledger entry and marks the version ``aborted``: a version
is never deleted after its alias call was issued (the next reconcile removes it once no alias
holds it). A killed process leaves a state that the next run's reconcile settles.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from tlops.adapters import registry, tracking
from tlops.config import RunConfig, config_sha256, dump_config
from tlops.decision.gate import Verdict
from tlops.errors import ServiceError, TlopsError
from tlops.jobs.context import RunContext
from tlops.jobs.gate import GateOutcome, Judge, judge_against
from tlops.jobs.lineage import lineage_card
from tlops.jobs.reconcile import reconcile_locked


class PromotionResult(BaseModel):
    """What stage 7 did."""

    model_config = ConfigDict(frozen=True)

    verdict: Verdict
    model_name: str
    version: str | None = None
    previous_version: str | None = None
    rejudged: int = 0
    warnings: list[str] = []
    reconciled: list[str] = []

    def line(self) -> str:
        """One line for the summary (warnings after it, separated by '; ')."""
        if self.version:
            before = f" (previous: v{self.previous_version})" if self.previous_version else ""
            text = f"promoted: {self.model_name} v{self.version} is champion{before}"
        else:
            text = f"not promoted ({self.verdict.decision}): {self.verdict.reason}"
        return "; ".join([text, *(f"warning: {w}" for w in self.warnings)])


def lineage_tags(
    run_tags: dict[str, str], cfg: RunConfig, metrics: dict[str, float], verdict: Verdict,
    fingerprint: str,
) -> dict[str, str]:  # fmt: skip
    """The lineage record of design section 4, as version tags."""
    keep = {k: v for k, v in run_tags.items() if not k.startswith("mlflow.")}
    chosen = ("test_accuracy", "test_macro_f1", "latency_ms_batch1", "model_size_mb")
    return {
        **keep,
        **{f"metric.{k}": f"{metrics[k]:.6g}" for k in chosen if k in metrics},
        "gate.decision": verdict.decision,
        "gate.reason": verdict.reason,
        "gate.champion_compared": verdict.champion_version or "none",
        "gate.verdict": verdict.model_dump_json(),
        "config": dump_config(cfg),  # shown on the card; cut (marked) when long
        "config.sha256": config_sha256(cfg),  # of the run's config.yaml artifact (reproduce)
        "tlops.fingerprint": fingerprint,
    }


class _Step:
    """Where the promotion of version ``version`` stands, for undoing it (:meth:`undo`)."""

    def __init__(self, name: str, alias: str, version: str) -> None:
        self.name, self.alias, self.version = name, alias, version
        self.entry: registry.LedgerEntry | None = None
        self.alias_issued = False

    def undo(self, champion: registry.VersionInfo | None, cause: BaseException) -> None:
        """Undo a failed promotion, each part best effort (the original failure is what the
        user sees; what cannot be undone now, the next reconcile settles)."""
        name, alias, version = self.name, self.alias, self.version
        why = f"promotion failed: {str(cause)[:300]}"
        if not self.alias_issued:
            with contextlib.suppress(Exception):
                if self.entry is not None:
                    registry.write_ledger(name, self.entry.settle("aborted", why))
            try:
                registry.delete_version(name, version)
            except Exception:
                with contextlib.suppress(Exception):
                    registry.tag_version(name, version, {registry.STATE_TAG: "aborted"})
            return
        with contextlib.suppress(Exception):
            registry.set_alias(name, alias, champion.version if champion else None)
        with contextlib.suppress(Exception):
            registry.tag_version(name, version, {registry.STATE_TAG: "aborted"})
        with contextlib.suppress(Exception):
            if self.entry is not None:
                registry.write_ledger(name, self.entry.settle("aborted", why + "; alias restored"))


def _after_promotion(
    cfg: RunConfig, version: str, champion: registry.VersionInfo | None, flow_run_id: str,
) -> list[str]:  # fmt: skip
    """``previous`` to the replaced champion and the description to the new card; failures
    are warnings (the promotion already stands; the next reconcile retries both)."""
    name, warnings = cfg.model_name, []
    if champion is not None:
        try:
            registry.fault("previous_alias")
            registry.move_alias(
                name, cfg.registry.previous_alias, champion.version,
                f"replaced as {cfg.registry.champion_alias} by v{version}", flow_run_id,
                champion.run_id,
            )  # fmt: skip
        except TlopsError as exc:
            warnings.append(f"@{cfg.registry.previous_alias} not moved ({exc})")
    try:
        registry.fault("description")
        registry.set_description(name, lineage_card(registry.resolve(f"models:/{name}/{version}")))
    except TlopsError as exc:
        warnings.append(f"description not updated ({exc})")
    return warnings


def promote(
    cfg: RunConfig,
    run_id: str,
    model_uri: str,
    verdict: Verdict,
    judge: Judge,
    tags_for: Callable[[Verdict], dict[str, str]],
    flow_run_id: str,
    max_rejudge: int = 3,
) -> PromotionResult:
    """Register and promote a candidate whose gate passed (the steps of the module docstring)."""
    name, alias = cfg.model_name, cfg.registry.champion_alias
    rejudged = 0

    def still_current(v: Verdict) -> tuple[Verdict, registry.VersionInfo | None]:
        nonlocal rejudged
        current = registry.version_by_alias(name, alias)
        while (current.version if current else None) != v.champion_version:
            if rejudged >= max_rejudge:
                raise ServiceError(f"{name}@{alias} keeps moving: gave up after {rejudged} checks")
            rejudged += 1
            v = judge(current)
            current = registry.version_by_alias(name, alias)
        return v, current

    def rejected(v: Verdict, fixed: list[str]) -> PromotionResult:
        return PromotionResult(verdict=v, model_name=name, rejudged=rejudged, reconciled=fixed)

    with registry.promotion_lock(name):
        fixed = reconcile_locked(name, alias, cfg.registry.previous_alias, lineage_card).actions
        verdict, current = still_current(verdict)
        if not verdict.passed:
            return rejected(verdict, fixed)
        pending = {
            registry.STATE_TAG: "pending", registry.OWNER_TAG: registry.owner(),
            registry.STARTED_TAG: f"{time.time():.0f}",
        }  # fmt: skip
        info = registry.register(name, run_id, model_uri, {**tags_for(verdict), **pending}, "")
        step = _Step(name, alias, info.version)
        try:
            registry.fault("after_register")
            verdict, current = still_current(verdict)
            if not verdict.passed:
                registry.delete_version(name, info.version)
                return rejected(verdict, fixed)
            gate_tags = {k: v for k, v in tags_for(verdict).items() if k.startswith("gate.")}
            registry.tag_version(name, info.version, gate_tags)
            registry.fault("after_gate_tags")
            step.entry = registry.intend_move(
                name, alias, info.version, current.version if current else None,
                f"gate passed: {verdict.reason}", flow_run_id, run_id,
            )  # fmt: skip
            registry.fault("after_intent")
            step.alias_issued = True
            registry.set_alias(name, alias, info.version)
            registry.fault("after_alias")
            registry.write_ledger(name, step.entry.settle("confirmed"))
            registry.fault("after_ledger")
            registry.tag_version(name, info.version, {registry.STATE_TAG: "complete"})
            registry.fault("after_complete")
        except BaseException as exc:
            step.undo(current, exc)
            raise
        warnings = _after_promotion(cfg, info.version, current, flow_run_id)
    return PromotionResult(
        verdict=verdict, model_name=name, version=info.version,
        previous_version=current.version if current else None, rejudged=rejudged,
        warnings=warnings, reconciled=fixed,
    )  # fmt: skip


def register_candidate(ctx: RunContext, gate: GateOutcome, model_uri: str) -> PromotionResult:
    """Stage 7 for the context's run: register and promote its model when the gate passed.

    The gate's evidence is reused (re-judged only if the champion moved); the version carries
    the run's tags (read now, with the gate's) as its lineage record. The run is tagged with
    the version registered, or with the final decision when none was.
    """
    cfg, candidate = ctx.config, gate.candidate
    if not gate.verdict.passed:
        return PromotionResult(verdict=gate.verdict, model_name=cfg.model_name)
    run_tags = tracking.get_tags(ctx.run_id)

    def tags_for(final: Verdict) -> dict[str, str]:
        return lineage_tags(run_tags, cfg, candidate.metrics, final, candidate.fingerprint)

    result = promote(
        cfg, ctx.run_id, model_uri, gate.verdict, judge_against(ctx, candidate), tags_for,
        ctx.flow_run_id,
    )  # fmt: skip
    if result.version:
        tracking.set_tags(ctx.run_id, {"registered.version": result.version})
    else:
        final = {"gate.decision": result.verdict.decision, "gate.passed": "false"}
        tracking.set_tags(ctx.run_id, final)
    return result
