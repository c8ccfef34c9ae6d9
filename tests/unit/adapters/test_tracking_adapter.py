"""The tracking adapter against a real SQLite MLflow store: runs, params, tags, metrics,
artifacts, datasets, nesting, orphaned runs and the store's URI and artifact root."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tlops.adapters import tracking
from tlops.data.version import DataVersion
from tlops.errors import ServiceError

#: the real SQLite MLflow store of this module (see tests/unit/mlflow_fixtures.py)
pytest_plugins = ["unit.mlflow_fixtures"]


def unique(prefix: str) -> str:
    """An experiment name no other test of the module uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_tracking_uri_default_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.as_posix()}/mlflow/mlflow.db"
    assert tracking._default_artifacts() == (tmp_path / "mlflow" / "artifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bob:s3cr3t@mlflow.example/x")
    assert tracking.tracking_uri() == "https://bob:s3cr3t@mlflow.example/x"  # what connects
    assert tracking.shown_tracking_uri() == "https://bob:***@mlflow.example/x"
    assert tracking._default_artifacts() is None  # a server decides its own


def test_tag_value_limits() -> None:
    assert tracking.tag_value("x" * tracking.TAG_LIMIT) == "x" * tracking.TAG_LIMIT
    cut = tracking.tag_value("y" * 7000)
    assert len(cut) == tracking.TAG_LIMIT and cut.startswith("@cut by tlops")
    assert "7000 characters" in cut.splitlines()[0]


def test_start_run_creates_the_experiment_beside_the_store(store: str) -> None:
    name = unique("exp")
    params = {f"p{i:03d}": str(i) for i in range(250)} | {"long": "v" * 7000}  # > one batch
    run_id = tracking.start_run(name, "first", params, {"tlops.trigger": "manual"})
    client = tracking.client()
    experiment = client.get_experiment_by_name(name)
    root = Path(store.removeprefix("sqlite:///")).parent / "artifacts"
    assert experiment.artifact_location == root.resolve().as_uri()
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.info.run_name == "first"
    assert run.info.artifact_uri.startswith(root.resolve().as_uri())
    assert len(run.data.params) == 251 and run.data.params["p249"] == "249"
    assert len(run.data.params["long"]) == tracking.PARAM_LIMIT
    assert run.data.params["long"].startswith("@cut")
    assert run.data.tags["tlops.trigger"] == "manual"
    assert json.loads(run.data.tags[tracking.OWNER_TAG]) == tracking.process_owner()
    second = tracking.start_run(name, "second", {}, {})  # the experiment is reused
    assert client.get_run(second).info.experiment_id == experiment.experiment_id


def test_tags_in_batches_and_read_back(store: str) -> None:
    run_id = tracking.start_run(unique("tags"), "r", {}, {})
    tracking.set_tags(run_id, {f"t{i:03d}": i for i in range(230)} | {"big": "z" * 6000})  # type: ignore[dict-item]
    tags = tracking.get_tags(run_id)
    assert tags["t229"] == "229" and tags["big"].startswith("@cut")
    assert len(tags["big"]) == tracking.TAG_LIMIT


def test_unknown_run_is_a_service_error(store: str) -> None:
    with pytest.raises(ServiceError) as caught:
        tracking.get_tags("0" * 32)
    assert caught.value.exit_code == 5 and "read the run" in str(caught.value)
    assert store.removeprefix("sqlite:///") in str(caught.value)  # names the store


def test_metrics_in_batches(store: str) -> None:
    run_id = tracking.start_run(unique("metrics"), "r", {}, {})
    tracking.log_metrics(run_id, {f"m{i:04d}": i / 2 for i in range(1200)}, step=3)
    tracking.log_metrics(run_id, {"m0000": 9.0}, step=4)
    run = tracking.client().get_run(run_id)
    assert len(run.data.metrics) == 1200 and run.data.metrics["m1199"] == 599.5
    history = tracking.client().get_metric_history(run_id, "m0000")
    assert [(m.step, m.value) for m in history] == [(3, 0.0), (4, 9.0)]


def test_latest_run_is_the_newest_finished(store: str) -> None:
    name = unique("latest")
    assert tracking.latest_run(name) is None  # no such experiment
    old = tracking.start_run(name, "old", {}, {"which": "old"})
    assert tracking.latest_run(name) is None  # only a running one
    tracking.log_metrics(old, {"test_accuracy": 0.5})
    tracking.finish_run(old)
    new = tracking.start_run(name, "new", {}, {"which": "new"})
    tracking.finish_run(new)
    failed = tracking.start_run(name, "failed", {}, {})
    tracking.finish_run(failed, "FAILED")
    latest = tracking.latest_run(name)
    assert latest is not None and latest["run_id"] == new and latest["tags"]["which"] == "new"
    assert tracking.client().get_run(failed).info.status == "FAILED"
    tracking.client().delete_run(new)
    latest = tracking.latest_run(name)
    assert latest is not None and latest["run_id"] == old
    assert latest["metrics"] == {"test_accuracy": 0.5}


def test_artifacts_upload_and_download(store: str, tmp_path: Path) -> None:
    run_id = tracking.start_run(unique("artifacts"), "r", {}, {})
    (tmp_path / "config.yaml").write_text("name: x\n", encoding="utf-8")
    (tmp_path / "a.png").write_bytes(b"png")
    tracking.log_artifacts(run_id, {"": [tmp_path / "config.yaml"], "plots": [tmp_path / "a.png"]})
    got = tracking.download_run_file(run_id, "config.yaml", tmp_path / "dl")
    assert got is not None and got.read_text(encoding="utf-8") == "name: x\n"
    nested = tracking.download_run_file(run_id, "plots/a.png", tmp_path / "dl2")
    assert nested is not None and nested.read_bytes() == b"png"
    assert tracking.download_run_file(run_id, "missing.yaml", tmp_path / "dl3") is None
    assert tracking.download_run_file(run_id, "plots", tmp_path / "dl4") is None  # a folder


def test_nest_run(store: str) -> None:
    name = unique("nest")
    parent = tracking.start_run(name, "sweep", {}, {})
    child = tracking.start_run(name, "tmp", {}, {})
    tracking.nest_run(child, parent, "trial-1", {"trial": "1"})
    run = tracking.client().get_run(child)
    assert run.info.run_name == "trial-1"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["trial"] == "1"
    experiment = run.info.experiment_id
    found = tracking.client().search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    assert [r.info.run_id for r in found] == [child]


def test_log_dataset_records_the_dvc_version(store: str, tmp_path: Path) -> None:
    run_id = tracking.start_run(unique("dataset"), "r", {}, {})
    data = DataVersion(
        path=str(tmp_path), md5="ab" * 16 + ".dir", nfiles=7, size=1, rev="c" * 40,
        remote_url=None, dirty=True, dvc_file="data.dvc", subdir="flowers",
    )  # fmt: skip
    tracking.log_dataset(run_id, data, "manifest-digest", "training")
    (found,) = tracking.client().get_run(run_id).inputs.dataset_inputs
    assert found.dataset.name == "data/flowers" and found.dataset.digest == "ab" * 16
    tags = {t.key: t.value for t in found.tags}
    assert tags == {
        "mlflow.data.context": "training", "dvc.rev": "c" * 40, "dvc.md5": "ab" * 16 + ".dir",
        "dvc.nfiles": "7", "dvc.dirty": "true", "manifest.digest": "manifest-digest",
    }  # fmt: skip


def dead_owner() -> dict[str, str]:
    """The identity of a process of this machine that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return {**tracking.process_owner(), "pid": done.stdout.strip(), "start": "1"}


def test_owner_checks() -> None:
    me = tracking.process_owner()
    assert tracking.same_machine(me) and not tracking.owner_gone(me)
    assert tracking.owner_gone(dead_owner())
    elsewhere = {**dead_owner(), "host": "another-host"}
    assert not tracking.same_machine(elsewhere) and not tracking.owner_gone(elsewhere)
    for odd in ({**me, "pid": "x"}, {**me, "pid": "0"}, {}):
        assert not tracking.owner_gone(odd)  # not understood: counts as alive
    reused = {**me, "start": "1"}  # this pid, but a process started at another time
    assert tracking.owner_gone(reused)


def test_a_new_run_fails_the_runs_of_ended_processes_only(store: str) -> None:
    name = unique("orphans")
    client = tracking.client()
    orphan = tracking.start_run(name, "killed", {}, {})
    client.set_tag(orphan, tracking.OWNER_TAG, json.dumps(dead_owner()))
    remote = tracking.start_run(name, "elsewhere", {}, {})
    client.set_tag(remote, tracking.OWNER_TAG, json.dumps({**dead_owner(), "host": "other"}))
    live = tracking.start_run(name, "live", {}, {})  # this process: alive
    untagged = tracking.start_run(name, "untagged", {}, {})
    client.delete_tag(untagged, tracking.OWNER_TAG)
    garbled = tracking.start_run(name, "garbled", {}, {})
    client.set_tag(garbled, tracking.OWNER_TAG, "{not json")
    tracking.start_run(name, "next", {}, {})
    status = {r: client.get_run(r).info.status for r in (orphan, remote, live, untagged, garbled)}
    assert status == {
        orphan: "FAILED", remote: "RUNNING", live: "RUNNING", untagged: "RUNNING",
        garbled: "RUNNING",
    }  # fmt: skip
    reason = client.get_run(orphan).data.tags["tlops.failed_reason"]
    assert "ended without finishing it" in reason


def test_epoch_logger_keeps_one_step_axis_across_phases(store: str) -> None:
    import keras
    import numpy as np

    run_id = tracking.start_run(unique("epochs"), "r", {}, {})
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.zeros((8, 4), dtype=np.float32), np.array([0, 1] * 4)
    for index, (phase, offset) in enumerate((("frozen", 0), ("fine_tune", 2))):
        logger = tracking.epoch_logger(run_id, phase, offset, index)
        model.fit(x, y, epochs=2, verbose=0, callbacks=[logger])
    client = tracking.client()
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1, 2, 3]
    assert [m.step for m in client.get_metric_history(run_id, "frozen.loss")] == [0, 1]
    assert [m.step for m in client.get_metric_history(run_id, "fine_tune.accuracy")] == [2, 3]
    phases = [(m.step, m.value) for m in client.get_metric_history(run_id, "phase")]
    assert phases == [(0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0)]


def test_system_metrics_are_sampled_into_the_run(store: str) -> None:
    import time

    run_id = tracking.start_run(unique("system"), "r", {}, {})
    with tracking.system_metrics(run_id, interval_s=0.2):
        time.sleep(1.5)
    metrics = tracking.client().get_run(run_id).data.metrics
    assert any(key.startswith("system/cpu_utilization") for key in metrics), sorted(metrics)


def test_a_training_shorter_than_one_sampling_interval_still_gets_its_system_metrics(
    store: str,
) -> None:
    """MLflow's monitor publishes only after a whole interval; a warm in-process training of a
    few seconds used to end with no `system/` metric at all (found through the in-process CLI)."""
    run_id = tracking.start_run(unique("system-short"), "r", {}, {})
    with tracking.system_metrics(run_id, interval_s=60.0):
        pass
    metrics = tracking.client().get_run(run_id).data.metrics
    assert any(key.startswith("system/cpu_utilization") for key in metrics), sorted(metrics)
