"""Evaluation of a trained classifier from its predicted probabilities.

Everything here works on plain arrays (integer labels and softmax probabilities), so it never
imports Keras or TensorFlow:

* :func:`compute_metrics` -> :class:`Metrics` (accuracy, top-k accuracy, macro F1, loss,
  per-class precision / recall / F1 / support, confusion matrix);
* :func:`per_class_table` -> a :class:`pandas.DataFrame` of the per-class rows;
* :func:`misclassified` -> the most confident mistakes;
* PNG figures: :func:`plot_confusion`, :func:`plot_history`, :func:`plot_gallery`.

The figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never
through :mod:`matplotlib.pyplot`, so no global backend or figure state is touched.
scikit-learn, matplotlib and pandas are imported by the functions that need them, so
importing this module stays cheap (they take seconds to import).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image

from tlops.inputs import open_image, to_rgb

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "LOSS_EPSILON",
    "Metrics",
    "class_metric",
    "compute_metrics",
    "metric_key",
    "misclassified",
    "per_class_table",
    "plot_confusion",
    "plot_gallery",
    "plot_history",
]

LOSS_EPSILON = 1e-7
"""Probabilities are clipped to ``[LOSS_EPSILON, 1 - LOSS_EPSILON]`` in the loss (as Keras)."""

PER_CLASS_COLUMNS: tuple[str, ...] = ("class", "precision", "recall", "f1", "support")
"""Keys of each :attr:`Metrics.per_class` row, and columns of :func:`per_class_table`."""

_DPI = 100
_SUM_TOLERANCE = 1e-3  # how far a probability row may sum from 1
_METRIC_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")  # characters MLflow refuses in a key
_LOSS_KEYS = ("loss", "val_loss")
_ACCURACY_KEYS = (
    ("accuracy", "categorical_accuracy", "sparse_categorical_accuracy", "acc"),
    ("val_accuracy", "val_categorical_accuracy", "val_sparse_categorical_accuracy", "val_acc"),
)


@dataclass(frozen=True)
class Metrics:
    """Classification metrics of one evaluated split.

    Attributes:
        accuracy: Fraction of samples whose arg-max prediction is the true class.
        top_k_accuracy: Fraction of samples whose true class is among the ``top_k`` most
            probable (ties broken towards the lower class index, as the arg-max).
        top_k: The ``k`` actually used: the requested one clipped to the number of classes.
        macro_f1: Unweighted mean F1 over the classes present in the labels or the
            predictions (scikit-learn's ``f1_score(average="macro")``, ``zero_division=0``).
        loss: Mean categorical cross-entropy of the probabilities of the true classes,
            clipped to ``[1e-7, 1 - 1e-7]``.
        per_class: One row per class, in ``classes`` order: ``class`` (name), ``precision``,
            ``recall``, ``f1`` (floats, 0 where undefined) and ``support`` (int, true count).
        confusion: Counts; rows are true classes, columns predicted, in ``classes`` order.
        classes: Class names, index ``i`` is label ``i``.
        n: Number of samples.
    """

    accuracy: float
    top_k_accuracy: float
    top_k: int
    macro_f1: float
    loss: float
    per_class: list[dict[str, float | str | int]]
    confusion: list[list[int]]
    classes: list[str]
    n: int

    def scalars(self, prefix: str = "test_") -> dict[str, float]:
        """Flat scalar metrics, e.g. for ``mlflow.log_metrics``.

        Keys: ``{prefix}accuracy``, ``{prefix}top_{k}_accuracy``, ``{prefix}macro_f1``,
        ``{prefix}loss``, then ``{prefix}recall_{class}`` and ``{prefix}precision_{class}``
        for every class. Characters MLflow refuses in a metric name (anything but letters,
        digits, ``_ - . /`` and space) are replaced by ``_`` in class names.
        """
        out = {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}top_{self.top_k}_accuracy": self.top_k_accuracy,
            f"{prefix}macro_f1": self.macro_f1,
            f"{prefix}loss": self.loss,
        }
        for row in self.per_class:
            name = str(row["class"])
            out[class_metric("recall", name, prefix)] = float(row["recall"])
            out[class_metric("precision", name, prefix)] = float(row["precision"])
        return out


def metric_key(class_name: str) -> str:
    """A class name as it appears in metric keys, one-to-one: a name of only the characters
    MLflow allows in a metric name (ASCII letters, digits, ``_ - . /`` and space) stays as it
    is; any other name has each other character replaced by ``_`` and a short hash of the
    whole name appended, so distinct names never share a key (``猫`` and ``狗`` would both
    sanitize to ``_``).

    ``cat`` -> ``cat``, ``café`` -> ``caf__<8 hex>``, ``cat:1`` -> ``cat_1_<8 hex>``.
    """
    safe = _METRIC_NAME_UNSAFE.sub("_", class_name)
    if safe == class_name:
        return class_name
    digest = hashlib.sha256(class_name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe}_{digest}"


def class_metric(stat: str, class_name: str, prefix: str = "test_") -> str:
    """The one key of a per-class metric, e.g. ``class_metric("recall", "café")`` ->
    ``test_recall_caf_``.

    Used where the metrics are written (:meth:`Metrics.scalars`) and wherever they are read
    (the gate's per-class rules, the report), so writer and readers can never disagree.
    """
    return f"{prefix}{stat}_{metric_key(class_name)}"


def compute_metrics(
    y_true: ArrayLike, probs: ArrayLike, classes: Sequence[str], top_k: int
) -> Metrics:
    """Compute :class:`Metrics` from true labels and predicted probabilities.

    Args:
        y_true: Integer labels, shape ``(n,)``, each in ``[0, len(classes))``. Floats holding
            whole numbers are accepted.
        probs: Probabilities, shape ``(n, len(classes))``, each row summing to 1.
        classes: Class names, index ``i`` naming label ``i``.
        top_k: ``k`` of the top-k accuracy (>= 1); clipped to the number of classes.

    Returns:
        The metrics. Classes absent from the labels and/or the predictions are fine: their
        undefined precision / recall / F1 are 0 and no warning is emitted.

    Raises:
        ValueError: Empty input, mismatched shapes, labels out of range, probabilities that
            are negative, not finite or whose rows do not sum to 1, duplicate class names, or
            ``top_k < 1``.
    """
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    labels, p = _check_inputs(y_true, probs, classes)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    n, k = p.shape
    k_used = min(int(top_k), k)
    all_labels = list(range(k))

    predicted = p.argmax(axis=1)
    ranking = np.argsort(-p, axis=1, kind="stable")[:, :k_used]
    in_top_k = (ranking == labels[:, None]).any(axis=1)
    true_p = np.clip(p[np.arange(n), labels], LOSS_EPSILON, 1.0 - LOSS_EPSILON)

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=all_labels, zero_division=0
    )
    per_class: list[dict[str, float | str | int]] = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]
    confusion = confusion_matrix(labels, predicted, labels=all_labels)
    return Metrics(
        accuracy=float(np.mean(predicted == labels)),
        top_k_accuracy=float(np.mean(in_top_k)),
        top_k=k_used,
        macro_f1=float(f1_score(labels, predicted, average="macro", zero_division=0)),
        loss=float(-np.mean(np.log(true_p))),
        per_class=per_class,
        confusion=[[int(c) for c in row] for row in confusion],
        classes=list(classes),
        n=n,
    )


def per_class_table(m: Metrics) -> pd.DataFrame:
    """The per-class rows of ``m`` as a table with columns class, precision, recall, f1,
    support (one row per class, in ``m.classes`` order)."""
    import pandas as pd

    table = pd.DataFrame(m.per_class, columns=list(PER_CLASS_COLUMNS))
    return table.astype({"support": "int64"})


def misclassified(
    y_true: ArrayLike,
    probs: ArrayLike,
    paths: Sequence[str],
    classes: Sequence[str],
    limit: int,
) -> list[dict[str, object]]:
    """The ``limit`` most confident mistakes, most confident first.

    Args:
        y_true: Integer labels, shape ``(n,)``.
        probs: Probabilities, shape ``(n, len(classes))``.
        paths: The ``n`` image paths, in the same order (typically relative to a data root).
        classes: Class names.
        limit: Maximum number of items returned (``<= 0`` returns none).

    Returns:
        Dicts with ``path`` (str), ``true`` and ``predicted`` (class names) and
        ``confidence`` (float, the probability of the predicted class). Equal confidences
        keep the input order.

    Raises:
        ValueError: As :func:`compute_metrics`, or ``len(paths) != n``.
    """
    labels, p = _check_inputs(y_true, probs, classes)
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths for {len(labels)} samples")
    if limit <= 0:
        return []
    predicted = p.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = p[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:limit]
    return [
        {
            "path": str(paths[i]),
            "true": classes[int(labels[i])],
            "predicted": classes[int(predicted[i])],
            "confidence": float(p[i, predicted[i]]),
        }
        for i in order
    ]


def plot_confusion(m: Metrics, path: Path, normalize: bool = False) -> Path:
    """Write the confusion matrix of ``m`` as a PNG.

    Class names label both axes (true classes down, predicted across); each cell shows its
    count, or with ``normalize`` its fraction of the true class (row). The title gives the
    accuracy and the number of samples.

    Args:
        m: The metrics.
        path: Output PNG; its parent folders are created.
        normalize: Show row fractions instead of counts.

    Returns:
        ``path``.
    """
    k = len(m.classes)
    counts = np.asarray(m.confusion, dtype=np.float64).reshape(k, k)
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    else:
        values = counts
    top = 1.0 if normalize or values.max() <= 0 else float(values.max())

    cell = 0.5  # inches per cell
    side = max(4.0, cell * k + 2.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=top, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)

    rotate = max((len(c) for c in m.classes), default=0) > 2
    ax.set_xticks(
        range(k), m.classes, rotation=45 if rotate else 0, ha="right" if rotate else "center"
    )
    ax.set_yticks(range(k), m.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    kind = "row-normalised" if normalize else "counts"
    ax.set_title(f"Confusion matrix ({kind}), accuracy {m.accuracy:.3f}, n={m.n}")

    font = 8 if k <= 20 else 6
    for i in range(k):
        for j in range(k):
            value = values[i, j]
            text = f"{value:.2f}" if normalize else str(int(counts[i, j]))
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=font,
                color="white" if value > top / 2 else ("black" if value > 0 else "0.6"),
            )
    return _save(fig, path)


def plot_history(history: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> Path:
    """Write the training curves of successive phases as a PNG (loss and accuracy panels).

    The phases (e.g. ``"frozen"``, ``"fine_tune"``) are drawn in the mapping's order on one
    continuous epoch axis (1, 2, ...); a dashed vertical line labelled with the phase name
    marks where each phase starts. Each phase has Keras-style series (``loss``,
    ``accuracy``, ``val_loss``, ``val_accuracy``; ``acc`` / ``categorical_accuracy`` and
    their ``val_`` forms are also understood; other keys are ignored). Missing keys leave a
    gap; phases with no values are skipped; with no values at all the panels say so.

    Args:
        history: Phase name -> Keras ``History.history`` dict.
        path: Output PNG; its parent folders are created.

    Returns:
        ``path``.
    """
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    phases: list[tuple[str, int, Mapping[str, Sequence[float]]]] = []
    start = 1
    for name, series in history.items():
        length = max((len(values) for values in series.values()), default=0)
        if length:
            phases.append((name, start, series))
            start += length
    epochs = np.arange(1, start)

    fig = _figure(11.0, 4.2, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    panels: list[tuple[Axes, str, tuple[tuple[str, ...], ...]]] = [
        (loss_ax, "loss", tuple((key,) for key in _LOSS_KEYS)),
        (acc_ax, "accuracy", _ACCURACY_KEYS),
    ]
    for ax, title, key_groups in panels:
        drawn = False
        for keys in key_groups:
            curve = _concatenate(phases, keys, len(epochs))
            if np.isfinite(curve).any():
                ax.plot(epochs, curve, marker="o", markersize=3, label=keys[0])
                drawn = True
        ax.set_title(title, pad=18)
        ax.set_xlabel("epoch")
        if not drawn:
            ax.text(
                0.5,
                0.5,
                f"no {title} recorded",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="0.4",
            )
            continue
        ax.legend(loc="best", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        marker = blended_transform_factory(ax.transData, ax.transAxes)
        for name, first, _ in phases:
            ax.axvline(first - 0.5, color="0.5", linestyle="--", linewidth=1)
            ax.text(
                first - 0.4,
                1.01,
                name,
                transform=marker,
                ha="left",
                va="bottom",
                fontsize=8,
                color="0.3",
            )
    return _save(fig, path)


def plot_gallery(
    items: Sequence[Mapping[str, object]], image_root: Path, path: Path, size: int = 96
) -> Path:
    """Write a grid of misclassified images as a PNG.

    Each image is read from ``image_root / item["path"]``, converted to RGB whatever its mode
    (transparency is composited on white, 16-bit and float images are stretched to their
    range), scaled to fit ``size`` pixels and titled
    ``"true: X / pred: Y (0.87)"``. A file that cannot be read is shown as a grey cell
    saying so. An empty ``items`` writes a small PNG saying
    "no misclassified test images".

    Args:
        items: As returned by :func:`misclassified` (keys path, true, predicted, confidence).
        image_root: Folder the item paths are relative to.
        path: Output PNG; its parent folders are created.
        size: Edge of each thumbnail, in pixels (>= 8).

    Returns:
        ``path``.

    Raises:
        ValueError: ``size < 8``.
        KeyError: An item lacks one of the keys.
    """
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    if not items:
        fig = _figure(4.0, 1.0)
        fig.text(0.5, 0.5, "no misclassified test images", ha="center", va="center", fontsize=12)
        return _save(fig, path, pad_inches=0.4)

    titles = [
        f"true: {item['true']} / pred: {item['predicted']} ({_as_float(item['confidence']):.2f})"
        for item in items
    ]
    cols = min(len(items), 5)
    rows = math.ceil(len(items) / cols)
    cell_w = max(size / _DPI + 0.3, 0.075 * max(len(t) for t in titles) + 0.3)
    cell_h = size / _DPI + 0.5
    fig = _figure(cols * cell_w, rows * cell_h, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index >= len(items):
            continue
        try:
            pixels: NDArray[np.uint8] | None = _thumbnail(
                Path(image_root) / str(items[index]["path"]), size
            )
        except OSError:
            pixels = None
        if pixels is None:
            ax.imshow(np.full((size, size, 3), 200, dtype=np.uint8))
            ax.text(size / 2, size / 2, "unreadable", ha="center", va="center", fontsize=8)
        else:
            ax.imshow(pixels, interpolation="nearest")
        ax.set_title(titles[index], fontsize=8)
    return _save(fig, path)


# -- helpers -------------------------------------------------------------------------------


def _check_inputs(
    y_true: ArrayLike, probs: ArrayLike, classes: Sequence[str]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Validate and convert labels and probabilities; see :func:`compute_metrics`."""
    raw = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if raw.ndim != 1 or raw.size == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array, got shape {raw.shape}")
    whole_floats = (
        raw.dtype.kind == "f"
        and bool(np.all(np.isfinite(raw)))
        and bool(np.all(raw == np.round(raw)))
    )
    if raw.dtype.kind not in "iu" and not whole_floats:
        raise ValueError(f"y_true must hold integer labels, got dtype {raw.dtype}")
    labels = raw.astype(np.int64)
    k = len(classes)
    if len(set(classes)) != k or k == 0:
        raise ValueError(f"classes must be non-empty and unique, got {list(classes)}")
    if p.shape != (labels.size, k):
        raise ValueError(f"probs must have shape {(labels.size, k)}, got {p.shape}")
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must lie in [0, {k}), got {labels.min()}..{labels.max()}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probs must be finite and non-negative")
    sums = p.sum(axis=1)
    if np.any(np.abs(sums - 1.0) > _SUM_TOLERANCE):
        worst = float(sums[np.argmax(np.abs(sums - 1.0))])
        raise ValueError(f"probability rows must sum to 1 (one sums to {worst:.6g})")
    return labels, p


def _concatenate(
    phases: Sequence[tuple[str, int, Mapping[str, Sequence[float]]]],
    keys: Sequence[str],
    total: int,
) -> NDArray[np.float64]:
    """One series over all phases (NaN where a phase lacks it), from the first key found."""
    curve = np.full(total, np.nan)
    for _, first, series in phases:
        key = next((k for k in keys if k in series), None)
        if key is None:
            continue
        values = np.asarray([float(v) for v in series[key]], dtype=np.float64)
        curve[first - 1 : first - 1 + values.size] = values
    return curve


def _thumbnail(file: Path, size: int) -> NDArray[np.uint8]:
    """The image at ``file`` as RGB uint8 pixels, scaled to fit ``size`` x ``size``."""
    with open_image(file) as opened:  # the contract's formats and pixel limit
        rgb = to_rgb(opened)
    scale = size / max(rgb.size)
    new_size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return np.asarray(rgb.resize(new_size, resample), dtype=np.uint8)


def _as_float(value: object) -> float:
    """``value`` as a float, for numbers only (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _figure(width: float, height: float, layout: Literal["constrained"] | None = None) -> Figure:
    """A new figure on its own Agg canvas (no pyplot state), with an optional layout engine."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, pad_inches: float = 0.1) -> Path:
    """Save ``fig`` as a PNG at ``path`` (parents created) and return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(
        path,
        format="png",
        dpi=_DPI,
        bbox_inches="tight",
        pad_inches=pad_inches,
        metadata={"Software": None},
    )
    return path
