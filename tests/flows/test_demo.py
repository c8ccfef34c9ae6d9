"""The demo's steps on a fresh clone: sample, DVC add + push, validate, pretrain, train, lineage."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import dvc, run, tlops_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    not (ROOT / ".git").exists(), reason="needs the project as a git clone (CI runs in one)"
)
def test_demo_steps_on_a_fresh_clone(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(ROOT), str(clone)], tmp_path)
    # what the clone holds (configs, data.dvc, the sample's recipe, the default MLflow home)
    # is what runs: the CLI runs in the clone's folder, on the code of the committed tree
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def tlops(*args: str) -> subprocess.CompletedProcess[str]:
        return tlops_cli(list(args), prefect_api, cwd=clone)

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
    # the demo's chain, shortened: pretrain a backbone on the source part, register it, train
    # the target on it; tracked in the clone's own SQLite store
    short = ["--set", "train.fine_tune.epochs=2", "--set"]
    # the gate refuses a metric never logged whatever was trained: one epoch is enough
    quick = ["--set", "train.fine_tune.epochs=1", "--set"]
    quick += ["gate.values=[{metric: loss_never_logged, max: 1}]"]
    rejected = tlops("pretrain", "configs/demo-source.yaml", *quick)
    assert rejected.returncode == 4, rejected.stdout + rejected.stderr
    assert "no metric named 'loss_never_logged'" in rejected.stdout
    lenient = [*short, "gate.values=[{metric: test_accuracy, min: 0}]"]
    pretrain = tlops("pretrain", "configs/demo-source.yaml", *lenient)
    assert pretrain.returncode == 0, pretrain.stdout + pretrain.stderr
    assert "promoted: glyphs-backbone v1 is champion" in pretrain.stdout
    train = tlops("train", "configs/demo.yaml", *lenient, "--set", "train.frozen.epochs=1")
    assert train.returncode == 0, train.stdout + train.stderr
    assert "promoted: digits v1 is champion" in train.stdout
    assert (clone / "mlflow" / "mlflow.db").is_file()
    assert list((clone / "mlflow" / "artifacts").rglob("model.keras"))
    # the fine-tuned model's lineage reaches the backbone version and the backbone's data
    card = tlops("lineage", "models:/digits@champion")
    assert card.returncode == 0, card.stderr
    assert "backbone.model_version: `models:/glyphs-backbone/1`" in card.stdout
    assert "### backbone lineage (models:/glyphs-backbone/1)" in card.stdout
    assert card.stdout.count("data.md5: `e90bd4910e2c497e8fb540186b52483c.dir`") == 2
    assert "subdir: source" in card.stdout and "subdir: target" in card.stdout
    # a backbone of another architecture is refused, naming the field
    wrong = tlops("train", "configs/demo.yaml", "--set", "backbone.name=mobilenet_v2")
    assert wrong.returncode == 2 and "backbone.weights" in wrong.stderr
