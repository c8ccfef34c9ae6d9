"""The manifest scan: one typed row per file, and class counts with zeros for empty folders."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import unicodedata
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tlops.data.manifest import COLUMNS, _decode, class_counts, scan


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


# --- issue 10, items 9 and 10: every odd file is a row; Pillow only sees what it may ----------


def _png(size: tuple[int, int] = (24, 20), seed: int = 0) -> bytes:
    """A random RGB PNG of ``size``."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_non_utf8_names_are_escaped_rows_and_never_read(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    # names given as raw bytes that are not UTF-8, in a class folder and as a class folder
    (root / "train" / "a" / os.fsdecode(b"bad\xff.png")).write_bytes(_png(seed=9))
    latin1 = root / "train" / os.fsdecode(b"cl\xe9s")  # 'clés' in Latin-1
    latin1.mkdir()
    (latin1 / "x.png").write_bytes(_png(seed=10))
    assert os.fsencode(latin1).endswith(b"/cl\xe9s")
    manifest, layout = scan(root, workers=2)
    rows = manifest.set_index("path")
    bad = rows.loc["train/a/bad\\xff.png"]
    assert not bool(bad["name_ok"]) and "not valid UTF-8" in bad["error"]
    assert pd.isna(bad["sha256"]) and pd.isna(bad["decodable"])  # never read
    in_folder = rows.loc["train/cl\\xe9s/x.png"]
    assert in_folder["label"] == "cl\\xe9s" and not bool(in_folder["name_ok"])
    assert "cl\\xe9s" in layout.classes["train"]
    assert rows.loc["train/a/rgb.png", "name_ok"]  # the others are untouched
    # everything in the manifest is valid UTF-8: it can be written and read back
    manifest.to_parquet(tmp_path / "m.parquet")
    assert set(pd.read_parquet(tmp_path / "m.parquet")["path"]) == set(manifest["path"])


def test_names_with_newlines_are_escaped_onto_one_line(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    (root / "train" / "a" / "two\nlines|x.png").write_bytes(_png(seed=11))
    manifest, _ = scan(root)
    row = manifest.set_index("path").loc["train/a/two\\nlines|x.png"]
    assert not bool(row["name_ok"]) and "control characters" in row["error"]
    assert not any("\n" in p for p in manifest["path"])


def test_escaping_is_reversible_so_names_never_merge() -> None:
    from tlops.safetext import escape, name_problem

    assert escape("a\\xff") != escape("a\udcff")  # a literal backslash is escaped too
    assert escape("x\ny\u202e") == "x\\ny\\u202e"
    assert name_problem("mon chat é 猫 🐱.png") is None
    assert name_problem("a\udcff") and name_problem("a\tb") and name_problem("r\u202eevil")
    # every ASCII character: the fast path for plain names agrees with the look at each char
    for code in range(128):
        unsafe = unicodedata.category(chr(code)) == "Cc"
        assert (name_problem(f"a{chr(code)}b.png") is not None) == unsafe, code


def test_symlink_loop_is_a_row_not_an_error(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    (root / "train" / "a" / "loop1.png").symlink_to("loop2.png")
    (root / "train" / "a" / "loop2.png").symlink_to("loop1.png")
    manifest, _ = scan(root, workers=2)
    rows = manifest.set_index("path")
    for name in ("train/a/loop1.png", "train/a/loop2.png"):
        assert rows.loc[name, "decodable"] == False  # noqa: E712
        assert "symlink loop" in rows.loc[name, "error"]


def test_file_over_max_bytes_is_sized_but_never_read(tmp_path: Path) -> None:
    from tlops.data.manifest import Limits

    root = make_folder(tmp_path / "data")
    big = _png((64, 64), seed=12)
    (root / "train" / "b" / "big.png").write_bytes(big)
    manifest, _ = scan(root, limits=Limits(max_bytes=len(big) - 1))
    row = manifest.set_index("path").loc["train/b/big.png"]
    assert row["bytes"] == len(big) and "over max_bytes" in row["error"]
    assert pd.isna(row["sha256"]) and pd.isna(row["decodable"]) and pd.isna(row["format"])
    small = manifest.set_index("path").loc["train/a/rgb.png"]  # streamed hash = whole-file hash
    data = (root / "train" / "a" / "rgb.png").read_bytes()
    assert small["sha256"] == hashlib.sha256(data).hexdigest() and bool(small["decodable"])


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 20\n%%EndComments\nshowpage\n"


def test_formats_outside_the_allowed_ones_never_reach_a_pillow_plugin(tmp_path: Path) -> None:
    """An EPS (Pillow's EPS plugin hands it to Ghostscript) and a BMP with only PNG allowed."""
    from tlops.data.manifest import Limits

    root = make_folder(tmp_path / "data")
    (root / "train" / "a" / "doc.eps").write_bytes(EPS)
    save(root / "train" / "a" / "pic.bmp", "RGB", "BMP", 13)
    manifest, _ = scan(root, limits=Limits(formats=("PNG",)))
    rows = manifest.set_index("path")
    for name in ("train/a/doc.eps", "train/a/pic.bmp", "train/a/photo.jpg"):
        row = rows.loc[name]
        assert row["decodable"] == False, name  # noqa: E712
        assert pd.isna(row["format"]), name  # not even identified
        assert "allowed formats: PNG" in row["error"]
    assert rows.loc["train/a/rgb.png", "format"] == "PNG"
    # by default, only the formats a contract can allow: EPS is not one of them
    assert pd.isna(scan(root)[0].set_index("path").loc["train/a/doc.eps", "format"])


def test_bomb_between_one_and_two_times_pillows_limit_is_never_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pillow only warns below twice its limit; the scan refuses it from its header."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    png = _png((40, 40))  # 1600 pixels: over the limit, under twice the limit
    result = _decode(png)
    assert result["decodable"] is not True
    assert (result["width"], result["height"]) == (40, 40)
    assert "too many pixels" in result["error"]
    assert _decode(_png((30, 30)))["decodable"] is True  # 900 pixels: under the limit


def test_max_pixels_refuses_before_decoding() -> None:
    result = _decode(_png((40, 40)), max_pixels=1599)
    assert result["decodable"] is None and "1600 pixels" in result["error"]
    assert _decode(_png((40, 40)), max_pixels=1600)["decodable"] is True


# --- a large JPEG is decoded at a reduced scale (libjpeg's DCT scaling) for its hash ----------


def _jpeg(size: tuple[int, int], mode: str = "RGB", progressive: bool = False) -> bytes:
    """A photo-like (smooth blobs and a little noise) JPEG of ``size`` in ``mode``."""
    rng = np.random.default_rng(3)
    blobs = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    smooth = np.asarray(blobs.resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    pixels = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, "JPEG", quality=90, progressive=progressive)
    return buf.getvalue()


@pytest.mark.parametrize(("mode", "channels"), [("RGB", 3), ("L", 1), ("CMYK", 4)])
def test_a_large_jpeg_keeps_its_own_header_and_a_close_hash(mode: str, channels: int) -> None:
    from tlops.data.near_duplicates import perceptual_hash

    data = _jpeg((800, 600), mode)
    row = _decode(data)
    assert row["decodable"] is True and not row.get("error")
    header = (row["format"], row["mode"], row["width"], row["height"], row["channels"])
    assert header == ("JPEG", mode, 800, 600, channels)
    assert row["bit_depth"] == 8
    with Image.open(io.BytesIO(data)) as full:  # every pixel decoded
        full.load()
        expected = perceptual_hash(full)
    assert expected is not None and row["phash"] is not None
    for ours, theirs in zip(row["phash"].split(","), expected.split(","), strict=True):
        assert bin(int(ours, 16) ^ int(theirs, 16)).count("1") <= 6


@pytest.mark.parametrize("progressive", [False, True])
def test_a_truncated_or_garbled_large_jpeg_is_not_decodable(progressive: bool) -> None:
    """Drafted (800x600 is decoded at 1/8), the whole entropy-coded data is still read."""
    data = _jpeg((800, 600), progressive=progressive)
    half = len(data) // 2
    broken = [data[:half]]  # truncated
    for garbage in (b"\xff\xc4" * 64, b"\xff\xd8" * 64):  # stray markers in the scan data
        broken.append(data[:half] + garbage + data[half + len(garbage) :])
    for case, bad in enumerate(broken):
        row = _decode(bad)
        assert row["decodable"] is False, case
        assert row["format"] == "JPEG" and row["error"].startswith("cannot decode: "), case


def test_a_png_with_a_wrong_chunk_crc_is_not_decodable_though_its_pixels_load() -> None:
    """``load()`` ignores chunk CRCs; the scan's ``verify()`` of every PNG does not."""
    png = bytearray(_png((24, 20), seed=4))
    idat = png.index(b"IDAT")
    end = idat + 4 + int.from_bytes(png[idat - 4 : idat], "big")  # the IDAT chunk's CRC
    png[end : end + 4] = bytes(b ^ 0xFF for b in png[end : end + 4])
    with Image.open(io.BytesIO(bytes(png))) as img:
        img.load()  # Pillow decodes it without complaint
    row = _decode(bytes(png))
    assert row["decodable"] is False and row["format"] == "PNG"
    assert row["error"].startswith("cannot decode: ")


# --- many files to read: worker processes, the very rows of the threads ---------------------


def many_files(root: Path) -> Path:
    """48 files: PNG and JPEG in three modes and sizes, a large JPEG, and odd ones (a truncated
    JPEG, a text file, an empty file, a link inside the folder, an unsafe name)."""
    make_folder(root)
    for i in range(36):
        mode, fmt = (("RGB", "PNG"), ("L", "JPEG"), ("RGB", "JPEG"))[i % 3]
        save(root / "train" / "ab"[i % 2] / f"{i:02d}.{fmt.lower()}", mode, fmt, 100 + i)
    (root / "val" / "a" / "big.jpg").write_bytes(_jpeg((800, 600)))
    (root / "val" / "a" / "cut.jpg").write_bytes(_jpeg((800, 600))[:5000])
    (root / "val" / "b" / "notes.png").write_bytes(b"not an image\n")
    (root / "val" / "b" / "empty.png").write_bytes(b"")
    (root / "test" / "a" / "link.png").symlink_to("z.png")
    (root / "test" / "a" / "two\nlines.png").write_bytes(_png(seed=7))
    return root


def _dies_on_the_second_chunk(entries: list[Any], *args: Any) -> list[Any]:
    """A worker that dies (as on a crash in a decoder) on the chunk holding ``train/a/08``."""
    from tlops.data import manifest

    if any(entry.relpath.startswith("train/a/08.") for entry in entries):
        os._exit(70)
    return manifest._read_chunk(entries, *args)


def test_many_files_are_read_by_processes_into_the_rows_of_the_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlops.data import manifest

    root = many_files(tmp_path / "data")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300_000)  # the caller's, in the workers too
    threads, _ = scan(root, workers=2)
    assert len(threads) == 48 and threads["decodable"].sum() == 43
    assert "too many pixels" in threads.set_index("path").loc["val/a/big.jpg", "error"]
    monkeypatch.setattr(manifest, "PROCESS_MIN_FILES", 40)
    monkeypatch.setattr(manifest, "PROCESS_CHUNK", 7)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    processes, _ = scan(root, workers=2)
    pd.testing.assert_frame_equal(processes, threads)
    # a worker that dies loses no row: from its chunk on, the scan reads with threads
    monkeypatch.setattr(manifest, "_read_chunk", _dies_on_the_second_chunk)
    survived, _ = scan(root, workers=2)
    pd.testing.assert_frame_equal(survived, threads)
