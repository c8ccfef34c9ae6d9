"""The promotion policy of a run: what it is (a hash) and where it came from.

The policy is the part of the config that decides whether a candidate may become champion,
and of which model: the ``gate`` and ``registry`` sections, plus ``name`` when it is what names
the registered model (``registry.model_name`` unset). Runs started by a deployment or a CI
dispatch take it from the config file as it is: an override of any of those keys is refused
(:func:`refuse_policy_overrides`, exit 2) before anything runs. On a developer's command line
an override stays possible, and is recorded: every run, and so every registered version,
carries the tags of :func:`policy_tags` (hash, source, overriding keys, file).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tlops.config import RunConfig, load_config, parse_override
from tlops.errors import ConfigError

#: Top-level config sections that make up the policy.
POLICY_SECTIONS: tuple[str, ...] = ("gate", "registry")

PolicySource = Literal["committed", "uncommitted-file", "override", "unknown"]


class PolicyOrigin(BaseModel):
    """Where a run's policy came from (passed from the CLI / retrain flow to the train flow).

    ``committed``: the config file is tracked by git and unmodified, and no override touched
    the policy; ``uncommitted-file``: the file is untracked, modified or outside a git repo;
    ``override``: ``--set`` replaced policy keys (listed in ``overrides``); ``unknown``: the
    config was handed over as a value (the Python API), not read from a file.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: PolicySource = "unknown"
    file: str = ""
    overrides: tuple[str, ...] = ()


def override_key(text: str) -> str:
    """The dotted key of a ``KEY=VALUE`` override (or of a ``--grid KEY=V1,V2`` item)."""
    return ".".join(parse_override(text)[0])


def policy_keys(overrides: Iterable[str], names_model: bool) -> list[str]:
    """The dotted keys among ``overrides`` that change the policy, in order, each once.

    Any key under ``gate`` or ``registry``; ``name`` too when ``names_model`` (the config has
    no ``registry.model_name``, so the run name decides which model is promoted).
    """
    found: list[str] = []
    for text in overrides:
        key = override_key(text)
        top = key.split(".", 1)[0]
        if (top in POLICY_SECTIONS or (top == "name" and names_model)) and key not in found:
            found.append(key)
    return found


def refuse_policy_overrides(overrides: Iterable[str], cfg: RunConfig, caller: str) -> None:
    """Raise :class:`ConfigError` (exit 2) naming the first override that changes the policy.

    ``caller`` says who may not (e.g. ``a CI run``, ``the retrain deployment``).
    """
    keys = policy_keys(overrides, cfg.registry.model_name is None)
    if keys:
        raise ConfigError(
            f"--set {keys[0]}: {caller} may not override the promotion policy (gate, registry,"
            " and name when it names the model); change the committed config instead"
        )


def policy_origin(
    config_file: Path | None, overrides: Iterable[str], cfg: RunConfig
) -> PolicyOrigin:
    """Where ``cfg``'s policy came from: its file (committed in git or not) and the overrides."""
    from tlops.adapters.git import committed_unmodified

    keys = tuple(policy_keys(overrides, cfg.registry.model_name is None))
    file = str(config_file) if config_file is not None else ""
    if keys:
        return PolicyOrigin(source="override", file=file, overrides=keys)
    if config_file is None:
        return PolicyOrigin(source="unknown")
    source: PolicySource = "committed" if committed_unmodified(config_file) else "uncommitted-file"
    return PolicyOrigin(source=source, file=file)


def policy_sha256(cfg: RunConfig) -> str:
    """sha256 of the resolved policy: the ``gate`` and ``registry`` sections as JSON (sorted
    keys), ``registry.model_name`` resolved to the model actually promoted."""
    tree = cfg.model_dump(mode="json", include=set(POLICY_SECTIONS))
    tree["registry"]["model_name"] = cfg.model_name
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def policy_tags(cfg: RunConfig, origin: PolicyOrigin | None) -> dict[str, str]:
    """Run (and so version) tags: ``policy.sha256``, ``policy.source``, ``policy.overrides``
    (comma-separated keys, or ``none``) and ``policy.file``."""
    origin = origin or PolicyOrigin()
    return {
        "policy.sha256": policy_sha256(cfg),
        "policy.source": origin.source,
        "policy.overrides": ",".join(origin.overrides) or "none",
        "policy.file": origin.file or "none",
    }


def load_deployed_config(config_path: str, overrides: list[str]) -> tuple[RunConfig, PolicyOrigin]:
    """The config of a run started through a deployment, and its policy's origin.

    ``config_path`` must be relative and stay inside the deployment's working directory (the
    project); ``overrides`` (the deployment's parameter, which any caller of the Prefect API
    can set) may not touch the policy. Either is a :class:`ConfigError` before anything runs.
    """
    path = Path(config_path)
    if path.is_absolute() or ".." in path.parts:
        raise ConfigError(
            f"config_path {config_path!r}: must be relative to the project, without '..'"
        )
    cfg = load_config(path, overrides)
    refuse_policy_overrides(overrides, cfg, "a deployment run")
    return cfg, policy_origin(path, overrides, cfg)
