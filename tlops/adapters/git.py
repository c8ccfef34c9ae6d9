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


#: The project's own packages: their ``.py`` files make up ``code.sha256``.
PACKAGES = ("tlops", "flows", "tasks")
UNKNOWN = "unknown"


def source_sha256(packages: tuple[str, ...] = PACKAGES) -> str:
    """sha256 of the project's own source, without git: every ``.py`` file of ``packages``,
    in the order of their relative paths, each as path and contents; ``unknown`` when a package
    or a file cannot be read.

    The packages are found through the import system (where ``tlops`` itself was imported
    from), so the hash is the same for a checkout, a copy without ``.git`` or an installed
    wheel of the same code.
    """
    import importlib.util

    digest = hashlib.sha256()
    for name in packages:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return UNKNOWN
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            return UNKNOWN
        root = Path(locations[0])
        try:
            files = sorted(
                (p.relative_to(root).as_posix(), p)
                for p in root.rglob("*.py")
                if "__pycache__" not in p.relative_to(root).parts
            )
            for relative, path in files:
                data = path.read_bytes()
                digest.update(f"{name}/{relative}\0{len(data)}\0".encode())
                digest.update(data)
        except OSError:
            return UNKNOWN
        if not files:
            return UNKNOWN
    return digest.hexdigest()


def code_state(project: Path) -> dict[str, str]:
    """Commit, dirty flag, sha256 of the uncommitted diff, the lock file's sha256, and the
    sha256 of the project's own source files (known without git: :func:`source_sha256`)."""
    commit = _git(project, "rev-parse", "HEAD") or "unknown"
    status = _git(project, "status", "--porcelain", "--untracked-files=no")
    lock = project / "uv.lock"
    diff = _git(project, "diff", "HEAD") if status else ""
    return {
        "git.commit": commit,
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
        "git.diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else "none",
        "lock.sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else "none",
        "code.sha256": source_sha256(),
    }


def committed_unmodified(path: Path) -> bool:
    """Whether ``path`` is tracked by git and identical to its committed version (neither
    staged nor unstaged changes); False outside a repository or without git."""
    folder, name = path.resolve().parent, path.resolve().name
    if _git(folder, "ls-files", "--error-unmatch", "--", name) is None:
        return False
    return _git(folder, "status", "--porcelain", "--", name) == ""
