"""Where tlops keeps its working files (run folders), from the environment."""

from __future__ import annotations

import os
from pathlib import Path


def tlops_home() -> Path:
    """``$TLOPS_HOME``, else ``./.tlops`` in the current directory."""
    return Path(os.environ.get("TLOPS_HOME") or Path.cwd() / ".tlops")


def run_dir(run_id: str) -> Path:
    """The folder of one flow run's files (manifest, reports), created on demand."""
    path = tlops_home() / "runs" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path
