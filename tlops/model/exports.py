"""Exports of a trained classifier (SavedModel, ONNX, LiteRT), each run with its own runtime and
checked for parity against the Keras model on the same images.

One function per concern: :func:`write_export` (Keras' own ``model.export``, which calls
``tf2onnx`` for ONNX and the TFLite converter for LiteRT), :func:`load_runner` (TensorFlow for
a SavedModel, ``onnxruntime`` for ONNX, the ``ai-edge-litert`` interpreter for LiteRT: the
runtimes that serve each format), :func:`parity` and :func:`export_and_check`. Runtimes are
imported only when a format is used.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from tlops.config import EXPORT_FORMATS, ExportFormat
from tlops.safetext import one_line

FORMATS = EXPORT_FORMATS
#: What Keras calls each format, and the file (or folder) name of each export.
KERAS_FORMAT: dict[str, str] = {"saved_model": "tf_saved_model", "onnx": "onnx", "litert": "litert"}
FILE_NAME: dict[str, str] = {
    "saved_model": "saved_model", "onnx": "model.onnx", "litert": "model.tflite",
}  # fmt: skip
#: Parity goals: every argmax the same, and probabilities within this of the Keras model's.
ARGMAX_GOAL = 1.0
MAX_PROB_DIFF = 1e-4

Runner = Callable[[np.ndarray], np.ndarray]


class ExportReport(BaseModel):
    """One export: where it is, how big, how fast at batch 1, and its parity with Keras."""

    model_config = ConfigDict(frozen=True)

    format: ExportFormat
    path: str
    size_mb: float
    latency_ms_batch1: float
    images: int
    argmax_agreement: float
    max_prob_diff: float
    tolerance: float
    runtime: str
    error: str = ""

    @property
    def passed(self) -> bool:
        """Parity met: all argmaxes agree and no probability differs by more than the tolerance."""
        return (
            not self.error
            and self.argmax_agreement >= ARGMAX_GOAL
            and self.max_prob_diff <= self.tolerance
        )

    def line(self) -> str:
        """One line for logs and summaries."""
        if self.error:
            return f"{self.format} ({self.runtime}): FAILED: {self.error}"
        verdict = "parity ok" if self.passed else "PARITY FAILED"
        return (
            f"{self.format} ({self.runtime}): {verdict}: argmax agreement"
            f" {self.argmax_agreement:.4f} on {self.images} images, largest probability"
            f" difference {self.max_prob_diff:.2e} (at most {self.tolerance:.0e}),"
            f" {self.size_mb:.2f} MB, {self.latency_ms_batch1:.2f} ms/image at batch 1"
        )

    def metrics(self) -> dict[str, float]:
        """The export's figures as metrics a gate rule can name (``onnx_latency_ms_batch1``);
        none for an export that could not be made or run (a rule naming it then fails)."""
        if self.error:
            return {}
        return {
            f"{self.format}_size_mb": self.size_mb,
            f"{self.format}_latency_ms_batch1": self.latency_ms_batch1,
            f"{self.format}_argmax_agreement": self.argmax_agreement,
            f"{self.format}_max_prob_diff": self.max_prob_diff,
        }


def size_mb(path: Path) -> float:
    """Size of a file, or of every file under a folder, in MB."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def _is_augmentation(layer: Any) -> bool:
    """A random augmentation layer (``RandomFlip``...), or a Sequential of nothing else."""
    inner = getattr(layer, "layers", None)
    if type(layer).__name__ == "Sequential" and inner:
        return all(_is_augmentation(sub) for sub in inner)
    return type(layer).__name__.startswith("Random")


def inference_model(model: Any) -> Any:
    """``model`` without the augmentation layers on its input (identity at inference, but the
    exporters trace their random ops, which ONNX and LiteRT cannot run): a functional model
    from the augmentation's output to the model's, sharing every other layer and weight."""
    import keras

    first = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not first or not _is_augmentation(first[0]):
        return model
    return keras.Model(first[0].output, model.output, name=model.name)


def write_export(model: Any, fmt: ExportFormat, folder: Path) -> Path:
    """Export ``model`` (its inference graph: :func:`inference_model`) as ``fmt`` into
    ``folder`` with Keras' ``model.export``; the path."""
    model = inference_model(model)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    model.predict_on_batch(np.zeros((1, *shape), dtype=np.float32))  # the exporters want it called
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / FILE_NAME[fmt]
    if target.is_dir():
        shutil.rmtree(target)
    target.unlink(missing_ok=True)
    model.export(str(target), format=KERAS_FORMAT[fmt], verbose=False)
    return target


def _saved_model_runner(path: Path) -> Runner:
    """A SavedModel's ``serve`` endpoint, run by TensorFlow."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # held by the closure: its variables live on

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(loaded.serve(tf.constant(batch)))

    return run


def _onnx_runner(path: Path) -> Runner:
    """An ONNX model run by onnxruntime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: np.asarray(session.run(None, {name: batch})[0])


def _litert_runner(path: Path) -> Runner:
    """A LiteRT flatbuffer run by the ai-edge-litert interpreter (resized to each batch)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    shape: list[tuple[int, ...]] = [()]

    def run(batch: np.ndarray) -> np.ndarray:
        if tuple(batch.shape) != shape[0]:
            interpreter.resize_tensor_input(index, list(batch.shape))
            interpreter.allocate_tensors()
            shape[0] = tuple(batch.shape)
        interpreter.set_tensor(index, batch)
        interpreter.invoke()
        return np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))

    return run


RUNTIMES: dict[str, tuple[str, Callable[[Path], Runner]]] = {
    "saved_model": ("tensorflow", _saved_model_runner),
    "onnx": ("onnxruntime", _onnx_runner),
    "litert": ("ai-edge-litert", _litert_runner),
}


def load_runner(fmt: ExportFormat, path: Path) -> Runner:
    """A function from a float32 image batch to the export's raw outputs, in its own runtime."""
    return RUNTIMES[fmt][1](path)


def run_batches(runner: Runner, images: np.ndarray, batch: int) -> np.ndarray:
    """Raw outputs of ``runner`` on ``images`` in batches of at most ``batch``."""
    parts = [
        runner(np.ascontiguousarray(images[i : i + batch], dtype=np.float32))
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def batch1_latency_ms(runner: Runner, images: np.ndarray, repeats: int) -> float:
    """Median milliseconds for one image, after one warm-up call."""
    one = np.ascontiguousarray(images[:1], dtype=np.float32)
    runner(one)
    seconds = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        runner(one)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds) * 1000)


def parity(reference: np.ndarray, found: np.ndarray) -> tuple[float, float]:
    """Argmax agreement and the largest absolute difference of two probability arrays."""
    if reference.shape != found.shape:
        raise ValueError(f"export output has shape {found.shape}, Keras' {reference.shape}")
    if not len(reference):
        return 1.0, 0.0
    agreement = float(np.mean(reference.argmax(axis=1) == found.argmax(axis=1)))
    return agreement, float(np.max(np.abs(reference.astype(np.float64) - found)))


def export_and_check(
    model: Any,
    fmt: ExportFormat,
    folder: Path,
    images: np.ndarray,
    reference: np.ndarray,
    to_probabilities: Callable[[np.ndarray], np.ndarray],
    batch: int = 32,
    repeats: int = 20,
    tolerance: float = MAX_PROB_DIFF,
) -> ExportReport:
    """Export ``model`` as ``fmt``, run it with its runtime on ``images`` and compare its
    probabilities with ``reference`` (the Keras model's on the same images).

    1. export with Keras; 2. load it in its own runtime; 3. predict every image (batches of
    ``batch``); 4. parity and batch-1 latency.
    """
    try:
        path = write_export(model, fmt, folder)
        runner = load_runner(fmt, path)
        found = to_probabilities(run_batches(runner, images, batch))
        agreement, largest = parity(reference, found)
        latency = batch1_latency_ms(runner, images, repeats) if len(images) else 0.0
    except Exception as exc:  # a converter or runtime that cannot handle the model: a failed export
        return ExportReport(
            format=fmt, path=str(folder), size_mb=0.0, latency_ms_batch1=0.0,
            images=len(images), argmax_agreement=0.0, max_prob_diff=float("inf"),
            tolerance=tolerance, runtime=RUNTIMES[fmt][0],
            error=one_line(f"{type(exc).__name__}: {exc}")[:500],
        )  # fmt: skip
    return ExportReport(
        format=fmt, path=str(path), size_mb=round(size_mb(path), 4),
        latency_ms_batch1=round(latency, 4), images=len(images),
        argmax_agreement=agreement, max_prob_diff=largest, tolerance=tolerance,
        runtime=RUNTIMES[fmt][0],
    )  # fmt: skip
