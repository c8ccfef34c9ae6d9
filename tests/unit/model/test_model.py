"""Models: preprocessing, bases, the shared-layer classifier, freezing and fine-tuning switches.

Everything runs with random weights (no downloads) on tiny images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from tlops.backbones import BACKBONES, get_spec
from tlops.config import AugmentConfig, HeadConfig
from tlops.errors import ConfigError
from tlops.model.classifier import (
    Classifier,
    build_base,
    build_classifier,
    count_params,
    freeze_base,
    init_preprocess,
    predict_batches,
    preprocess_layer,
    probabilities,
    unfreeze_all,
    unfreeze_top,
    weights_fingerprint,
)

SIZE = 32
AUGMENT = AugmentConfig(flip="horizontal", rotation=0.1, zoom=0.1, contrast=0.1, translation=0.1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Same random weights and data in every test."""
    keras.utils.set_random_seed(0)


def images(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Random raw RGB images in 0..255."""
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def classifier(
    name: str = "tiny_cnn",
    num_classes: int = 3,
    head: HeadConfig | None = None,
    augment: AugmentConfig | None = None,
    size: int = SIZE,
    alpha: float | None = None,
) -> Classifier:
    """A classifier on a random-weights base."""
    spec = get_spec(name)
    base = build_base(spec, size, None, alpha)
    return build_classifier(
        base, spec, num_classes, head or HeadConfig(), augment or AugmentConfig(), size, seed=0
    )


def trainable_names(base: Any) -> set[str]:
    """Names of the base's trainable layers."""
    return {layer.name for layer in base.layers if layer.trainable}


def batchnorms(base: Any) -> list[Any]:
    """The base's BatchNormalization layers."""
    return [la for la in base.layers if isinstance(la, keras.layers.BatchNormalization)]


# --------------------------------------------------------------------------- Preprocess


@pytest.mark.parametrize(
    ("mode", "module"), [("tf", "mobilenet_v2"), ("caffe", "resnet50"), ("torch", "densenet")]
)
def test_preprocess_matches_keras_applications(mode: str, module: str) -> None:
    x = images(2, 8)
    expected = getattr(keras.applications, module).preprocess_input(x.copy())
    layer = preprocess_layer(mode)
    got = keras.ops.convert_to_numpy(layer(x))
    init_preprocess(layer)
    got = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_preprocess_unit_and_included() -> None:
    x = images(2, 8)
    unit, same = preprocess_layer("unit"), preprocess_layer("included")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(unit(x)), x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(same(x)), x)


def test_preprocess_is_stock_keras_and_bad_mode() -> None:
    for mode in ("tf", "caffe", "torch", "included", "unit"):
        layer = preprocess_layer(mode, name="pre")
        assert type(layer).__module__.startswith("keras.")
        assert layer.name == "pre"
    assert not preprocess_layer("caffe").trainable
    with pytest.raises(ValueError, match="unknown preprocess mode"):
        preprocess_layer("bgr")


# --------------------------------------------------------------------------- bases


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_at_its_min_size(name: str) -> None:
    spec = get_spec(name)
    clf = classifier(name, num_classes=3, size=spec.min_size)
    out = keras.ops.convert_to_numpy(clf.model(images(1, spec.min_size)))
    assert out.shape == (1, 3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_alpha_reaches_mobilenet() -> None:
    base = build_base(get_spec("mobilenet_v2"), SIZE, None, 0.35)
    assert "0.35" in base.name


def test_alpha_without_imagenet_weights_is_a_config_error() -> None:
    # Keras checks alpha against the published weights before any download.
    with pytest.raises(ConfigError, match=r"mobilenet_v2 cannot be built.*alpha=0\.3"):
        build_base(get_spec("mobilenet_v2"), 96, "imagenet", 0.3)


def test_image_size_below_minimum_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"data\.image_size.*xception.*71 pixels, got 64"):
        build_base(get_spec("xception"), 64, None, None)


def test_missing_weights_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(ConfigError, match=str(missing)):
        build_base(get_spec("tiny_cnn"), SIZE, str(missing), None)


def test_tiny_cnn_has_no_imagenet_weights() -> None:
    with pytest.raises(ConfigError, match=r"backbone\.weights"):
        build_base(get_spec("tiny_cnn"), SIZE, "imagenet", None)


def test_weights_file_round_trip(tmp_path: Path) -> None:
    spec = get_spec("tiny_cnn")
    base = build_base(spec, SIZE, None, None)
    path = tmp_path / "tiny.weights.h5"
    base.save_weights(str(path))
    keras.utils.set_random_seed(1)
    loaded = build_base(spec, 48, str(path), None)  # conv weights do not depend on the size
    for a, b in zip(base.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert weights_fingerprint(loaded, str(path)) == (
        "file",
        hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    kind, digest = weights_fingerprint(base, None)
    assert (kind, digest) == weights_fingerprint(loaded, "none")
    assert kind == "arrays"
    assert weights_fingerprint(build_base(spec, SIZE, None, None), None)[1] != digest


def test_weights_file_of_another_backbone_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "tiny.weights.h5"
    build_base(get_spec("tiny_cnn"), SIZE, None, None).save_weights(str(path))
    with pytest.raises(ConfigError, match=rf"{path}.*mobilenet_v2"):
        build_base(get_spec("mobilenet_v2"), SIZE, str(path), 0.35)


def test_unreadable_weights_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.weights.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(ConfigError, match=rf"{path}.*tiny_cnn"):
        build_base(get_spec("tiny_cnn"), SIZE, str(path), None)


# --------------------------------------------------------------------------- head


def test_softmax_head() -> None:
    clf = classifier(num_classes=5)
    assert not clf.binary
    assert clf.model.output_shape == (None, 5)
    assert clf.model.get_layer("predictions").activation.__name__ == "softmax"


def test_two_classes_get_one_sigmoid_unit_unless_softmax_asked() -> None:
    clf = classifier(num_classes=2)
    assert clf.binary
    assert clf.model.output_shape == (None, 1)
    assert clf.model.get_layer("predictions").activation.__name__ == "sigmoid"
    soft = classifier(num_classes=2, head=HeadConfig(output="softmax"))
    assert not soft.binary
    assert soft.model.output_shape == (None, 2)


def test_sigmoid_with_more_than_two_classes_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"head\.output"):
        classifier(num_classes=3, head=HeadConfig(output="sigmoid"))


def test_hidden_layer_and_layer_names() -> None:
    clf = classifier(head=HeadConfig(hidden_units=16), augment=AUGMENT)
    names = [layer.name for layer in clf.model.layers]
    for name in ("augment", "preprocess", "tiny_cnn", "pool", "head_dropout", "head_hidden"):
        assert name in names
    assert names[-1] == "predictions"
    assert clf.model.get_layer("head_hidden").units == 16
    assert [la.name for la in clf.model.get_layer("augment").layers] == [
        "flip",
        "rotation",
        "zoom",
        "contrast",
        "translation",
    ]
    assert "augment" not in [layer.name for layer in classifier().model.layers]


def test_augmentation_only_in_training() -> None:
    clf = classifier(augment=AUGMENT)
    augment = clf.model.get_layer("augment")
    x = images(2)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augment(x, training=False)), x)
    assert not np.allclose(keras.ops.convert_to_numpy(augment(x, training=True)), x)


def test_output_stays_float32_under_mixed_precision() -> None:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        clf = classifier()
        assert clf.model.get_layer("head_dropout").compute_dtype == "float16"
        out = clf.model(images(1))
    finally:
        keras.config.set_dtype_policy(previous)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_feature_and_head_models_compose_to_the_model() -> None:
    clf = classifier(augment=AUGMENT)
    x = images(3)
    features = clf.feature_model.predict(x, verbose=0)
    assert features.shape == (3, clf.base.output_shape[-1]) == (3, 128)
    np.testing.assert_allclose(
        clf.head_model.predict(features, verbose=0), clf.model.predict(x, verbose=0), rtol=1e-5
    )


def test_head_model_trains_the_models_head() -> None:
    clf = classifier(head=HeadConfig(hidden_units=8))
    predictions = clf.model.get_layer("predictions")
    assert clf.head_model.get_layer("predictions") is predictions
    before = [w.copy() for w in predictions.get_weights()]
    clf.head_model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    features = np.random.default_rng(0).normal(size=(8, 128)).astype("float32")
    clf.head_model.fit(features, np.arange(8) % 3, epochs=1, verbose=0)
    after = predictions.get_weights()
    assert not np.allclose(before[0], after[0])
    for a, b in zip(after, clf.head_model.get_layer("predictions").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- trainability


def test_freeze_base_leaves_only_the_head_trainable() -> None:
    clf = classifier(head=HeadConfig(hidden_units=8))
    freeze_base(clf)
    assert not any(layer.trainable for layer in clf.base.layers)
    assert count_params(clf.model)[0] == count_params(clf.head_model)[0] == 128 * 8 + 8 + 8 * 3 + 3
    total = clf.model.count_params()
    assert sum(count_params(clf.model)) == total


def test_unfreeze_by_name_mobilenet_v2() -> None:
    clf = classifier("mobilenet_v2", alpha=0.35)
    freeze_base(clf)
    layers = clf.base.layers
    start = [la.name for la in layers].index("block_13_expand")
    expected = {
        la.name for la in layers[start:] if not isinstance(la, keras.layers.BatchNormalization)
    }
    count = unfreeze_top(clf, "block_13_expand")
    assert trainable_names(clf.base) == expected
    assert count == sum(1 for la in layers[start:] if la.trainable and la.trainable_weights)
    assert not any(bn.trainable for bn in batchnorms(clf.base))


ALL_BUT_BN = {f"block{i}_{kind}" for i in range(1, 5) for kind in ("conv", "relu")} | {
    "block1_pool",
    "block2_pool",
    "block3_pool",
    "tiny_cnn_input",
}


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (5, {"block4_conv", "block4_relu", "block3_pool", "block3_relu"}),  # block4_bn stays off
        (0.25, {"block4_conv", "block4_relu", "block3_pool"}),  # ceil(0.25 * 16) = 4 layers
        ("block3_conv", {"block3_conv", "block3_relu", "block3_pool", "block4_conv",
                         "block4_relu"}),
        (1.0, ALL_BUT_BN),
        (100, ALL_BUT_BN),
    ],
)  # fmt: skip
def test_unfreeze_top_of_tiny_cnn(start: str | int | float, expected: set[str]) -> None:
    clf = classifier()
    assert len(clf.base.layers) == 16
    freeze_base(clf)
    count = unfreeze_top(clf, start)
    assert trainable_names(clf.base) == expected
    assert count == sum(1 for name in expected if name.endswith("_conv"))


def test_switches_apply_from_any_previous_state() -> None:
    clf = classifier()
    unfreeze_top(clf, 2)
    assert unfreeze_top(clf, 1.0) == 4  # reaches layers frozen by the previous call
    assert unfreeze_top(clf, "block4_conv") == 1
    freeze_base(clf)
    assert not any(layer.trainable for layer in clf.base.layers)
    assert count_params(clf.model)[0] == count_params(clf.head_model)[0]


def test_bad_starts_are_config_errors() -> None:
    clf = classifier()
    for start in (0, 1.5, True):
        with pytest.raises(ConfigError, match=r"backbone\.fine_tune_from"):
            unfreeze_top(clf, start)


def test_unknown_layer_name_is_a_config_error() -> None:
    clf = classifier()
    with pytest.raises(ConfigError, match=r"backbone\.fine_tune_from.*block9_conv"):
        unfreeze_top(clf, "block9_conv")


def fit_once(clf: Classifier) -> None:
    """One epoch of model.fit on 4 random images."""
    clf.model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    clf.model.fit(images(4), np.array([0, 1, 2, 0]), batch_size=4, epochs=1, verbose=0)


def bn_stats(clf: Classifier) -> list[np.ndarray]:
    """Moving means and variances of every BatchNormalization layer of the base."""
    return [
        keras.ops.convert_to_numpy(v).copy()
        for bn in batchnorms(clf.base)
        for v in (bn.moving_mean, bn.moving_variance)
    ]


def test_batchnorm_stays_in_inference_mode_when_fine_tuning() -> None:
    clf = classifier()
    unfreeze_top(clf, "block3_conv")
    stats = bn_stats(clf)
    conv = clf.base.get_layer("block4_conv").get_weights()[0].copy()
    fit_once(clf)
    for before, after in zip(stats, bn_stats(clf), strict=True):
        np.testing.assert_array_equal(before, after)
    assert not np.allclose(conv, clf.base.get_layer("block4_conv").get_weights()[0])


def test_unfreeze_all_trains_batchnorm_unless_told_not_to() -> None:
    clf = classifier()
    assert unfreeze_all(clf, batchnorm=False) == 4
    stats = bn_stats(clf)
    fit_once(clf)
    for before, after in zip(stats, bn_stats(clf), strict=True):
        np.testing.assert_array_equal(before, after)
    assert unfreeze_all(clf) == 8
    assert all(layer.trainable for layer in clf.base.layers)
    fit_once(clf)  # Keras 3: fit's training=True reaches trainable BN layers
    assert not np.allclose(stats[0], bn_stats(clf)[0])


# --------------------------------------------------------------------------- saving, outputs


def test_saved_model_loads_in_safe_mode(tmp_path: Path) -> None:
    clf = classifier(head=HeadConfig(hidden_units=8), augment=AUGMENT)
    path = tmp_path / "model.keras"
    clf.model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    x = images(2)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), clf.model.predict(x, verbose=0), rtol=1e-6
    )
    assert type(loaded.get_layer("preprocess")).__module__.startswith("keras.")


def test_probabilities() -> None:
    np.testing.assert_allclose(
        probabilities(np.array([[0.25], [1.0]]), binary=True), [[0.75, 0.25], [0.0, 1.0]]
    )
    soft = np.array([[0.1, 0.9], [0.5, 0.5]], dtype="float32")
    np.testing.assert_array_equal(probabilities(soft, binary=False), soft)
    with pytest.raises(ValueError, match="one column"):
        probabilities(soft, binary=True)


@pytest.mark.parametrize("n", [1, 5, 8, 13])
def test_predict_batches_equals_predict_for_any_count(n: int) -> None:
    model = classifier().model
    x = images(n)
    np.testing.assert_allclose(
        predict_batches(model, x, batch=4), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    assert predict_batches(model, x[:0], batch=4).shape[0] == 0
