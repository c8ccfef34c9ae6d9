"""Stage 7 as Prefect tasks: reconcile the registry, then register and promote."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tlops.config import RunConfig
from tlops.jobs.context import RunContext
from tlops.jobs.gate import GateOutcome
from tlops.jobs.lineage import lineage_card
from tlops.jobs.reconcile import reconcile
from tlops.jobs.register import PromotionResult, register_candidate


@task(name="reconcile-registry", cache_policy=NO_CACHE)
def reconcile_task(config: RunConfig) -> list[str]:
    """Settle what an earlier run of this model left half promoted (before anything reads the
    champion); returns what was done, one line each."""
    done = reconcile(
        config.model_name, config.registry.champion_alias, config.registry.previous_alias,
        lineage_card,
    )  # fmt: skip
    for line in done.lines():
        get_run_logger().warning(line)
    return done.actions


@task(name="register", cache_policy=NO_CACHE)
def register_task(ctx: RunContext, gate: GateOutcome, model_uri: str) -> PromotionResult:
    """Register a version and move the champion alias, only when the gate passed
    (:func:`tlops.jobs.register.register_candidate`)."""
    result = register_candidate(ctx, gate, model_uri)
    if gate.verdict.passed:
        get_run_logger().info(result.line())
    return result
