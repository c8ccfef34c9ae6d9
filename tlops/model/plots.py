"""PNG figures of an evaluation: :func:`plot_confusion`, :func:`plot_history`,
:func:`plot_gallery`.

The figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never
through :mod:`matplotlib.pyplot`, so no global backend or figure state is touched. matplotlib
is imported by the functions that need it, so importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from tlops.data.inputs import open_image, to_rgb
from tlops.model.metrics import Metrics

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


_DPI = 100


_LOSS_KEYS = ("loss", "val_loss")


_ACCURACY_KEYS = (
    ("accuracy", "categorical_accuracy", "sparse_categorical_accuracy", "acc"),
    ("val_accuracy", "val_categorical_accuracy", "val_sparse_categorical_accuracy", "val_acc"),
)


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
