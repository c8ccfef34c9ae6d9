"""Raw images in, labels out: what a served tlops classifier computes for one request.

A request is a table (the pandas DataFrame MLflow's scoring server hands a pyfunc model) with
one image per row, in a column ``image`` (the encoded file's bytes, or base64 text of them) or
``path`` (a file the server can read, for batch jobs). Every image is decoded, converted and
resized by the very function training uses (:func:`tlops.data.inputs.decode_image` /
:func:`~tlops.data.inputs.load_image`), so there is no second preprocessing to drift apart.
The answer is one row per image: the ``label``, its ``score`` and the probability of every
class by name (``probabilities``).

A request that cannot be answered raises :class:`BadRequestError`, whose message names the row or
field and why (not an image, empty, truncated, too many pixels, no such column).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tlops.config import PILLOW_MAX_PIXELS
from tlops.data.inputs import (
    SUPPORTED_FORMATS,
    UnreadableImageError,
    decode_image,
    load_image,
    strict_decoding,
)
from tlops.safetext import one_line

IMAGE = "image"
PATH = "path"


class BadRequestError(ValueError):
    """A request the model cannot answer; the message names the row or field and why."""


@dataclass(frozen=True)
class ModelCard:
    """What serving needs to know about a classifier (its ``tlops.json``)."""

    classes: tuple[str, ...]
    image_size: int
    binary: bool
    formats: tuple[str, ...] = SUPPORTED_FORMATS
    max_pixels: int = PILLOW_MAX_PIXELS

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ModelCard:
        """From a model's ``tlops.json`` (classes, image_size, binary)."""
        return cls(
            classes=tuple(str(c) for c in meta["classes"]),
            image_size=int(meta["image_size"]),
            binary=bool(meta["binary"]),
        )


def _missing(value: Any) -> bool:
    """Whether a cell holds nothing (None, NaN, pandas' NA)."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN and NA are not equal to themselves
    except (TypeError, ValueError):
        return False


def encoded_bytes(value: Any, row: int) -> bytes:
    """The encoded image of one ``image`` cell: bytes as given, text as base64 (a ``data:``
    URL's prefix allowed); a :class:`BadRequestError` for anything else or for nothing."""
    if _missing(value):
        raise BadRequestError(f"row {row}: `{IMAGE}` is empty")
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequestError(f"row {row}: `{IMAGE}` is text but not base64") from None
    else:
        kind = type(value).__name__
        raise BadRequestError(f"row {row}: `{IMAGE}` must be bytes or base64 text, not {kind}")
    if not data:
        raise BadRequestError(f"row {row}: `{IMAGE}` is empty")
    return data


def _column(frame: Any) -> tuple[str, list[Any]]:
    """The request's image column and its cells."""
    columns = [str(c) for c in getattr(frame, "columns", [])]
    for name in (IMAGE, PATH):
        if name in columns:
            cells = list(frame[name])
            if not cells:
                raise BadRequestError("the request holds no rows")
            return name, cells
    found = ", ".join(columns) or "none"
    raise BadRequestError(f"the request needs an `{IMAGE}` or `{PATH}` column (found: {found})")


def _one(column: str, cell: Any, row: int, card: ModelCard) -> np.ndarray:
    """One cell decoded as training decodes it."""
    size, formats, limit = card.image_size, card.formats, card.max_pixels
    try:
        if column == IMAGE:
            return decode_image(encoded_bytes(cell, row), size, formats, limit, f"row {row}")
        if _missing(cell) or not str(cell):
            raise BadRequestError(f"row {row}: `{PATH}` is empty")
        return load_image(str(cell), size, formats, limit)
    except UnreadableImageError as exc:
        where = f"row {row}" if column == IMAGE else f"row {row} ({one_line(cell)})"
        raise BadRequestError(f"{where}: {exc.reason}") from None


def request_images(frame: Any, card: ModelCard) -> np.ndarray:
    """The request's images as one float32 ``(n, size, size, 3)`` batch of 0..255 RGB."""
    column, cells = _column(frame)
    with strict_decoding():
        images = [_one(column, cell, row, card) for row, cell in enumerate(cells)]
    return np.stack(images)


def answer_rows(probs: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """One answer per image: its label, the label's score, and every class's probability."""
    rows = []
    for p in np.asarray(probs, dtype=np.float64):
        best = int(np.argmax(p))
        rows.append(
            {
                "label": str(classes[best]),
                "score": float(p[best]),
                "probabilities": {str(c): float(v) for c, v in zip(classes, p, strict=True)},
            }
        )
    return rows
