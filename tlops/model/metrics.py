"""Metrics of a trained classifier from its predicted probabilities.

Everything here works on plain arrays (integer labels and softmax probabilities), so it never
imports Keras or TensorFlow:

* :func:`compute_metrics` -> :class:`Metrics` (accuracy, top-k accuracy, macro F1, loss,
  per-class precision / recall / F1 / support, confusion matrix);
* :func:`per_class_table` -> a :class:`pandas.DataFrame` of the per-class rows;
* :func:`misclassified` -> the most confident mistakes.

scikit-learn and pandas are imported by the functions that need them, so importing this
module stays cheap (they take seconds to import). The figures are in :mod:`tlops.model.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    import pandas as pd
from tlops.safetext import class_metric

__all__ = [
    "LOSS_EPSILON",
    "Metrics",
    "compute_metrics",
    "misclassified",
    "per_class_table",
]


LOSS_EPSILON = 1e-7
"""Probabilities are clipped to ``[LOSS_EPSILON, 1 - LOSS_EPSILON]`` in the loss (as Keras)."""


PER_CLASS_COLUMNS: tuple[str, ...] = ("class", "precision", "recall", "f1", "support")
"""Keys of each :attr:`Metrics.per_class` row, and columns of :func:`per_class_table`."""


_SUM_TOLERANCE = 1e-3  # how far a probability row may sum from 1


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
