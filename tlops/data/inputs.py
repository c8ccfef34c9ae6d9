"""The input pipeline: the one module that uses tf.data (design section 6).

Images are decoded and resized by Pillow, the same code that prediction uses, so training and
serving see identical pixels for any file mode (grayscale, RGBA, palette, 16-bit, CMYK).
Decoding runs in parallel (``tf.data`` map over a thread pool; Pillow releases the GIL), the
decoded split is cached in memory when it fits, and batches are prefetched.

Under Keras' JAX or PyTorch backend (no TensorFlow needed) the same contract is met by
:func:`image_batches`, a ``keras.utils.PyDataset`` with worker threads: parallel decode, an
in-memory cache of decoded images, a seeded shuffle per epoch and prefetched batches.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, get_args

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlops.config import PILLOW_MAX_PIXELS, ImageFormat
from tlops.errors import DataError
from tlops.safetext import one_line

#: Largest decoded split kept in memory by the tf.data cache.
CACHE_BUDGET_BYTES = 2 << 30
#: Every format a contract can allow: what is opened when no narrower list is known.
SUPPORTED_FORMATS: tuple[str, ...] = get_args(ImageFormat)
#: Decoding threads: each holds one decoded image, so a few are enough (Pillow releases the GIL).
MAX_DECODE_THREADS = 8
#: What Pillow raises for a file it cannot identify, decode, or refuses as too large.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
    Image.DecompressionBombError, Image.DecompressionBombWarning,
)  # fmt: skip


class UnreadableImageError(DataError):
    """A file that cannot be read as an image within the limits (exit 3); ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{one_line(path)}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class SplitData:
    """The files and integer labels of one split."""

    paths: list[str]  # absolute
    labels: np.ndarray  # int32, index into classes
    classes: list[str]
    relpaths: list[str]
    #: the formats the manifest found (and the contract passed): the only ones opened
    formats: tuple[str, ...] = SUPPORTED_FORMATS

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


@contextmanager
def strict_decoding() -> Iterator[None]:
    """Within the block, Pillow's ``DecompressionBombWarning`` is raised as an error.

    Warning filters are process-wide, so the threads a caller starts inside the block see it
    too; enter it once in the thread that owns the pool, never in the workers (entering and
    leaving ``catch_warnings`` from several threads at once scrambles the filters).
    :func:`open_image` refuses oversized images on its own, so this is the second guard, for
    the frames that plugins check while loading.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def pixel_limit(max_pixels: int = PILLOW_MAX_PIXELS) -> int:
    """The effective limit: ``max_pixels``, never above Pillow's own ``MAX_IMAGE_PIXELS``."""
    pillow = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow is None else min(max_pixels, int(pillow))


def identify_image(
    fp: str | Path | IO[bytes], formats: Sequence[str] = SUPPORTED_FORMATS
) -> Image.Image:
    """Open (lazily: the header only) an image among ``formats``; no other plugin is tried."""
    return Image.open(fp, formats=list(formats))


def check_pixels(img: Image.Image, max_pixels: int = PILLOW_MAX_PIXELS) -> None:
    """Raise ``DecompressionBombError`` for an image of more than :func:`pixel_limit` pixels."""
    pixels, limit = img.width * img.height, pixel_limit(max_pixels)
    if pixels > limit:
        raise Image.DecompressionBombError(
            f"{img.width}x{img.height} = {pixels} pixels is over the limit of {limit}"
        )


def open_image(
    fp: str | Path | IO[bytes],
    formats: Sequence[str] = SUPPORTED_FORMATS,
    max_pixels: int = PILLOW_MAX_PIXELS,
) -> Image.Image:
    """Identify an image among ``formats`` only and refuse one of more than
    :func:`pixel_limit` pixels before any pixel is decoded.

    Raises one of :data:`DECODE_ERRORS` (``DecompressionBombError`` for a refused size).
    """
    img = identify_image(fp, formats)
    try:
        check_pixels(img, max_pixels)
    except Image.DecompressionBombError:
        img.close()
        raise
    return img


def load_image(
    path: str | Path,
    size: int,
    formats: Sequence[str] = SUPPORTED_FORMATS,
    max_pixels: int = PILLOW_MAX_PIXELS,
) -> np.ndarray:
    """Decode one file into a float32 (size, size, 3) array of 0..255 RGB.

    Only ``formats`` are tried and images over ``max_pixels`` are refused
    (:class:`UnreadableImageError`, exit 3, naming the file).
    """
    return _decode(path, path, size, formats, max_pixels)


def decode_image(
    data: bytes,
    size: int,
    formats: Sequence[str] = SUPPORTED_FORMATS,
    max_pixels: int = PILLOW_MAX_PIXELS,
    name: str = "image",
) -> np.ndarray:
    """:func:`load_image` for encoded bytes (a served request): the very same decoding,
    conversion and resize; an :class:`UnreadableImageError` names ``name``."""
    return _decode(io.BytesIO(data), name, size, formats, max_pixels)


def draft_jpeg(img: Image.Image, side: int) -> None:
    """Before an opened JPEG is loaded: let libjpeg decode it at the smallest of 1/2, 1/4 or
    1/8 scale that keeps both sides at least ``side`` (Pillow's ``draft``, DCT scaling; the
    mode is kept). All of its data is still read, so a corrupt file fails as at full scale."""
    if img.format == "JPEG":
        img.draft(None, (side, side))


def _decode(
    source: str | Path | IO[bytes],
    name: str | Path,
    size: int,
    formats: Sequence[str],
    max_pixels: int,
) -> np.ndarray:
    """The one decode of tlops: identify among ``formats``, refuse too many pixels, convert
    any mode to RGB (:func:`to_rgb`), resize bilinearly to ``size`` x ``size``.

    A JPEG is decoded by libjpeg at the smallest of 1/2, 1/4 or 1/8 scale that still covers
    ``size`` x ``size`` (Pillow's ``draft``; the resize then does the rest): a 4000 x 3000
    photo decodes several times faster, all its data still read (a corrupt one still fails).
    """
    try:
        with open_image(source, formats, max_pixels) as img:
            draft_jpeg(img, size)
            rgb = to_rgb(img)
    except FileNotFoundError:
        raise UnreadableImageError(name, "not found") from None
    except DECODE_ERRORS as exc:
        raise UnreadableImageError(name, _reason(exc, formats)) from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    array: np.ndarray = np.asarray(rgb, dtype=np.float32)
    return array


def _reason(exc: BaseException, formats: Sequence[str]) -> str:
    """Why a file could not be decoded, in one line and without its (unsafe) path."""
    if isinstance(exc, UnidentifiedImageError):
        return f"not an image in the allowed formats {', '.join(formats)}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read: {exc.strerror}"
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"too many pixels: {one_line(exc)}"
    return f"cannot decode: {one_line(exc)}"


def load_images(
    paths: list[str],
    size: int,
    workers: int | None = None,
    formats: Sequence[str] = SUPPORTED_FORMATS,
    max_pixels: int = PILLOW_MAX_PIXELS,
) -> np.ndarray:
    """Decode many files in parallel into one (n, size, size, 3) float32 array."""
    out = np.empty((len(paths), size, size, 3), dtype=np.float32)
    workers = workers or min(MAX_DECODE_THREADS, os.cpu_count() or 1)

    def fill(i: int) -> None:
        out[i] = load_image(paths[i], size, formats, max_pixels)

    with strict_decoding(), ThreadPoolExecutor(max_workers=workers) as pool:
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
    found = tuple(sorted({str(f) for f in usable["format"].dropna()}))
    return SplitData(
        paths=[str(images_root / p) for p in rows["path"]],
        labels=np.array([index[c] for c in rows["label"]], dtype=np.int32),
        classes=classes,
        relpaths=rows["path"].tolist(),
        formats=found or SUPPORTED_FORMATS,
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
    labels: bool = True,
) -> Any:
    """Batches of (images, encoded labels), or of images alone when ``labels`` is false.

    A prefetched ``tf.data.Dataset`` under the TensorFlow backend, an :func:`image_batches`
    under any other Keras backend.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return image_batches(
            data, size, batch_size, binary=binary, shuffle=shuffle, seed=seed, labels=labels
        )
    ds = _tf_dataset(data, size, batch_size, binary=binary, shuffle=shuffle, seed=seed)
    return ds if labels else ds.map(lambda x, y: x)


def _tf_dataset(
    data: SplitData, size: int, batch_size: int, *, binary: bool, shuffle: bool, seed: int
) -> Any:
    """The tf.data pipeline: parallel Pillow decode, cache when it fits, shuffle, prefetch."""
    import tensorflow as tf

    targets = encode_labels(data.labels, len(data.classes), binary)
    ds = tf.data.Dataset.from_tensor_slices((np.array(data.paths), targets))

    def decode(path: Any, target: Any) -> tuple[Any, Any]:
        image = tf.numpy_function(
            lambda p: load_image(p.decode(), size, data.formats),
            [path],
            tf.float32,
            stateful=False,
        )
        image.set_shape((size, size, 3))
        return image, target

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if len(data) * size * size * 3 * 4 <= CACHE_BUDGET_BYTES:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(min(len(data), 10_000), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


_IMAGE_BATCHES: type | None = None


def image_batches(
    data: SplitData,
    size: int,
    batch_size: int,
    *,
    binary: bool,
    shuffle: bool,
    seed: int,
    labels: bool = True,
) -> Any:
    """Backend-neutral batches for ``fit`` / ``predict``: a ``keras.utils.PyDataset``.

    Worker threads decode batches ahead of the model (Pillow releases the GIL), decoded images
    stay in memory when the split fits :data:`CACHE_BUDGET_BYTES`, and a seeded permutation
    reshuffles every epoch. The class is defined on first use so this module never imports
    Keras at import time.
    """
    return _image_batches_class()(
        data, size, batch_size, binary=binary, shuffle=shuffle, seed=seed, labels=labels
    )


def _image_batches_class() -> type:
    """Define (once) the PyDataset subclass behind :func:`image_batches`."""
    global _IMAGE_BATCHES
    if _IMAGE_BATCHES is not None:
        return _IMAGE_BATCHES
    import keras

    class ImageBatches(keras.utils.PyDataset):  # type: ignore[misc]
        """Batches of decoded images (and encoded labels) of one split."""

        def __init__(
            self,
            data: SplitData,
            size: int,
            batch_size: int,
            *,
            binary: bool,
            shuffle: bool,
            seed: int,
            labels: bool = True,
        ) -> None:
            super().__init__(workers=min(8, os.cpu_count() or 1), use_multiprocessing=False)
            self.data, self.size, self.batch_size = data, size, batch_size
            self.targets = encode_labels(data.labels, len(data.classes), binary)
            self.shuffle, self.labels = shuffle, labels
            self.rng = np.random.default_rng(seed)
            self.order = self._new_order()
            fits = len(data) * size * size * 3 * 4 <= CACHE_BUDGET_BYTES
            self.cache = np.empty((len(data), size, size, 3), np.float32) if fits else None
            self.decoded = np.zeros(len(data), dtype=bool)

        def _new_order(self) -> np.ndarray:
            n = len(self.data)
            order: np.ndarray = self.rng.permutation(n) if self.shuffle else np.arange(n)
            return order

        def __len__(self) -> int:
            return -(-len(self.data) // self.batch_size)

        def _image(self, i: int) -> np.ndarray:
            if self.cache is None:
                return load_image(self.data.paths[i], self.size, self.data.formats)
            if not self.decoded[i]:
                self.cache[i] = load_image(self.data.paths[i], self.size, self.data.formats)
                self.decoded[i] = True
            image: np.ndarray = self.cache[i]
            return image

        def __getitem__(self, index: int) -> Any:
            rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
            images = np.stack([self._image(int(i)) for i in rows])
            return (images, self.targets[rows]) if self.labels else (images,)

        def on_epoch_end(self) -> None:
            self.order = self._new_order()

    _IMAGE_BATCHES = ImageBatches
    return _IMAGE_BATCHES
