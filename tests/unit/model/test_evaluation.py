"""Tests of the Keras-free evaluation helpers (tlops.model.metrics)."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from tlops.model.metrics import Metrics, compute_metrics, misclassified, per_class_table
from tlops.model.plots import plot_confusion, plot_gallery, plot_history

CLASSES = ["cat", "dog", "fox"]
# 6 samples, 3 classes. Arg-max predictions: 0, 1, 0, 1, 2, 1 -> 3 right (indices 0, 3, 4).
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # true 0, pred 0
        [0.3, 0.6, 0.1],  # true 0, pred 1 (true class 2nd)
        [0.5, 0.4, 0.1],  # true 1, pred 0 (true class 2nd)
        [0.1, 0.8, 0.1],  # true 1, pred 1
        [0.2, 0.1, 0.7],  # true 2, pred 2
        [0.1, 0.5, 0.4],  # true 2, pred 1 (true class 2nd)
    ]
)


def png_size(path: Path) -> tuple[int, int]:
    """Check ``path`` is a non-empty PNG that Pillow reads, and return its size."""
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        return img.size


def test_metrics_match_hand_computed_values() -> None:
    m = compute_metrics(Y_TRUE, PROBS, CLASSES, top_k=2)

    assert m.n == 6
    assert m.classes == CLASSES
    assert m.accuracy == pytest.approx(3 / 6)
    assert m.top_k == 2
    assert m.top_k_accuracy == pytest.approx(1.0)  # every mistake has the true class 2nd
    assert m.confusion == [[1, 1, 0], [1, 1, 0], [0, 1, 1]]
    expected_loss = -np.mean(np.log([0.7, 0.3, 0.4, 0.8, 0.7, 0.4]))
    assert m.loss == pytest.approx(expected_loss, rel=1e-12)

    # precision: cat 1/2, dog 1/3, fox 1/1; recall 1/2 each; f1 = 2pr/(p+r)
    assert [row["class"] for row in m.per_class] == CLASSES
    assert [row["precision"] for row in m.per_class] == pytest.approx([1 / 2, 1 / 3, 1.0])
    assert [row["recall"] for row in m.per_class] == pytest.approx([1 / 2, 1 / 2, 1 / 2])
    f1s = [1 / 2, 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2), 2 * 0.5 / 1.5]
    assert [row["f1"] for row in m.per_class] == pytest.approx(f1s)
    assert [row["support"] for row in m.per_class] == [2, 2, 2]
    assert all(isinstance(row["support"], int) for row in m.per_class)
    assert m.macro_f1 == pytest.approx(sum(f1s) / 3)
    assert m.macro_f1 == pytest.approx(f1_score(Y_TRUE, PROBS.argmax(1), average="macro"))


def test_top1_equals_accuracy_and_ties_go_to_lower_index() -> None:
    probs = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    m = compute_metrics(np.array([0, 1]), probs, CLASSES, top_k=1)
    assert m.accuracy == m.top_k_accuracy == pytest.approx(0.5)


def test_top_k_larger_than_class_count_is_clipped() -> None:
    m = compute_metrics(Y_TRUE, PROBS, CLASSES, top_k=5)
    assert m.top_k == 3
    assert m.top_k_accuracy == 1.0
    assert "test_top_3_accuracy" in m.scalars()


def test_loss_is_clipped_for_zero_probabilities() -> None:
    m = compute_metrics(np.array([1]), np.array([[1.0, 0.0, 0.0]]), CLASSES, top_k=1)
    assert m.loss == pytest.approx(-math.log(1e-7))
    assert math.isfinite(m.loss)


def test_absent_classes_give_zeros_without_warnings() -> None:
    # "fox" never predicted; "dog" never a true label; nothing is predicted as "fox".
    y = np.array([0, 0, 2, 2])
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics(y, probs, CLASSES, top_k=2)
    rows = {row["class"]: row for row in m.per_class}
    assert rows["fox"]["precision"] == 0.0
    assert rows["fox"]["recall"] == 0.0
    assert rows["fox"]["support"] == 2
    assert rows["dog"]["precision"] == 0.0
    assert rows["dog"]["recall"] == 0.0
    assert rows["dog"]["support"] == 0
    assert m.confusion == [[1, 1, 0], [0, 0, 0], [1, 1, 0]]
    assert m.accuracy == pytest.approx(0.25)
    assert m.macro_f1 == pytest.approx(
        f1_score(y, probs.argmax(1), average="macro", zero_division=0)
    )


def test_scalars_keys_and_values() -> None:
    m = compute_metrics(Y_TRUE, PROBS, CLASSES, top_k=2)
    scalars = m.scalars()
    expected = {"test_accuracy", "test_top_2_accuracy", "test_macro_f1", "test_loss"}
    expected |= {f"test_{kind}_{c}" for c in CLASSES for kind in ("recall", "precision")}
    assert set(scalars) == expected
    assert scalars["test_accuracy"] == m.accuracy
    assert scalars["test_precision_dog"] == pytest.approx(1 / 3)
    assert all(isinstance(v, float) for v in scalars.values())
    assert set(m.scalars(prefix="val_")) == {k.replace("test_", "val_", 1) for k in expected}


def test_scalars_sanitise_class_names() -> None:
    m = compute_metrics(np.array([0, 1]), np.eye(2), ["a:b", "c d"], top_k=1)
    keys = set(m.scalars())
    assert "test_recall_c d" in keys  # a name MLflow accepts stays as it is
    (sanitized,) = [k for k in keys if k.startswith("test_recall_a_b_")]  # plus a short hash
    assert len(sanitized) == len("test_recall_a_b_") + 8


def test_metric_keys_are_one_to_one_across_scripts() -> None:
    from tlops.safetext import metric_key

    names = ["cat:1", "cat_1", "cat?1", "\u732b", "\u72d7", "\u043a\u043e\u0442", "caf\u00e9"]
    keys = [metric_key(n) for n in names]
    assert len(set(keys)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9_\-. /]+", k) for k in keys)


def test_metrics_is_frozen() -> None:
    m = compute_metrics(Y_TRUE, PROBS, CLASSES, top_k=2)
    with pytest.raises(AttributeError):
        m.accuracy = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("y", "probs", "classes", "top_k", "match"),
    [
        (np.array([], dtype=int), np.zeros((0, 3)), CLASSES, 1, "non-empty"),
        (Y_TRUE, PROBS[:, :2], CLASSES, 1, "shape"),
        (np.array([0, 3]), PROBS[:2], CLASSES, 1, r"\[0, 3\)"),
        (np.array([0.5, 1.0]), PROBS[:2], CLASSES, 1, "integer"),
        (Y_TRUE, PROBS * 2, CLASSES, 1, "sum to 1"),
        (Y_TRUE, PROBS, ["a", "a", "b"], 1, "unique"),
        (Y_TRUE, PROBS, CLASSES, 0, "top_k"),
    ],
)
def test_bad_inputs_are_refused(
    y: np.ndarray, probs: np.ndarray, classes: list[str], top_k: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        compute_metrics(y, probs, classes, top_k)


def test_whole_float_labels_are_accepted() -> None:
    m = compute_metrics(Y_TRUE.astype(np.float32), PROBS.astype(np.float32), CLASSES, top_k=2)
    assert m.accuracy == pytest.approx(3 / 6)


def test_per_class_table() -> None:
    m = compute_metrics(Y_TRUE, PROBS, CLASSES, top_k=2)
    table = per_class_table(m)
    assert list(table.columns) == ["class", "precision", "recall", "f1", "support"]
    assert table["class"].tolist() == CLASSES
    assert table["support"].dtype == np.int64
    assert table["precision"].tolist() == pytest.approx([1 / 2, 1 / 3, 1.0])


def test_misclassified_orders_by_confidence_and_limits() -> None:
    paths = [f"test/{CLASSES[y]}/{i}.png" for i, y in enumerate(Y_TRUE)]
    items = misclassified(Y_TRUE, PROBS, paths, CLASSES, limit=10)
    # mistakes: #1 (dog 0.6), #2 (cat 0.5), #5 (dog 0.5): ties keep input order
    assert [item["path"] for item in items] == [paths[1], paths[2], paths[5]]
    assert items[0] == {
        "path": paths[1],
        "true": "cat",
        "predicted": "dog",
        "confidence": pytest.approx(0.6),
    }
    assert [item["confidence"] for item in items] == pytest.approx([0.6, 0.5, 0.5])
    assert misclassified(Y_TRUE, PROBS, paths, CLASSES, limit=2) == items[:2]
    assert misclassified(Y_TRUE, PROBS, paths, CLASSES, limit=0) == []
    assert misclassified(np.array([0]), np.array([[1.0, 0, 0]]), ["a"], CLASSES, 5) == []
    with pytest.raises(ValueError, match="paths"):
        misclassified(Y_TRUE, PROBS, paths[:-1], CLASSES, limit=1)


def ten_class_metrics() -> Metrics:
    """A realistic 10-class, 600-sample evaluation with some confusion."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 60)
    logits = rng.normal(size=(600, 10))
    logits[np.arange(600), y] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    return compute_metrics(y, probs, names, top_k=3)


@pytest.mark.parametrize("normalize", [False, True])
def test_plot_confusion_writes_png(tmp_path: Path, normalize: bool) -> None:
    m = ten_class_metrics()
    out = plot_confusion(m, tmp_path / "sub" / "confusion.png", normalize=normalize)
    assert out == tmp_path / "sub" / "confusion.png"
    width, height = png_size(out)
    assert 300 <= width <= 2000 and 300 <= height <= 2000


def test_plot_confusion_handles_empty_rows(tmp_path: Path) -> None:
    m = compute_metrics(np.array([0, 0]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"], 1)
    png_size(plot_confusion(m, tmp_path / "c.png", normalize=True))


HISTORY = {
    "frozen": {
        "loss": [1.9, 1.2, 0.9],
        "accuracy": [0.4, 0.6, 0.7],
        "val_loss": [1.5, 1.1, 1.0],
        "val_accuracy": [0.5, 0.62, 0.66],
        "learning_rate": [1e-3, 1e-3, 1e-3],
    },
    "fine_tune": {"loss": [0.7, 0.5], "accuracy": [0.78, 0.85]},  # no val keys
}


def test_plot_history_two_phases(tmp_path: Path) -> None:
    width, height = png_size(plot_history(HISTORY, tmp_path / "history.png"))
    assert 500 <= width <= 2000 and 200 <= height <= 1000


@pytest.mark.parametrize(
    "history",
    [
        {},
        {"frozen": {}, "fine_tune": {"loss": []}},
        {"full": {"loss": [1.0]}},  # a single epoch, no accuracy at all
        {"frozen": {"acc": [0.5, 0.6], "val_acc": [0.4, 0.5]}, "fine_tune": {}},
    ],
)
def test_plot_history_degenerate(
    tmp_path: Path, history: dict[str, dict[str, list[float]]]
) -> None:
    png_size(plot_history(history, tmp_path / "history.png"))


def save_image(root: Path, name: str, mode: str, seed: int) -> str:
    """Write a small image in ``mode`` under ``root``; return its relative path."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (24, 20), dtype=np.uint16))
        assert img.mode.startswith("I;16")
    else:
        rgb = Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))
        img = rgb.convert(mode) if mode != "P" else rgb.quantize(16)
    ext = "jpg" if mode == "CMYK" else "png"
    (root / "test").mkdir(parents=True, exist_ok=True)
    rel = f"test/{name}.{ext}"
    img.save(root / rel)
    return rel


MODES = ["L", "RGBA", "P", "I;16", "CMYK", "RGB", "LA", "1"]


def test_plot_gallery_many_modes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    items: list[dict[str, object]] = [
        {
            "path": save_image(root, f"img{i}", mode, seed=i),
            "true": "cat",
            "predicted": "dog",
            "confidence": 0.9 - i / 100,
        }
        for i, mode in enumerate(MODES)
    ]
    items.append({"path": "test/missing.png", "true": "a", "predicted": "b", "confidence": 0.1})
    out = plot_gallery(items, root, tmp_path / "gallery.png", size=64)
    width, height = png_size(out)
    assert 400 <= width <= 2500 and 150 <= height <= 1500


def test_plot_gallery_empty(tmp_path: Path) -> None:
    width, height = png_size(plot_gallery([], tmp_path, tmp_path / "empty.png"))
    assert 50 <= width <= 600 and 10 <= height <= 200


def test_plot_gallery_rejects_tiny_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size"):
        plot_gallery([], tmp_path, tmp_path / "g.png", size=4)


def test_import_is_light_and_has_no_side_effects() -> None:
    """No Keras, no pyplot, and the slow imports are deferred to the functions using them."""
    import subprocess
    import sys

    heavy = ("matplotlib", "keras", "tensorflow", "sklearn", "pandas")
    code = f"import sys, tlops.model.metrics; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
