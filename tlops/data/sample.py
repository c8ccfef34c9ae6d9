"""Offline, deterministic sample dataset for ``tlops``.

The sample has two parts, written as class folders of small PNG images:

``source``
    Printed glyphs (digits and capital letters without ``I`` and ``O``) rendered with the
    TrueType fonts that ship inside matplotlib, each randomly distorted (affine), coloured,
    noised and sometimes blurred. Many images per class: this is the pretraining set.
``target``
    Real handwritten digits from :func:`sklearn.datasets.load_digits`, given a 2-pixel margin
    (8x8 -> 12x12) and upscaled (bicubic) to 32x32 grayscale, dark ink on a light background.
    Few labelled images per class on purpose: this is the transfer set, where a backbone
    pretrained on ``source`` must clearly beat training from scratch.

Layout::

    out/source/{train,val,test}/<class>/<class>_<index:05d>.png    (32x32 RGB)
    out/target/{train,val,test}/<digit>/<digit>_<index:05d>.png    (32x32 L)

The index is unique within a class across its splits (train first, then val, then test).

Everything is derived from one :func:`numpy.random.default_rng` seeded with ``seed`` and the
PNGs are written with fixed parameters and no metadata, so that two calls with the same seed
and the same installed packages write byte-identical files (the dataset is versioned by
content hash).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "SOURCE_CLASSES",
    "SOURCE_SPLIT_SIZES",
    "SPLITS",
    "TARGET_CLASSES",
    "TARGET_SPLIT_SIZES",
    "SampleSummary",
    "font_paths",
    "write_sample",
]

TARGET_CLASSES: tuple[str, ...] = tuple("0123456789")
"""Classes of the target part: the ten digits."""

SOURCE_CLASSES: tuple[str, ...] = TARGET_CLASSES + tuple(
    c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in "IO"
)
"""Classes of the source part: digits then capital letters without ``I`` and ``O`` (34)."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Split names, in the order in which indices are assigned."""

SOURCE_SPLIT_SIZES: dict[str, int] = {"train": 100, "val": 15, "test": 15}
"""Number of images per class and split in the source part."""

TARGET_SPLIT_SIZES: dict[str, int] = {"train": 10, "val": 10, "test": 60}
"""Number of images per class and split in the target part."""

IMAGE_SIZE = 32
"""Width and height of every image, in pixels."""

PNG_COMPRESS_LEVEL = 9
"""zlib level used for every PNG (fixed so the bytes are reproducible)."""

# Glyphs are drawn and distorted at SUPERSAMPLE x the final size, then box-downsampled.
_SUPERSAMPLE = 2
_CANVAS = IMAGE_SIZE * _SUPERSAMPLE
_FONT_PX = 64  # nominal font size of the rendered glyph masks
_GLYPH_HEIGHT = 0.56  # ink height of an undistorted glyph, as a fraction of the canvas
_MIN_CONTRAST_X1000 = 120_000  # minimal luma difference fg/bg (0..255 scale), x 1000
_TARGET_MARGIN = 2  # background pixels added around each 8x8 digit before upscaling

_FONT_PREFIXES = ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "STIXGeneral")


@dataclass(frozen=True)
class SampleSummary:
    """What :func:`write_sample` wrote.

    Attributes:
        root: The dataset folder (the ``out`` argument).
        nfiles: Total number of image files written.
        parts: Part (``"source"``, ``"target"``) -> split -> number of files.
    """

    root: Path
    nfiles: int
    parts: dict[str, dict[str, int]]


def write_sample(out: Path, *, seed: int = 0, force: bool = False) -> SampleSummary:
    """Write the sample dataset into ``out``, deterministically and atomically.

    The files are written into a temporary sibling folder which is then renamed to ``out``, so
    ``out`` is either absent/unchanged or complete.

    Args:
        out: Folder to create. Its parent is created if needed.
        seed: Non-negative seed of the single random generator everything is derived from.
        force: Replace ``out`` if it already exists and is not empty (new content is written
            first, then swapped in, then the old content is removed).

    Returns:
        A summary of the files written.

    Raises:
        FileExistsError: ``out`` exists and is not empty and ``force`` is false, or ``out``
            exists and is not a folder.
        ValueError: ``seed`` is negative.
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise FileExistsError(f"{out} exists and is not a folder")
        if any(out.iterdir()) and not force:
            raise FileExistsError(f"{out} exists and is not empty")
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the dataset folder is not
        parts = _generate(tmp, seed)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    nfiles = sum(n for splits in parts.values() for n in splits.values())
    return SampleSummary(root=out, nfiles=nfiles, parts=parts)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``, moving an existing ``out`` aside first and deleting it after."""
    if not out.exists():
        tmp.rename(out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()  # only reserve a unique name
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _generate(root: Path, seed: int) -> dict[str, dict[str, int]]:
    """Write both parts under ``root``; return part -> split -> number of files."""
    rng = np.random.default_rng(seed)
    target_rng, source_rng = rng.spawn(2)
    return {
        "source": _write_source(root / "source", source_rng),
        "target": _write_target(root / "target", target_rng),
    }


def _save_png(image: Image.Image, path: Path) -> None:
    """Save ``image`` as a PNG with fixed parameters and no metadata."""
    image.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _split_ranges(sizes: dict[str, int]) -> Iterator[tuple[str, range]]:
    """Yield (split, indices) with indices unique across the splits of one class."""
    start = 0
    for split in SPLITS:
        yield split, range(start, start + sizes[split])
        start += sizes[split]


def _make_dirs(part: Path, classes: Sequence[str]) -> None:
    for split in SPLITS:
        for cls in classes:
            (part / split / cls).mkdir(parents=True)


# --------------------------------------------------------------------------- target part


def _write_target(part: Path, rng: np.random.Generator) -> dict[str, int]:
    """Write the handwritten digits; return split -> number of files."""
    from sklearn.datasets import load_digits  # imported lazily: slow and only needed here

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float64)
    labels = np.asarray(digits.target, dtype=np.int64)
    # 0..16 -> 0..255 with integer rounding, then inverted: dark ink on a light background.
    ink = (np.rint(images).astype(np.int64) * 255 + 8) // 16
    pixels = (255 - np.clip(ink, 0, 255)).astype(np.uint8)
    # The 8x8 digits touch their borders: a background margin keeps the upscaled digit about
    # two thirds of the image tall, like the printed source glyphs.
    margin = _TARGET_MARGIN
    pixels = np.pad(pixels, ((0, 0), (margin, margin), (margin, margin)), constant_values=255)

    counts = dict.fromkeys(SPLITS, 0)
    total = sum(TARGET_SPLIT_SIZES.values())
    _make_dirs(part, TARGET_CLASSES)
    for cls in TARGET_CLASSES:
        candidates = np.flatnonzero(labels == int(cls))  # sorted dataset order
        if candidates.size < total:
            raise RuntimeError(f"digit {cls}: only {candidates.size} images, need {total}")
        chosen = rng.permutation(candidates)[:total]
        for split, indices in _split_ranges(TARGET_SPLIT_SIZES):
            for index in indices:
                small = Image.fromarray(pixels[int(chosen[index])])
                big = small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
                _save_png(big, part / split / cls / f"{cls}_{index:05d}.png")
                counts[split] += 1
    return counts


# --------------------------------------------------------------------------- source part


def font_paths() -> list[Path]:
    """The matplotlib TTF fonts used for the source glyphs, sorted by file name."""
    import matplotlib  # imported lazily: only its data path is needed

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [
        p
        for p in folder.glob("*.ttf")
        if p.name.startswith(_FONT_PREFIXES) and "Display" not in p.name
    ]
    if not paths:
        raise FileNotFoundError(f"no usable TrueType fonts found in {folder}")
    return sorted(paths, key=lambda p: p.name)


@cache
def _font(path: Path) -> ImageFont.FreeTypeFont:
    # BASIC layout: independent of whether libraqm happens to be installed.
    return ImageFont.truetype(str(path), _FONT_PX, layout_engine=ImageFont.Layout.BASIC)


@cache
def _glyph_mask(path: Path, char: str) -> tuple[Image.Image, float, float, float, float]:
    """Antialiased ink mask of ``char``.

    Returns (mask, ink centre x, ink centre y, ink width, ink height), in mask pixels.
    """
    font = _font(path)
    left, top, right, bottom = font.getbbox(char)
    pad = 4
    width, height = int(right - left) + 2 * pad, int(bottom - top) + 2 * pad
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).text((pad - left, pad - top), char, font=font, fill=255)
    box = mask.getbbox()
    if box is None:
        raise RuntimeError(f"font {path.name} has no glyph for {char!r}")
    x0, y0, x1, y1 = box
    return mask, (x0 + x1) / 2.0, (y0 + y1) / 2.0, float(x1 - x0), float(y1 - y0)


_LUMA_X1000 = np.array([299, 587, 114], dtype=np.int64)  # Rec. 601 luma weights, x 1000


def _colours(rng: np.random.Generator) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Random (foreground, background) RGB colours with enough luma contrast.

    Candidate pairs are drawn uniformly, eight at a time; the first one with enough contrast
    wins (rejection sampling, deterministic given the generator state). The contrast is
    compared in integers so that no floating-point rounding can flip a borderline pair.
    """
    while True:
        pairs = rng.integers(0, 256, size=(8, 2, 3), dtype=np.int64)
        luma = (pairs * _LUMA_X1000).sum(axis=2)
        ok = np.flatnonzero(np.abs(luma[:, 0] - luma[:, 1]) >= _MIN_CONTRAST_X1000)
        if ok.size:
            fg, bg = pairs[ok[0]].astype(np.float64)
            return fg, bg


def _render_glyph(char: str, fonts: Sequence[Path], rng: np.random.Generator) -> Image.Image:
    """One randomly distorted, coloured and noised 32x32 RGB image of ``char``.

    The glyph mask is mapped onto a 2x supersampled canvas by a random affine transform
    (rotation, scale, slight anisotropy, shear, shift), box-downsampled to 32x32 and used as
    the alpha between a foreground and a background colour; then an optional slight gaussian
    blur and gaussian pixel noise are applied.
    """
    font = fonts[int(rng.integers(len(fonts)))]
    u = rng.random(9).tolist()  # all the scalar parameters at once, each mapped to its range
    angle = math.radians(-15.0 + 30.0 * u[0])
    scale = 0.75 + 0.35 * u[1]
    aspect = 0.9 + 0.2 * u[2]
    shear = -0.2 + 0.4 * u[3]
    shift_x = (-2.5 + 5.0 * u[4]) * _SUPERSAMPLE
    shift_y = (-2.5 + 5.0 * u[5]) * _SUPERSAMPLE
    noise_sigma = 2.0 + 8.0 * u[6]
    blur = u[7] < 0.3
    blur_radius = 0.4 + 0.4 * u[8]
    fg, bg = _colours(rng)
    noise = rng.standard_normal((IMAGE_SIZE, IMAGE_SIZE, 3))

    mask, cx, cy, ink_width, ink_height = _glyph_mask(font, char)
    # Forward map glyph -> canvas: p = centre + shift + R(angle) @ Shear(shear) @ diag(sx, sy)
    # @ (q - glyph centre). Pillow wants the inverse map canvas -> glyph: q = A @ p + offset.
    sy = _GLYPH_HEIGHT * _CANVAS * scale / ink_height
    sx = sy * aspect
    cos, sin = math.cos(angle), math.sin(angle)
    # forward = [[f00, f01], [f10, f11]] = R @ [[sx, shear * sy], [0, sy]]
    f00, f01 = cos * sx, cos * shear * sy - sin * sy
    f10, f11 = sin * sx, sin * shear * sy + cos * sy
    # Shrink wide glyphs (M, W) so that the distorted ink box stays inside the canvas.
    half_w, half_h = ink_width / 2.0, ink_height / 2.0
    reach_x = abs(f00) * half_w + abs(f01) * half_h
    reach_y = abs(f10) * half_w + abs(f11) * half_h
    room_x = _CANVAS / 2.0 - abs(shift_x) - _SUPERSAMPLE
    room_y = _CANVAS / 2.0 - abs(shift_y) - _SUPERSAMPLE
    fit = min(1.0, room_x / reach_x, room_y / reach_y)
    f00, f01, f10, f11 = f00 * fit, f01 * fit, f10 * fit, f11 * fit
    det = f00 * f11 - f01 * f10
    a, b, d, e = f11 / det, -f01 / det, -f10 / det, f00 / det
    px, py = _CANVAS / 2.0 + shift_x, _CANVAS / 2.0 + shift_y
    data = (a, b, cx - (a * px + b * py), d, e, cy - (d * px + e * py))
    canvas = mask.transform(
        (_CANVAS, _CANVAS),
        Image.Transform.AFFINE,
        data,
        resample=Image.Resampling.BILINEAR,
        fillcolor=0,
    )
    alpha_img = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    alpha = np.asarray(alpha_img, dtype=np.float64)[:, :, None] * (1.0 / 255.0)
    rgb = bg + (fg - bg) * alpha
    image = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur_radius))
    noisy = np.asarray(image, dtype=np.float64) + noise_sigma * noise
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def _write_source(part: Path, rng: np.random.Generator) -> dict[str, int]:
    """Write the printed glyphs; return split -> number of files."""
    fonts = font_paths()
    counts = dict.fromkeys(SPLITS, 0)
    _make_dirs(part, SOURCE_CLASSES)
    class_rngs = rng.spawn(len(SOURCE_CLASSES))
    for cls, class_rng in zip(SOURCE_CLASSES, class_rngs, strict=True):
        for split, indices in _split_ranges(SOURCE_SPLIT_SIZES):
            for index in indices:
                image = _render_glyph(cls, fonts, class_rng)
                _save_png(image, part / split / cls / f"{cls}_{index:05d}.png")
                counts[split] += 1
    return counts
