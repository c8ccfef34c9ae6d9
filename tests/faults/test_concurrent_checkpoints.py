"""Two runs of one config at once: each owns its checkpoint folder (issue 10, item 13)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMOKE, write_shapes

from tlops.config import load_config
from tlops.data.version import DataVersion
from tlops.jobs.validate import ManifestInfo, build_manifest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("train_worker.py")
FROZEN, FINE_TUNE = 2, 30
OVERRIDES = [
    "backbone.name=tiny_cnn", "backbone.weights=none", "data.image_size=16",
    "train.batch_size=8", f"train.frozen.epochs={FROZEN}", f"train.fine_tune.epochs={FINE_TUNE}",
]  # fmt: skip


def _inputs(tmp_path: Path) -> tuple[DataVersion, ManifestInfo]:
    """The shapes data and its manifest, shared by both runs (same inputs, same fingerprint)."""
    images = tmp_path / "data"
    write_shapes(images)
    info = build_manifest(images, load_config(Path(SMOKE), OVERRIDES).split, tmp_path / "m")
    data = DataVersion(
        path=str(images), md5="0" * 32 + ".dir", nfiles=info.nfiles, size=0, rev="test",
        remote_url=None, dirty=False, dvc_file="data.dvc",
    )  # fmt: skip
    return data, info


def _spec(
    tmp_path: Path, name: str, inputs: tuple[DataVersion, ManifestInfo],
    wait_for: dict[str, object] | None,
) -> Path:  # fmt: skip
    """A worker spec: the config, the inputs, where to write; ``wait_for`` (see the worker)."""
    spec = {
        "config": SMOKE, "overrides": OVERRIDES, "data": inputs[0].model_dump(),
        "manifest": inputs[1].model_dump(), "run_dir": str(tmp_path / name),
        "out": str(tmp_path / f"{name}.json"), "wait_for": wait_for,
    }  # fmt: skip
    path = tmp_path / f"{name}-spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def _start(spec: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(spec)], env=env, cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_two_concurrent_identical_runs_train_in_their_own_folders(tmp_path: Path) -> None:
    """The second run starts while the first is mid fine-tuning, with the same inputs: it
    neither resumes from the first's epochs nor loses its folder when the first finishes."""
    inputs = _inputs(tmp_path)
    first = _start(_spec(tmp_path, "first", inputs, None))
    second = _start(_spec(tmp_path, "second", inputs, {"phase": "fine_tune", "epochs": 1}))
    logs = [p.communicate(timeout=900)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], "\n---\n".join(logs)
    for name in ("first", "second"):
        summary = json.loads((tmp_path / f"{name}.json").read_text())
        assert summary["resumed_at"] is None, (name, summary["resumed_at"], logs)
        assert summary["phase_epochs"] == {"frozen": FROZEN, "fine_tune": FINE_TUNE}, name
        assert Path(summary["model_path"]).is_file()
    # the second found the first's folder held, and said where it trained instead
    assert "in use by another run of the same inputs" in logs[1], logs[1]
    assert f"held by {os.uname().nodename} {first.pid}" in logs[1], logs[1]
    # each run removed its own folder, and only its own, once done; no temporary is left over
    home = Path(os.environ["TLOPS_HOME"])
    assert not list((home / "checkpoints").iterdir())
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert not leftovers


HOLDER = """
import sys, time
from pathlib import Path
from tlops.model.training import checkpoint_folder
with checkpoint_folder(Path(sys.argv[1]), "key") as lease:
    (lease.folder / "state.json").write_text("{}")
    print(lease.folder, flush=True)
    time.sleep(600)
"""


def test_a_killed_holder_frees_its_folder_for_the_next_run(tmp_path: Path) -> None:
    """A live holder's folder is never handed out; once it is killed, the next run resumes it."""
    from tlops.model.training import checkpoint_folder

    root = tmp_path / "checkpoints"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        held = Path(holder.stdout.readline().strip())
        assert held == root / "key"
        lines: list[str] = []
        with checkpoint_folder(root, "key", lines.append) as lease:
            assert lease.folder == root / "key-2"
            assert (held / "state.json").is_file()  # the holder's epochs are untouched
            lease.remove()
        assert f"held by {os.uname().nodename} {holder.pid}" in lines[0]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with checkpoint_folder(root, "key", pytest.fail) as lease:  # nothing in use: no message
        assert lease.folder == held and (held / "state.json").is_file()
