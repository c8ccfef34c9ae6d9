"""Unit-layer fixtures: a real SQLite MLflow store per test module, and a run with a model.

Not a ``conftest.py``: the flow and fault tests import ``tests/conftest.py`` as ``conftest``,
and a second rootless conftest would take that module name. A test module loads them with
``pytest_plugins = ["unit.mlflow_fixtures"]`` (``tests/`` is on the path).
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@functools.cache
def _mlflow_schema() -> Path:
    """An empty SQLite MLflow database with MLflow's schema, made once per process: the
    migration takes seconds (over ten on a busy machine), a copy of the file a fraction."""
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="tlops-mlflow-schema-"))
    atexit.register(shutil.rmtree, folder, True)
    db = folder / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow store of this module's own (SQLite, artifacts beside it under
    ``artifacts/``, where :func:`tlops.adapters.tracking.start_run` puts them) as
    ``MLFLOW_TRACKING_URI`` for the whole module. Tests use unique model and experiment names."""
    home = tmp_path_factory.mktemp("mlflow-store")
    shutil.copy(_mlflow_schema(), home / "mlflow.db")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture
def store(mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The module's store as this test's tracking URI (again: a test may have changed it)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    return mlflow_store


ModelRun = Callable[[str], str]


@pytest.fixture
def model_run(store: str, tmp_path: Path) -> ModelRun:
    """Make a real, finished run of an experiment (via tlops' tracking adapter) whose ``model``
    artifact looks like a tlops model folder (``data/model.keras``, ``tlops.json``) without
    being a Keras model; returns its run id."""
    return lambda experiment: _run_with_model_folder(experiment, tmp_path)


def _run_with_model_folder(experiment: str, tmp: Path) -> str:
    from tlops.adapters import tracking

    run_id = tracking.start_run(experiment, "run", {}, {"data.md5": "d" * 32})
    folder = tmp / f"model-{run_id}"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "model.keras").write_bytes(b"not really keras")
    meta = {"classes": ["a", "b"], "binary": False, "image_size": 16}
    (folder / "tlops.json").write_text(json.dumps(meta), encoding="utf-8")
    tracking.client().log_artifacts(run_id, str(folder), artifact_path="model")
    tracking.finish_run(run_id)
    return run_id
