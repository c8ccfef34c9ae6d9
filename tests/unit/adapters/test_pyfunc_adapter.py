"""The classifier as an MLflow 3 pyfunc LoggedModel that speaks images
(:mod:`tlops.adapters.pyfunc`), logged to a real SQLite store and loaded back by MLflow."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from unit.imaging import CLASSES, SIZE, brightness_model

from tlops.adapters import tracking
from tlops.adapters.pyfunc import log_image_model

#: the real SQLite MLflow store of this module (see tests/unit/mlflow_fixtures.py)
pytest_plugins = ["unit.mlflow_fixtures"]


def png(red: int, mode: str = "RGB") -> bytes:
    """A 24x20 image with a flat red channel, encoded as PNG."""
    array = np.zeros((20, 24, 3), dtype=np.uint8)
    array[..., 0] = red
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def logged(mlflow_store: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(run id, model id) of a run whose pyfunc LoggedModel is the brightness model."""
    folder = tmp_path_factory.mktemp("keras")
    name = f"pyfunc-{uuid.uuid4().hex[:8]}"
    run_id = tracking.start_run(name, "train", {}, {})
    tracking.log_metrics(run_id, {"test_accuracy": 0.75})
    meta = {"classes": CLASSES, "binary": False, "image_size": SIZE, "backbone": "none"}
    model = log_image_model(run_id, brightness_model(folder / "model.keras"), meta)
    tracking.finish_run(run_id)
    return run_id, model.model_id


def test_it_is_a_logged_model_of_the_run_with_its_metrics(logged: tuple[str, str]) -> None:
    from mlflow import MlflowClient

    run_id, model_id = logged
    client = MlflowClient()
    found = client.get_logged_model(model_id)
    assert found.source_run_id == run_id
    experiment = client.get_run(run_id).info.experiment_id
    ids = [m.model_id for m in client.search_logged_models(experiment_ids=[experiment])]
    assert model_id in ids
    assert {m.key: m.value for m in found.metrics or []}.get("test_accuracy") == 0.75
    assert [o.model_id for o in client.get_run(run_id).outputs.model_outputs] == [model_id]


def test_loaded_by_mlflow_it_labels_encoded_images_by_name(logged: tuple[str, str]) -> None:
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{logged[1]}")
    answer = model.predict(pd.DataFrame({"image": [png(250), png(5), png(250, "P")]}))
    assert list(answer["label"]) == ["bright", "dark", "bright"]
    first = answer.iloc[0]
    assert set(first["probabilities"]) == set(CLASSES)
    assert first["score"] == pytest.approx(max(first["probabilities"].values()))
    inputs = {c.name: c.type.name for c in model.metadata.get_input_schema().inputs}
    assert inputs == {"image": "binary", "path": "string"}
    # the input example (a real PNG) was logged with it, and answers through the pyfunc
    local = mlflow.artifacts.download_artifacts(f"models:/{logged[1]}")
    example = model.metadata.load_input_example(local)
    assert Image.open(io.BytesIO(example["image"][0])).format == "PNG"
    assert list(model.predict(example).columns) == ["label", "score", "probabilities"]


def test_a_bad_request_is_an_invalid_parameter_naming_the_row(logged: tuple[str, str]) -> None:
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(f"models:/{logged[1]}")
    with pytest.raises(MlflowException, match="row 1: not an image") as raised:
        model.predict(pd.DataFrame({"image": [png(250), b"garbage"]}))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_the_input_example_is_a_real_image(logged: tuple[str, str], tmp_path: Path) -> None:
    import mlflow.artifacts

    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{logged[1]}", dst_path=str(tmp_path))
    )
    example = json.loads((local / "serving_input_example.json").read_text())
    assert "image" in json.dumps(example)
    assert (local / "artifacts" / "model.keras").is_file()
    assert (local / "artifacts" / "tlops.json").is_file()


def test_a_registered_version_carries_the_model_id_and_finds_its_files(
    logged: tuple[str, str], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from tlops.adapters import registry

    run_id, model_id = logged
    name = f"served-{uuid.uuid4().hex[:8]}"
    info = registry.register(name, run_id, f"models:/{model_id}", {}, "")
    client = MlflowClient()
    assert client.get_model_version(name, info.version).tags["model_id"] == model_id
    linked = json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"])
    assert linked == [{"name": name, "version": int(info.version)}]
    for folder in (
        registry.download(info, tmp_path / "version"),
        registry.download_classifier(info, tmp_path / "classifier"),  # the run's LoggedModel
    ):
        keras_file, meta = registry.model_files(folder)
        assert keras_file.relative_to(folder).as_posix() == "artifacts/model.keras"
        assert meta["classes"] == CLASSES


def test_a_tracking_uri_set_in_process_does_not_send_the_model_elsewhere(
    mlflow_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in the suite: an earlier test of the process had called ``mlflow.set_tracking_uri``
    (MLflow's global wins over the environment), so ``Model.log`` looked for the run in that
    other store ("Run with id ... not found")."""
    import mlflow

    other = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_tracking_uri(other)  # also sets $MLFLOW_TRACKING_URI: set it back, as a test would
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    try:
        run_id = tracking.start_run(f"elsewhere-{uuid.uuid4().hex[:8]}", "train", {}, {})
        meta = {"classes": CLASSES, "binary": False, "image_size": SIZE, "backbone": "none"}
        model = log_image_model(run_id, brightness_model(tmp_path / "m.keras"), meta)
        tracking.finish_run(run_id)
        assert mlflow.get_tracking_uri() == other  # MLflow's global is put back
    finally:
        mlflow.set_tracking_uri(None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    assert tracking.client().get_logged_model(model.model_id).source_run_id == run_id


def test_a_card_that_names_another_image_size_logs_no_model(
    mlflow_store: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    run_id = tracking.start_run(f"size-{uuid.uuid4().hex[:8]}", "train", {}, {})
    meta = {"classes": CLASSES, "binary": False, "image_size": SIZE + 8, "backbone": "none"}
    with pytest.raises(ValueError, match=rf"takes {SIZE} px images, its card says {SIZE + 8}"):
        log_image_model(run_id, brightness_model(tmp_path / "m.keras"), meta)
    tracking.finish_run(run_id, "FAILED")
    experiment = MlflowClient().get_run(run_id).info.experiment_id
    assert not MlflowClient().search_logged_models(experiment_ids=[experiment])


#: Loads a downloaded image model where ``tlops`` is not installed: ``python -S`` processes
#: no ``.pth`` file, so the editable install of tlops is not on the path, and the
#: site-packages folders are added by hand.
_NO_TLOPS = """
import importlib.util, json, sys
sys.path[:] = [p for p in sys.path if p] + json.loads(sys.argv[2])
assert importlib.util.find_spec("tlops") is None, "tlops is importable"
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
images = [bytes.fromhex(h) for h in json.loads(sys.argv[3])]
answer = model.predict(pd.DataFrame({"image": images}))
import tlops
print(json.dumps({"labels": list(answer["label"]), "code": tlops.__file__}))
"""


def test_the_model_carries_its_code_and_pins_pillow_so_it_loads_without_tlops(
    logged: tuple[str, str], store: str, tmp_path: Path
) -> None:
    import subprocess
    import sys
    import sysconfig
    from importlib import metadata

    import mlflow.artifacts

    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{logged[1]}", dst_path=str(tmp_path))
    )
    assert (local / "code" / "tlops" / "model" / "serving.py").is_file()
    requirements = (local / "requirements.txt").read_text().split()
    assert f"pillow=={metadata.version('pillow')}" in requirements
    site = sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
    images = json.dumps([png(250).hex(), png(5, "L").hex()])
    done = subprocess.run(
        [sys.executable, "-S", "-c", _NO_TLOPS, str(local), json.dumps(site), images],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["labels"] == ["bright", "dark"]
    assert Path(result["code"]).resolve().is_relative_to((local / "code").resolve())
