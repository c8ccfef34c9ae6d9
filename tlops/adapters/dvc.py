"""Resolve a DVC-versioned dataset at a git revision: in place, or into a cache keyed by md5.

``data.dvc`` is read at the requested revision or from the working tree. A working tree is
hashed by DVC itself (:func:`worktree_hash`: ``.dvcignore`` applies, and DVC's state means
unchanged files are not read again); when it matches its pointer it is read where it is, with
its file list (relative path -> md5) beside the cache for the manifest; so is a tree of DVC's
own links into its cache (``cache.type: symlink``), whose links the manifest then follows into
that cache only. A revision is materialized from the DVC cache or the remote into
``<cache>/data/<md5>/`` (written aside and renamed, so a half-copied folder is never used),
and its md5 is checked against the pointer.

Nothing is trusted by name: the pointer's md5 must be a DVC directory md5 and its paths stay in
the repository; links in the working tree may not leave the data folder (checked before
anything is hashed or copied); a cache folder is read-only with a verified marker beside it,
re-checked cheaply (file set, sizes, mtimes) on every run and in full (md5) on request, and
replaced when it fails. Partial folders of runs that were killed are removed by the next run.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tlops.config import DataConfig, stays_inside
from tlops.data.version import DataVersion
from tlops.errors import ConfigError, ContractFailedError, DataError, ServiceError
from tlops.paths import atomic_path, default_cache_root
from tlops.redact import redact_text, redact_url

WORKTREE = "workdir"

#: What a DVC directory md5 looks like; nothing else may name a cache folder.
MD5_DIR = re.compile(r"[0-9a-f]{32}\.dir")

#: Set to 1 (``tlops train/validate --verify``) to recompute the md5 of cached data.
VERIFY_ENV = "TLOPS_VERIFY_DATA"

#: Name prefix of the folders a version is materialized into before it is renamed in place.
PARTIAL = ".partial-"

#: The verified marker beside a cache folder: ``<md5>.verified.json``.
MARKER = ".verified.json"

#: Partial folders without an md5 in their name (older tlops) are abandoned after this long.
LEGACY_PARTIAL_AGE_S = 3600.0

#: How many offending links a one-line message names.
NAMED_IN_MESSAGE = 5

#: Where notes about the cache go (e.g. a discarded, modified folder).
Note = Callable[[str], None]


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
    if (
        not isinstance(outs, list) or len(outs) != 1 or not isinstance(outs[0], dict)
        or not str(outs[0].get("md5", "")).endswith(".dir")
    ):  # fmt: skip
        raise DataError(f"{where}: expected one tracked directory (outs with an md5 ending .dir)")
    return _checked_out(dict(outs[0]), where)


def _checked_out(out: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``outs`` entry if its md5 is a DVC directory md5 and its path stays in the repo.

    The md5 names the cache folder and the lineage: anything but 32 hex digits and ``.dir``
    (a path, ``..``) would hand out a folder the pointer does not describe.
    """
    md5, path = out.get("md5"), out.get("path")
    if not isinstance(md5, str) or not MD5_DIR.fullmatch(md5):
        raise DataError(
            f"{where}: outs[0].md5 {md5!r} is not a DVC directory md5 (32 hex digits and .dir)"
        )
    if not isinstance(path, str) or not path.strip("/") or not stays_inside(path):
        raise DataError(
            f"{where}: outs[0].path {path!r} must be a folder relative to the pointer, without '..'"
        )
    for field in ("nfiles", "size"):
        value = out.get(field, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"{where}: outs[0].{field} {value!r} is not a non-negative integer")
    return out


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


@dataclass(frozen=True)
class TreeHash:
    """A working tree as DVC hashes it: the directory md5, its size, and each tracked file's
    md5 by relative path (the files ``.dvcignore`` leaves out are not there)."""

    md5: str
    nfiles: int
    size: int
    files: dict[str, str]


def worktree_hash(
    repo: Path,
    dvc_file: str,
    full: bool = False,
    memo: Path | None = None,
    stats: dict[str, list[int]] | None = None,
) -> TreeHash:
    """Hash the folder ``dvc_file`` tracks with DVC's own machinery, as ``dvc status`` does:
    ``.dvcignore`` applies, and DVC's state database (inode, mtime, size -> md5) means files
    unchanged since they were last hashed (by ``dvc add``, ``dvc status`` or an earlier run)
    are not read again; ``full`` reads every file (a change that kept size and mtime).

    ``memo``: a folder where DVC's answer is kept with the stat of every file of a tree
    without links (:func:`_tree_stats`) and what else decides it (:func:`_memo_key`); a later
    call whose tree stats the same takes the answer from there: DVC's own walk, ignore
    matching and state lookups cost about 4.5 s for 100,000 files, the stat walk about 1 s.
    ``stats``: the tree's :func:`_tree_stats` when the caller has walked it already.
    """
    folder = None if full or memo is None else _tracked_folder(repo, dvc_file)
    if folder is not None and stats is None:
        stats = _tree_stats(folder)
    if memo is None or folder is None or stats is None:
        return _dvc_hash(repo, dvc_file, full)
    memo_file, key = _memo_file(memo, repo, dvc_file), _memo_key(repo, dvc_file, folder)
    if (known := _recall(memo_file, key, stats)) is not None:
        return known
    tree = _dvc_hash(repo, dvc_file, full)
    _remember_tree(memo_file, key, stats, tree)
    return tree


def _dvc_hash(repo: Path, dvc_file: str, full: bool) -> TreeHash:
    """:func:`worktree_hash` by DVC itself (``dvc_data``'s ``build``, a dry run)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.state import StateNoop
    from dvc_data.hashfile.tree import Tree

    where = _show(str(repo / dvc_file))
    try:
        with Repo(str(repo)) as dvc_repo:
            (stage,) = dvc_repo.stage.collect(str(repo / dvc_file))
            (out,) = stage.outs
            odb = out.cache if out.use_cache else out.local_cache
            if full:  # a copy of the object database that remembers no earlier hash
                odb = copy.copy(odb)
                odb.state = StateNoop()
            _, meta, obj = build(
                odb, out.fs_path, out.fs, out.hash_name, ignore=out.dvcignore, dry_run=True
            )
    except (DvcException, ValueError) as exc:
        raise DataError(
            f"{where}: DVC cannot hash the folder it tracks: {_show(str(exc))}"
        ) from None
    if not isinstance(obj, Tree):
        raise DataError(f"{where}: DVC tracks a file there, not a folder")
    files = {"/".join(key): str(hi.value) for key, _, hi in obj}
    return TreeHash(str(obj.hash_info.value), int(meta.nfiles or 0), int(meta.size or 0), files)


def _tracked_folder(repo: Path, dvc_file: str) -> Path | None:
    """The folder the working tree's ``dvc_file`` tracks; None if it cannot be read."""
    try:
        return repo / Path(dvc_file).parent / str(read_pointer(repo, dvc_file, None)["path"])
    except DataError:
        return None


def _tree_stats(folder: Path) -> dict[str, list[int]] | None:
    """(size, mtime in ns, inode) of every file under ``folder``, ignored ones too, by
    relative path; None when it holds a link (what a link points to is not in its own stat)
    or cannot be read, or is not a folder."""
    stats: dict[str, list[int]] = {}
    problems: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=problems.append):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)  # noqa: PTH118 (100,000 strings, not Paths)
            try:
                info = os.lstat(path)
            except OSError:
                return None
            if stat.S_ISLNK(info.st_mode):
                return None
            if stat.S_ISREG(info.st_mode):
                stats[os.path.relpath(path, folder)] = [info.st_size, info.st_mtime_ns, info.st_ino]
    return None if problems or not folder.is_dir() else stats


def _memo_file(memo: Path, repo: Path, dvc_file: str) -> Path:
    """The memo of one tracked folder (one file per repository and pointer)."""
    name = hashlib.sha256(f"{repo.resolve()}\0{dvc_file}".encode()).hexdigest()[:32]
    return memo / f"{name}.json"


def _memo_key(repo: Path, dvc_file: str, folder: Path) -> str:
    """sha256 of what decides DVC's answer besides the files: DVC's version, the pointer,
    the DVC config and every ``.dvcignore`` from the repository down to ``folder`` (those
    inside it are files of its stats)."""
    from importlib.metadata import version

    digest = hashlib.sha256(version("dvc").encode())
    parts = [repo / dvc_file, repo / ".dvc" / "config", repo / ".dvc" / "config.local"]
    parts += [d / ".dvcignore" for d in folder.parents if _within(d, repo)]
    for part in parts:
        digest.update(str(part).encode())
        with contextlib.suppress(OSError):
            digest.update(part.read_bytes())
    return digest.hexdigest()


def _recall(memo_file: Path, key: str, stats: dict[str, list[int]]) -> TreeHash | None:
    """The tree kept in ``memo_file`` when it was kept for these stats and key."""
    try:
        kept = json.loads(memo_file.read_text(encoding="utf-8"))
        if kept["key"] != key or kept["stats"] != stats:
            return None
        return TreeHash(str(kept["md5"]), int(kept["nfiles"]), int(kept["size"]), kept["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember_tree(memo_file: Path, key: str, stats: dict[str, list[int]], tree: TreeHash) -> None:
    """Keep DVC's answer for these stats (taken before DVC hashed: a file changed meanwhile
    has newer stats, so the memo is not used for it); a memo that cannot be written costs a
    DVC walk next time."""
    record = {"key": key, "stats": stats, "md5": tree.md5, "nfiles": tree.nfiles,
              "size": tree.size, "files": tree.files}  # fmt: skip
    with contextlib.suppress(OSError):
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(memo_file) as tmp:
            tmp.write_text(json.dumps(record), encoding="utf-8")


def write_listing(cache: Path, tree: TreeHash) -> Path:
    """The tree's file list (relative path -> md5) as ``<cache>/listings/<md5>.json``: what
    the manifest scans (so ``.dvcignore``-d files are never in it). Its content is fixed by
    the md5 in its name, so an existing one is kept."""
    folder = cache / "listings"
    path = folder / f"{tree.md5.removesuffix('.dir')}.json"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"md5": tree.md5, "files": tree.files}), encoding="utf-8")
    return path


def _show(text: str) -> str:
    """``text`` for a one-line message: control characters and undecodable bytes escaped."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown.encode("utf-8", "backslashreplace").decode("utf-8")


def _within(path: Path, base: Path) -> bool:
    """Whether the (resolved) ``path`` is ``base`` or below it."""
    return path == base or base in path.parents


def _link_problem(link: Path, root: Path, allowed: tuple[Path, ...]) -> str | None:
    """Why following ``link`` would leave ``root`` (and ``allowed``) or never end; None if fine."""
    try:
        target = link.resolve(strict=True)
    except FileNotFoundError:
        return "broken link"
    except (OSError, RuntimeError):  # ELOOP; pathlib raises RuntimeError for loops
        return "link loop"
    if target.is_dir() and _within(link.parent.resolve(), target):
        return "link loop: points to a folder that contains it"
    if _within(target, root):
        return None
    if any(_within(target, base) and _cache_object(target, base) for base in allowed):
        return None
    return "points outside the data folder"


#: A DVC cache object, relative to the cache folder: ``files/md5/ab/<30 hex>`` (DVC 3) or
#: ``ab/<30 hex>`` (DVC 2); the name is the md5 of the content, checked against the pointer.
_CACHE_OBJECT = re.compile(r"(files/md5/)?[0-9a-f]{2}/[0-9a-f]{30}")


def _cache_object(target: Path, cache: Path) -> bool:
    """Whether ``target`` is a file with the path of a DVC cache object under ``cache``: a
    committed ``cache.dir`` (even ``/``) never lets a link reach any other file."""
    relative = target.relative_to(cache).as_posix()
    return target.is_file() and _CACHE_OBJECT.fullmatch(relative) is not None


def check_links(source: Path, allowed: tuple[Path, ...] = ()) -> bool:
    """Refuse symlinks in ``source`` that leave it (or the ``allowed`` folders), dangle or loop;
    return whether it holds any (accepted) link.

    Runs before anything is hashed or copied: both follow links, so an outward link would bring
    a file from outside into the data and the contract, which scans the copy, would never see
    the link. Links into ``allowed`` (the DVC cache, for ``cache.type: symlink``) are DVC's own.
    Raises :class:`ContractFailedError` (exit 3) naming the links relative to ``source``.
    """
    root = source.resolve()
    found: list[str] = []
    links = False
    for dirpath, dirnames, filenames in os.walk(source):  # never descends into a linked folder
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            if not path.is_symlink():
                continue
            links = True
            if problem := _link_problem(path, root, allowed):
                found.append(f"{_show(path.relative_to(source).as_posix())} ({problem})")
    if not found:
        return links
    shown = ", ".join(found[:NAMED_IN_MESSAGE])
    more = len(found) - NAMED_IN_MESSAGE
    shown += f" and {more} more" if more > 0 else ""
    raise ContractFailedError(
        f"data contract failed: inside_folder (files stay inside the data folder "
        f"{_show(str(source))}, no outward, broken or looping symlinks): {shown}"
    )


def _dvc_cache_dir(repo: Path) -> Path:
    """The DVC cache folder of ``repo`` (``cache.dir``, else ``.dvc/cache``), resolved."""
    from dvc.config import Config
    from dvc.config import ConfigError as DvcConfigError

    try:
        configured = Config(dvc_dir=str(repo / ".dvc"))["cache"].get("dir")
    except DvcConfigError:
        configured = None
    if not configured:
        return (repo / ".dvc" / "cache").resolve()
    path = Path(str(configured))
    return (path if path.is_absolute() else repo / ".dvc" / path).resolve()


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


def _dereference(folder: Path) -> None:
    """Replace the symlinks of a staged folder by copies of their targets.

    DVC's ``cache.type: symlink`` checks files out as links into the DVC cache; the tlops
    cache keeps its own bytes so that what was verified cannot change underneath it (hard
    links are broken the same way, by a copy).
    """
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                copy = path.with_name(f".{name}.copy")
                shutil.copy2(path, copy)
                copy.replace(path)
            elif path.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    rel = _show(path.relative_to(folder).as_posix())
                    raise DataError(f"materialized data: {rel} is a broken link") from None
                path.unlink()
                if target.is_dir():
                    shutil.copytree(target, path)
                else:
                    shutil.copy2(target, path)


@contextmanager
def _locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path``; yields False when ``wait`` is off and it is
    taken. The kernel releases it when the holder dies, even by SIGKILL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _lock_file(cache: Path, hexid: str) -> Path:
    """The lock held while the cache folder of ``hexid`` is written, checked or replaced."""
    return cache / "locks" / f"data-{hexid}.lock"


def remove_tree(path: Path) -> None:
    """Delete a file or folder, read-only cache folders included (write access restored)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    for dirpath, _, _ in os.walk(path):  # top-down: a folder is writable before its children go
        Path(dirpath).chmod(0o700)
    shutil.rmtree(path)


def _partial_owner(name: str) -> str | None:
    """The md5 (hex) in a partial folder's name ``.partial-<hex>-<random>``, else None."""
    rest = name.removeprefix(PARTIAL)
    hexid, dash = rest[:32], rest[32:33]
    return hexid if dash == "-" and re.fullmatch(r"[0-9a-f]{32}", hexid) else None


def _clean_partials(cache: Path, held: str, note: Note) -> None:
    """Remove partial folders whose writer is gone (a run killed while materializing).

    The writer of ``.partial-<hex>-*`` holds the lock of ``<hex>`` until it is done, so a lock
    that can be taken means nobody writes there. Partial folders without an md5 in their name
    (an older tlops) count as abandoned after :data:`LEGACY_PARTIAL_AGE_S`.
    """
    for partial in sorted((cache / "data").glob(f"{PARTIAL}*")):
        owner = _partial_owner(partial.name)
        if owner is None:
            stale = time.time() - partial.lstat().st_mtime > LEGACY_PARTIAL_AGE_S
        elif owner == held:
            stale = True
        else:
            with _locked(_lock_file(cache, owner), wait=False) as free:
                if free:
                    remove_tree(partial)
                    note(f"data cache: removed {partial.name}, left by an interrupted run")
            continue
        if stale:
            remove_tree(partial)
            note(f"data cache: removed {partial.name}, left by an interrupted run")


def _scan(folder: Path) -> tuple[dict[str, list[int]], list[str]]:
    """``{relpath: [size, mtime_ns]}`` of the files below ``folder``, and what is not a
    regular file or folder (symlinks, devices), by relpath."""
    stamps: dict[str, list[int]] = {}
    odd: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            info = path.lstat()
            rel = path.relative_to(folder).as_posix()
            if stat.S_ISREG(info.st_mode):
                stamps[rel] = [info.st_size, info.st_mtime_ns]
            elif not stat.S_ISDIR(info.st_mode):
                odd.append(rel)
    return stamps, odd


def _seal(folder: Path, marker: Path, md5: str) -> None:
    """Make ``folder`` read-only and write its verified marker (md5 and file stamps) beside it.

    Called only once the folder's md5 was computed and found equal to ``md5``.
    """
    for dirpath, _, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            path = Path(dirpath, name)
            path.chmod(stat.S_IMODE(path.lstat().st_mode) & ~0o222)
        Path(dirpath).chmod(stat.S_IMODE(Path(dirpath).lstat().st_mode) & ~0o222)
    stamps, _ = _scan(folder)
    staged = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    staged.write_text(json.dumps({"md5": md5, "files": stamps}, sort_keys=True), encoding="utf-8")
    staged.replace(marker)


def _marked_files(marker: Path, md5: str) -> dict[str, Any] | None:
    """The file stamps of a verified marker written for ``md5``; None when there is none."""
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
        files = recorded["files"] if recorded["md5"] == md5 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) else None


def _cache_problem(folder: Path, marker: Path, md5: str, full: bool) -> str | None:
    """Why the cached ``folder`` may not be used as ``md5``; None when it checks out.

    Cheap check (every run): the file set, sizes and mtimes against the verified marker. Full
    check (``full``): the md5 recomputed. A folder without a marker gets the full check.
    """
    if folder.is_symlink() or not folder.is_dir():
        return "not a folder"
    files = _marked_files(marker, md5)
    if files is None:
        found = dir_md5(folder)[0]
        return None if found == md5 else f"no verified marker, and its md5 is {found}"
    stamps, odd = _scan(folder)
    added, gone = sorted(stamps.keys() - files.keys()), sorted(files.keys() - stamps.keys())
    changed = sorted(k for k in stamps.keys() & files.keys() if stamps[k] != files[k])
    for what, names in (
        ("not a regular file", odd), ("file added", added), ("file removed", gone),
        ("file changed (size or mtime)", changed),
    ):  # fmt: skip
        if names:
            more = f" and {len(names) - 1} more" if len(names) > 1 else ""
            return f"{what}: {_show(names[0])}{more}"
    if full and (found := dir_md5(folder)[0]) != md5:
        return f"its md5 is {found}"
    return None


def _materialize(
    cache: Path, md5: str, fill: Callable[[Path], None], full: bool, note: Note
) -> Path:
    """Return the verified, read-only ``cache/data/<md5>``, filling it via ``fill`` if needed.

    Under the md5's lock: stale partial folders are removed; a cached folder is checked (see
    :func:`_cache_problem`) and, when it fails, discarded (said through ``note``) and
    materialized again; a new one is filled aside, md5-checked, renamed into place and sealed.
    """
    hexid = md5.removesuffix(".dir")
    if not re.fullmatch(r"[0-9a-f]{32}", hexid):  # read_pointer refuses these; never a path
        raise DataError(f"{md5!r} is not a DVC directory md5")
    data = cache / "data"
    final, marker = data / hexid, data / f"{hexid}{MARKER}"
    data.mkdir(parents=True, exist_ok=True)
    with _locked(_lock_file(cache, hexid)):
        _clean_partials(cache, hexid, note)
        if final.exists() or final.is_symlink():
            problem = _cache_problem(final, marker, md5, full)
            if problem is None:
                if _marked_files(marker, md5) is None:
                    _seal(final, marker, md5)  # verified in full just now (no marker yet)
                return final
            note(f"data cache {_show(str(final))}: {problem}; discarded, materializing it again")
            marker.unlink(missing_ok=True)
            remove_tree(final)
        staging = Path(tempfile.mkdtemp(dir=data, prefix=f"{PARTIAL}{hexid}-"))
        try:
            staged = staging / "data"
            fill(staged)
            _fault_block("data_fill")
            _dereference(staged)
            found, _, _ = dir_md5(staged)
            if found != md5:
                raise DataError(
                    f"materialized data has md5 {found}, expected {md5} (corrupt cache?)"
                )
            staged.rename(final)
        finally:
            remove_tree(staging)
        _seal(final, marker, md5)
    return final


def _fault_block(point: str) -> None:
    """Test hook of the fault tests (as in :mod:`tlops.adapters.registry`):
    ``$TLOPS_FAULT_BLOCK`` naming ``point`` writes this pid to
    ``$TLOPS_FAULT_READY`` and blocks, for the test to kill it."""
    if os.environ.get("TLOPS_FAULT_BLOCK") != point:
        return
    if ready := os.environ.get("TLOPS_FAULT_READY"):
        Path(ready).write_text(f"{os.getpid()}\n", encoding="utf-8")
    while True:
        time.sleep(60)


def verify_requested() -> bool:
    """Whether a full md5 check of cached data was asked for (``$TLOPS_VERIFY_DATA``)."""
    return os.environ.get(VERIFY_ENV, "").strip().lower() not in ("", "0", "false", "no")


def resolve_data(
    config: DataConfig,
    cache_root: Path | None = None,
    verify: bool | None = None,
    note: Note | None = None,
) -> DataVersion:
    """Resolve ``config`` into an md5-checked :class:`DataVersion`: the working tree itself
    when it matches its pointer (``in_place``), else a materialized copy.

    ``verify``: read every byte again, of the working tree (not DVC's state) or of an already
    cached folder (default: :func:`verify_requested`); ``note``: where cache repairs are
    reported (default: a warning on this module's logger).
    """
    full = verify_requested() if verify is None else verify
    tell = note or logging.getLogger(__name__).warning
    repo = config.repo.resolve()
    if not (repo / ".dvc").is_dir():
        raise DataError(f"{repo}: not a DVC repository (no .dvc folder); run `dvc init`")
    cache = cache_root or default_cache_root()
    rev = resolve_rev(repo, config.rev) if config.rev else None
    out = read_pointer(repo, config.dvc_file, rev)
    data_path = str(Path(config.dvc_file).parent / out["path"])
    md5, dirty, in_place, listing = str(out["md5"]), False, False, ""
    link_roots: tuple[str, ...] = ()
    nfiles, size = int(out.get("nfiles", 0)), int(out.get("size", 0))
    if rev is None:
        source = repo / data_path
        if not source.is_dir():
            raise DataError(f"{source}: data folder missing; run `dvc pull` (or `tlops sample`)")
        if not _within(source.resolve(), repo):
            raise ContractFailedError(
                f"data contract failed: inside_folder: {_show(data_path)} is a symlink to "
                f"{_show(str(source.resolve()))}, outside the repository {_show(str(repo))}"
            )
        stats = _tree_stats(source)  # one walk; None when the tree holds a link
        dvc_cache = _dvc_cache_dir(repo)
        if stats is None and check_links(source, (dvc_cache,)):  # DVC's own links
            link_roots = (str(dvc_cache),)
        tree = worktree_hash(repo, config.dvc_file, full, cache / "worktrees", stats)
        if tree.md5 != md5:
            if not config.allow_dirty:
                raise DataError(
                    f"{source} does not match {config.dvc_file} (md5 {tree.md5}, pointer "
                    f"{md5}); run `dvc add` to record it, `dvc checkout` to restore it, "
                    "or set data.allow_dirty=true"
                )
            md5, nfiles, size, dirty = tree.md5, tree.nfiles, tree.size, True
        listing = str(write_listing(cache, tree))
        # read where it is (links into DVC's cache too): no second copy of the data
        path, in_place = source, True
        if (cache / "data").is_dir():  # what runs killed while materializing left
            _clean_partials(cache, "", tell)
    else:
        fetch = lambda dest: _fetch_rev(repo, rev, data_path, dest)  # noqa: E731
        path = _materialize(cache, md5, fetch, full, tell)
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
        in_place=in_place,
        listing=listing,
        link_roots=link_roots,
    )
    if config.subdir and not version.images_root.is_dir():
        raise ConfigError(f"data.subdir: {config.subdir!r} is not a folder of {data_path}")
    return version


def check_unchanged(config: DataConfig, version: DataVersion) -> None:
    """Raise :class:`DataError` (exit 3) when a working tree read in place no longer has the
    md5 it had when it was resolved (edited, or checked out to another version, during the
    run): the run's results would not be of the data its lineage names. Stat-only for
    unchanged files (DVC's state); a materialized copy is read-only and sealed, never checked."""
    if not version.in_place:
        return
    memo = default_cache_root() / "worktrees"
    now = worktree_hash(config.repo.resolve(), config.dvc_file, memo=memo)
    if now.md5 != version.md5:
        raise DataError(
            f"{_show(version.path)} changed during the run (md5 {now.md5}, was {version.md5}): "
            "nothing is registered; run again once the data folder is left alone"
        )
