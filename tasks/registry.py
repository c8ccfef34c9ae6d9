"""Stages 6-7: the gate, then registration and promotion in the MLflow model registry."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tlops import registry, tracking
from tlops.config import RunConfig
from tlops.dataversion import DataVersion
from tlops.gate import Verdict
from tlops.promotion import (
    PromotionResult,
    candidate_from_run,
    judge_against,
    lineage_tags,
    promote,
)
from tlops.steps import EvalSummary, TrainSummary
from tlops.validation import ManifestInfo


def _artifact_key(model_name: str) -> str:
    """A stable Prefect artifact key (lowercase letters, digits, dashes)."""
    return "gate-" + "".join(c if c.isalnum() else "-" for c in model_name.lower())


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(
    config: RunConfig, trained: TrainSummary, evaluated: EvalSummary, data: DataVersion,
    manifest: ManifestInfo, run_id: str, out_dir: str,
) -> Verdict:  # fmt: skip
    """Judge the candidate against the current champion, re-evaluated on the same test split."""
    tags = tracking.get_tags(run_id)
    candidate = candidate_from_run(
        config, data, manifest, trained.classes, evaluated.metrics, evaluated.predictions_path, tags
    )
    champion = registry.version_by_alias(config.model_name, config.registry.champion_alias)
    verdict = judge_against(config, data, manifest, candidate)(champion)
    verdict_file = Path(out_dir) / "gate_verdict.json"
    verdict_file.write_text(verdict.to_json(), encoding="utf-8")
    tracking.log_artifacts(run_id, {"gate": [verdict_file]})
    tracking.set_tags(
        run_id,
        {
            "gate.decision": verdict.decision,
            "gate.passed": str(verdict.passed).lower(),
            "gate.champion_compared": verdict.champion_version or "none",
            "gate.reason": verdict.reason,
            "tlops.fingerprint": candidate.fingerprint,
        },
    )
    create_markdown_artifact(
        key=_artifact_key(config.model_name), markdown=verdict.markdown(),
        description=f"gate verdict for {config.model_name}",
    )  # fmt: skip
    get_run_logger().info("gate: %s (%s)", verdict.decision, verdict.reason)
    return verdict


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
        config, data, manifest, trained.classes, evaluated.metrics, evaluated.predictions_path, tags
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
