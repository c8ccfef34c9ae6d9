"""Scan an image folder into a manifest: one row per file, read in parallel.

Layouts: ``root/<split>/<class>/<file>`` when any of train/val/test exists at the top, else
``root/<class>/<file>`` (split assigned later by :mod:`tlops.split`). Everything odd is kept as a
row (stray files, unknown split folders, symlinks leaving the folder) so that the contract can
name it; nothing is silently skipped.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, UnidentifiedImageError

from tlops.config import SPLITS
from tlops.errors import DataError

COLUMNS = [
    "path", "split", "label", "format", "mode", "width", "height", "channels", "bit_depth",
    "bytes", "sha256", "decodable", "error", "symlink", "inside_root",
]  # fmt: skip

#: Names that are never data: VCS and OS leftovers.
IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db", ".gitignore", ".dvcignore", "desktop.ini"})

_BIT_DEPTH = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


@dataclass(frozen=True)
class Layout:
    """What the folder structure says: splits present and class folders per split."""

    split_folders: bool
    classes: dict[str, list[str]] = field(default_factory=dict)  # split ("" if none) -> classes


@dataclass(frozen=True)
class _Entry:
    """A file found by the walk, before it is read."""

    abspath: Path
    relpath: str
    split: str
    label: str


def detect_layout(root: Path) -> Layout:
    """Tell the split-folder layout from the class-folder one and list class folders."""
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    top = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_folders = any(p.name in SPLITS for p in top)
    if not split_folders:
        return Layout(False, {"": [p.name for p in top]})
    classes: dict[str, list[str]] = {}
    for split_dir in top:
        classes[split_dir.name] = sorted(
            p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
    return Layout(True, classes)


def _walk(root: Path, layout: Layout) -> Iterator[_Entry]:
    """Yield every file under root with its split and label from the folder names."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        # symlinked directories are reported as entries, never followed
        linked = [d for d in dirnames if (Path(dirpath) / d).is_symlink()]
        dirnames[:] = [d for d in dirnames if d not in linked]
        for name in sorted(filenames) + linked:
            if name in IGNORED_NAMES:
                continue
            abspath = Path(dirpath) / name
            rel = abspath.relative_to(root)
            parts = rel.parts
            if layout.split_folders:
                split = parts[0] if len(parts) > 1 else ""
                label = parts[1] if len(parts) == 3 else ""
            else:
                split = ""
                label = parts[0] if len(parts) == 2 else ""
            yield _Entry(abspath, rel.as_posix(), split, label)


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` resolves to a location inside ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def read_entry(entry: _Entry, root: Path) -> dict[str, Any]:
    """Read one file: size, sha256, and what Pillow can decode of it."""
    row: dict[str, Any] = {
        "path": entry.relpath, "split": entry.split, "label": entry.label, "format": None,
        "mode": None, "width": None, "height": None, "channels": None, "bit_depth": None,
        "bytes": None, "sha256": None, "decodable": None, "error": "", "symlink": False,
        "inside_root": True,
    }  # fmt: skip
    row["symlink"] = entry.abspath.is_symlink()
    if row["symlink"] and not _inside(entry.abspath, root):
        row["inside_root"] = False
        row["error"] = "symlink points outside the data folder; not read"
        return row
    if not entry.abspath.is_file():
        row["decodable"] = False
        row["error"] = "not a regular file"
        return row
    data = entry.abspath.read_bytes()
    row["bytes"] = len(data)
    row["sha256"] = hashlib.sha256(data).hexdigest()
    row.update(_decode(data))
    return row


def _decode(data: bytes) -> dict[str, Any]:
    """Fully decode an image in memory; report its format, mode, size and channel count."""
    if not data:
        return {"decodable": False, "error": "empty file (0 bytes)"}
    fmt: str | None = None  # Image.open itself may raise (e.g. DecompressionBombError)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode, (width, height) = img.format, img.mode, img.size
            if fmt == "PNG":
                img.verify()  # checks chunk CRCs, which load() does not
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            channels = len(img.getbands())
    except UnidentifiedImageError:
        return {"decodable": False, "error": "not an image Pillow can identify"}
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return {"decodable": False, "format": fmt, "error": f"cannot decode: {exc}"}
    return {
        "decodable": True, "format": fmt, "mode": mode, "width": width, "height": height,
        "channels": channels, "bit_depth": _BIT_DEPTH.get(mode, 8),
    }  # fmt: skip


def scan(root: Path, workers: int | None = None) -> tuple[pd.DataFrame, Layout]:
    """Build the manifest of ``root`` in parallel; rows are sorted by path."""
    layout = detect_layout(root)
    entries = list(_walk(root, layout))
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(lambda e: read_entry(e, root), entries, chunksize=64))
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
