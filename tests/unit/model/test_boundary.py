"""The fine-tuning boundary: a training step on cached activations is a training step of the
whole model (tlops.model.boundary)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tlops.backbones import get_spec
from tlops.config import AugmentConfig, HeadConfig
from tlops.model import classifier as tl_model
from tlops.model.boundary import crossing_tensors, find_cut, split_classifier

SIZE = 32


def _classifier(name: str, start: str | int | float | None = None) -> tl_model.Classifier:
    spec = get_spec(name)
    keras.utils.set_random_seed(0)
    base = tl_model.build_base(spec, SIZE, None, None)
    _calibrate(base, spec.preprocess)
    clf = tl_model.build_classifier(
        base, spec, 3, HeadConfig(dropout=0.0), AugmentConfig(), SIZE, seed=0
    )
    tl_model.unfreeze_top(clf, spec.fine_tune_from if start is None else start)
    # EfficientNet's drop-connect layers draw a new random mask at every training call, so two
    # steps are only comparable without them (with the boundary cache the frozen bottom runs in
    # inference mode, drop-connect off; see tlops.model.boundary)
    for layer in base.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return clf


def _calibrate(base: keras.Model, mode: str) -> None:
    """Give the random BatchNorm layers the statistics of one batch (momentum 0, one pass in
    training mode): without this, random weights in inference mode fade the signal to ~1e-13 and
    every gradient of the base would be too small to compare."""
    batchnorms = [layer for layer in base.layers if tl_model._is_batchnorm(layer)]
    for layer in batchnorms:
        layer.momentum = 0.0
    images = np.random.default_rng(2).uniform(0, 255, (8, SIZE, SIZE, 3)).astype("float32")
    base(tl_model.preprocess_layer(mode)(images), training=True)
    for layer in batchnorms:
        layer.momentum = 0.99


def _step(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.05),
        loss=keras.losses.CategoricalCrossentropy(),
        run_eagerly=True,  # one step: tracing a graph would cost more than it saves
    )
    return float(model.train_on_batch(x, y))


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0", "resnet50"])
def test_one_step_on_cached_activations_is_one_step_of_the_whole_model(name: str) -> None:
    clf = _classifier(name)
    start = tl_model._start_index(clf.base, get_spec(name).fine_tune_from)
    cut = find_cut(clf.base, start)
    assert cut is not None and cut.index <= start
    halves = split_classifier(clf, cut)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    y = keras.utils.to_categorical([0, 1, 2, 1], 3)
    before = [w.copy() for w in clf.model.get_weights()]
    activations = keras.ops.convert_to_numpy(halves.bottom(x, training=False))
    assert activations.shape[1:] == cut.shape
    # the halves compute the whole model's output
    whole_out = keras.ops.convert_to_numpy(clf.model(x, training=False))
    top_out = keras.ops.convert_to_numpy(halves.top(activations, training=False))
    np.testing.assert_allclose(top_out, whole_out, atol=1e-5)

    whole_loss = _step(clf.model, x, y)
    whole_after = clf.model.get_weights()
    clf.model.set_weights(before)
    top_loss = _step(halves.top, activations, y)
    top_after = clf.model.get_weights()

    assert top_loss == pytest.approx(whole_loss, rel=1e-4, abs=1e-5)
    changed = 0
    for w0, wa, wb in zip(before, whole_after, top_after, strict=True):
        np.testing.assert_allclose(wb, wa, rtol=1e-3, atol=1e-5)
        changed += int(not np.allclose(wa, w0))
    assert changed > 2  # the step moved the head and the unfrozen top of the base


def test_a_boundary_inside_a_residual_block_moves_down_to_a_single_tensor() -> None:
    clf = _classifier("resnet50", "conv5_block2_2_conv")
    names = [layer.name for layer in clf.base.layers]
    inside = names.index("conv5_block2_2_conv")  # the block's shortcut crosses this cut
    assert len(crossing_tensors(clf.base, inside)) == 2
    cut = find_cut(clf.base, inside)
    assert cut is not None and cut.index < inside
    assert len(crossing_tensors(clf.base, cut.index)) == 1
    # nothing between the cut and the requested start is made trainable by the move
    assert not any(layer.trainable_weights for layer in clf.base.layers[cut.index : inside])
    halves = split_classifier(clf, cut)
    x = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(halves.top(halves.bottom(x, training=False), training=False)),
        keras.ops.convert_to_numpy(clf.model(x, training=False)),
        atol=1e-5,
    )


def test_no_cut_above_the_input_means_no_cache() -> None:
    clf = _classifier("tiny_cnn")
    assert find_cut(clf.base, 1) is None
