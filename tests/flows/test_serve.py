"""The registered champion served for real: ``mlflow models serve -m models:/NAME@champion``
(local env manager) on a free loopback port answers encoded images with the labels
``tlops predict`` gives for the same files, and answers bad requests with a 4xx that names the
problem while it keeps serving."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port, tlops_cli, wait_until_answering
from PIL import Image
from unit.imaging import CLASSES, SIZE, bomb_png, brightness_model


def picture(red: int, mode: str, size: tuple[int, int]) -> Image.Image:
    """An image of ``mode`` and ``size`` with a flat red channel."""
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[..., 0] = red
    rgb = Image.fromarray(array, "RGB")
    if mode == "RGBA":
        rgb = rgb.convert("RGBA")
        rgb.putalpha(255)
        return rgb
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    return rgb.convert(mode)


def post(url: str, body: bytes) -> tuple[int, Any]:
    """POST a JSON body; (status, decoded answer)."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def images_request(*images: bytes) -> bytes:
    """A ``dataframe_split`` request of base64-encoded images."""
    rows = [[base64.b64encode(data).decode()] for data in images]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


@pytest.fixture
def champion(tracked: str, tmp_path: Path) -> str:
    """A registered model whose ``champion`` is the brightness model, as tlops logs it."""
    from tlops.adapters import registry, tracking
    from tlops.adapters.pyfunc import log_image_model

    name = f"served-{uuid.uuid4().hex[:8]}"
    run_id = tracking.start_run(name, "train", {}, {})
    meta = {"classes": CLASSES, "binary": False, "image_size": SIZE, "backbone": "none"}
    logged = log_image_model(run_id, brightness_model(tmp_path / "model.keras"), meta)
    tracking.finish_run(run_id)
    info = registry.register(name, run_id, logged.uri, {}, "")
    registry.set_alias(name, "champion", info.version)
    return name


@pytest.fixture
def served(champion: str, tracked: str, tmp_path: Path) -> Iterator[str]:
    """``mlflow models serve`` of the champion; yields its invocations URL."""
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    # the scoring server runs `uvicorn` from PATH: this environment's, as when it is activated
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{champion}@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
        env={**os.environ, "MLFLOW_TRACKING_URI": tracked, "PATH": path}, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(proc, f"{base}/ping", tmp_path / "serve.log", "mlflow models serve")
        yield f"{base}/invocations"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_served_champion_labels_images_as_tlops_predict_and_refuses_bad_requests(
    served: str, champion: str, prefect_api: str, tmp_path: Path
) -> None:
    cases = [  # (red, mode, format, size)
        (250, "RGB", "JPEG", (40, 30)), (5, "L", "PNG", (16, 16)), (250, "RGBA", "PNG", (17, 61)),
        (250, "P", "PNG", (64, 64)), (5, "RGB", "PNG", (300, 200)), (5, "L", "JPEG", (23, 9)),
    ]  # fmt: skip
    files = []
    for index, (red, mode, fmt, size) in enumerate(cases):
        path = tmp_path / "images" / f"{index}.{fmt.lower()}"
        path.parent.mkdir(exist_ok=True)
        picture(red, mode, size).save(path, format=fmt)
        files.append(path)
    status, answer = post(served, images_request(*(p.read_bytes() for p in files)))
    assert status == 200, answer
    served_labels = [row["label"] for row in answer["predictions"]]
    assert served_labels == ["bright", "dark", "bright", "bright", "dark", "dark"]
    first = answer["predictions"][0]
    assert set(first["probabilities"]) == set(CLASSES)
    done = tlops_cli(
        ["predict", f"models:/{champion}@champion", *map(str, files), "--format", "json"],
        prefect_api,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    predicted = [row["top"][0][0] for row in json.loads(done.stdout)]
    assert predicted == served_labels

    jpeg = files[0].read_bytes()
    bad = [  # (body, text the 4xx answer names)
        (images_request(b"this is not an image"), "row 0: not an image"),
        (images_request(b""), "row 0: `image` is empty"),
        (images_request(jpeg[: len(jpeg) // 2]), "row 0"),
        (images_request(bomb_png(40_000, 40_000)), "too many pixels"),
        (json.dumps({"dataframe_split": {"columns": ["x"], "data": [[1]]}}).encode(), "image"),
        (b'{"dataframe_split": {"columns": ["image"], "data": [[', "json"),
    ]
    for body, text in bad:
        status, answer = post(served, body)
        assert 400 <= status < 500, (text, status, answer)
        assert text.lower() in str(answer.get("message", "")).lower(), (text, answer)
    status, answer = post(served, images_request(files[1].read_bytes()))  # still serving
    assert status == 200 and answer["predictions"][0]["label"] == "dark"
