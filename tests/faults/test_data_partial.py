"""A run killed (SIGKILL) while it materializes data leaves a partial folder; the next run
removes it, and never one whose writer is still alive (issue 10, item 14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import commit_data, copy_repo, init_repo, write_images

from tlops.adapters.dvc import dir_md5, resolve_data
from tlops.config import DataConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def _template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Built once: the repo below and its remote, for each test to copy."""
    base = tmp_path_factory.mktemp("partial-template")
    repo = base / "repo"
    init_repo(repo, base / "remote")
    write_images(repo / "data", {"cat": 3, "dog": 3}, seed=1)
    commit_data(repo, "v1", tag="v1")
    write_images(repo / "data", {"bird": 3}, seed=2)
    commit_data(repo, "v2")
    return repo, base / "remote"


@pytest.fixture
def repo(_template: tuple[Path, Path], tmp_path: Path) -> Path:
    """A repo with two data versions: v1 (tagged) and v2 (HEAD, the working tree); a private
    copy of the module's template, its remote at ``tmp_path/remote``."""
    return copy_repo(*_template, tmp_path)[0]


def _partials() -> list[Path]:
    return sorted((Path(os.environ["TLOPS_CACHE"]) / "data").glob(".partial-*"))


def _blocked_resolve(repo: Path, tmp_path: Path, rev: str) -> subprocess.Popen[bytes]:
    """A real process resolving ``rev``, blocked (fault point) once its copy is written."""
    ready = tmp_path / f"ready-{rev}"
    code = (
        "from pathlib import Path; from tlops.config import DataConfig; "
        "from tlops.adapters.dvc import resolve_data; "
        f"resolve_data(DataConfig(repo=Path({str(repo)!r}), rev={rev!r}))"
    )
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "TLOPS_FAULT_BLOCK": "data_fill",
        "TLOPS_FAULT_READY": str(ready),
    }  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the resolving process never reached its fault point (rc {proc.poll()})")
        time.sleep(0.2)
    return proc


def test_killed_materialize_is_cleaned_by_the_next_run(repo: Path, tmp_path: Path) -> None:
    writer = _blocked_resolve(repo, tmp_path, "v1")
    assert len(_partials()) == 1  # v1 is half-materialized, its writer alive

    # another version meanwhile: a live writer's partial folder is left alone
    v2 = resolve_data(DataConfig(repo=repo))
    assert len(_partials()) == 1

    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert len(_partials()) == 1  # what kill -9 leaves behind

    resolve_data(DataConfig(repo=repo))  # any later run (here: v2, already cached) cleans it
    assert _partials() == []
    v1 = resolve_data(DataConfig(repo=repo, rev="v1"))
    assert dir_md5(Path(v1.path))[0] == v1.md5 != v2.md5
    assert _partials() == []


def test_leftover_partial_folders_are_removed(repo: Path) -> None:
    """The shapes a killed run leaves: a partial folder of this version (its lock is free) and
    one of an older tlops (no md5 in its name), an hour old; both are removed."""
    cache = Path(os.environ["TLOPS_CACHE"]) / "data"
    md5 = dir_md5(repo / "data")[0].removesuffix(".dir")
    ours = cache / f".partial-{md5}-k1ll3d" / "data" / "train"
    legacy = cache / ".partial-abc123xy" / "data"
    for folder in (ours, legacy):
        folder.mkdir(parents=True)
        (folder / "half.png").write_bytes(b"\x89PNG")
        folder.chmod(0o555)  # read-only, as a sealed folder would be: still removed
    an_hour_ago = time.time() - 3700
    os.utime(legacy.parent, (an_hour_ago, an_hour_ago))
    version = resolve_data(DataConfig(repo=repo))
    assert _partials() == []
    assert dir_md5(Path(version.path))[0] == version.md5
