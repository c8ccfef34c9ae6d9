"""What the manifest scan learned of a file's content, kept by the file's md5.

A row's content columns (format, mode, size, channels, bytes, sha256, decodable, error,
perceptual hash) depend on the file's bytes only, and on the scan's limits and the library
versions that decode and hash. The DVC listing of a tree gives each tracked file's md5
(known without reading the file when DVC's state has seen it), so a scan of a tree whose
files were scanned before reads none of their bytes: their rows come from here.

One parquet file per (limits, versions) key under the cache folder, replaced atomically; two
scans writing at once each leave a valid file, and a lost write only costs a re-read later.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd

from tlops.paths import atomic_path

#: Bumped whenever a content column is computed differently (2: JPEGs hashed from a draft decode).
ROW_CACHE_VERSION = 2
CONTENT_COLUMNS = (
    "format", "mode", "width", "height", "channels", "bit_depth", "bytes", "sha256",
    "decodable", "error", "phash",
)  # fmt: skip


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def cache_file(folder: Path, formats: tuple[str, ...], max_bytes: int, max_pixels: int) -> Path:
    """The row file for these limits and the installed Pillow and imagehash."""
    key = [ROW_CACHE_VERSION, list(formats), max_bytes, max_pixels,
           _version("pillow"), _version("imagehash")]  # fmt: skip
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    return folder / f"rows-{digest}.parquet"


def load_rows(path: Path) -> dict[str, dict[str, Any]]:
    """md5 -> content columns of the rows kept in ``path`` (none when it is missing or
    unreadable: a cache never fails a scan)."""
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError):
        return {}
    frame = frame.astype(object).where(frame.notna(), None)
    columns = list(CONTENT_COLUMNS)
    return {
        str(md5): dict(zip(columns, values, strict=True))
        for md5, *values in frame[["md5", *columns]].itertuples(index=False)
    }


def save_rows(path: Path, rows: Mapping[str, Mapping[str, Any]]) -> None:
    """Replace ``path`` with ``rows`` (md5 -> content columns)."""
    frame = pd.DataFrame(
        [{"md5": md5, **{c: row.get(c) for c in CONTENT_COLUMNS}} for md5, row in rows.items()]
    )
    for column in ("width", "height", "channels", "bit_depth", "bytes"):
        frame[column] = frame[column].astype("Int64")
    for column in ("decodable",):
        frame[column] = frame[column].astype("boolean")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".tmp.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
