"""The demo's steps on a fresh clone of this project: sample, DVC add + push, validate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import dvc, run

ROOT = Path(__file__).resolve().parents[2]
TLOPS = [sys.executable, "-m", "flows.cli"]


@pytest.mark.skipif(
    not (ROOT / ".git").exists(), reason="needs the project as a git clone (CI runs in one)"
)
def test_demo_steps_on_a_fresh_clone(tmp_path: Path, prefect_api: str) -> None:
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(ROOT), str(clone)], tmp_path)
    env = {**os.environ, "PYTHONPATH": str(clone), "PREFECT_API_URL": prefect_api}

    def tlops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*TLOPS, *args], cwd=clone, capture_output=True, text=True, env=env, timeout=600
        )

    sample = tlops("sample", "--out", "data", "--if-missing")
    assert sample.returncode == 0, sample.stderr
    assert "wrote 5220 images" in sample.stdout
    dvc("add", "-q", "data", cwd=clone)
    # the sample is deterministic: the committed pointer already names it
    assert run(["git", "status", "--porcelain", "data.dvc"], clone) == ""
    dvc("push", "-q", cwd=clone)
    assert (clone / ".dvc-remote" / "files" / "md5").is_dir()
    validate = tlops("validate", "configs/demo.yaml")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "data contract passed" in validate.stdout
    assert "files: 800 (test 600, train 100, val 100)" in validate.stdout
    source = tlops("validate", "configs/demo-source.yaml")
    assert source.returncode == 0, source.stdout + source.stderr
    assert "files: 4420" in source.stdout
    # the demo's training, shortened; tracked in the clone's own SQLite store
    env.pop("MLFLOW_TRACKING_URI", None)
    train = tlops("train", "configs/demo.yaml", "--set", "train.fine_tune.epochs=2")
    assert train.returncode == 0, train.stdout + train.stderr
    assert "### tlops train: done" in train.stdout
    assert (clone / "mlflow" / "mlflow.db").is_file()
    assert list((clone / "mlflow" / "artifacts").rglob("model.keras"))
