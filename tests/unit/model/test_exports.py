"""Exports (:mod:`tlops.model.exports`): each format runs in its own runtime and agrees with the
Keras model; a parity miss or a converter error is a failed report, never a crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tlops.model.classifier import probabilities
from tlops.model.exports import (
    FORMATS,
    export_and_check,
    inference_model,
    load_runner,
    parity,
    run_batches,
)

SIZE = 16


def tlops_classifier() -> Any:
    """A classifier as tlops builds it for photos: its own small CNN as the base (conv, batch
    norm), the run's default augmentation layers (identity at inference), the preprocessing
    layer, pooling and a softmax head over 3 classes; seeded random weights."""
    import keras

    from tlops.backbones import get_spec
    from tlops.config import HeadConfig, RunConfig
    from tlops.model.classifier import build_base, build_classifier

    keras.utils.set_random_seed(3)
    spec = get_spec("tiny_cnn")
    base = build_base(spec, SIZE, None, None)
    augment = RunConfig().train.augment
    assert augment.enabled  # the export must cope with RandomFlip / RandomRotation
    return build_classifier(base, spec, 3, HeadConfig(), augment, SIZE, seed=0).model


@pytest.fixture(scope="module")
def model() -> Any:
    return tlops_classifier()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (10, SIZE, SIZE, 3)).astype(np.float32)


def keras_probs(model: Any, images: np.ndarray) -> np.ndarray:
    return probabilities(np.asarray(model.predict_on_batch(images)), False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_runs_in_its_runtime_with_parity(
    fmt: Any, model: Any, images: np.ndarray, tmp_path: Path
) -> None:
    reference = keras_probs(model, images)
    report = export_and_check(
        model, fmt, tmp_path, images, reference, lambda raw: probabilities(raw, False),
        batch=4, repeats=3,
    )  # fmt: skip
    assert report.error == "" and report.passed, report.line()
    assert report.argmax_agreement == 1.0 and report.max_prob_diff <= 1e-4
    assert report.images == 10 and report.size_mb > 0 and report.latency_ms_batch1 > 0
    assert Path(report.path).exists()
    assert report.metrics()[f"{fmt}_size_mb"] == report.size_mb
    # the runtime answers any batch size (LiteRT resizes its input) with the same numbers
    runner = load_runner(fmt, Path(report.path))
    np.testing.assert_allclose(run_batches(runner, images, 3), reference, atol=1e-4)


def test_a_parity_miss_fails_the_export(model: Any, images: np.ndarray, tmp_path: Path) -> None:
    reference = keras_probs(model, images)
    shifted = reference.copy()
    shifted[0] = shifted[0][::-1]  # one image whose argmax the export cannot match
    shifted[1] += 2e-4
    report = export_and_check(
        model, "onnx", tmp_path, images, shifted, lambda raw: probabilities(raw, False),
        repeats=1,
    )  # fmt: skip
    assert not report.passed and report.error == ""
    assert report.argmax_agreement == pytest.approx(0.9) and report.max_prob_diff >= 2e-4
    assert "PARITY FAILED" in report.line()


def test_a_converter_error_is_a_failed_report(images: np.ndarray, tmp_path: Path) -> None:
    report = export_and_check(
        object(), "litert", tmp_path, images, np.zeros((10, 3)), lambda raw: raw
    )
    assert not report.passed
    assert report.error.startswith("AttributeError") and "FAILED" in report.line()
    assert report.metrics() == {}  # no figures a budget rule could pass on


def test_parity_compares_argmax_and_the_largest_difference() -> None:
    a = np.array([[0.9, 0.1], [0.4, 0.6]], dtype=np.float32)
    b = np.array([[0.8, 0.2], [0.4, 0.6]], dtype=np.float32)
    agreement, largest = parity(a, b)
    assert agreement == 1.0 and largest == pytest.approx(0.1, abs=1e-6)
    assert parity(a, a[:, ::-1])[0] == 0.0
    assert parity(a[:0], b[:0]) == (1.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        parity(a, b[:1])


def test_the_exported_graph_has_no_augmentation_and_the_same_outputs(
    model: Any, images: np.ndarray
) -> None:
    assert any(layer.name == "augment" for layer in model.layers)
    served = inference_model(model)
    assert not any(layer.name == "augment" for layer in served.layers)
    np.testing.assert_allclose(
        served.predict_on_batch(images), model.predict_on_batch(images), atol=1e-6
    )
    assert inference_model(served) is served  # nothing to strip: the model itself
