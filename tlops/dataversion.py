"""Resolve a DVC-versioned dataset at a git revision into a local cache keyed by its md5.

``data.dvc`` is read at the requested revision (or from the working tree), the exact version is
materialized from the DVC cache or the remote into ``<cache>/data/<md5>/`` (written aside and
renamed, so a half-copied folder is never used), and its md5 is checked against the pointer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from tlops.config import DataConfig
from tlops.errors import ConfigError, DataError, ServiceError
from tlops.redact import redact_text, redact_url

WORKTREE = "workdir"


class DataVersion(BaseModel):
    """A resolved dataset version: the small value that lineage and MLflow carry."""

    model_config = ConfigDict(frozen=True)

    path: str
    md5: str
    nfiles: int
    size: int
    rev: str
    remote_url: str | None
    dirty: bool
    dvc_file: str
    subdir: str = ""

    @property
    def images_root(self) -> Path:
        """The folder of images to use (the tracked folder, or its configured subdir)."""
        return Path(self.path) / self.subdir if self.subdir else Path(self.path)


def default_cache_root() -> Path:
    """``$TLOPS_CACHE``, else ``$XDG_CACHE_HOME/tlops``, else ``~/.cache/tlops``."""
    if env := os.environ.get("TLOPS_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tlops"


def _file_md5(path: Path) -> str:
    """md5 of one file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dir_md5(root: Path) -> tuple[str, int, int]:
    """DVC 3's md5 of a directory: (``<md5>.dir``, nfiles, size).

    Same algorithm as ``dvc add``: md5 of the JSON list of ``{"md5", "relpath"}`` entries
    sorted by relpath. Symlinks are followed, as DVC does.
    """
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and ".dvc" not in p.relative_to(root).parts
    )
    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        md5s = list(pool.map(_file_md5, files))
    entries = sorted(
        (
            {"md5": m, "relpath": p.relative_to(root).as_posix()}
            for p, m in zip(files, md5s, strict=True)
        ),
        key=lambda e: e["relpath"],
    )
    blob = json.dumps(entries, sort_keys=True).encode("utf-8")
    size = sum(p.stat().st_size for p in files)
    return hashlib.md5(blob, usedforsecurity=False).hexdigest() + ".dir", len(files), size


def _git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` and return stdout; failures raise :class:`ServiceError`."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        )
    except FileNotFoundError:
        raise ServiceError("git is not installed") from None
    except subprocess.CalledProcessError as exc:
        raise ServiceError(f"git {' '.join(args)} failed in {repo}: {exc.stderr.strip()}") from None
    return done.stdout


def resolve_rev(repo: Path, rev: str) -> str:
    """The full commit sha of ``rev``; an unknown revision is a usage error."""
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    except ServiceError:
        raise ConfigError(f"data.rev: unknown git revision {rev!r} in {repo}") from None


def read_pointer(repo: Path, dvc_file: str, rev: str | None) -> dict[str, Any]:
    """The single ``outs`` entry of a ``.dvc`` file, from the working tree or a revision."""
    where = f"{dvc_file} at {rev}" if rev else str(repo / dvc_file)
    if rev is None:
        path = repo / dvc_file
        if not path.is_file():
            raise DataError(
                f"{path}: DVC pointer not found; create it with `tlops sample` and `dvc add data`"
            )
        text = path.read_text(encoding="utf-8")
    else:
        try:
            text = _git(repo, "show", f"{rev}:{dvc_file}")
        except ServiceError:
            raise DataError(f"{where}: the file does not exist at that revision") from None
    try:
        outs = (yaml.safe_load(text) or {}).get("outs") or []
    except (yaml.YAMLError, AttributeError):
        raise DataError(f"{where}: not a valid .dvc file") from None
    if len(outs) != 1 or not str(outs[0].get("md5", "")).endswith(".dir"):
        raise DataError(f"{where}: expected one tracked directory (outs with an md5 ending .dir)")
    return dict(outs[0])


def remote_url(repo: Path) -> str | None:
    """URL of the default DVC remote (local paths made absolute), or None.

    Reads DVC's config levels (system, global, repo, local) without opening the repository,
    so concurrent runs on one checkout never contend for DVC's repository state.
    """
    from dvc.config import Config

    config = Config(dvc_dir=str(repo / ".dvc"))
    name = config["core"].get("remote")
    if not name or name not in config["remote"]:
        return None
    url = str(config["remote"][name]["url"])
    if "://" in url:
        return redact_url(url)  # lineage and messages only: DVC connects with its own config
    return str((repo / ".dvc" / url).resolve()) if not Path(url).is_absolute() else url


def _worktree_rev(repo: Path, dvc_file: str) -> str:
    """HEAD's sha when the pointer is committed unchanged, else ``workdir``."""
    try:
        if _git(repo, "status", "--porcelain", "--", dvc_file).strip():
            return WORKTREE
        return _git(repo, "rev-parse", "HEAD").strip()
    except ServiceError:  # no commits yet, or not a git repo
        return WORKTREE


def _copy_tree(source: Path, dest: Path) -> None:
    """Copy a folder of regular files (symlinks followed, as DVC hashes them)."""
    shutil.copytree(source, dest, symlinks=False, ignore=shutil.ignore_patterns(".dvc"))


def _fetch_rev(repo: Path, rev: str, data_path: str, dest: Path) -> None:
    """Materialize the tracked folder as of ``rev`` (DVC cache first, then the remote)."""
    from dvc.api import DVCFileSystem

    try:
        fs = DVCFileSystem(str(repo), rev=rev)
        fs.get(data_path, str(dest), recursive=True)
    except Exception as exc:  # DVC raises many types; all mean the remote/cache failed us
        raise ServiceError(
            redact_text(
                f"could not fetch {data_path} at {rev[:12]} from the DVC cache or remote: {exc}"
            )
        ) from None


def _materialize(cache: Path, md5: str, fill: Any) -> Path:
    """Return ``cache/data/<md5>``, filling it via ``fill(tmpdir)`` once, atomically."""
    final = cache / "data" / md5.removesuffix(".dir")
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".partial-") as tmp:
        staged = Path(tmp) / "data"
        fill(staged)
        found, _, _ = dir_md5(staged)
        if found != md5:
            raise DataError(f"materialized data has md5 {found}, expected {md5} (corrupt cache?)")
        try:
            staged.rename(final)
        except OSError:
            if not final.is_dir():  # lost a race to a concurrent run: theirs is as good
                raise
    return final


def resolve_data(config: DataConfig, cache_root: Path | None = None) -> DataVersion:
    """Resolve ``config`` into a materialized, md5-checked :class:`DataVersion`."""
    repo = config.repo.resolve()
    if not (repo / ".dvc").is_dir():
        raise DataError(f"{repo}: not a DVC repository (no .dvc folder); run `dvc init`")
    cache = cache_root or default_cache_root()
    rev = resolve_rev(repo, config.rev) if config.rev else None
    out = read_pointer(repo, config.dvc_file, rev)
    data_path = str(Path(config.dvc_file).parent / out["path"])
    md5, dirty = str(out["md5"]), False
    nfiles, size = int(out.get("nfiles", 0)), int(out.get("size", 0))
    if rev is None:
        source = repo / data_path
        if not source.is_dir():
            raise DataError(f"{source}: data folder missing; run `dvc pull` (or `tlops sample`)")
        found, found_files, found_size = dir_md5(source)
        if found != md5:
            if not config.allow_dirty:
                raise DataError(
                    f"{source} does not match {config.dvc_file} (md5 {found}, pointer {md5}); "
                    "run `dvc add` to record it, `dvc checkout` to restore it, "
                    "or set data.allow_dirty=true"
                )
            md5, nfiles, size, dirty = found, found_files, found_size, True
        path = _materialize(cache, md5, lambda dest: _copy_tree(source, dest))
    else:
        path = _materialize(cache, md5, lambda dest: _fetch_rev(repo, rev, data_path, dest))
    version = DataVersion(
        path=str(path),
        md5=md5,
        nfiles=nfiles,
        size=size,
        rev=rev or _worktree_rev(repo, config.dvc_file),
        remote_url=remote_url(repo),
        dirty=dirty,
        dvc_file=config.dvc_file,
        subdir=config.subdir,
    )
    if config.subdir and not version.images_root.is_dir():
        raise ConfigError(f"data.subdir: {config.subdir!r} is not a folder of {data_path}")
    return version
