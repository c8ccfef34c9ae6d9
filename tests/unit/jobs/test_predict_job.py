"""Prediction with a registered model (:func:`tlops.jobs.predict.predict_files`): a tiny real
Keras model logged the way tlops logs it (``tracking.log_keras_model`` with ``tlops.json``),
registered in a real SQLite MLflow store once per module."""

from __future__ import annotations

import csv
import io
import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlops.adapters import registry, tracking
from tlops.errors import ConfigError
from tlops.jobs.predict import Prediction, expand, format_predictions, predict_files

#: the real SQLite MLflow store of this module (see tests/unit/mlflow_fixtures.py)
pytest_plugins = ["unit.mlflow_fixtures"]

SIZE = 16
CLASSES = ["bright", "dark", "other"]


def brightness_model() -> object:
    """16x16 RGB -> softmax over 3 classes: a bright red channel is ``bright``, a dark one
    ``dark``, ``other`` never wins (mean pooling and one dense layer with fixed weights)."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inputs, dense(pooled))
    kernel = np.zeros((3, 3), dtype=np.float32)
    kernel[0] = [0.1, -0.1, 0.0]
    dense.set_weights([kernel, np.array([-12.75, 12.75, -20.0], dtype=np.float32)])
    return model


@pytest.fixture(scope="module")
def model_name(mlflow_store: str) -> Iterator[str]:
    """A registered model (v1, alias ``champion``) holding the brightness model."""
    name = f"predict-{uuid.uuid4().hex[:8]}"
    run_id = tracking.start_run(name, "train", {}, {})
    meta = {"classes": CLASSES, "binary": False, "image_size": SIZE, "backbone": "none"}
    example = np.zeros((1, SIZE, SIZE, 3), dtype=np.float32)
    uri = tracking.log_keras_model(run_id, brightness_model(), example, meta)
    tracking.finish_run(run_id)
    info = registry.register(name, run_id, uri, {}, "")
    registry.set_alias(name, "champion", info.version)
    yield name


@pytest.fixture(scope="module")
def binary_name(mlflow_store: str) -> str:
    """A registered model with one sigmoid unit (classes ``cold``, ``hot``): hot when red."""
    import keras

    name = f"binary-{uuid.uuid4().hex[:8]}"
    inputs = keras.Input((SIZE, SIZE, 3))
    dense = keras.layers.Dense(1, activation="sigmoid")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([np.array([[0.1], [0.0], [0.0]], dtype=np.float32), np.array([-12.75])])
    run_id = tracking.start_run(name, "train", {}, {})
    meta = {"classes": ["cold", "hot"], "binary": True, "image_size": SIZE}
    example = np.zeros((1, SIZE, SIZE, 3), dtype=np.float32)
    uri = tracking.log_keras_model(run_id, model, example, meta)
    tracking.finish_run(run_id)
    registry.register(name, run_id, uri, {}, "")
    return name


def image(path: Path, red: int, size: int = 24) -> Path:
    """An RGB image (resized to 16x16 on prediction) with a flat red channel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[..., 0] = red
    Image.fromarray(pixels).save(path)
    return path


def test_top_k_of_files_and_folders_in_order(model_name: str, store: str, tmp_path: Path) -> None:
    bright = image(tmp_path / "b.png", 250)
    folder = tmp_path / "folder"
    image(folder / "z" / "dark.jpg", 5)
    image(folder / "a.PNG", 240)
    (folder / "notes.txt").write_text("not an image\n", encoding="utf-8")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = predict_files(f"models:/{model_name}@champion", [bright, folder, broken], top_k=2)
    assert [Path(r.path).name for r in rows] == ["b.png", "a.PNG", "dark.jpg", "broken.png"]
    assert [r.top[0][0] for r in rows[:3]] == ["bright", "bright", "dark"]
    for row in rows[:3]:
        assert len(row.top) == 2 and row.top[0][1] > 0.99 and row.error == ""
        assert row.top[0][1] >= row.top[1][1]
    assert rows[3].top == [] and rows[3].error  # an unreadable file is its own row
    assert rows[3].path == str(broken)


def test_top_k_is_capped_and_a_version_uri_works(
    model_name: str, store: str, tmp_path: Path
) -> None:
    dark = image(tmp_path / "d.png", 0)
    (row,) = predict_files(f"models:/{model_name}/1", [dark], top_k=10)
    assert [label for label, _ in row.top] == ["dark", "bright", "other"]
    assert abs(sum(p for _, p in row.top) - 1.0) < 1e-4


def test_a_binary_model_gives_both_classes(binary_name: str, store: str, tmp_path: Path) -> None:
    rows = predict_files(
        f"models:/{binary_name}/1",
        [image(tmp_path / "h.png", 255), image(tmp_path / "c.png", 0)],
        top_k=5,
    )
    assert [[label for label, _ in r.top] for r in rows] == [["hot", "cold"], ["cold", "hot"]]
    for row in rows:
        assert row.top[0][1] > 0.99 and abs(row.top[0][1] + row.top[1][1] - 1.0) < 1e-5


def test_a_missing_file_is_its_row(model_name: str, store: str, tmp_path: Path) -> None:
    (row,) = predict_files(f"models:/{model_name}@champion", [tmp_path / "gone.png"], top_k=1)
    assert row.top == [] and row.error


def test_a_missing_model_is_a_config_error(model_name: str, store: str, tmp_path: Path) -> None:
    for uri in (f"models:/{model_name}@nobody", f"models:/{model_name}/9", "runs:/x/model"):
        with pytest.raises(ConfigError) as caught:
            predict_files(uri, [tmp_path], top_k=1)
        assert caught.value.exit_code == 2


def test_expand(tmp_path: Path) -> None:
    image(tmp_path / "b" / "x.webp", 1)
    image(tmp_path / "a.gif", 1)
    (tmp_path / "c.txt").write_text("", encoding="utf-8")
    named = tmp_path / "c.txt"
    assert expand([tmp_path, named]) == [tmp_path / "a.gif", tmp_path / "b" / "x.webp", named]


def test_formats() -> None:
    rows = [
        Prediction(path="a.png", top=[("cat", 0.9), ("dog", 0.1)]),
        Prediction(path="long/b.png", error="not an image"),
    ]
    table = format_predictions(rows, "table").splitlines()
    assert table == ["a.png       cat 0.900  dog 0.100", "long/b.png  error: not an image"]
    assert json.loads(format_predictions(rows, "json"))[0] == {
        "path": "a.png", "top": [["cat", 0.9], ["dog", 0.1]], "error": "",
    }  # fmt: skip
    parsed = list(csv.reader(io.StringIO(format_predictions(rows, "csv"))))
    assert parsed == [
        ["path", "rank", "class", "probability", "error"],
        ["a.png", "1", "cat", "0.900000", ""], ["a.png", "2", "dog", "0.100000", ""],
        ["long/b.png", "", "", "", "not an image"],
    ]  # fmt: skip
    assert format_predictions([], "table") == ""


def test_the_logged_model_pins_keras_and_its_backend(model_name: str, store: str) -> None:
    """Requirements are given, not inferred (MLflow's inference imports TensorFlow again in a
    subprocess, about 30 s a run): the installed Keras and backend versions, pinned."""
    from importlib import metadata

    import keras

    info = registry.resolve(f"models:/{model_name}/1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = registry.download(info, Path(tmp))
        lines = (folder / "requirements.txt").read_text(encoding="utf-8").split()
    assert f"keras=={metadata.version('keras')}" in lines
    assert keras.backend.backend() == "tensorflow"
    assert any(line.startswith(("tensorflow==", "tensorflow-cpu==")) for line in lines), lines
