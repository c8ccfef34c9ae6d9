"""Scan an image folder into a manifest: one row per file, read in parallel.

Layouts: ``root/<split>/<class>/<file>`` when any of train/val/test exists at the top, else
``root/<class>/<file>`` (split assigned later by :mod:`tlops.data.split`). Everything odd is kept as
a row (stray files, unknown split folders, symlinks leaving the folder or looping, unreadable
files and folders, names that are not UTF-8 or hold control characters, files over the size
limits) so that the contract can name it; nothing is silently skipped, nothing raises.

Such a name is stored escaped (:func:`tlops.safetext.escape`), so the manifest, its reports and
every one-line message stay valid UTF-8 on one line. Files are hashed in chunks, never read
whole, and only the contract's formats are ever handed to Pillow.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import multiprocessing
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pandas as pd
from PIL import Image, ImageFile, UnidentifiedImageError

from tlops.config import DEFAULT_SPLIT_NAMES, PILLOW_MAX_PIXELS, SPLITS, ContractConfig
from tlops.data.inputs import (
    DECODE_ERRORS,
    MAX_DECODE_THREADS,
    SUPPORTED_FORMATS,
    check_pixels,
    draft_jpeg,
    identify_image,
    open_image,
    strict_decoding,
)
from tlops.data.near_duplicates import HASH_INPUT_SIDE, perceptual_hash
from tlops.data.rowcache import CONTENT_COLUMNS, cache_file, load_rows, save_rows
from tlops.errors import DataError
from tlops.safetext import escape, name_problem, one_line

COLUMNS = [
    "path", "split", "label", "format", "mode", "width", "height", "channels", "bit_depth",
    "bytes", "sha256", "decodable", "error", "symlink", "inside_root", "name_ok", "phash",
]  # fmt: skip

#: Names that are never data: VCS and OS leftovers.
IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db", ".gitignore", ".dvcignore", "desktop.ini"})

#: Files to read from which :func:`scan` reads them in worker processes, not threads: the
#: interpreter lock keeps threads to about one core, and starting the workers costs about half a
#: second (2 cores, 64x48 JPEGs: as fast as threads at 1,000 files, 15 % faster at 2,000, 1.8
#: times as fast at 4,000).
PROCESS_MIN_FILES = 2_000
#: Files handed to a worker process at a time (their rows come back together).
PROCESS_CHUNK = 256

_BIT_DEPTH = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


@dataclass(frozen=True)
class Layout:
    """What the folder structure says: splits present and class folders per split."""

    split_folders: bool
    classes: dict[str, list[str]] = field(default_factory=dict)  # split ("" if none) -> classes
    #: top folder name -> the split it holds (``validation`` -> ``val``), for the folders found
    folders: dict[str, str] = field(default_factory=dict)

    def split_of(self, folder: str) -> str:
        """The split a top folder holds: its mapped name, else the folder's own name."""
        return self.folders.get(folder, folder)


@dataclass(frozen=True)
class Limits:
    """What the scan may read: formats handed to Pillow, the largest file and image, and the
    folders outside the data folder that its symlinks may point into (``link_roots``: DVC's
    cache, whose ``cache.type: symlink`` checks files out as links into it)."""

    formats: tuple[str, ...] = SUPPORTED_FORMATS
    max_bytes: int = ContractConfig.model_fields["max_bytes"].default
    max_pixels: int = ContractConfig.model_fields["max_pixels"].default
    link_roots: tuple[str, ...] = ()

    @classmethod
    def of(cls, contract: ContractConfig) -> Limits:
        """The limits of a data contract."""
        return cls(tuple(contract.formats), contract.max_bytes, contract.max_pixels)


@dataclass(frozen=True)
class _Entry:
    """A file found by the walk, before it is read; names are escaped when unsafe."""

    abspath: Path
    relpath: str
    split: str
    label: str
    name_error: str = ""  # why the name is unsafe; such a file is never read
    walk_error: str = ""  # a folder that could not be listed
    raw: str = ""  # the relative path as the file system has it (unescaped): the listing's key


def _shown(name: str) -> str:
    """A file or folder name as the manifest stores it: as is, or escaped when unsafe."""
    return name if name_problem(name) is None else escape(name)


def _subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder`` (none when it cannot be listed: the walk reports it)."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def detect_layout(root: Path, split_names: Mapping[str, str] | None = None) -> Layout:
    """Tell the split-folder layout from the class-folder one and list class folders.

    ``split_names``: top folder names that hold a split besides train / val / test (default
    :data:`DEFAULT_SPLIT_NAMES`: ``validation`` and ``valid`` are val). Classes are listed
    under the split each folder holds.
    """
    if not root.is_dir():
        raise DataError(f"{one_line(root)}: data folder not found")
    names = {**(DEFAULT_SPLIT_NAMES if split_names is None else split_names)}
    names.update({split: split for split in SPLITS})
    top = _subfolders(root)
    folders = {p.name: names[p.name] for p in top if p.name in names}
    if not folders:
        return Layout(False, {"": [_shown(p.name) for p in top]})
    classes: dict[str, list[str]] = {}
    for split_dir in top:
        split = folders.get(split_dir.name, _shown(split_dir.name))
        found = [_shown(p.name) for p in _subfolders(split_dir)]
        classes[split] = sorted({*classes.get(split, []), *found})
    return Layout(True, classes, folders)


def _entry(
    root: Path, abspath: Path, layout: Layout, walk_error: str = "", folder: Sequence[str] = ()
) -> _Entry:
    """The entry of one file (or unlistable folder) with its split and label from its folders.

    ``folder``: the parts of its folder's path relative to ``root``, when the caller knows them
    (a walk lists a whole folder: its path is cut into parts once, not once per file).
    """
    parts = (*folder, abspath.name) if folder else abspath.relative_to(root).parts
    problems = [p for p in map(name_problem, parts) if p is not None]
    shown = [_shown(p) for p in parts] if problems else list(parts)
    if layout.split_folders:
        split = layout.split_of(shown[0]) if len(parts) > 1 else ""
        label = shown[1] if len(parts) == 3 else ""
    else:
        split = ""
        label = shown[0] if len(parts) == 2 else ""
    name_error = f"{problems[0]}; not read" if problems else ""
    raw = "/".join(parts)
    return _Entry(abspath, "/".join(shown), split, label, name_error, walk_error, raw)


def _walk(root: Path, layout: Layout) -> Iterator[_Entry]:
    """Yield every file under root with its split and label from the folder names.

    A folder that cannot be listed is yielded too (with ``walk_error``), never skipped.
    """
    unlisted: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted.append, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        # symlinked directories are reported as entries, never followed
        linked = [d for d in dirnames if (Path(dirpath) / d).is_symlink()]
        dirnames[:] = [d for d in dirnames if d not in linked]
        folder = Path(dirpath)
        parts = folder.relative_to(root).parts
        for name in sorted(filenames) + linked:
            if name in IGNORED_NAMES:
                continue
            yield _entry(root, folder / name, layout, folder=parts)
    for error in unlisted:
        folder = Path(os.fsdecode(error.filename or root))
        if folder != root and folder.is_relative_to(root):
            reason = f"folder cannot be listed: {error.strerror or 'error'}; not read"
            yield _entry(root, folder, layout, reason)
        else:
            raise DataError(f"{one_line(root)}: data folder cannot be listed: {error.strerror}")


def _allowed_link(path: Path, root: Path, limits: Limits) -> bool:
    """Whether the link ``path`` resolves inside ``root`` or one of ``limits.link_roots``.

    Raises ``OSError`` / ``RuntimeError`` for a link that cannot be resolved (a loop).
    """
    return any(_inside(path, folder) for folder in (root, *map(Path, limits.link_roots)))


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` resolves to a location inside ``root``.

    Raises ``OSError`` / ``RuntimeError`` for a link that cannot be resolved (a loop).
    """
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def read_entry(entry: _Entry, root: Path, limits: Limits | None = None) -> dict[str, Any]:
    """Read one file: size, sha256 (streamed), and what Pillow can decode of it.

    Never raises: a problem is the row's ``error``, with ``decodable`` false, or unset when
    the file was not tried (outside the folder, an unsafe name, over a size limit).
    """
    limits = limits or Limits()
    row: dict[str, Any] = {
        "path": entry.relpath, "split": entry.split, "label": entry.label, "format": None,
        "mode": None, "width": None, "height": None, "channels": None, "bit_depth": None,
        "bytes": None, "sha256": None, "decodable": None, "error": "", "symlink": False,
        "inside_root": True, "name_ok": not entry.name_error, "phash": None,
    }  # fmt: skip
    if entry.name_error or entry.walk_error:
        row["error"] = entry.name_error or entry.walk_error
        row["decodable"] = None if entry.name_error else False
        return row
    row["symlink"] = entry.abspath.is_symlink()
    if row["symlink"]:
        try:
            inside = _allowed_link(entry.abspath, root, limits)
        except (OSError, RuntimeError):  # a loop, or a link too deep to resolve
            row["decodable"] = False
            row["error"] = "symlink loop (the link cannot be resolved); not read"
            return row
        if not inside:
            row["inside_root"] = False
            row["error"] = "symlink points outside the data folder; not read"
            return row
    row.update(_read_file(entry.abspath, limits))
    return row


def _read_file(path: Path, limits: Limits) -> dict[str, Any]:
    """Size, streamed sha256 and decoded properties of a regular file, all from one open."""
    if not path.is_file():  # also keeps FIFOs and devices from being opened
        return {"decodable": False, "error": "not a regular file"}
    out: dict[str, Any] = {}
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return {"decodable": False, "error": "not a regular file"}
            out["bytes"] = info.st_size
            if info.st_size > limits.max_bytes:
                out["error"] = (
                    f"{info.st_size} bytes is over max_bytes {limits.max_bytes}; not read"
                )
                return out
            out["sha256"] = hashlib.file_digest(handle, "sha256").hexdigest()
            out.update(_decode(handle, limits.formats, limits.max_pixels))
    except OSError as exc:
        out.update(decodable=False, error=f"cannot read: {exc.strerror or one_line(exc)}")
    return out


def _content(img: Image.Image) -> dict[str, Any]:
    """Decode every pixel of an opened image (a large JPEG at a reduced scale that keeps
    :data:`HASH_INPUT_SIDE`, all the perceptual hash looks at: :func:`draft_jpeg`); its channel
    count and perceptual hash. Raises one of :data:`DECODE_ERRORS` for pixels that cannot be
    decoded."""
    draft_jpeg(img, HASH_INPUT_SIDE)
    img.load()
    return {"channels": len(img.getbands()), "phash": perceptual_hash(img)}


def _decode(
    source: bytes | IO[bytes],
    formats: Sequence[str] = SUPPORTED_FORMATS,
    max_pixels: int = PILLOW_MAX_PIXELS,
) -> dict[str, Any]:
    """Fully decode an image (bytes, or an open binary file); report its format, mode, size,
    channel count and perceptual hash (``phash``, for the near-duplicate rule).

    Only ``formats`` are handed to Pillow. An image over ``max_pixels`` (or Pillow's own
    limit) keeps the format and size of its header and is never decoded (``decodable``
    unset: the contract's ``max_pixels`` rule names it). Format, mode and size are always the
    header's. One open decodes the image, except a PNG: its chunk CRCs are checked first by
    ``verify()``, which leaves that open image unusable.
    """
    fp: IO[bytes] = io.BytesIO(source) if isinstance(source, bytes) else source
    fp.seek(0)
    if not fp.read(1):
        return {"decodable": False, "error": "empty file (0 bytes)"}
    header: dict[str, Any] = {}  # Image.open itself may raise (e.g. DecompressionBombError)
    content: dict[str, Any] | None = None
    try:
        with identify_image(fp, formats) as img:
            header = {"format": img.format, "mode": img.mode, "width": img.width,
                      "height": img.height}  # fmt: skip
            check_pixels(img, max_pixels)
            if img.format == "PNG":
                img.verify()  # checks chunk CRCs, which load() does not
            else:
                content = _content(img)
        if content is None:
            with open_image(fp, formats, max_pixels) as img:
                content = _content(img)
    except UnidentifiedImageError:
        allowed = ", ".join(formats)
        error = f"not an image Pillow can identify (allowed formats: {allowed})"
        return {"decodable": False, "error": error}
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if header:  # refused by its header's size: never decoded
            error = f"too many pixels: {one_line(exc)}; not decoded"
            return {**header, "decodable": None, "error": error}
        return {"decodable": False, "error": f"too many pixels: {one_line(exc)}"}
    except DECODE_ERRORS as exc:
        return {"decodable": False, "format": header.get("format"),
                "error": f"cannot decode: {one_line(exc)}"}  # fmt: skip
    return {**header, "decodable": True, **content, "bit_depth": _BIT_DEPTH.get(header["mode"], 8)}


def _limit_key(limits: Limits) -> tuple[tuple[str, ...], int, int]:
    """What of the limits decides a row's content."""
    return tuple(limits.formats), limits.max_bytes, limits.max_pixels


def _path_columns(entry: _Entry, symlink: bool) -> dict[str, Any]:
    """The columns of a row that come from where the file is, not from its bytes (a file
    inside the data folder, or a link into it or into one of the limits' ``link_roots``)."""
    return {"path": entry.relpath, "split": entry.split, "label": entry.label,
            "symlink": symlink, "inside_root": True, "name_ok": True}  # fmt: skip


def _remember(
    row_cache: Path, known: dict[str, dict[str, Any]], rows: list[dict[str, Any]],
    entries: list[_Entry], md5s: Mapping[str, str],
) -> None:  # fmt: skip
    """Add the content of the rows read now (files, or links read through, of known md5) to
    the cache."""
    added = 0
    for entry, row in zip(entries, rows, strict=True):
        md5 = md5s.get(entry.raw)
        if md5 and md5 not in known and row["name_ok"] and row["inside_root"] and row["bytes"]:
            known[md5] = {c: row.get(c) for c in CONTENT_COLUMNS}
            added += 1
    if added:
        with contextlib.suppress(OSError):  # a cache that cannot be written costs a re-read
            save_rows(row_cache, known)


def _pillow_settings() -> tuple[int | None, bool]:
    """Pillow's process-wide settings that decide what is decoded (its pixel limit, whether a
    truncated image loads): a worker process takes the caller's."""
    return Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES


def _read_chunk(
    entries: list[_Entry], root: Path, limits: Limits, pillow: tuple[int | None, bool]
) -> list[dict[str, Any]]:
    """The rows of ``entries``, read in a worker process with the caller's
    :func:`_pillow_settings` and under its own :func:`strict_decoding` (warning filters are per
    process)."""
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = pillow
    with strict_decoding():
        return [read_entry(entry, root, limits) for entry in entries]


def _read_in_threads(
    entries: list[_Entry], root: Path, limits: Limits, workers: int
) -> list[dict[str, Any]]:
    """The rows of ``entries``, in order, read by ``workers`` threads of this process."""
    with strict_decoding(), ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda entry: read_entry(entry, root, limits), entries, chunksize=64))


def _process_context() -> multiprocessing.context.BaseContext:
    """Worker processes started by a fork server (spawned where there is none), never forked
    from the caller, which may run threads (Prefect); the server imports this module once."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # no effect once the server runs
    return context


def _read_in_processes(
    entries: list[_Entry], root: Path, limits: Limits, workers: int
) -> list[dict[str, Any]]:
    """The rows of ``entries``, in order, read by ``workers`` processes in chunks of
    :data:`PROCESS_CHUNK`. A worker that dies (a crash in a decoder, killed for memory) costs
    no row: from the first chunk not returned on, the rest is read by threads; so are all of
    them where no process pool can be made (``OSError``: no shared-memory semaphores)."""
    chunks = [entries[i : i + PROCESS_CHUNK] for i in range(0, len(entries), PROCESS_CHUNK)]
    rows: list[dict[str, Any]] = []
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_process_context()) as pool:
            pillow = _pillow_settings()
            futures = [pool.submit(_read_chunk, chunk, root, limits, pillow) for chunk in chunks]
            for future in futures:
                rows += future.result()
    except (BrokenProcessPool, OSError):  # a file's own OSError, if any, recurs in the threads
        rows += _read_in_threads(entries[len(rows) :], root, limits, workers)
    return rows


def _read_entries(
    entries: list[_Entry], root: Path, limits: Limits, workers: int | None = None
) -> list[dict[str, Any]]:
    """The rows of ``entries``, in order: in worker processes from :data:`PROCESS_MIN_FILES`
    files on (with more than one core and one worker), else in threads."""
    if not entries:  # all rows from the row cache
        return []
    cores = os.cpu_count() or 1
    workers = workers or min(MAX_DECODE_THREADS, cores)
    if len(entries) >= PROCESS_MIN_FILES and cores > 1 and workers > 1:
        return _read_in_processes(entries, root, limits, min(workers, cores))
    return _read_in_threads(entries, root, limits, workers)


def scan(
    root: Path,
    workers: int | None = None,
    limits: Limits | None = None,
    split_names: Mapping[str, str] | None = None,
    tracked: Mapping[str, str] | None = None,
    row_cache: Path | None = None,
) -> tuple[pd.DataFrame, Layout]:
    """Build the manifest of ``root`` in parallel; rows are sorted by path, which stays each
    file's own relative path (``validation/cat/1.jpg``, in split ``val``).

    Files are read by ``workers`` threads (default: the cores, at most
    :data:`MAX_DECODE_THREADS`), or by as many worker processes when at least
    :data:`PROCESS_MIN_FILES` files must be read: those are started by a fork server (never
    forked from the caller's threads), which imports the caller's main script like any
    ``spawn`` pool does, so a script that calls this at its top level needs the usual
    ``if __name__ == "__main__":`` guard (without it, the workers die with a traceback each, and
    threads read the files).

    ``limits``: what may be read (default: every supported format, the default size limits);
    ``split_names``: see :func:`detect_layout`; ``tracked``: the data's files (relative path
    -> md5, from its DVC listing): other files are not scanned; ``row_cache``: the folder
    of :mod:`tlops.data.rowcache`, whose rows of files of known md5 are used instead of
    reading them again.
    """
    layout = detect_layout(root, split_names)
    entries = list(_walk(root, layout))
    if tracked is not None:  # files .dvcignore leaves out are not the data's
        entries = [e for e in entries if e.name_error or e.walk_error or e.raw in tracked]
    limits = limits or Limits()
    cache = None if row_cache is None else cache_file(row_cache, *_limit_key(limits))
    known = load_rows(cache) if cache is not None else {}
    md5s = tracked or {}

    def cached(entry: _Entry) -> dict[str, Any] | None:
        md5 = md5s.get(entry.raw) if not entry.name_error else None
        if md5 not in known:
            return None
        link = entry.abspath.is_symlink()
        if link:  # where it points is checked on every scan, never taken from the cache
            try:
                if not _allowed_link(entry.abspath, root, limits):
                    return None
            except (OSError, RuntimeError):
                return None
        return {**_path_columns(entry, link), **known[md5]}

    found = [cached(entry) for entry in entries]
    unread = [i for i, row in enumerate(found) if row is None]
    read = _read_entries([entries[i] for i in unread], root, limits, workers)
    for i, row in zip(unread, read, strict=True):
        found[i] = row
    rows = [row for row in found if row is not None]
    if cache is not None and md5s:
        _remember(cache, known, rows, entries, md5s)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("width", "height", "channels", "bit_depth", "bytes"):
        frame[col] = frame[col].astype("Int64")
    return frame.sort_values("path", ignore_index=True), layout


def class_counts(manifest: pd.DataFrame, layout: Layout) -> pd.DataFrame:
    """Images per (split, class), with zero rows for empty class folders.

    Every known split is counted, present or not; every class found is expected in each.
    """
    # a split folder whose class folders are all empty still counts (with zero rows)
    splits = list(SPLITS)  # a missing split folder counts as zero images in every class
    folder_classes = {c for s, cs in layout.classes.items() if s in (*SPLITS, "") for c in cs}
    labelled = manifest[manifest["label"] != ""]
    classes = sorted(folder_classes | set(labelled["label"]))
    found = labelled.groupby(["split", "label"]).size()
    records = [
        {"split": s, "label": c, "count": int(found.get((s, c), 0))}
        for s in splits
        for c in classes
    ]
    counts = pd.DataFrame(records, columns=["split", "label", "count"])
    largest = counts.groupby("split")["count"].transform("max").clip(lower=1)
    counts["balance"] = counts["count"] / largest
    return counts


def manifest_digest(manifest: pd.DataFrame) -> str:
    """sha256 of the manifest's identity columns (path, split, label, sha256), order-free."""
    key = manifest[["path", "split", "label", "sha256"]].fillna("").sort_values("path")
    return hashlib.sha256(key.to_csv(index=False).encode()).hexdigest()
