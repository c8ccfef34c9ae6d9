"""Stage 6, the gate job: the candidate's evidence, the champion re-measured on the same test
split, the verdict and its report, and the fingerprint that tells a scheduled run that nothing
changed.

:func:`judge_candidate` builds the candidate's evidence once; the register job reuses it (from
the :class:`GateOutcome`) when it re-judges against a champion that moved meanwhile."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from tlops.adapters import registry, tracking
from tlops.config import RunConfig
from tlops.data.inputs import load_images, read_split
from tlops.data.version import DataVersion
from tlops.decision.changes import part_tags
from tlops.decision.gate import UNKNOWN_CODE, Evidence, Verdict, decide
from tlops.decision.report import REPORT_FILE, write_report
from tlops.jobs.context import RunContext
from tlops.jobs.export import ExportOutcome
from tlops.jobs.train import EvalSummary, TrainSummary, _latency, inputs_digest
from tlops.jobs.validate import ManifestInfo

VERDICT_FILE = "gate_verdict.json"


def change_fingerprint(cfg: RunConfig, data_md5: str, code: dict[str, str]) -> str:
    """Identity of what a retrain depends on, as ``<inputs>.<code>``: inputs = the config
    (without ``evaluate``) and the data md5; code = the sha256 of the project's source files
    (``code.sha256``, known without git) and the lock file.

    It is known before anything is trained, so a scheduled run can skip a retrain whose
    fingerprint is the champion's. When the source hash is unknown the code part is
    ``unknown``: such a run is never "unchanged", and the gate never promotes it over a
    champion with the same inputs (:func:`tlops.decision.gate.same_as_champion`).
    """
    inputs = inputs_digest(cfg, data_md5)[:32]
    state = [code.get(k, UNKNOWN_CODE) for k in ("code.sha256", "lock.sha256")]
    if UNKNOWN_CODE in state:
        return f"{inputs}.{UNKNOWN_CODE}"
    return f"{inputs}.{hashlib.sha256(json.dumps(state).encode()).hexdigest()[:32]}"


def fingerprint_parts(cfg: RunConfig, data_md5: str, code: dict[str, str]) -> dict[str, str]:
    """The parts of :func:`change_fingerprint`, each a hash of its own: the data md5, the
    config without ``evaluate`` (:func:`tlops.jobs.train.inputs_digest` of no facts), the
    project's source files and the lock file (``unknown`` when not known)."""
    return {
        "data": data_md5,
        "config": inputs_digest(cfg),
        "code": code.get("code.sha256", UNKNOWN_CODE),
        "lock": code.get("lock.sha256", UNKNOWN_CODE),
    }


def fingerprint_tags(cfg: RunConfig, data_md5: str, code: dict[str, str]) -> dict[str, str]:
    """The whole fingerprint (``tlops.fingerprint``) and its parts as short hashes
    (``fingerprint.data``, ``.config``, ``.code``, ``.lock``): tags of a run and its version, so
    ``tlops status`` can tell which part a retrain changed (:mod:`tlops.decision.changes`)."""
    return {
        "tlops.fingerprint": change_fingerprint(cfg, data_md5, code),
        **part_tags(fingerprint_parts(cfg, data_md5, code)),
    }


def record_unchanged(
    cfg: RunConfig, data_md5: str, champion: registry.VersionInfo, project: Path
) -> None:
    """Record on the registered model that a retrain found nothing changed since ``champion``
    (it leaves no MLflow run): when, which champion, and the fingerprint with its parts."""
    from tlops.adapters.git import code_state

    tags = fingerprint_tags(cfg, data_md5, code_state(project))
    record = registry.NoopRecord(
        when_ms=int(time.time() * 1000), champion=champion.version,
        fingerprint=tags.pop("tlops.fingerprint"), tags=tags,
    )  # fmt: skip
    registry.write_noop(cfg.model_name, record)


def unchanged_champion(cfg: RunConfig, data_md5: str, project: Path) -> registry.VersionInfo | None:
    """The champion when it was trained on this very data, config and code, else None."""
    from tlops.adapters.git import code_state

    fingerprint = change_fingerprint(cfg, data_md5, code_state(project))
    if fingerprint.endswith(f".{UNKNOWN_CODE}"):  # unknown code: never "nothing changed"
        return None
    champion = registry.version_by_alias(cfg.model_name, cfg.registry.champion_alias)
    if champion and champion.tags.get("tlops.fingerprint") == fingerprint:
        return champion
    return None


def candidate_evidence(
    metrics: dict[str, float], predictions_path: str, classes: list[str], fingerprint: str
) -> Evidence:
    """The candidate's evidence from its evaluation."""
    rows = json.loads(Path(predictions_path).read_text(encoding="utf-8"))
    correct = [row["true"] == row["predicted"] for row in rows]
    return Evidence(metrics=metrics, correct=correct, classes=classes, fingerprint=fingerprint)


def measure_version(
    info: registry.VersionInfo, cfg: RunConfig, data: DataVersion, manifest: ManifestInfo
) -> Evidence:
    """Re-evaluate a registered version on the candidate's test split (same images, in order).

    Label sets that differ give evidence with no metrics: the change rules then refuse it.
    """
    import keras

    from tlops.model import metrics as ev
    from tlops.model.classifier import predict_batches, probabilities

    test = read_split(manifest.manifest_path, data.images_root, "test")
    fingerprint = info.tags.get("tlops.fingerprint", "")
    with tempfile.TemporaryDirectory() as tmp:
        keras_file, meta = registry.model_files(registry.download_classifier(info, Path(tmp)))
        classes = [str(c) for c in meta["classes"]]
        if classes != test.classes:
            return Evidence(metrics={}, correct=[], classes=classes, fingerprint=fingerprint,
                            version=info.version)  # fmt: skip
        model = keras.models.load_model(keras_file, safe_mode=True)
        images = load_images(test.paths, int(meta["image_size"]), formats=test.formats)
        probs = probabilities(
            predict_batches(model, images, cfg.train.batch_size), bool(meta["binary"])
        )
        scalars = ev.compute_metrics(test.labels, probs, classes, cfg.evaluate.top_k).scalars()
        scalars.update(_latency(model, images, cfg.train.batch_size, cfg.evaluate.latency_repeats))
        scalars["model_size_mb"] = keras_file.stat().st_size / 1e6
    correct = (probs.argmax(axis=1) == test.labels).tolist()
    return Evidence(
        metrics=scalars, correct=correct, classes=classes, fingerprint=fingerprint,
        version=info.version,
    )  # fmt: skip


Judge = Callable[[registry.VersionInfo | None], Verdict]


def judge_against(ctx: RunContext, candidate: Evidence) -> Judge:
    """A function that decides the candidate against a given champion (or none)."""

    cfg, data, manifest = ctx.config, ctx.data, ctx.manifest

    def judge(champion: registry.VersionInfo | None) -> Verdict:
        evidence = measure_version(champion, cfg, data, manifest) if champion else None
        return decide(cfg.gate, candidate, evidence)

    return judge


class GateOutcome(BaseModel):
    """What the gate leaves: the verdict, the candidate's evidence (for the register job) and
    the report."""

    model_config = ConfigDict(frozen=True)

    verdict: Verdict
    candidate: Evidence
    report_path: str

    def markdown(self) -> str:
        """The report's Markdown."""
        return Path(self.report_path).read_text(encoding="utf-8")


def judge_candidate(
    ctx: RunContext, trained: TrainSummary, evaluated: EvalSummary,
    exports: ExportOutcome | None = None,
) -> GateOutcome:  # fmt: skip
    """Judge the context's candidate against the current champion, re-evaluated on the same
    test split.

    1. the candidate's evidence: its test metrics with its exports' figures, the exports'
       parity as checks (a failed one rejects), its test predictions, and its fingerprint
       from the config, the data and the code its run is tagged with
       (:func:`change_fingerprint`);
    2. the champion (if any) re-measured on the same test split; decide;
    3. write ``gate_verdict.json`` and the report into the run's folder, log both under
       ``gate/`` and tag the run with the decision and the fingerprint with its parts
       (:func:`fingerprint_tags`; the version takes them over with the run's other tags).
    """
    cfg, run_id = ctx.config, ctx.run_id
    fingerprints = fingerprint_tags(cfg, ctx.data.md5, tracking.get_tags(run_id))
    fingerprint = fingerprints["tlops.fingerprint"]
    exports = exports or ExportOutcome()
    candidate = candidate_evidence(
        {**evaluated.metrics, **exports.metrics()},
        evaluated.predictions_path,
        trained.classes,
        fingerprint,
    ).model_copy(update={"checks": exports.checks()})
    champion = registry.version_by_alias(cfg.model_name, cfg.registry.champion_alias)
    measured = measure_version(champion, cfg, ctx.data, ctx.manifest) if champion else None
    verdict = decide(cfg.gate, candidate, measured)
    verdict_file = ctx.out / VERDICT_FILE
    verdict_file.write_text(verdict.to_json(), encoding="utf-8")
    report = write_report(
        ctx.out / REPORT_FILE, cfg.model_name, verdict, candidate, measured,
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
            **fingerprints,
        },
    )
    return GateOutcome(verdict=verdict, candidate=candidate, report_path=str(report))
