"""A resolved dataset version: the small value that lineage, tasks and MLflow carry.

It is produced by :func:`tlops.adapters.dvc.resolve_data`; nothing here talks to DVC.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict


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
    #: read where it is (a working tree that matches its pointer), not from a cached copy
    in_place: bool = False
    #: JSON of the tracked files (relative path -> md5) when known: what the manifest scans
    listing: str = ""
    #: folders outside :attr:`path` that its symlinks may point into (DVC's cache, for
    #: ``cache.type: symlink``), when read in place
    link_roots: tuple[str, ...] = ()

    @property
    def images_root(self) -> Path:
        """The folder of images to use (the tracked folder, or its configured subdir)."""
        return Path(self.path) / self.subdir if self.subdir else Path(self.path)

    def tracked_files(self) -> dict[str, str] | None:
        """The tracked files under :attr:`images_root` (relative path -> md5) from the
        listing, or None when there is no listing (every file found is the data's)."""
        if not self.listing:
            return None
        files: dict[str, str] = json.loads(Path(self.listing).read_text(encoding="utf-8"))["files"]
        if not self.subdir:
            return files
        prefix = self.subdir.strip("/") + "/"
        return {k[len(prefix) :]: v for k, v in files.items() if k.startswith(prefix)}
