"""Scheduled retraining on Prefect's own machinery: a deployment, a process worker, the API.

The session's real Prefect server (loopback) holds the deployment; a real ``prefect worker``
process picks the runs up and runs the retrain flow in the project folder; the model is
registered in the real ``mlflow server``. After a commit that touches only docs, another config
and another dataset's pointer, the second run finds nothing changed, and ``tlops status`` says
that no part of the fingerprint did.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SMOKE, TINY, dvc, run, tlops_cli, write_shapes

POOL = "tlops-test-pool"
NAME = "shapes-sched"


@pytest.fixture
def worker(prefect_api: str, tracked: str, repo: Path, tmp_path: Path) -> Iterator[None]:
    """A real process worker for POOL (stopped at the end)."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": tracked,
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}  # fmt: skip
    log = (tmp_path / "worker.log").open("w")
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type",
           "process", "--name", "tlops-test-worker"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=repo, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run_deployment(
    prefect_api: str, tracked: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``prefect deployment run --watch``: trigger through the API, wait for the end state."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": tracked}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", f"tlops-retrain/{NAME}", "--watch",
         "--watch-interval", "1", "--watch-timeout", "600"],
        env=env, capture_output=True, text=True, timeout=660,
    )  # fmt: skip
    return done, time.monotonic() - start


def test_deployed_retrain_runs_on_a_worker_and_then_finds_nothing_changed(
    repo: Path, tracked: str, prefect_api: str, tmp_path: Path, worker: None
) -> None:
    from mlflow import MlflowClient

    # the config lives in the project (the deployment keeps its path, not its values), with
    # its promotion policy: a deployment may not --set name / gate / registry
    (repo / "configs").mkdir()
    policy = f"\nname: {NAME}\ngate:\n  values: [{{metric: test_accuracy, min: 0.0}}]\n"
    (repo / "configs" / "shapes.yaml").write_text(Path(SMOKE).read_text() + policy)
    run(["git", "add", "configs"], repo)
    run(["git", "commit", "-qm", "config"], repo)
    sets = list(TINY[1::2])
    args = ["deploy", "configs/shapes.yaml", "--name", NAME, "--cron", "0 3 * * *",
            "--pool", POOL, *(x for s in sets for x in ("--set", s))]  # fmt: skip
    cwd = Path.cwd()
    os.chdir(repo)
    try:
        done = tlops_cli(args, prefect_api)
        bad_cron = tlops_cli([*args[:4], "--cron", "every night"], prefect_api)
        outside = tlops_cli(["deploy", SMOKE, "--name", "x"], prefect_api)
    finally:
        os.chdir(cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"deployed tlops-retrain/{NAME}" in done.stdout
    assert bad_cron.returncode == 2 and "--cron 'every night'" in bad_cron.stderr
    assert outside.returncode == 2 and "must be inside the project" in outside.stderr

    # 1. a run triggered through the API, picked up by the worker: trains, gates, registers
    first, first_s = run_deployment(prefect_api, tracked)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Completed" in first.stdout
    client = MlflowClient(tracked)
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.version == "1"
    experiment = client.get_experiment_by_name(NAME)
    (trained,) = client.search_runs([experiment.experiment_id])
    assert trained.info.run_id == champion.run_id
    assert trained.data.tags["tlops.trigger"] == "manual"  # by hand through the API
    assert trained.info.run_name.startswith(f"{NAME}-tiny_cnn-")
    # the version records that its policy is the committed file's
    assert champion.tags["policy.source"] == "committed"
    assert champion.tags["policy.file"] == "configs/shapes.yaml"
    assert champion.tags["policy.overrides"] == "none"

    # its run and version record the no-op fingerprint's parts beside the whole
    short = [champion.tags[f"fingerprint.{part}"] for part in ("data", "config", "code")]
    assert [len(part) for part in short] == [12, 12, 12], short
    assert champion.tags["fingerprint.lock"] == "none"  # this project has no uv.lock
    assert champion.tags["tlops.fingerprint"] == trained.data.tags["tlops.fingerprint"]
    assert champion.tags["fingerprint.data"] == champion.tags["data.md5"][:12]

    # one commit that touches only what the model does not depend on: docs, another model's
    # config, another dataset's DVC pointer
    (repo / "docs").mkdir()
    (repo / "docs" / "notes.md").write_text("# notes\n\nThe shapes model retrains nightly.\n")
    (repo / "configs" / "other.yaml").write_text(Path(SMOKE).read_text() + "\nname: other\n")
    write_shapes(repo / "other", per_class=3)
    dvc("add", "-q", "other", cwd=repo)
    run(["git", "add", "docs", "configs/other.yaml", "other.dvc", ".gitignore"], repo)
    run(["git", "commit", "-qm", "docs, another dataset and its config"], repo)
    assert run(["git", "rev-parse", "HEAD"], repo).strip() != champion.tags["git.commit"]

    # 2. again with nothing changed that the model depends on: no retraining, no new run or
    # version, completed
    second, second_s = run_deployment(prefect_api, tracked)
    assert second.returncode == 0, second.stdout + second.stderr
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1
    print(f"deployment runs: first {first_s:.1f} s, unchanged {second_s:.1f} s")

    # status: champion, runs, and the deployment's next run (from its cron schedule)
    state = tlops_cli(["status", NAME], prefect_api)
    assert state.returncode == 0, state.stdout + state.stderr
    assert "champion: v1" in state.stdout
    assert "  last retrain: no-op (" in state.stdout  # no part changed since the champion
    assert "vs champion v1, changed: nothing: a no-op" in state.stdout
    assert f"deployment tlops-retrain/{NAME}: 0 3 * * *" in state.stdout
    assert "next run: 20" in state.stdout and "T03:00:00" in state.stdout
    unknown = tlops_cli(["status", "no-such-model"], prefect_api)
    assert unknown.returncode == 2 and "no registered model or experiment" in unknown.stderr
