"""Forward passes over many batches, several in flight at once on a CPU.

On a CPU one TensorFlow forward pass of a convolutional backbone does not keep every core busy:
its many small ops (MobileNet's depthwise convolutions, the 1x1 projections at low resolution)
split badly across the intra-op threads. Passes of *different* batches fill those gaps: with
several passes in flight (Python threads; TensorFlow runs them without the GIL), MobileNetV2 up
to ``block_16_expand`` at 128 px, batches of 32, gave on 2 cores 385 images/s with one pass at a
time, 458 with two, 487 with three and 495 with four. Work done between passes in the caller's
thread (augmenting the next batch, decoding it) overlaps with them, so in a whole run more
passes in flight still help: extracting both caches of a 2,587 + 856 image flowers run took
22.0 s with two, 21.7 with three, 19.3 / 18.6 with four and 18.4 with six (27.8 s one at a
time).

Results come back in the order of the batches, so what is computed does not depend on how the
passes were scheduled. On a GPU, and under the JAX or PyTorch backends (whose trainers keep
per-call state), passes run one after the other.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import keras
import numpy as np

from tlops.model.runtime import gpu_names

#: Forward passes in flight at once on a CPU under the TensorFlow backend.
CPU_IN_FLIGHT = 4


@functools.cache
def in_flight() -> int:
    """How many forward passes to keep in flight: :data:`CPU_IN_FLIGHT` on a CPU under
    TensorFlow, else 1."""
    if keras.backend.backend() != "tensorflow" or gpu_names():
        return 1
    return CPU_IN_FLIGHT


def _numpy(model: Any, batch: Any) -> np.ndarray:
    """``model``'s output for one batch, as a NumPy array."""
    return np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(batch)))


def forward(model: Any, batches: Iterable[Any], width: int | None = None) -> Iterator[np.ndarray]:
    """``model.predict_on_batch(b)`` for every batch ``b``, as NumPy, in the batches' order,
    with up to ``width`` (default :func:`in_flight`) passes running at once.

    The first pass runs alone (it builds the compiled predict function); the batches are drawn
    from ``batches`` in the caller's thread, so a generator that augments or decodes runs there,
    one batch at a time and in order, while earlier batches' passes run.
    """
    width = in_flight() if width is None else max(1, width)
    source = iter(batches)
    first = next(source, None)
    if first is None:
        return
    yield _numpy(model, first)
    if width == 1:
        for batch in source:
            yield _numpy(model, batch)
        return
    pending: deque[Future[np.ndarray]] = deque()
    pool = ThreadPoolExecutor(width, thread_name_prefix="tlops-forward")
    try:
        for batch in source:
            pending.append(pool.submit(_numpy, model, batch))
            if len(pending) >= width:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
