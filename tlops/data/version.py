"""A resolved dataset version: the small value that lineage, tasks and MLflow carry.

It is produced by :func:`tlops.adapters.dvc.resolve_data`; nothing here talks to DVC.
"""

from __future__ import annotations

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

    @property
    def images_root(self) -> Path:
        """The folder of images to use (the tracked folder, or its configured subdir)."""
        return Path(self.path) / self.subdir if self.subdir else Path(self.path)
