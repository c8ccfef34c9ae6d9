"""Thumbnail sheets: rows of small images with a few lines of text beside them (PNG), for
reports that point at files (near-duplicate pairs, suspected label errors)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Side of each thumbnail in pixels, and the margin around it.
THUMB = 96
MARGIN = 8
TEXT_WIDTH = 420


@dataclass(frozen=True)
class SheetRow:
    """One row of a sheet: images (paths under the sheet's root) and up to three text lines;
    ``alert`` is drawn in red under them."""

    images: Sequence[str]
    lines: Sequence[str]
    alert: str = ""


def thumbnail(root: Path, relpath: str) -> Any:
    """The file decoded as training decodes it, ``THUMB`` pixels square; a grey square for a
    file that cannot be read (a sheet never fails on one file)."""
    from PIL import Image

    from tlops.data.inputs import load_image

    try:
        return Image.fromarray(load_image(root / relpath, THUMB).astype("uint8"))
    except Exception:  # any unreadable file is drawn grey, the sheet goes on
        return Image.new("RGB", (THUMB, THUMB), (200, 200, 200))


def draw_sheet(root: Path, rows: Sequence[SheetRow], out: Path) -> Path | None:
    """Draw ``rows`` into the PNG ``out``; ``out``, or None when there is no row."""
    from PIL import Image, ImageDraw

    if not rows:
        return None
    columns = max(len(r.images) for r in rows)
    row_height, text_x = THUMB + 28, columns * (THUMB + MARGIN) + MARGIN
    sheet = Image.new("RGB", (text_x + TEXT_WIDTH, row_height * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        y = i * row_height
        for j, rel in enumerate(row.images):
            sheet.paste(thumbnail(root, rel), (MARGIN + j * (THUMB + MARGIN), y + 4))
        for k, line in enumerate(row.lines[:3]):
            draw.text((text_x, y + 10 + 20 * k), line[:70], fill="black")
        if row.alert:
            draw.text((text_x, y + 10 + 20 * min(len(row.lines), 3)), row.alert, fill=(160, 0, 0))
    sheet.save(out, format="PNG")
    return out
