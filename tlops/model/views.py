"""Cached views: what a frozen part of the network computes, run once per image and view.

Two phases train on the output of a frozen network: the frozen phase on the pooled features of
the whole base (``Classifier.feature_model``), fine-tuning on the activations at the fine-tuning
boundary (:mod:`tlops.model.boundary`). Both are computed here once per cache key, for ``V``
views of every training image (view 0 the image itself, each later view one seeded draw of the
configured Keras augmentation layers) and for the validation images as they are (never
augmented). Epoch ``e`` trains on view ``e mod V``, in an order drawn from ``(seed, e)``.

A store is a folder of float16 ``.npy`` files (``train.npy`` of shape ``(V, N, ...)``,
``val.npy`` of ``(N, ...)``) and a ``meta.json`` written last; it is built in a private
temporary folder and renamed into place, so a killed or concurrent run never reads half of one.
Training reads the files memory-mapped: the cache costs page cache, not process memory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tlops.config import AugmentConfig
from tlops.data.inputs import SplitData, make_dataset
from tlops.model.classifier import augmentation
from tlops.model.forward import forward

#: Each view's augmentation layers are seeded with ``seed + VIEW_SEED_STRIDE * view``.
VIEW_SEED_STRIDE = 1009
STORE_DTYPE = np.float16
META_FILE = "meta.json"


@dataclass(frozen=True)
class ViewStore:
    """A folder of cached activations (see the module docstring)."""

    folder: Path

    def complete(self) -> bool:
        """Whether the store was written to the end (its ``meta.json`` is written last)."""
        return (self.folder / META_FILE).is_file()

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """The train views ``(V, N, ...)`` and validation activations, memory-mapped."""
        train = np.load(self.folder / "train.npy", mmap_mode="r")
        val = np.load(self.folder / "val.npy", mmap_mode="r")
        return train, val

    def nbytes(self) -> int:
        """Size of the stored arrays on disk."""
        return sum(p.stat().st_size for p in self.folder.glob("*.npy"))


def cache_bytes(n_train: int, n_val: int, views: int, shape: tuple[int, ...]) -> int:
    """Bytes a store of ``views`` train views and one validation view will take (float16)."""
    return (n_train * views + n_val) * math.prod(shape) * np.dtype(STORE_DTYPE).itemsize


def _images(data: SplitData, size: int, batch: int, binary: bool) -> Iterable[Any]:
    """The split's decoded images, in manifest order, in batches."""
    return make_dataset(  # type: ignore[no-any-return]
        data, size, batch, binary=binary, shuffle=False, seed=0, labels=False
    )


def _fill(out: np.ndarray, model: Any, batches: Iterable[Any], augmenter: Any | None) -> None:
    """Write ``model``'s output for every batch (augmented first when ``augmenter``) into
    ``out``, row after row; batches are augmented in order, in this thread, while earlier
    batches' forward passes run (:func:`tlops.model.forward.forward`)."""
    if augmenter is not None:
        batches = (augmenter(images, training=True) for images in batches)
    row = 0
    for values in forward(model, batches):
        out[row : row + len(values)] = values.astype(STORE_DTYPE)
        row += len(values)
    if row != len(out):
        raise RuntimeError(f"the input gave {row} images, {len(out)} expected")


def features_of(model: Any, data: SplitData, size: int, batch: int, binary: bool) -> np.ndarray:
    """``model``'s output for every image of ``data`` (no augmentation), float16, in order."""
    shape = tuple(int(d) for d in model.output.shape[1:])
    out = np.empty((len(data), *shape), dtype=STORE_DTYPE)
    _fill(out, model, _images(data, size, batch, binary), None)
    return out


@dataclass(frozen=True)
class ViewPlan:
    """What to compute: how many train views, with which augmentation and seed."""

    views: int
    augment: AugmentConfig
    seed: int
    image_size: int
    batch_size: int
    binary: bool


def build_store(
    model: Any,
    train: SplitData,
    val: SplitData,
    plan: ViewPlan,
    folder: Path,
) -> ViewStore:
    """Compute ``model``'s output for every view of ``train`` and for ``val``, into ``folder``.

    A complete store already there (a concurrent run's) is kept and this run's copy dropped.
    """
    shape = tuple(int(d) for d in model.output.shape[1:])
    size, batch, binary = plan.image_size, plan.batch_size, plan.binary
    # one pipeline for every view: its in-memory cache decodes each image once, not V times
    images = _images(train, size, batch, binary)
    with _staged(folder) as tmp:
        views = _open(tmp / "train.npy", (plan.views, len(train), *shape))
        for view in range(plan.views):
            augmenter = (
                augmentation(plan.augment, plan.seed + VIEW_SEED_STRIDE * view) if view else None
            )
            _fill(views[view], model, images, augmenter)
        _close(views)
        held = _open(tmp / "val.npy", (len(val), *shape))
        _fill(held, model, _images(val, size, batch, binary), None)
        _close(held)
        _finish(tmp, {"views": plan.views, "train": len(train), "val": len(val), "shape": shape})
    return ViewStore(folder)


@contextmanager
def _staged(folder: Path) -> Iterator[Path]:
    """A private temporary folder beside ``folder``, renamed into place when the block ends
    well (a complete store that a concurrent run renamed there first is kept instead); removed
    in any case."""
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        try:
            tmp.replace(folder)
        except OSError:
            if not ViewStore(folder).complete():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A new float16 ``.npy`` file of ``shape``, memory-mapped for writing."""
    return np.lib.format.open_memmap(path, mode="w+", dtype=STORE_DTYPE, shape=shape)


def _close(array: np.ndarray) -> None:
    """Write a memory-mapped array's pages to its file."""
    if isinstance(array, np.memmap):
        array.flush()


def _finish(tmp: Path, meta: dict[str, Any]) -> None:
    """Write the store's ``meta.json``: the last file, the mark of a complete store."""
    (tmp / META_FILE).write_text(json.dumps(meta), encoding="utf-8")


def _usable(folder: Path, views: int, n_train: int, n_val: int) -> bool:
    """Whether ``folder`` holds a complete store of these sizes (else it is removed)."""
    store = ViewStore(folder)
    if not store.complete():
        return False
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    if (meta.get("views"), meta.get("train"), meta.get("val")) == (views, n_train, n_val):
        return True
    shutil.rmtree(folder, ignore_errors=True)
    return False


def cached_store(
    model: Any, train: SplitData, val: SplitData, plan: ViewPlan, folder: Path
) -> tuple[ViewStore, bool]:
    """The store in ``folder`` (a hit) or a freshly built one (a miss)."""
    if _usable(folder, plan.views, len(train), len(val)):
        return ViewStore(folder), True
    return build_store(model, train, val, plan, folder), False


def _map_rows(out: np.ndarray, model: Any, source: np.ndarray, batch: int) -> None:
    """``out[i] = model(source[i])``, batch after batch (float32 in, float16 stored)."""
    chunks = (
        np.asarray(source[start : start + batch], dtype=np.float32)
        for start in range(0, len(source), batch)
    )
    _fill(out, model, chunks, None)


def derived_store(
    model: Any, source: ViewStore, batch: int, folder: Path
) -> tuple[ViewStore, bool]:
    """The store of ``model`` applied to every row of ``source`` (a store of activations it
    takes as input): the pooled features computed from the boundary activations, so the part
    of the base below the boundary runs once per image and view for both caches."""
    train_in, val_in = source.load()
    views, n_train, n_val = int(train_in.shape[0]), int(train_in.shape[1]), len(val_in)
    if _usable(folder, views, n_train, n_val):
        return ViewStore(folder), True
    shape = tuple(int(d) for d in model.output.shape[1:])
    with _staged(folder) as tmp:
        train_out = _open(tmp / "train.npy", (views, n_train, *shape))
        for view in range(views):
            _map_rows(train_out[view], model, train_in[view], batch)
        _close(train_out)
        val_out = _open(tmp / "val.npy", (n_val, *shape))
        _map_rows(val_out, model, val_in, batch)
        _close(val_out)
        _finish(tmp, {"views": views, "train": n_train, "val": n_val, "shape": shape})
    return ViewStore(folder), False


class ViewCycle(keras.utils.PyDataset):  # type: ignore[misc]
    """Batches of cached activations: epoch ``e`` reads view ``e mod V`` in a seeded order.

    :meth:`set_epoch` picks the epoch (:func:`view_epochs` calls it at each epoch's start), so
    a resumed run reads the views its epochs would have read.
    """

    def __init__(
        self,
        views: np.ndarray,
        targets: np.ndarray,
        batch_size: int,
        seed: int,
        shuffle: bool,
    ) -> None:
        super().__init__()
        self.views, self.targets = views, targets
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.view = 0
        self.order = np.arange(views.shape[1])
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Read view ``epoch mod V``, in the order of ``(seed, epoch)`` when shuffling."""
        self.view = epoch % self.views.shape[0]
        n = self.views.shape[1]
        rng = np.random.default_rng([self.seed, epoch])
        self.order = rng.permutation(n) if self.shuffle else np.arange(n)

    def __len__(self) -> int:
        """Batches per epoch."""
        n: int = self.views.shape[1]
        return -(-n // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """One batch: float32 activations of the current view and their targets."""
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        ordered = np.sort(rows)  # reads in file order; a batch's own order does not matter
        return np.asarray(self.views[self.view, ordered], dtype=np.float32), self.targets[ordered]


def view_epochs(*cycles: ViewCycle) -> Any:
    """A Keras callback that tells each cycle the epoch about to run."""

    class ViewEpochs(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            for cycle in cycles:
                cycle.set_epoch(epoch)

    return ViewEpochs()
