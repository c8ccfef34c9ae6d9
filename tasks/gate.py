"""Stage 6 as Prefect tasks: the gate (and the check that nothing changed since the champion)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tlops.adapters import registry, tracking
from tlops.config import RunConfig
from tlops.data.version import DataVersion
from tlops.decision.gate import Verdict, decide
from tlops.decision.report import REPORT_FILE, write_report
from tlops.jobs.gate import candidate_from_run, measure_version, unchanged_champion
from tlops.jobs.train import EvalSummary, TrainSummary
from tlops.jobs.validate import ManifestInfo


def artifact_key(model_name: str) -> str:
    """The stable Prefect artifact key of a model's runs (lowercase letters, digits, dashes):
    the Prefect UI lists every run's report under it, newest first."""
    return "gate-" + "".join(c if c.isalnum() else "-" for c in model_name.lower())


@task(name="check-unchanged", cache_policy=NO_CACHE)
def unchanged_task(config: RunConfig, data: DataVersion) -> registry.VersionInfo | None:
    """The champion when it was trained on this data, config and code (then nothing to do)."""
    champion = unchanged_champion(config, data.md5, Path.cwd())
    if champion is not None:
        text = (
            f"## tlops: {config.model_name}: nothing changed\n\nSame data (md5 `{data.md5}`),"
            f" config and code as champion v{champion.version}: not retrained.\n"
        )
        create_markdown_artifact(
            key=artifact_key(config.model_name), markdown=text,
            description=f"{config.model_name}: unchanged, not retrained",
        )  # fmt: skip
        get_run_logger().info("unchanged since champion v%s: not retraining", champion.version)
    return champion


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(
    config: RunConfig, trained: TrainSummary, evaluated: EvalSummary, data: DataVersion,
    manifest: ManifestInfo, run_id: str, out_dir: str,
) -> Verdict:  # fmt: skip
    """Judge the candidate against the current champion, re-evaluated on the same test split."""
    tags = tracking.get_tags(run_id)
    candidate = candidate_from_run(
        config, data, trained.classes, evaluated.metrics, evaluated.predictions_path, tags
    )
    champion = registry.version_by_alias(config.model_name, config.registry.champion_alias)
    measured = measure_version(champion, config, data, manifest) if champion else None
    verdict = decide(config.gate, candidate, measured)
    verdict_file = Path(out_dir) / "gate_verdict.json"
    verdict_file.write_text(verdict.to_json(), encoding="utf-8")
    report = write_report(
        Path(out_dir) / REPORT_FILE, config.model_name, verdict, candidate, measured,
        evaluated.predictions_path, run_id,
    )  # fmt: skip
    tracking.log_artifacts(run_id, {"gate": [verdict_file, report]})
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
        key=artifact_key(config.model_name), markdown=report.read_text(encoding="utf-8"),
        description=f"{config.model_name}: {verdict.decision} ({verdict.reason})"[:500],
    )  # fmt: skip
    get_run_logger().info("gate: %s (%s)", verdict.decision, verdict.reason)
    return verdict
