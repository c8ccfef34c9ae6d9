"""One training in its own process, for the concurrency tests: ``python train_worker.py SPEC``.

SPEC is a JSON file: the config (file and overrides), the data version and manifest, where to
write the summary, and optionally ``wait_for`` (a phase and an epoch count): the worker imports
everything first, then waits until some checkpoint state under ``$TLOPS_HOME`` shows that phase
past that many epochs (another run training), then trains with the domain ``train_model``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import keras  # noqa: F401  (imported before any waiting: the wait ends right before training)

from tlops.config import load_config
from tlops.data.version import DataVersion
from tlops.jobs.train import train_model
from tlops.jobs.validate import ManifestInfo


def _wait_for(phase: str, epochs: int, timeout_s: float = 600) -> None:
    """Until a checkpoint state in ``$TLOPS_HOME/checkpoints`` has ``epochs`` of ``phase``."""
    home = Path(os.environ["TLOPS_HOME"])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for state_file in home.glob("checkpoints/*/state.json"):
            try:
                state = json.loads(state_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if state.get("phases", {}).get(phase, {}).get("epochs_done", 0) >= epochs:
                return
        time.sleep(0.01)
    raise SystemExit(f"no run reached {phase} epoch {epochs}")


def main() -> None:
    """Read the spec, wait if asked, train, write the summary."""
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    cfg = load_config(Path(spec["config"]), spec["overrides"])
    data = DataVersion(**spec["data"])
    manifest = ManifestInfo(**spec["manifest"])
    if spec.get("wait_for"):
        _wait_for(spec["wait_for"]["phase"], int(spec["wait_for"]["epochs"]))
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = train_model(cfg, data, manifest, run_dir, None)
    Path(spec["out"]).write_text(summary.model_dump_json(), encoding="utf-8")


if __name__ == "__main__":
    main()
