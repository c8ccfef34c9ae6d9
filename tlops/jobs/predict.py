"""Prediction with a registered model: files and folders in, top-k classes out.

The registered model holds its preprocessing (stock Keras layers), so a caller only decodes and
resizes images the way training did (:func:`tlops.data.inputs.load_image`: only the supported
formats are handed to Pillow, decompression bombs are refused). A file that cannot be read is that
file's row; its name is shown escaped (one line, valid UTF-8).
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from tlops.adapters import registry
from tlops.data.inputs import UnreadableImageError, load_image, strict_decoding
from tlops.safetext import one_line

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
#: Images decoded and predicted together (in batches of the served model's size).
CHUNK = 256


class Prediction(BaseModel):
    """The top-k classes of one file, or why it could not be read."""

    model_config = ConfigDict(frozen=True)

    path: str
    top: list[tuple[str, float]] = []
    error: str = ""


def expand(paths: list[Path]) -> list[Path]:
    """Files as given; folders searched recursively for images (sorted)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(path)
    return out


def predict_files(model_uri: str, paths: list[Path], top_k: int) -> list[Prediction]:
    """Top-k classes for every image under ``paths`` with the model at ``model_uri``."""
    import keras

    from tlops.adapters.pyfunc import SERVE_BATCH
    from tlops.model.classifier import predict_batches, probabilities

    info = registry.resolve(model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        keras_file, meta = registry.model_files(registry.download(info, Path(tmp)))
        model = keras.models.load_model(keras_file, safe_mode=True)
    classes, size = [str(c) for c in meta["classes"]], int(meta["image_size"])
    rows: dict[int, Prediction] = {}
    good: list[tuple[int, np.ndarray]] = []
    files = expand(paths)
    with strict_decoding():
        for i, path in enumerate(files):
            try:
                good.append((i, load_image(path, size)))
            except UnreadableImageError as exc:  # unreadable files are reported, not fatal
                rows[i] = Prediction(path=one_line(path), error=exc.reason)
            except Exception as exc:  # anything else about one file is that file's row too
                reason = one_line(f"{type(exc).__name__}: {exc}")
                rows[i] = Prediction(path=one_line(path), error=reason)
    for start in range(0, len(good), CHUNK):
        chunk = good[start : start + CHUNK]
        batch = np.stack([image for _, image in chunk])
        # the served model's forward passes: the same function, the same batch shape
        probs = probabilities(predict_batches(model, batch, SERVE_BATCH), bool(meta["binary"]))
        for (i, _), p in zip(chunk, probs, strict=True):
            order = np.argsort(-p)[: min(top_k, len(classes))]
            rows[i] = Prediction(
                path=one_line(files[i]), top=[(classes[j], round(float(p[j]), 6)) for j in order]
            )
    return [rows[i] for i in range(len(files))]


def format_predictions(rows: list[Prediction], fmt: str) -> str:
    """As an aligned table, JSON, or CSV (one row per file and rank)."""
    if fmt == "json":
        return json.dumps([r.model_dump(mode="json") for r in rows], indent=1)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "rank", "class", "probability", "error"])
        for r in rows:
            if r.error:
                writer.writerow([r.path, "", "", "", r.error])
            for rank, (label, prob) in enumerate(r.top, start=1):
                writer.writerow([r.path, rank, label, f"{prob:.6f}", ""])
        return buffer.getvalue().rstrip("\n")
    width = max((len(r.path) for r in rows), default=4)
    lines = []
    for r in rows:
        shown = r.error and f"error: {r.error}"
        shown = shown or "  ".join(f"{label} {prob:.3f}" for label, prob in r.top)
        lines.append(f"{r.path:<{width}}  {shown}")
    return "\n".join(lines)
