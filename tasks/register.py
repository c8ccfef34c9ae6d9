"""Stage 7 as Prefect tasks: reconcile the registry, then register and promote."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tlops.adapters import tracking
from tlops.config import RunConfig
from tlops.data.version import DataVersion
from tlops.decision.gate import Verdict
from tlops.jobs.gate import candidate_from_run, judge_against
from tlops.jobs.lineage import lineage_card
from tlops.jobs.reconcile import reconcile
from tlops.jobs.register import PromotionResult, lineage_tags, promote
from tlops.jobs.train import EvalSummary, TrainSummary
from tlops.jobs.validate import ManifestInfo


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
def register_task(
    config: RunConfig, verdict: Verdict, trained: TrainSummary, evaluated: EvalSummary,
    data: DataVersion, manifest: ManifestInfo, run_id: str, model_uri: str, flow_run_id: str,
) -> PromotionResult:  # fmt: skip
    """Register a version and move the champion alias, only when the gate passed."""
    if not verdict.passed:
        return PromotionResult(verdict=verdict, model_name=config.model_name)
    tags = tracking.get_tags(run_id)
    candidate = candidate_from_run(
        config, data, trained.classes, evaluated.metrics, evaluated.predictions_path, tags
    )

    def tags_for(final: Verdict) -> dict[str, str]:
        return lineage_tags(tags, config, evaluated.metrics, final, candidate.fingerprint)

    result = promote(
        config, run_id, model_uri, verdict, judge_against(config, data, manifest, candidate),
        tags_for, flow_run_id,
    )  # fmt: skip
    if result.version:
        tracking.set_tags(run_id, {"registered.version": result.version})
    else:
        final = {"gate.decision": result.verdict.decision, "gate.passed": "false"}
        tracking.set_tags(run_id, final)
    get_run_logger().info(result.line())
    return result
