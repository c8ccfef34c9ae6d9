"""MLflow tracking: one run per flow run, written through ``MlflowClient`` with explicit run ids.

The default store is ``sqlite:///mlflow/mlflow.db`` with artifacts under ``mlflow/artifacts``
(relative to the current directory); ``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tlops.data.version import DataVersion
from tlops.errors import ServiceError
from tlops.redact import redact_text, redact_url

BATCH = 100  # MLflow's limit of params per log_batch call
TAG_LIMIT = 5000  # MLflow's longest tag value (runs and model versions)
PARAM_LIMIT = 6000  # MLflow's longest param value


def tag_value(value: str, limit: int = TAG_LIMIT) -> str:
    """``value`` as a tag (or param) value of at most ``limit`` characters.

    A longer value is cut and visibly marked: it then starts with ``@cut``, a character no
    YAML or JSON document may start with, so a cut config or verdict never parses as a
    different valid one (the full config is the run's ``config.yaml`` artifact).
    """
    if len(value) <= limit:
        return value
    head = "@cut by tlops: the first {} of " + f"{len(value)} characters\n"
    kept = limit - len(head.format(limit))
    return head.format(kept) + value[:kept]


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the SQLite store under ``./mlflow``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path.cwd() / 'mlflow' / 'mlflow.db').as_posix()}"


def shown_tracking_uri() -> str:
    """:func:`tracking_uri` as it may be shown or stored: credentials redacted (connections
    use :func:`tracking_uri` itself)."""
    return redact_url(tracking_uri())


def _default_artifacts() -> str | None:
    """Artifact root for new experiments: beside a SQLite store, else the server decides.

    (MLflow's own default for a SQLite store is ``./mlruns`` in whatever folder a run starts.)
    """
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()


def client() -> Any:
    """An ``MlflowClient`` for :func:`tracking_uri` (creating ``mlflow/`` for the default)."""
    from mlflow import MlflowClient

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        (Path.cwd() / "mlflow").mkdir(exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri())


@contextmanager
def service(what: str) -> Iterator[None]:
    """Turn MLflow and connection failures into :class:`ServiceError` (exit 5)."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    try:
        yield
    except (MlflowException, RequestException, ConnectionError) as exc:
        message = f"MLflow ({shown_tracking_uri()}) failed to {what}: {exc}"
        raise ServiceError(redact_text(message)) from None


def start_run(experiment: str, run_name: str, params: dict[str, str], tags: dict[str, str]) -> str:
    """Create the run (and the experiment if needed); log params and tags; return its id."""
    from mlflow.entities import Param

    with service("start a run"):
        mlflow_client = client()
        found = mlflow_client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found
            else mlflow_client.create_experiment(experiment, artifact_location=_default_artifacts())
        )
        run = mlflow_client.create_run(experiment_id, run_name=run_name)
        run_id: str = run.info.run_id
        items = sorted(params.items())
        for i in range(0, len(items), BATCH):
            chunk = [Param(k, tag_value(v, PARAM_LIMIT)) for k, v in items[i : i + BATCH]]
            mlflow_client.log_batch(run_id, params=chunk)
        set_tags(run_id, {**tags, OWNER_TAG: json.dumps(_owner(), sort_keys=True)}, mlflow_client)
        fail_orphaned_runs(mlflow_client, experiment_id, run_id)
    return run_id


OWNER_TAG = "tlops.owner"  # the process that opened a run: host, boot, pid namespace, pid, start


def _process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks after boot, /proc); empty when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def _machine() -> dict[str, str]:
    """Where pids mean the same process: the host name, its boot and the pid namespace."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        namespace = str(Path("/proc/self/ns/pid").readlink())
    except OSError:
        boot = namespace = ""
    return {"host": socket.gethostname(), "boot": boot, "pidns": namespace}


def _owner() -> dict[str, str]:
    """This process as a run's owner (the ``tlops.owner`` tag)."""
    pid = os.getpid()
    return {**_machine(), "pid": str(pid), "start": _process_start(pid)}


def process_owner() -> dict[str, str]:
    """This process's identity (host, boot, pid namespace, pid, start), for owner tags."""
    return _owner()


def same_machine(owner: dict[str, Any]) -> bool:
    """Whether an owner identity is of this host, boot and pid namespace (its pid checkable)."""
    here = _machine()
    keys = ("host", "boot", "pidns")
    return bool(here["boot"]) and all(str(owner.get(k)) == here[k] for k in keys)


def owner_gone(owner: dict[str, str]) -> bool:
    """Whether the process that opened a run has certainly ended.

    Only a process of this machine, boot and pid namespace can be checked; any other (or an
    owner tag this code does not understand) counts as alive: a live run is never failed.
    """
    here = _machine()
    if not here["boot"] or any(owner.get(k) != here[k] for k in ("host", "boot", "pidns")):
        return False
    try:
        pid = int(owner.get("pid", ""))
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's live process
        pass
    start = _process_start(pid)
    return bool(owner.get("start")) and bool(start) and start != owner["start"]  # pid reused


def fail_orphaned_runs(mlflow_client: Any, experiment_id: str, by_run: str) -> list[str]:
    """Mark FAILED the runs of an experiment left RUNNING by a process that is gone (killed);
    return their ids. Runs of live processes, or of other machines, are left as they are."""
    orphans = []
    running = mlflow_client.search_runs(
        [experiment_id], "attributes.status = 'RUNNING'", max_results=1000
    )
    for found in running:
        if found.info.run_id == by_run or OWNER_TAG not in found.data.tags:
            continue
        try:
            owner = json.loads(found.data.tags[OWNER_TAG])
        except json.JSONDecodeError:
            continue
        if not isinstance(owner, dict) or not owner_gone(owner):
            continue
        reason = (
            f"its process (pid {owner.get('pid')} on {owner.get('host')}) ended without"
            f" finishing it (killed?); marked FAILED by run {by_run}"
        )
        mlflow_client.set_tag(found.info.run_id, "tlops.failed_reason", reason)
        mlflow_client.set_terminated(found.info.run_id, status="FAILED")
        orphans.append(found.info.run_id)
        logging.getLogger(__name__).warning("MLflow run %s: %s", found.info.run_id, reason)
    return orphans


def nest_run(run_id: str, parent_run_id: str, run_name: str, tags: dict[str, str]) -> None:
    """Make ``run_id`` a child of ``parent_run_id`` (MLflow's nested runs), renamed, tagged.

    Nesting is the ``mlflow.parentRunId`` tag: the MLflow UI shows the run under its parent,
    and ``tags.mlflow.parentRunId = '<id>'`` finds the children.
    """
    with service("nest a run"):
        mlflow_client = client()
        mlflow_client.update_run(run_id, name=run_name)
        set_tags(run_id, {**tags, "mlflow.parentRunId": parent_run_id}, mlflow_client)


def set_tags(run_id: str, tags: dict[str, str], mlflow_client: Any = None) -> None:
    """Set tags on a run."""
    from mlflow.entities import RunTag

    with service("set tags"):
        mlflow_client = mlflow_client or client()
        items = sorted(tags.items())
        for i in range(0, len(items), BATCH):
            chunk = [RunTag(k, tag_value(str(v))) for k, v in items[i : i + BATCH]]
            mlflow_client.log_batch(run_id, tags=chunk)


def get_tags(run_id: str) -> dict[str, str]:
    """The tags of a run."""
    with service("read the run"):
        tags: dict[str, str] = dict(client().get_run(run_id).data.tags)
    return tags


def latest_run(experiment: str) -> dict[str, Any] | None:
    """The newest FINISHED run of an experiment: id, metrics and tags (None if there is none)."""
    with service(f"read experiment {experiment}"):
        mlflow_client = client()
        found = mlflow_client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = mlflow_client.search_runs(
            [found.experiment_id], "attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )  # fmt: skip
    if not runs:
        return None
    run = runs[0]
    return {"run_id": run.info.run_id, "metrics": run.data.metrics, "tags": run.data.tags}


def log_dataset(run_id: str, data: DataVersion, manifest_digest: str, context: str) -> None:
    """Log the DVC dataset as an MLflow input: digest = DVC md5, source = the remote URL."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    source_uri = data.remote_url or data.path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(source_uri)
    name = f"{Path(data.dvc_file).stem}/{data.subdir}" if data.subdir else Path(data.dvc_file).stem
    dataset = MetaDataset(source=source, name=name, digest=data.md5.removesuffix(".dir"))
    tags = [
        InputTag("mlflow.data.context", context),
        InputTag("dvc.rev", data.rev),
        InputTag("dvc.md5", data.md5),
        InputTag("dvc.nfiles", str(data.nfiles)),
        InputTag("dvc.dirty", str(data.dirty).lower()),
        InputTag("manifest.digest", manifest_digest),
    ]
    with service("log the dataset"):
        client().log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log a dict of metrics at one step."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    rows = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
    with service("log metrics"):
        mlflow_client = client()
        for i in range(0, len(rows), 1000):
            mlflow_client.log_batch(run_id, metrics=rows[i : i + 1000])


def log_artifacts(run_id: str, files: dict[str, list[Path]]) -> None:
    """Upload files under artifact folders: ``{"plots": [a.png, b.png], "": [config.yaml]}``."""
    with service("upload artifacts"):
        mlflow_client = client()
        for folder, paths in files.items():
            for path in paths:
                mlflow_client.log_artifact(run_id, str(path), artifact_path=folder or None)


def download_run_file(run_id: str, path: str, dest: Path) -> Path | None:
    """Download one artifact file of a run into ``dest``; None when the run has no such file."""
    import posixpath

    import mlflow.artifacts

    folder = posixpath.dirname(path)
    with service(f"read artifact {path} of run {run_id}"):
        listed = client().list_artifacts(run_id, folder or None)
        if not any(f.path == path and not f.is_dir for f in listed):
            return None
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(dest), tracking_uri=tracking_uri()
        )
    return Path(local)


def epoch_logger(run_id: str, phase: str, offset: int, phase_index: int) -> Any:
    """A Keras callback logging every epoch to the run, on one continuous step axis."""
    import keras

    class MlflowEpochLogger(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            values = {k: float(v) for k, v in (logs or {}).items()}
            values = {**values, **{f"{phase}.{k}": v for k, v in values.items()}}
            values["phase"] = float(phase_index)
            log_metrics(run_id, values, step=offset + epoch)

    return MlflowEpochLogger()


@contextmanager
def system_metrics(run_id: str, interval_s: float = 5.0) -> Iterator[None]:
    """Sample CPU / memory (and GPU where pynvml finds one) into the run while training."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval_s, samples_before_logging=1, tracking_uri=tracking_uri()
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        _publish_last_sample(monitor)


def _publish_last_sample(monitor: Any) -> None:
    """Log one closing sample of the system metrics.

    MLflow's monitor publishes only after a whole sampling interval, so a training shorter than
    one interval (a small or warm run) would otherwise end with no `system/` metric at all.
    """
    try:
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    except Exception as exc:  # best effort, like MLflow's own sampling: never masks the run's end
        logging.getLogger(__name__).warning("system metrics: last sample not logged: %s", exc)


#: The packages that provide each Keras backend, in the order they are looked for.
BACKEND_PACKAGES: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos"),
    "jax": ("jax",),
    "torch": ("torch",),
}


def model_requirements(backend: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The pip requirements of a logged Keras model: Keras and its backend, and the
    distributions named in ``extra`` (those installed), pinned to the versions installed here.

    Given to MLflow explicitly, so it skips its own inference (a subprocess that imports
    TensorFlow again: about 30 s of every training run on a 2-core machine).
    """
    from importlib import metadata

    pins = [f"keras=={metadata.version('keras')}"]
    for package in BACKEND_PACKAGES.get(backend, ()):
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
        break
    for package in extra:
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.append(f"{package}=={metadata.version(package)}")
    return pins


def log_keras_model(
    run_id: str, model: Any, example: Any, meta: dict[str, Any] | None = None
) -> str:
    """Log a Keras model (``.keras`` format) with signature and input example; return its URI.

    ``meta`` is written beside it as ``tlops.json`` (classes, input size): what prediction and
    the gate need to use the model without its run.

    Saved with ``mlflow.keras.save_model`` into a folder of ours and uploaded as the run's
    ``model`` artifact: MLflow 3.17's ``mlflow.keras.log_model`` writes the input example
    before creating its folder and fails whenever an input example is given.
    """
    import tempfile

    import mlflow
    from mlflow.models import infer_signature

    with service("log the model"), tempfile.TemporaryDirectory() as tmp:
        signature = infer_signature(example, model.predict(example, verbose=0))
        local = Path(tmp) / "model"
        local.mkdir()
        import keras

        mlflow.keras.save_model(
            model, str(local), signature=signature, input_example=example,
            pip_requirements=model_requirements(keras.backend.backend()),
        )  # fmt: skip
        if meta is not None:
            (local / "tlops.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        client().log_artifacts(run_id, str(local), artifact_path="model")
    return f"runs:/{run_id}/model"


def finish_run(run_id: str, status: str = "FINISHED") -> None:
    """Mark the run FINISHED or FAILED.

    MLflow then prints "View run ... at: <tracking URI>" to stdout; for a URI with
    credentials that print is suppressed (the run summary names the server, redacted).
    """
    quiet = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    before = os.environ.get(quiet)
    if shown_tracking_uri() != tracking_uri():
        os.environ[quiet] = "true"
    try:
        with service("finish the run"):
            client().set_terminated(run_id, status=status)
    finally:
        if before is None:
            os.environ.pop(quiet, None)
        else:
            os.environ[quiet] = before
