"""The export job: a classifier as SavedModel, ONNX and LiteRT, each run by its own runtime on
the test split and checked for parity against the Keras model, then attached to the model.

Two ways in, one body (:func:`export_classifier`):

- in the train flow, before the gate (``registry.exports``): :func:`export_run`. A format whose
  parity fails becomes a failed check of the candidate, which the gate rejects (exit 4); the
  export figures are run metrics (``onnx_latency_ms_batch1``, ``litert_size_mb``...) that value
  rules can name, and the run's ``export.*`` tags reach the version with the rest of its lineage;
- ``tlops export MODEL_URI --format ...`` on a registered version: :func:`export_version`,
  on the test split of the version's own data revision and config.

Passed exports go under the run's ``exports/<format>/`` artifacts; when any format fails its
parity nothing is attached.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from tlops.adapters import registry, tracking
from tlops.config import ExportFormat, RunConfig
from tlops.data.inputs import load_images, read_split
from tlops.decision.gate import RuleResult
from tlops.errors import DataError, GateRejectedError
from tlops.jobs.context import RunContext
from tlops.jobs.train import TrainSummary
from tlops.model.exports import ExportReport, export_and_check

EXPORTS_FOLDER = "exports"
TAG_PREFIX = "export."


class ExportOutcome(BaseModel):
    """The exports of one model: a report per format."""

    model_config = ConfigDict(frozen=True)

    reports: list[ExportReport] = []

    @property
    def passed(self) -> bool:
        """Every format met parity."""
        return all(r.passed for r in self.reports)

    def metrics(self) -> dict[str, float]:
        """Every format's figures, as metrics (``onnx_latency_ms_batch1``, ...)."""
        return {k: v for r in self.reports for k, v in r.metrics().items()}

    def checks(self) -> list[RuleResult]:
        """Each format's parity as a check the gate reads (a failed one rejects)."""
        return [
            RuleResult(
                rule=f"{r.format} export parity",
                kind="export",
                threshold=f"argmax agreement 1, probability difference <= {r.tolerance:.0e}",
                observed=f"argmax {r.argmax_agreement:.4f}, difference {r.max_prob_diff:.2e}",
                passed=r.passed,
            )
            for r in self.reports
        ]

    def tags(self, run_id: str) -> dict[str, str]:
        """``export.<format>.*`` tags: where each export is, its size, latency and parity."""
        tags: dict[str, str] = {}
        for r in self.reports:
            key = f"{TAG_PREFIX}{r.format}"
            name = Path(r.path).name
            tags |= {
                f"{key}.uri": f"runs:/{run_id}/{EXPORTS_FOLDER}/{r.format}/{name}",
                f"{key}.runtime": r.runtime,
                f"{key}.size_mb": f"{r.size_mb:.4g}",
                f"{key}.latency_ms_batch1": f"{r.latency_ms_batch1:.4g}",
                f"{key}.parity": (
                    f"argmax {r.argmax_agreement:.4f}, max prob diff {r.max_prob_diff:.2e}"
                    f" on {r.images} test images"
                ),
            }
        return tags

    def lines(self) -> list[str]:
        """One line per format."""
        return [r.line() for r in self.reports]


def export_classifier(
    keras_file: Path,
    binary: bool,
    images: np.ndarray,
    formats: list[ExportFormat],
    out: Path,
    tolerance: float,
    batch: int = 32,
) -> ExportOutcome:
    """Export the classifier in ``keras_file`` as each of ``formats`` under ``out/<format>/``
    and check each against the Keras model's probabilities on ``images``."""
    import keras

    from tlops.model.classifier import predict_batches, probabilities

    model = keras.models.load_model(keras_file, safe_mode=True)

    def to_probabilities(raw: np.ndarray) -> np.ndarray:
        return probabilities(raw, binary)

    reference = to_probabilities(predict_batches(model, images, batch))
    reports = [
        export_and_check(
            model,
            fmt,
            out / fmt,
            images,
            reference,
            to_probabilities,
            batch=batch,
            tolerance=tolerance,
        )
        for fmt in formats
    ]
    return ExportOutcome(reports=reports)


def attach(run_id: str, outcome: ExportOutcome) -> dict[str, str]:
    """Upload each export under the run's ``exports/<format>/``; the tags that say so."""
    tracking.log_artifacts(
        run_id, {f"{EXPORTS_FOLDER}/{r.format}": [Path(r.path)] for r in outcome.reports}
    )
    tags = outcome.tags(run_id)
    tracking.set_tags(run_id, tags)
    return tags


def export_run(ctx: RunContext, trained: TrainSummary) -> ExportOutcome:
    """The train flow's export step (``registry.exports``) on the run's test split: metrics
    logged, and the exports attached to the run only when every format met parity."""
    cfg = ctx.config
    if not cfg.registry.exports:
        return ExportOutcome()
    test = read_split(ctx.manifest.manifest_path, ctx.data.images_root, "test")
    images = load_images(test.paths, cfg.data.image_size, formats=test.formats)
    outcome = export_classifier(
        Path(trained.model_path), trained.binary, images,
        list(cfg.registry.exports), ctx.out / EXPORTS_FOLDER, cfg.registry.export_max_prob_diff,
        cfg.train.batch_size,
    )  # fmt: skip
    tracking.log_metrics(ctx.run_id, outcome.metrics())
    if outcome.passed:
        attach(ctx.run_id, outcome)
    return outcome


def version_test_images(info: registry.VersionInfo, cfg: RunConfig, work: Path) -> np.ndarray:
    """The test split of a version's own data revision, split and contract limits, as images;
    a manifest that is not the version's (``data.manifest`` tag) is a :class:`DataError`."""
    from tlops.adapters.dvc import resolve_data
    from tlops.jobs.validate import version_manifest

    data = resolve_data(cfg.data)
    manifest = version_manifest(
        data, cfg.split, work / "manifest", cfg.contract, cfg.data.split_names
    )
    expected = info.tags.get("data.manifest")
    if expected and manifest.digest != expected:
        raise DataError(
            f"{info.name} v{info.version}: the manifest of data {data.md5} at rev"
            f" {data.rev[:12]} has digest {manifest.digest[:16]}..., the version's data.manifest"
            f" tag says {expected[:16]}...: not its test split"
        )
    test = read_split(manifest.manifest_path, data.images_root, "test")
    return load_images(test.paths, cfg.data.image_size, formats=test.formats)


def export_version(model_uri: str, formats: list[ExportFormat], work: Path) -> ExportOutcome:
    """``tlops export``: export a registered version, check parity on its own test split, and
    attach the exports to its run and version (tags, card); nothing is attached when any
    format fails, which is a :class:`GateRejectedError` (exit 4)."""
    from tlops.jobs.lineage import lineage_card
    from tlops.jobs.reproduce import reproduction_config

    info = registry.resolve(model_uri)
    if info.run_id is None:
        raise DataError(f"{model_uri}: the version has no run to attach its exports to")
    cfg = reproduction_config(info, work)
    images = version_test_images(info, cfg, work)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        keras_file, meta = registry.model_files(registry.download_classifier(info, Path(tmp)))
        outcome = export_classifier(
            keras_file, bool(meta["binary"]), images, formats, work / EXPORTS_FOLDER,
            cfg.registry.export_max_prob_diff, cfg.train.batch_size,
        )  # fmt: skip
    if not outcome.passed:
        failed = "; ".join(r.line() for r in outcome.reports if not r.passed)
        raise GateRejectedError(f"{model_uri}: export failed, nothing attached: {failed}")
    tags = attach(info.run_id, outcome)
    registry.tag_version(info.name, info.version, tags)
    if cfg.registry.champion_alias in info.aliases:  # the model's description is its card
        registry.set_description(info.name, lineage_card(registry.resolve(model_uri)))
    return outcome
