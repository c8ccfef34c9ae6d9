"""The MLflow model registry: versions with lineage, aliases, and the promotion ledger.

Aliases (not the deprecated stages) mark the champion and the previous champion. Every alias
move is appended to the ledger, kept as registered-model tags ``tlops.ledger.<ns>.<version>``
(JSON) in the same registry, so a team's server holds it next to the versions it describes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tlops.errors import ConfigError, ServiceError
from tlops.tracking import client, service, tracking_uri

LEDGER_PREFIX = "tlops.ledger."
#: Test hook: makes :func:`promote` fail right after registering, to prove nothing is left.
FAULT_ENV = "TLOPS_FAULT"


class VersionInfo(BaseModel):
    """A registered model version, as tlops needs it."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    description: str
    aliases: list[str]


class LedgerEntry(BaseModel):
    """One alias move."""

    model_config = ConfigDict(frozen=True)

    when: str
    alias: str
    from_version: str | None
    to_version: str
    why: str
    flow_run_id: str
    run_id: str | None


def _info(version: Any) -> VersionInfo:
    """Our view of an ``mlflow.entities.model_registry.ModelVersion``."""
    return VersionInfo(
        name=version.name,
        version=str(version.version),
        run_id=version.run_id,
        source=version.source,
        tags=dict(version.tags or {}),
        description=version.description or "",
        aliases=list(getattr(version, "aliases", []) or []),
    )


def version_by_alias(name: str, alias: str) -> VersionInfo | None:
    """The version holding ``alias``, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    try:
        return _info(mlflow_client.get_model_version_by_alias(name, alias))
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
            return None
        where = f"MLflow ({tracking_uri()})"
        raise ServiceError(f"{where} failed to read {name}@{alias}: {exc}") from None


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version)."""
    if not uri.startswith("models:/"):
        raise ConfigError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in rest:
        name, version = rest.split("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise ConfigError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def resolve(uri: str) -> VersionInfo:
    """The version a ``models:/`` URI points at; a missing one is a :class:`ConfigError`."""
    name, alias, version = parse_model_uri(uri)
    with service(f"resolve {uri}"):
        if alias:
            found = version_by_alias(name, alias)
            if found is None:
                raise ConfigError(f"{uri}: no registered model {name!r} with alias {alias!r}")
            return found
        from mlflow.exceptions import MlflowException

        try:
            return _info(client().get_model_version(name, str(version)))
        except MlflowException:
            raise ConfigError(f"{uri}: no version {version} of registered model {name!r}") from None


def download(info: VersionInfo, dest: Path) -> Path:
    """Download a version's model folder (MLmodel, ``data/model.keras``, ``tlops.json``)."""
    import mlflow.artifacts

    with service(f"download model {info.name} v{info.version}"):
        # the version's source URI, not models:/ (whose resolution ignores tracking_uri and
        # reads MLflow's global registry URI)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=info.source, dst_path=str(dest), tracking_uri=tracking_uri()
        )
    return Path(local)


def download_classifier(info: VersionInfo, dest: Path) -> Path:
    """The classifier of a version's run (for a backbone version, the model it was trained in)."""
    if not info.run_id:
        return download(info, dest)
    import mlflow.artifacts

    with service(f"download the classifier of {info.name} v{info.version}"):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{info.run_id}/model", dst_path=str(dest),
            tracking_uri=tracking_uri(),
        )  # fmt: skip
    return Path(local)


def model_files(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The ``.keras`` file and the tlops metadata (classes, image size) of a model folder."""
    keras_file = folder / "data" / "model.keras"
    meta_file = folder / "tlops.json"
    if not keras_file.is_file() or not meta_file.is_file():
        raise ConfigError(f"{folder}: not a tlops model (data/model.keras and tlops.json needed)")
    meta: dict[str, Any] = json.loads(meta_file.read_text(encoding="utf-8"))
    return keras_file, meta


def register(
    name: str, run_id: str, model_uri: str, tags: dict[str, str], description: str
) -> VersionInfo:
    """Create the registered model if needed and a new version from the run's model."""
    from mlflow.exceptions import MlflowException

    with service(f"register a version of {name}"):
        mlflow_client = client()
        try:
            mlflow_client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = (
            mlflow_client.get_run(run_id).info.artifact_uri.rstrip("/")
            + "/"
            + (model_uri.split("/", 3)[-1])
        )
        version = mlflow_client.create_model_version(
            name, source, run_id=run_id, tags={k: v[:5000] for k, v in tags.items()},
            description=description[:5000],
        )  # fmt: skip
    return _info(version)


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    """Set tags on a version."""
    with service(f"tag {name} v{version}"):
        mlflow_client = client()
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(name, version, key, value[:5000])


def delete_version(name: str, version: str) -> None:
    """Remove a version (used when promotion fails after registering)."""
    with service(f"delete {name} v{version}"):
        client().delete_model_version(name, version)


def move_alias(
    name: str, alias: str, version: str, why: str, flow_run_id: str, run_id: str | None
) -> LedgerEntry:
    """Point ``alias`` at ``version`` and append the move to the ledger."""
    before = version_by_alias(name, alias)
    entry = LedgerEntry(
        when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        alias=alias,
        from_version=before.version if before else None,
        to_version=version,
        why=why,
        flow_run_id=flow_run_id,
        run_id=run_id,
    )
    with service(f"move alias {name}@{alias}"):
        mlflow_client = client()
        mlflow_client.set_registered_model_alias(name, alias, version)
        key = f"{LEDGER_PREFIX}{time.time_ns():020d}.{alias}.{version}"
        mlflow_client.set_registered_model_tag(name, key, entry.model_dump_json())
    return entry


def set_description(name: str, text: str) -> None:
    """Keep the registered model's description current (the champion's lineage card)."""
    with service(f"describe {name}"):
        client().update_registered_model(name, description=text[:5000])


def ledger(name: str) -> list[LedgerEntry]:
    """Every recorded alias move of ``name``, oldest first."""
    from mlflow.exceptions import MlflowException

    with service(f"read the ledger of {name}"):
        try:
            model = client().get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ConfigError(f"no registered model named {name!r}") from None
            raise
    keys = sorted(k for k in (model.tags or {}) if k.startswith(LEDGER_PREFIX))
    return [LedgerEntry.model_validate_json(model.tags[k]) for k in keys]


@contextmanager
def promotion_lock(name: str) -> Iterator[None]:
    """Serialize promotions of ``name`` in one tracking store among flows on this machine.

    An exclusive ``flock`` on a file under ``$TLOPS_CACHE/locks``. Flows on other machines are
    not covered: for them the re-check of the champion just before the alias moves narrows the
    race to the moment between that read and the move.
    """
    import fcntl

    from tlops.dataversion import default_cache_root

    key = hashlib.sha256(f"{tracking_uri()}\n{name}".encode()).hexdigest()[:24]
    path = default_cache_root() / "locks" / f"promote-{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fault(point: str) -> None:
    """Raise at ``point`` when ``$TLOPS_FAULT`` names it (failure-injection tests)."""
    if os.environ.get(FAULT_ENV) == point:
        raise RuntimeError(f"injected failure at {point} ({FAULT_ENV}={point})")
