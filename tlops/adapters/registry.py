"""The MLflow model registry: versions with lineage, aliases, and the promotion ledger.

Aliases (not the deprecated stages) mark the champion and the previous champion. Every alias
move is recorded in the ledger, kept as registered-model tags ``tlops.ledger.<ns>.<alias>.<v>``
(JSON) in the same registry, so a team's server holds it next to the versions it describes. An
entry is written as an ``intent`` before its alias moves and then marked ``confirmed`` (the
move stands) or ``aborted`` (the alias was restored); entries are never removed.

Versions registered by tlops carry ``tlops.state``: ``pending`` while a promotion is under way,
then ``complete`` or ``aborted`` (see :mod:`tlops.jobs.register` and :mod:`tlops.jobs.reconcile`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from tlops.adapters.tracking import client, service, tag_value, tracking_uri
from tlops.errors import ConfigError, ServiceError
from tlops.redact import redact_text, redact_url

LEDGER_PREFIX = "tlops.ledger."
#: Version tag holding the promotion state: pending, complete or aborted.
STATE_TAG = "tlops.state"
#: Version tag naming the process that registered it (``host:pid``) and when (epoch seconds).
OWNER_TAG = "tlops.owner"
STARTED_TAG = "tlops.registered_at"
#: Test hook: ``TLOPS_FAULT=<point>`` makes that promotion step fail (an MLflow write failing).
FAULT_ENV = "TLOPS_FAULT"
#: Test hook: ``TLOPS_FAULT_BLOCK=<point>`` blocks at that step (after touching the file named by
#: ``TLOPS_FAULT_READY``), so a test can kill the process there.
FAULT_BLOCK_ENV = "TLOPS_FAULT_BLOCK"
FAULT_READY_ENV = "TLOPS_FAULT_READY"

LedgerState = Literal["intent", "confirmed", "aborted"]
VersionState = Literal["pending", "complete", "aborted"]


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
    created_ms: int = 0


class LedgerEntry(BaseModel):
    """One alias move: intended, then confirmed or aborted (entries of older tlops: confirmed)."""

    model_config = ConfigDict(frozen=True)

    when: str
    alias: str
    from_version: str | None
    to_version: str
    why: str
    flow_run_id: str
    run_id: str | None
    state: LedgerState = "confirmed"
    key: str = ""
    settled: str | None = None

    def settle(self, state: LedgerState, why: str = "") -> LedgerEntry:
        """This entry in its final state (``why`` appended to the reason)."""
        extra = f"; {why}" if why else ""
        return self.model_copy(update={"state": state, "settled": _now(), "why": self.why + extra})


def _now() -> str:
    """UTC now, ISO 8601 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def owner() -> str:
    """This process as the owner of a pending version: JSON of host, boot, pid namespace, pid
    and process start (the same identity as a run's ``tlops.owner``)."""
    from tlops.adapters.tracking import process_owner

    return json.dumps(process_owner(), sort_keys=True)


def owner_alive(tag: str) -> bool | None:
    """Whether the owner of a pending version still runs: None when that cannot be known here
    (another host, boot or pid namespace, or an unreadable tag)."""
    from tlops.adapters.tracking import owner_gone, same_machine

    try:
        found = json.loads(tag)
    except ValueError:
        return None
    if not isinstance(found, dict) or not same_machine(found):
        return None
    return not owner_gone({str(k): str(v) for k, v in found.items()})


def state_of(info: VersionInfo) -> VersionState | None:
    """A version's promotion state; None for versions registered by older tlops or by hand."""
    value = info.tags.get(STATE_TAG)
    return value if value in ("pending", "complete", "aborted") else None  # type: ignore[return-value]


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
        created_ms=int(getattr(version, "creation_timestamp", 0) or 0),
    )


def versions(name: str) -> list[VersionInfo]:
    """Every version of registered model ``name`` (none when the model does not exist), each
    with its aliases (read from the registered model: a version search leaves them out)."""
    from mlflow.exceptions import MlflowException

    with service(f"list the versions of {name}"):
        mlflow_client = client()
        found = mlflow_client.search_model_versions(f"name='{name}'")
        if not found:
            return []
        try:
            held = mlflow_client.get_registered_model(name).aliases or {}
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            held = {}
    aliases: dict[str, list[str]] = {}
    for alias, version in held.items():
        aliases.setdefault(str(version), []).append(alias)
    infos = (_info(v) for v in found)
    return sorted(
        (i.model_copy(update={"aliases": sorted(aliases.get(i.version, []))}) for i in infos),
        key=lambda v: int(v.version),
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
        where = f"MLflow ({redact_url(tracking_uri())})"
        raise ServiceError(redact_text(f"{where} failed to read {name}@{alias}: {exc}")) from None


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
    """The classifier of a version's run (for a backbone version, the model it was trained in):
    the run's LoggedModel, or its ``model`` artifact folder (versions logged before tlops
    logged LoggedModels)."""
    if not info.run_id:
        return download(info, dest)
    import mlflow.artifacts

    with service(f"download the classifier of {info.name} v{info.version}"):
        outputs = client().get_run(info.run_id).outputs
        models = [o.model_id for o in (outputs.model_outputs if outputs else [])]
        source = logged_model_location(models[0]) if models else f"runs:/{info.run_id}/model"
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(dest), tracking_uri=tracking_uri()
        )
    return Path(local)


#: The version tag naming the version's LoggedModel (MLflow's SQL registry keeps no model_id
#: of its own on a version; its link is the LoggedModel's ``mlflow.modelVersions`` tag).
MODEL_ID_TAG = "model_id"
LINK_TAG = "mlflow.modelVersions"


def _link_version(mlflow_client: Any, model_id: str, name: str, version: str) -> None:
    """Add ``name`` v``version`` to the LoggedModel's list of registered versions (as
    ``mlflow.register_model`` does), so the Models tab shows it."""
    tags = mlflow_client.get_logged_model(model_id).tags or {}
    linked = [*json.loads(tags.get(LINK_TAG, "[]")), {"name": name, "version": int(version)}]
    mlflow_client.set_logged_model_tags(model_id, {LINK_TAG: json.dumps(linked)})


def logged_model_location(model_id: str) -> str:
    """Where a LoggedModel's files are (a concrete artifact URI, not ``models:/``)."""
    return str(client().get_logged_model(model_id).artifact_location)


#: Where the ``.keras`` file and ``tlops.json`` are in a model folder: the pyfunc LoggedModel
#: (its artifacts), then the Keras-flavor folder tlops logged before.
MODEL_LAYOUTS = (
    (Path("artifacts") / "model.keras", Path("artifacts") / "tlops.json"),
    (Path("data") / "model.keras", Path("tlops.json")),
)


def model_files(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The ``.keras`` file and the tlops metadata (classes, image size) of a model folder."""
    for keras_rel, meta_rel in MODEL_LAYOUTS:
        keras_file, meta_file = folder / keras_rel, folder / meta_rel
        if keras_file.is_file() and meta_file.is_file():
            meta: dict[str, Any] = json.loads(meta_file.read_text(encoding="utf-8"))
            return keras_file, meta
    raise ConfigError(
        f"{folder}: not a tlops model (artifacts/model.keras and artifacts/tlops.json, or "
        "data/model.keras and tlops.json, needed)"
    )


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
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/") else None
        if model_id:  # a LoggedModel: its files' concrete location; the id as a version tag
            source = logged_model_location(model_id)
            tags = {**tags, MODEL_ID_TAG: model_id}
        else:
            source = (
                mlflow_client.get_run(run_id).info.artifact_uri.rstrip("/")
                + "/"
                + (model_uri.split("/", 3)[-1])
            )
        version = mlflow_client.create_model_version(
            name, source, run_id=run_id, tags={k: tag_value(v) for k, v in tags.items()},
            description=description[:5000], model_id=model_id,
        )  # fmt: skip
        if model_id:
            _link_version(mlflow_client, model_id, name, str(version.version))
    return _info(version)


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    """Set tags on a version."""
    with service(f"tag {name} v{version}"):
        mlflow_client = client()
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(name, version, key, tag_value(value))


def delete_version(name: str, version: str) -> None:
    """Remove a version (used when promotion fails after registering)."""
    with service(f"delete {name} v{version}"):
        client().delete_model_version(name, version)


def set_alias(name: str, alias: str, version: str | None) -> None:
    """Point ``alias`` at ``version``, or remove it (None)."""
    from mlflow.exceptions import MlflowException

    with service(f"move alias {name}@{alias}"):
        mlflow_client = client()
        if version is not None:
            mlflow_client.set_registered_model_alias(name, alias, version)
            return
        try:
            mlflow_client.delete_registered_model_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code not in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
                raise


#: The longest reason a ledger entry keeps (the whole entry must fit one MLflow tag).
WHY_LIMIT = 1500


def _fit_reason(why: str, limit: int = WHY_LIMIT) -> str:
    """``why`` cut to ``limit`` characters in its middle, so that what settling appended at the
    end ("; alias restored", "; confirmed by reconcile") is never the part that is lost."""
    if len(why) <= limit:
        return why
    tail = limit // 3
    return f"{why[: limit - tail - 5]} ... {why[-tail:]}"


def write_ledger(name: str, entry: LedgerEntry) -> LedgerEntry:
    """Write ``entry`` under its key (a new key for a new entry); returns it with its key."""
    key = entry.key or f"{LEDGER_PREFIX}{time.time_ns():020d}.{entry.alias}.{entry.to_version}"
    stored = entry.model_copy(update={"key": key, "why": _fit_reason(entry.why)})
    with service(f"write the ledger of {name}"):
        client().set_registered_model_tag(name, key, stored.model_dump_json(exclude={"key"}))
    return stored


def intend_move(
    name: str, alias: str, version: str, from_version: str | None, why: str, flow_run_id: str,
    run_id: str | None,
) -> LedgerEntry:  # fmt: skip
    """Record in the ledger that ``alias`` is about to move to ``version`` (state ``intent``)."""
    entry = LedgerEntry(
        when=_now(), alias=alias, from_version=from_version, to_version=version, why=why,
        flow_run_id=flow_run_id, run_id=run_id, state="intent",
    )  # fmt: skip
    return write_ledger(name, entry)


def move_alias(
    name: str, alias: str, version: str, why: str, flow_run_id: str, run_id: str | None
) -> LedgerEntry:
    """Move ``alias`` to ``version`` with a ledger intent before and its confirmation after.

    A failure after the intent leaves it unconfirmed: :mod:`tlops.jobs.reconcile` settles it.
    """
    before = version_by_alias(name, alias)
    from_version = before.version if before else None
    entry = intend_move(name, alias, version, from_version, why, flow_run_id, run_id)
    set_alias(name, alias, version)
    return write_ledger(name, entry.settle("confirmed"))


def set_description(name: str, text: str) -> None:
    """Keep the registered model's description current (the champion's lineage card)."""
    with service(f"describe {name}"):
        client().update_registered_model(name, description=text[:5000])


def description(name: str) -> str | None:
    """The registered model's description ("" when it has none); None when no such model."""
    from mlflow.exceptions import MlflowException

    with service(f"read {name}"):
        try:
            return client().get_registered_model(name).description or ""
        except MlflowException:
            return None


def ledger(name: str) -> list[LedgerEntry]:
    """Every recorded alias move of ``name``, oldest first (with its state and key)."""
    from mlflow.exceptions import MlflowException

    with service(f"read the ledger of {name}"):
        try:
            model = client().get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ConfigError(f"no registered model named {name!r}") from None
            raise
    tags = model.tags or {}
    entries = []
    for key in sorted(k for k in tags if k.startswith(LEDGER_PREFIX)):
        try:
            entry = LedgerEntry.model_validate_json(tags[key])
            entries.append(entry.model_copy(update={"key": key}))
        except ValidationError:
            continue  # not an entry tlops wrote (hand-edited or cut): never fatal for a run
    return entries


#: Registered-model tag holding the last scheduled (or manual) run that found nothing changed.
NOOP_TAG = "tlops.last_noop"


class NoopRecord(BaseModel):
    """A retrain that found nothing changed since the champion: it leaves no MLflow run, so
    ``tlops status`` reads it from this record (a registered-model tag, the latest only)."""

    model_config = ConfigDict(frozen=True)

    when_ms: int
    champion: str
    fingerprint: str
    tags: dict[str, str]


def write_noop(name: str, record: NoopRecord) -> None:
    """Keep ``record`` as the model's last no-op (replacing the one before)."""
    with service(f"record the no-op of {name}"):
        client().set_registered_model_tag(name, NOOP_TAG, record.model_dump_json())


def last_noop(name: str) -> NoopRecord | None:
    """The model's last no-op record; None when there is none (or no such model, or the tag
    is not one tlops wrote)."""
    from mlflow.exceptions import MlflowException

    with service(f"read the last no-op of {name}"):
        try:
            tags = client().get_registered_model(name).tags or {}
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
    try:
        return NoopRecord.model_validate_json(tags[NOOP_TAG]) if NOOP_TAG in tags else None
    except ValidationError:
        return None


@contextmanager
def promotion_lock(name: str) -> Iterator[None]:
    """Serialize promotions of ``name`` in one tracking store among flows on this machine.

    An exclusive ``flock`` on a file under ``$TLOPS_CACHE/locks``. Flows on other machines are
    not covered: for them the re-check of the champion just before the alias moves narrows the
    race to the moment between that read and the move.
    """
    import fcntl

    from tlops.paths import default_cache_root

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
    """Failure injection for the fault tests, at a named promotion step.

    ``$TLOPS_FAULT`` naming ``point``: fail there as a failing MLflow write would
    (:class:`ServiceError`). ``$TLOPS_FAULT_BLOCK`` naming it: touch ``$TLOPS_FAULT_READY`` and
    block, for the test to kill the process there.
    """
    if os.environ.get(FAULT_BLOCK_ENV) == point:
        ready = os.environ.get(FAULT_READY_ENV)
        if ready:
            Path(ready).write_text(f"{os.getpid()}\n", encoding="utf-8")
        while True:
            time.sleep(60)
    if os.environ.get(FAULT_ENV) == point:
        raise ServiceError(f"injected failure at {point} ({FAULT_ENV}={point})")
