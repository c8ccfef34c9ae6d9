"""The input pipeline: the one module that uses tf.data (design section 6).

Images are decoded and resized by Pillow, the same code that prediction uses, so training and
serving see identical pixels for any file mode (grayscale, RGBA, palette, 16-bit, CMYK).
Decoding runs in parallel (``tf.data`` map over a thread pool; Pillow releases the GIL), the
decoded split is cached in memory when it fits, and batches are prefetched.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

#: Largest decoded split kept in memory by the tf.data cache.
CACHE_BUDGET_BYTES = 2 << 30


@dataclass(frozen=True)
class SplitData:
    """The files and integer labels of one split."""

    paths: list[str]  # absolute
    labels: np.ndarray  # int32, index into classes
    classes: list[str]
    relpaths: list[str]

    def __len__(self) -> int:
        """Number of images."""
        return len(self.paths)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16/32-bit scaled down, transparency composited on white.

    The one conversion used for training, evaluation galleries and prediction alike.
    """
    img = ImageOps.exif_transpose(img) or img
    if img.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(array.max()), 1.0)
        img = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        scale = 255.0 if array.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), "L")
    if img.mode in {"P", "PA"} or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in {"RGBA", "LA", "La", "RGBa"}:
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode one file into a float32 (size, size, 3) array of 0..255 RGB."""
    with Image.open(path) as img:
        rgb = to_rgb(img)
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        array: np.ndarray = np.asarray(rgb, dtype=np.float32)
        return array


def load_images(paths: list[str], size: int, workers: int | None = None) -> np.ndarray:
    """Decode many files in parallel into one (n, size, size, 3) float32 array."""
    out = np.empty((len(paths), size, size, 3), dtype=np.float32)
    workers = workers or min(16, 2 * (os.cpu_count() or 1))

    def fill(i: int) -> None:
        out[i] = load_image(paths[i], size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(fill, range(len(paths))))
    return out


def read_split(manifest_path: str | Path, images_root: Path, split: str) -> SplitData:
    """The usable files of ``split`` from a manifest (decodable, labelled), sorted by path."""
    import pandas as pd

    manifest = pd.read_parquet(manifest_path)
    usable = manifest[(manifest["decodable"] == True) & (manifest["label"] != "")]  # noqa: E712
    classes = sorted(usable["label"].unique().tolist())
    rows = usable[usable["split"] == split].sort_values("path")
    index = {c: i for i, c in enumerate(classes)}
    return SplitData(
        paths=[str(images_root / p) for p in rows["path"]],
        labels=np.array([index[c] for c in rows["label"]], dtype=np.int32),
        classes=classes,
        relpaths=rows["path"].tolist(),
    )


def encode_labels(labels: np.ndarray, num_classes: int, binary: bool) -> np.ndarray:
    """One-hot (softmax head) or a (n, 1) float column (sigmoid head)."""
    if binary:
        return labels.astype(np.float32).reshape(-1, 1)
    onehot: np.ndarray = np.eye(num_classes, dtype=np.float32)[labels]
    return onehot


def make_dataset(
    data: SplitData,
    size: int,
    batch_size: int,
    *,
    binary: bool,
    shuffle: bool,
    seed: int,
) -> Any:
    """A batched, prefetched ``tf.data.Dataset`` of (images, encoded labels)."""
    import tensorflow as tf

    targets = encode_labels(data.labels, len(data.classes), binary)
    ds = tf.data.Dataset.from_tensor_slices((np.array(data.paths), targets))

    def decode(path: Any, target: Any) -> tuple[Any, Any]:
        image = tf.numpy_function(
            lambda p: load_image(p.decode(), size), [path], tf.float32, stateful=False
        )
        image.set_shape((size, size, 3))
        return image, target

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if len(data) * size * size * 3 * 4 <= CACHE_BUDGET_BYTES:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(min(len(data), 10_000), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
