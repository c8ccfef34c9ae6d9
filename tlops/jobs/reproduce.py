"""The reproduce job: a version's exact config at its data revision, with the gate cleared so
the rerun can never register, and the report of the metric differences."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tlops.adapters import registry
from tlops.config import GateConfig, RunConfig
from tlops.errors import ConfigError

REPRODUCED = ("test_accuracy", "test_macro_f1", "latency_ms_batch1", "model_size_mb")


def reproduction_config(info: registry.VersionInfo, tmp: Path) -> RunConfig:
    """A version's resolved config at its data revision, with an empty gate (:func:`without_gate`).

    The config is the run's full ``config.yaml`` artifact (never the ``config`` tag, which is
    cut when long), and its sha256 must be the version's ``config.sha256`` tag: a missing or
    different one is refused rather than reproducing something else.
    """
    from tlops.adapters.tracking import download_run_file
    from tlops.config import load_config

    who = f"{info.name} v{info.version}"
    expected = info.tags.get("config.sha256")
    if not info.run_id or not expected or "data.rev" not in info.tags:
        raise ConfigError(
            f"{who}: no run, config.sha256 or data.rev tag: its exact config cannot be verified,"
            " refusing to reproduce"
        )
    path = download_run_file(info.run_id, "config.yaml", tmp)
    if path is None:
        raise ConfigError(
            f"{who}: run {info.run_id} has no config.yaml artifact: refusing to reproduce"
        )
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != expected:
        raise ConfigError(
            f"{who}: config.yaml of run {info.run_id} has sha256 {found[:16]}..., the version's"
            f" config.sha256 tag says {expected[:16]}...: refusing to reproduce"
        )
    overrides = [f"data.rev={json.dumps(info.tags['data.rev'])}", "data.allow_dirty=false"]
    return without_gate(load_config(path, overrides))


def without_gate(cfg: RunConfig) -> RunConfig:
    """``cfg`` with an empty gate: no rules of any kind, so the run can never register.

    The gate is replaced as a whole (never cleared rule field by rule field, which a new kind
    of rule could slip past) and the tree validated again.
    """
    tree = cfg.model_dump(mode="json")
    tree["gate"] = GateConfig().model_dump(mode="json")
    return RunConfig.model_validate(tree)


def reproduction_report(info: registry.VersionInfo, metrics: dict[str, float], run_id: str) -> str:
    """Markdown: the original version's metrics next to the rerun's."""
    lines = [
        f"### tlops reproduce: {info.name} v{info.version} (rerun: MLflow run `{run_id}`)",
        "",
        "| metric | original | rerun | difference |",
        "|---|---|---|---|",
    ]
    for name in REPRODUCED:
        old = info.tags.get(f"metric.{name}")
        new = metrics.get(name)
        if old is None or new is None:
            continue
        lines.append(f"| {name} | {float(old):.4f} | {new:.4f} | {new - float(old):+.4f} |")
    if info.tags.get("data.dirty") == "true" or info.tags.get("git.dirty") == "true":
        lines.append("\nnote: the original ran on a dirty tree; the rerun uses committed state")
    return "\n".join(lines)
