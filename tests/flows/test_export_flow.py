"""Exports with parity, in the lineage, against a real ``mlflow server``: exported before the
gate (``registry.exports``) and gated on what serving costs, exported later with ``tlops
export``, and never attached when parity fails."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import SMOKE, TINY, tlops_cli

GATED = (
    "gate.values=[{metric: test_accuracy, min: 0.0}, {metric: onnx_latency_ms_batch1, max: 1000},"
    " {metric: litert_size_mb, max: 50}]"
)
ANY_CHANGE = "gate.changes=[{metric: test_accuracy, min_delta: -1.0}]"


def train_args(repo: Path, name: str, *sets: str) -> list[str]:
    extra = [item for s in sets for item in ("--set", s)]
    return ["train", SMOKE, "--set", f"data.repo={repo}", "--set", f"name={name}", *TINY, *extra]


def artifact_paths(client: object, run_id: str, folder: str) -> list[str]:
    return [f.path for f in client.list_artifacts(run_id, folder)]  # type: ignore[attr-defined]


def test_exports_gate_attach_and_list_and_a_parity_miss_attaches_nothing(
    repo: Path, tracked: str, prefect_api: str
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracked)
    name = "shapes-exported"

    # 1. exported before the gate; value rules on an export's latency and size pass
    done = tlops_cli(train_args(repo, name, GATED, "registry.exports=[onnx, litert]"), prefect_api)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"promoted: {name} v1 is champion" in done.stdout
    assert "export onnx (onnxruntime): parity ok: argmax agreement 1.0000" in done.stdout
    assert "export litert (ai-edge-litert): parity ok" in done.stdout
    v1 = client.get_model_version_by_alias(name, "champion")
    verdict = json.loads(v1.tags["gate.verdict"])
    rows = {r["rule"]: r["passed"] for r in verdict["results"]}
    assert rows == {
        "onnx export parity": True, "litert export parity": True, "test_accuracy": True,
        "onnx_latency_ms_batch1": True, "litert_size_mb": True,
    }  # fmt: skip
    assert v1.tags["export.onnx.uri"] == f"runs:/{v1.run_id}/exports/onnx/model.onnx"
    assert v1.tags["export.litert.runtime"] == "ai-edge-litert"
    assert "on 9 test images" in v1.tags["export.onnx.parity"]
    assert artifact_paths(client, v1.run_id, "exports/onnx") == ["exports/onnx/model.onnx"]
    assert artifact_paths(client, v1.run_id, "exports/litert") == ["exports/litert/model.tflite"]
    metrics = client.get_run(v1.run_id).data.metrics
    assert metrics["onnx_argmax_agreement"] == 1.0 and metrics["litert_max_prob_diff"] <= 1e-4

    # 2. tlops export: a SavedModel of the champion, on its own data revision's test split
    # (the manifest rebuilt there must be the version's: data.manifest)
    assert len(v1.tags["data.manifest"]) >= 16
    done = tlops_cli(["export", f"models:/{name}@champion", "--format", "saved_model"], prefect_api)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "saved_model (tensorflow): parity ok: argmax agreement 1.0000 on 9" in done.stdout
    v1 = client.get_model_version(name, "1")
    assert v1.tags["export.saved_model.uri"].endswith("/exports/saved_model/saved_model")
    saved = artifact_paths(client, v1.run_id, "exports/saved_model/saved_model")
    assert "exports/saved_model/saved_model/saved_model.pb" in saved
    card = tlops_cli(["lineage", f"models:/{name}@champion"], prefect_api)
    assert "### exports" in card.stdout and "export.onnx.latency_ms_batch1" in card.stdout
    assert "export.saved_model.parity" in card.stdout
    assert "export.saved_model.uri" in client.get_registered_model(name).description

    # 3. a tolerance no float runtime meets: the candidate is rejected (exit 4), nothing attached
    strict = ("registry.exports=[onnx]", "registry.export_max_prob_diff=1e-15")
    done = tlops_cli(train_args(repo, name, ANY_CHANGE, "train.seed=5", *strict), prefect_api)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "PARITY FAILED" in done.stdout and "onnx export parity" in done.stdout
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    (run,) = client.search_runs(
        [v1.tags.get("mlflow.experiment_id") or client.get_run(v1.run_id).info.experiment_id],
        filter_string="tags.`gate.decision` = 'reject'",
    )
    assert artifact_paths(client, run.info.run_id, "exports") == []
    assert "export.onnx.uri" not in run.data.tags

    # 4. bad usage: one line and exit 2, before anything is imported or exported
    bad = tlops_cli(["export", f"models:/{name}@champion", "--format", "pdf"], prefect_api)
    assert bad.returncode == 2 and "--format pdf" in bad.stderr
    missing = tlops_cli(["export", f"models:/{name}@nobody", "--format", "onnx"], prefect_api)
    assert missing.returncode == 2 and "no registered model" in missing.stderr

    # 5. a test split that is not the version's (its manifest differs): refused, exit 3
    client.set_model_version_tag(name, "1", "data.manifest", "0" * 64)
    other = tlops_cli(["export", f"models:/{name}/1", "--format", "onnx"], prefect_api)
    assert other.returncode == 3, other.stdout + other.stderr
    assert "not its test split" in other.stderr
