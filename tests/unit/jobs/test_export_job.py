"""The export job's body (:func:`tlops.jobs.export.export_classifier`) on a saved ``.keras``
classifier, and what it attaches to a run of a real SQLite MLflow store."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from unit.imaging import SIZE, brightness_model

from tlops.adapters import tracking
from tlops.jobs.export import ExportOutcome, attach, export_classifier

pytest_plugins = ["unit.mlflow_fixtures"]


def images() -> np.ndarray:
    """Bright, dark and in-between 16x16 images (the brightness model tells them apart)."""
    reds = [250.0, 5.0, 200.0, 30.0, 127.0]
    out = np.zeros((len(reds), SIZE, SIZE, 3), dtype=np.float32)
    for i, red in enumerate(reds):
        out[i, ..., 0] = red
    return out


def test_export_outcome_metrics_checks_and_tags_and_attach(
    mlflow_store: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    keras_file = brightness_model(tmp_path / "model.keras")
    outcome = export_classifier(keras_file, False, images(), ["onnx"], tmp_path / "out", 1e-4)
    assert outcome.passed, outcome.lines()
    (report,) = outcome.reports
    assert set(outcome.metrics()) == {
        "onnx_size_mb", "onnx_latency_ms_batch1", "onnx_argmax_agreement", "onnx_max_prob_diff",
    }  # fmt: skip
    (check,) = outcome.checks()
    assert (check.rule, check.kind, check.passed) == ("onnx export parity", "export", True)

    run_id = tracking.start_run(f"export-{uuid.uuid4().hex[:8]}", "train", {}, {})
    tags = attach(run_id, outcome)
    assert tags["export.onnx.uri"] == f"runs:/{run_id}/exports/onnx/model.onnx"
    assert tags["export.onnx.parity"].endswith("on 5 test images")
    client = MlflowClient(mlflow_store)
    assert [f.path for f in client.list_artifacts(run_id, "exports/onnx")] == [
        "exports/onnx/model.onnx"
    ]
    assert client.get_run(run_id).data.tags["export.onnx.runtime"] == "onnxruntime"
    assert report.size_mb > 0


def test_no_exports_is_an_empty_outcome_that_passes() -> None:
    empty = ExportOutcome()
    assert empty.passed and empty.metrics() == {} and empty.checks() == [] and not empty.lines()
