"""Forward passes with several batches in flight: same results, same order, errors surface."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import keras
import numpy as np
import pytest

from tlops.model.classifier import predict_batches
from tlops.model.forward import forward, in_flight


def _model() -> keras.Model:
    """A tiny convolutional model with a fixed seed."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def _batches(n: int, rows: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((rows, 8, 8, 3), dtype=np.float32) for _ in range(n)]


def test_forward_gives_each_batch_its_own_output_in_order() -> None:
    model = _model()
    batches = _batches(9)
    expected = [np.asarray(model.predict_on_batch(b)) for b in batches]
    got = list(forward(model, iter(batches), width=3))
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_forward_runs_passes_at_once_and_draws_batches_in_the_callers_thread() -> None:
    model = _model()
    caller = threading.get_ident()
    drawn: list[int] = []

    def source() -> Iterator[np.ndarray]:
        for batch in _batches(6):
            drawn.append(threading.get_ident())
            yield batch

    assert len(list(forward(model, source(), width=2))) == 6
    assert set(drawn) == {caller}


def test_forward_of_nothing_is_nothing_and_width_one_is_sequential() -> None:
    model = _model()
    assert list(forward(model, iter([]), width=3)) == []
    got = list(forward(model, iter(_batches(3)), width=1))
    assert [g.shape for g in got] == [(5, 2)] * 3


def test_forward_raises_a_failed_pass_and_stops() -> None:
    model = _model()
    bad = [*_batches(2), np.zeros((5, 9, 9, 9), np.float32), *_batches(4)]
    with pytest.raises(Exception):  # noqa: B017 (whatever the backend raises)
        list(forward(model, iter(bad), width=3))


def test_predict_batches_pads_the_last_batch_and_keeps_every_row() -> None:
    model = _model()
    images = np.concatenate(_batches(3, rows=7))  # 21 images, batches of 4: last one padded
    expected = np.asarray(model.predict_on_batch(images))
    got = predict_batches(model, images, 4)
    assert got.shape == (21, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert predict_batches(model, images[:0], 4).shape == (0, 2)


def test_in_flight_is_several_on_a_cpu_under_tensorflow() -> None:
    expected = 4 if keras.backend.backend() == "tensorflow" else 1
    assert in_flight() == expected
