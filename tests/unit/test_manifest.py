"""The manifest scan: one typed row per file, and class counts with zeros for empty folders."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tlops.manifest import COLUMNS, _decode, class_counts, scan


def save(path: Path, mode: str, fmt: str, seed: int, size: tuple[int, int] = (24, 20)) -> None:
    """A random ``size`` (width, height) image in ``mode``, saved as ``fmt``."""
    rng = np.random.default_rng(seed)
    width, height = size
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)


def make_folder(root: Path) -> Path:
    """train/{a,b}, val/{a,b}, test/a with one image each; test/b an empty class folder."""
    save(root / "train" / "a" / "rgb.png", "RGB", "PNG", 1)
    save(root / "train" / "a" / "photo.jpg", "RGB", "JPEG", 2)
    save(root / "train" / "b" / "gray.png", "L", "PNG", 3)
    save(root / "val" / "a" / "x.png", "RGB", "PNG", 4)
    save(root / "val" / "b" / "y.png", "RGB", "PNG", 5)
    save(root / "test" / "a" / "z.png", "RGB", "PNG", 6)
    (root / "test" / "b").mkdir(parents=True)
    (root / "train" / "a" / ".DS_Store").write_bytes(b"\x00")  # ignored
    return root


def test_scan_rows_columns_and_types(tmp_path: Path) -> None:
    manifest, layout = scan(make_folder(tmp_path / "data"), workers=2)
    assert list(manifest.columns) == COLUMNS
    assert layout.split_folders
    assert layout.classes == {"test": ["a", "b"], "train": ["a", "b"], "val": ["a", "b"]}
    assert manifest["path"].tolist() == sorted(manifest["path"])
    assert len(manifest) == 6  # .DS_Store is not data
    for col in ("width", "height", "channels", "bit_depth", "bytes"):
        assert manifest[col].dtype == pd.Int64Dtype(), col
    assert set(manifest["width"]) == {24} and set(manifest["height"]) == {20}

    rows = manifest.set_index("path")
    expected = {  # path: (split, label, format, mode, channels)
        "train/a/rgb.png": ("train", "a", "PNG", "RGB", 3),
        "train/a/photo.jpg": ("train", "a", "JPEG", "RGB", 3),
        "train/b/gray.png": ("train", "b", "PNG", "L", 1),
    }
    for path, values in expected.items():
        row = rows.loc[path]
        assert (row["split"], row["label"], row["format"], row["mode"], row["channels"]) == values
        assert row["bit_depth"] == 8
        assert bool(row["decodable"]) and row["error"] == ""
        assert not bool(row["symlink"]) and bool(row["inside_root"])
        data = (tmp_path / "data" / path).read_bytes()
        assert row["bytes"] == len(data)
        assert len(row["sha256"]) == 64
    assert rows["sha256"].is_unique


def test_scan_flat_layout_leaves_split_empty(tmp_path: Path) -> None:
    save(tmp_path / "a" / "one.png", "RGB", "PNG", 1)
    save(tmp_path / "b" / "two.png", "RGB", "PNG", 2)
    manifest, layout = scan(tmp_path)
    assert not layout.split_folders
    assert layout.classes == {"": ["a", "b"]}
    assert manifest[["path", "split", "label"]].values.tolist() == [
        ["a/one.png", "", "a"],
        ["b/two.png", "", "b"],
    ]


def test_class_counts_has_zero_rows_for_empty_class_folders(tmp_path: Path) -> None:
    manifest, layout = scan(make_folder(tmp_path / "data"))
    counts = class_counts(manifest, layout)
    assert list(counts.columns) == ["split", "label", "count", "balance"]
    table = {(r.split, r.label): (r.count, r.balance) for r in counts.itertuples()}
    assert table == {
        ("train", "a"): (2, 1.0),
        ("train", "b"): (1, 0.5),
        ("val", "a"): (1, 1.0),
        ("val", "b"): (1, 1.0),
        ("test", "a"): (1, 1.0),
        ("test", "b"): (0, 0.0),
    }
    assert counts["split"].tolist() == ["train"] * 2 + ["val"] * 2 + ["test"] * 2


def test_class_counts_counts_a_split_whose_class_folders_are_all_empty(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    for label in ("a", "b"):
        for f in (root / "val" / label).iterdir():
            f.unlink()
    manifest, layout = scan(root)
    counts = class_counts(manifest, layout).set_index(["split", "label"])["count"]
    assert counts[("val", "a")] == 0 and counts[("val", "b")] == 0


def test_decompression_bomb_is_reported_not_raised() -> None:
    """A header claiming 30000x30000 pixels: Pillow refuses to open it; the row says why."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    result = _decode(png)
    assert result["decodable"] is False
    assert "decompression bomb" in result["error"]


def test_decode_reads_width_and_height_in_order() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (31, 17)).save(buf, "PNG")
    result = _decode(buf.getvalue())
    assert (result["width"], result["height"]) == (31, 17)
