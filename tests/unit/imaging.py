"""Small real models and images that several test modules share (not a test module).

``brightness_model``: 16x16 RGB -> softmax over ``CLASSES`` with fixed weights, so a bright
red channel is ``bright`` and a dark one ``dark``; ``bomb_png``: a PNG whose header claims more
pixels than any limit allows.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

SIZE = 16
CLASSES = ["bright", "dark", "other"]


def brightness_model(path: Path) -> Path:
    """The brightness classifier (mean pooling, one dense layer with fixed weights), saved to
    ``path`` (``.keras``)."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    kernel = np.zeros((3, 3), dtype=np.float32)
    kernel[0] = [0.1, -0.1, 0.0]
    dense.set_weights([kernel, np.array([-12.75, 12.75, -20.0], dtype=np.float32)])
    model.save(path)
    return path


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (no real pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
