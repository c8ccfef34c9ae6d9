"""Raw images in, labels out (:mod:`tlops.model.serving`): the decode is training's, and every
bad request names its row or field."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from unit.imaging import bomb_png

from tlops.data.inputs import load_image
from tlops.model.serving import (
    BadRequestError,
    ModelCard,
    answer_rows,
    encoded_bytes,
    request_images,
)

CARD = ModelCard(classes=("cat", "dog"), image_size=16, binary=True)


def encoded(img: Image.Image, fmt: str) -> bytes:
    """``img`` encoded as ``fmt``."""
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def photo(mode: str, size: tuple[int, int] = (40, 28)) -> Image.Image:
    """A small image of ``mode`` with some structure (a gradient)."""
    ramp = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    rgb = Image.fromarray(ramp.astype(np.uint8), "RGB")
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    if mode == "RGBA":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(128)
        return rgba
    return rgb.convert(mode)


@pytest.mark.parametrize(("mode", "fmt"), [
    ("RGB", "JPEG"), ("L", "JPEG"), ("RGB", "PNG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
])  # fmt: skip
def test_request_bytes_decode_exactly_as_training_decodes_the_file(
    mode: str, fmt: str, tmp_path: Path
) -> None:
    data = encoded(photo(mode), fmt)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    as_bytes = request_images(pd.DataFrame({"image": [data]}), CARD)
    as_base64 = request_images(pd.DataFrame({"image": [base64.b64encode(data).decode()]}), CARD)
    as_path = request_images(pd.DataFrame({"path": [str(path)]}), CARD)
    trained = load_image(path, 16)[None]
    assert as_bytes.shape == (1, 16, 16, 3) and as_bytes.dtype == np.float32
    for got in (as_bytes, as_base64, as_path):
        np.testing.assert_array_equal(got, trained)


@pytest.mark.parametrize(("cells", "message"), [
    ([b"not an image at all"], "row 0: not an image in the allowed formats"),
    ([b""], "row 0: `image` is empty"),
    ([None], "row 0: `image` is empty"),
    (["%%% not base64 %%%"], "row 0: `image` is text but not base64"),
    ([12], "row 0: `image` must be bytes or base64 text, not int"),
    ([bomb_png(40_000, 40_000)], "row 0: too many pixels"),
])  # fmt: skip
def test_each_bad_image_is_a_bad_request_naming_its_row(cells: list[object], message: str) -> None:
    with pytest.raises(BadRequestError, match=message.replace("(", r"\(")):
        request_images(pd.DataFrame({"image": cells}), CARD)


def test_a_truncated_image_names_its_row_among_good_ones() -> None:
    good = encoded(photo("RGB"), "JPEG")
    with pytest.raises(BadRequestError, match=r"^row 1: "):
        request_images(pd.DataFrame({"image": [good, good[: len(good) // 2], good]}), CARD)


def test_a_request_without_an_image_column_or_rows_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError, match=r"needs an `image` or `path` column \(found: x\)"):
        request_images(pd.DataFrame({"x": [1]}), CARD)
    with pytest.raises(BadRequestError, match="holds no rows"):
        request_images(pd.DataFrame({"image": []}), CARD)
    with pytest.raises(BadRequestError, match=r"row 0 \(.*missing.png\): not found"):
        request_images(pd.DataFrame({"path": ["/nowhere/missing.png"]}), CARD)


def test_a_data_url_is_base64_too() -> None:
    data = encoded(photo("RGB"), "PNG")
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert encoded_bytes(url, 0) == data


def test_answers_name_every_class() -> None:
    rows = answer_rows(np.array([[0.2, 0.8], [0.9, 0.1]]), ["cat", "dog"])
    assert rows[0] == {"label": "dog", "score": 0.8, "probabilities": {"cat": 0.2, "dog": 0.8}}
    assert rows[1]["label"] == "cat" and rows[1]["score"] == 0.9
