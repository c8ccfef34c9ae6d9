"""`tlops train` end to end against a real `mlflow server`, real Prefect, real DVC and GX."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import SMOKE, TINY, tlops_cli

ROOT = Path(__file__).resolve().parents[2]


def _png(size: int) -> bytes:
    """A ``size`` x ``size`` RGB PNG (a gradient), as a client would send it."""
    import io

    from PIL import Image

    ramp = np.linspace(0, 255, size * size * 3).reshape(size, size, 3).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(ramp, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def test_train_logs_a_complete_run(
    repo: Path, tracked: str, tmp_path: Path, prefect_api: str
) -> None:
    import mlflow
    from mlflow import MlflowClient

    name = "shapes-run"
    args = ["train", SMOKE, "--set", f"data.repo={repo}", "--set", f"name={name}", *TINY]
    done = tlops_cli(args, prefect_api)
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout
    assert "kept **" in output
    # no gate rules in the config: trained and logged, never registered
    assert "no gate rules configured: nothing is promoted" in output

    client = MlflowClient(tracked)
    experiment = client.get_experiment_by_name(name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_id in output
    params = run.data.params
    assert params["backbone.name"] == "tiny_cnn"
    assert params["train.frozen.epochs"] == "1"
    assert params["data.image_size"] == "16"
    tags = run.data.tags
    for key in ("git.commit", "git.dirty", "lock.sha256", "backbone.weights_sha256", "device"):
        assert tags[key], key
    assert tags["backbone"] == "tiny_cnn"
    assert tags["prefect.flow_run_id"] not in ("", "local")
    assert tags["version.keras"].startswith("3.")
    # both phases on one continuous epoch axis
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in loss) == [0, 1]
    phase = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "phase")}
    assert phase == {0: 1.0, 1: 2.0}
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    assert "test_macro_f1" in run.data.metrics and "latency_ms_batch1" in run.data.metrics
    assert any(key.startswith("system/") for key in run.data.metrics)  # CPU / memory sampled
    # the dataset input: digest is the DVC md5, source is the remote
    pointer = (repo / "data.dvc").read_text()
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest in pointer
    assert str(tmp_path / "remote") in dataset_input.dataset.source
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "training.json", "data", "plots", "evaluation"} <= artifacts
    # the suspected label errors, from the frozen features: in the summary, metrics, artifacts
    assert "- label errors: " in output and "training images" in output
    assert 0.0 <= run.data.metrics["label_suspects_fraction"] <= 1.0
    labels = {a.path for a in client.list_artifacts(run.info.run_id, "data/label_suspects")}
    assert {"data/label_suspects/label_suspects.md", "data/label_suspects/label_suspects.csv"} <= (
        labels
    )
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {
        "plots/confusion_matrix.png", "plots/training_curves.png", "plots/misclassified.png"
    }  # fmt: skip
    # the model is the run's LoggedModel (with the run's metrics); served, it labels images
    (logged,) = run.outputs.model_outputs
    uri = f"models:/{logged.model_id}"
    assert uri in output
    found = client.get_logged_model(logged.model_id)
    assert found.source_run_id == run.info.run_id
    assert "test_accuracy" in {m.key for m in found.metrics or []}
    served = mlflow.pyfunc.load_model(uri)
    answer = served.predict(pd.DataFrame({"image": [_png(16), _png(40)]}))
    classes = set(answer.iloc[0]["probabilities"])
    assert len(classes) == 3 and set(answer["label"]) <= classes
    probs = np.array([list(p.values()) for p in answer["probabilities"]])
    assert probs.shape == (2, 3)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert not client.search_model_versions(f"name='{name}'")
    assert run.data.tags["gate.decision"] == "no_rules"


def _checkpoint_state(home: Path) -> dict[str, object] | None:
    for state in home.glob("checkpoints/*/state.json"):
        try:
            return dict(json.loads(state.read_text()))
        except (json.JSONDecodeError, OSError):
            return None
    return None


def test_killed_run_resumes_from_its_last_epoch(repo: Path, tracked: str, prefect_api: str) -> None:
    from mlflow import MlflowClient

    args = [
        "train", SMOKE, "--set", f"data.repo={repo}", "--set", "name=resume",
        *TINY, "--set", "train.frozen.epochs=30", "--set", "train.feature_cache=false",
    ]  # fmt: skip
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(  # started, then killed in the middle of training
        [sys.executable, "-m", "flows.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    home = Path(os.environ["TLOPS_HOME"])
    deadline = time.monotonic() + 300
    killed_after = 0
    while time.monotonic() < deadline and proc.poll() is None:
        state = _checkpoint_state(home)
        frozen = (state or {}).get("phases", {}).get("frozen", {})  # type: ignore[attr-defined]
        if frozen.get("epochs_done", 0) >= 2:
            proc.send_signal(signal.SIGKILL)
            killed_after = int(frozen["epochs_done"])
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_after >= 2, "the run finished or never checkpointed before the kill"

    done = tlops_cli(args, prefect_api)
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(tracked)
    experiment = client.get_experiment_by_name("resume")
    runs = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])
    resumed = runs[0]
    assert resumed.data.tags["resumed_at"].startswith("frozen: ")
    done_before = int(resumed.data.tags["resumed_at"].split(": ")[1].split()[0])
    assert done_before >= killed_after
    # the resumed run trained only the epochs that were left
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "frozen.loss")]
    assert min(steps) == done_before
    assert max(steps) == 29
    training = json.loads(
        Path(client.download_artifacts(resumed.info.run_id, "training.json")).read_text()
    )
    assert training["phases"][0]["epochs"] == 30
    assert not list(home.glob("checkpoints/*/state.json"))  # cleared after success


def test_unreachable_mlflow_exits_5(repo: Path, prefect_api: str) -> None:
    from conftest import free_port

    args = ["train", SMOKE, "--set", f"data.repo={repo}", *TINY]
    done = tlops_cli(
        args,
        prefect_api,
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )
    assert done.returncode == 5, done.stdout + done.stderr
    assert "MLflow (http://127.0.0.1:" in done.stderr
    # the first call settles the registry (reconcile), before any training
    assert "failed to list the versions of smoke" in done.stderr
