"""The code half of the lineage record: git commit, dirty flag, lock-file hash."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path


def _git(repo: Path, *args: str) -> str | None:
    """git output, or None when git or the repository is not there."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def code_state(project: Path) -> dict[str, str]:
    """Commit, dirty flag, sha256 of the uncommitted diff, and the lock file's sha256."""
    commit = _git(project, "rev-parse", "HEAD") or "unknown"
    status = _git(project, "status", "--porcelain", "--untracked-files=no")
    lock = project / "uv.lock"
    diff = _git(project, "diff", "HEAD") if status else ""
    return {
        "git.commit": commit,
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
        "git.diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else "none",
        "lock.sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else "none",
    }
