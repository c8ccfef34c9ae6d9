"""The git adapter with real repositories (``git init`` in a temp folder): code state,
committed-and-unmodified files, and the source hash of importable packages."""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlops.adapters.git import UNKNOWN, code_state, committed_unmodified, source_sha256


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return done.stdout.strip()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real git repository with a tracked file and a lock file, committed."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("print('v1')\n", encoding="utf-8")
    (repo / "uv.lock").write_text("lock v1\n", encoding="utf-8")
    git(repo, "add", "train.py", "uv.lock")
    git(repo, "commit", "-qm", "first")
    return repo


def test_code_state_of_a_clean_checkout(project: Path) -> None:
    state = code_state(project)
    assert state["git.commit"] == git(project, "rev-parse", "HEAD")
    assert state["git.dirty"] == "false" and state["git.diff_sha256"] == "none"
    assert state["lock.sha256"] == hashlib.sha256(b"lock v1\n").hexdigest()
    assert state["code.sha256"] == source_sha256() and len(state["code.sha256"]) == 64


def test_code_state_of_a_changed_checkout(project: Path) -> None:
    (project / "notes.txt").write_text("untracked\n", encoding="utf-8")
    assert code_state(project)["git.dirty"] == "false"  # untracked files do not count
    (project / "train.py").write_text("print('v2')\n", encoding="utf-8")
    state = code_state(project)
    diff = git(project, "diff", "HEAD")
    assert state["git.dirty"] == "true"
    assert state["git.diff_sha256"] == hashlib.sha256(diff.encode()).hexdigest()
    git(project, "add", "train.py")  # staged: still dirty, the same diff against HEAD
    assert code_state(project)["git.diff_sha256"] == state["git.diff_sha256"]
    git(project, "commit", "-qm", "second")
    after = code_state(project)
    assert after["git.dirty"] == "false" and after["git.commit"] != state["git.commit"]


def test_code_state_without_git_or_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    folder = tmp_path / "plain"
    folder.mkdir()
    state = code_state(folder)
    assert state["git.commit"] == "unknown" and state["git.dirty"] == "unknown"
    assert state["git.diff_sha256"] == "none" and state["lock.sha256"] == "none"
    assert state["code.sha256"] != UNKNOWN  # known from the source files, without git


def test_committed_unmodified(project: Path, tmp_path: Path) -> None:
    policy = project / "train.py"
    assert committed_unmodified(policy)
    assert committed_unmodified(project / "uv.lock")
    (project / "new.yaml").write_text("x: 1\n", encoding="utf-8")
    assert not committed_unmodified(project / "new.yaml")  # untracked
    git(project, "add", "new.yaml")
    assert not committed_unmodified(project / "new.yaml")  # staged, not committed
    policy.write_text("print('edited')\n", encoding="utf-8")
    assert not committed_unmodified(policy)  # modified
    git(project, "checkout", "--", "train.py")
    assert committed_unmodified(policy)
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("x: 1\n", encoding="utf-8")
    assert not committed_unmodified(outside)  # no repository
    assert not committed_unmodified(project / "missing.yaml")


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """An importable package of a unique name: (name, its folder)."""
    name = f"tlops_probe_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / "site" / name
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("", encoding="utf-8")
    (root / "sub" / "mod.py").write_text("X = 1\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    yield name, root
    sys.modules.pop(name, None)


def test_source_sha256_follows_the_source_only(package: tuple[str, Path]) -> None:
    name, root = package
    first = source_sha256((name,))
    assert len(first) == 64 and source_sha256((name,)) == first
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "cached.py").write_text("junk\n", encoding="utf-8")
    (root / "README.txt").write_text("not source\n", encoding="utf-8")
    assert source_sha256((name,)) == first  # caches and other files do not count
    (root / "sub" / "mod.py").write_text("X = 2\n", encoding="utf-8")
    changed = source_sha256((name,))
    assert changed != first
    (root / "sub" / "mod.py").rename(root / "sub" / "other.py")  # same bytes, other path
    assert source_sha256((name,)) not in (first, changed)
    assert source_sha256((name, "tlops")) != source_sha256((name,))


def test_source_sha256_of_missing_packages_is_unknown(package: tuple[str, Path]) -> None:
    name, _ = package
    assert source_sha256(("tlops_no_such_package_here",)) == UNKNOWN
    assert source_sha256((name, "tlops_no_such_package_here")) == UNKNOWN
    assert source_sha256(("tlops.errors",)) == UNKNOWN  # a module, not a package
