"""Near-duplicate leakage (issue 14, part 4): resized, re-encoded, cropped or brightened copies
across splits fail the contract naming both files; distinct images and copies within a split
do not."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from tlops.config import ContractConfig, SplitConfig
from tlops.data.contract import run_contract
from tlops.data.near_duplicates import (
    CENTER_CROPS,
    HASH_INPUT_SIDE,
    hamming_pairs,
    near_pairs,
    perceptual_hash,
    phash,
)
from tlops.jobs.validate import build_manifest, check_contract


def scene(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A photo-like image: smooth random blobs of colour (low frequencies dominate)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 6, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


EDITS = {
    "resized": lambda im: im.resize((im.width // 2, im.height // 2)),
    "re-encoded": lambda im: jpeg(im, 35),
    "cropped": lambda im: im.crop((6, 4, im.width - 6, im.height - 4)),
    "brightened": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
    "contrast": lambda im: ImageEnhance.Contrast(im).enhance(0.8),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_each_kind_of_copy_is_within_the_default_distance(edit: str) -> None:
    limit = ContractConfig().near_duplicate_distance
    assert limit is not None
    for seed in range(10):
        original = scene(seed)
        manifest = pd.DataFrame({
            "path": ["train/a.png", "test/a.png"], "split": ["train", "test"],
            "sha256": ["x", "y"],
            "phash": [perceptual_hash(original), perceptual_hash(EDITS[edit](original))],
        })  # fmt: skip
        pairs = near_pairs(manifest, limit, ("train", "val", "test"))
        assert len(pairs) == 1, (edit, seed)


def test_distinct_scenes_are_not_pairs() -> None:
    hashes = [perceptual_hash(scene(s)) for s in range(200)]
    manifest = pd.DataFrame({
        "path": [f"{i}.png" for i in range(200)], "split": ["train", "test"] * 100,
        "sha256": [str(i) for i in range(200)], "phash": hashes,
    })  # fmt: skip
    limit = ContractConfig().near_duplicate_distance or 0
    assert near_pairs(manifest, limit, ("train", "val", "test")).empty


def varied_images() -> list[Image.Image]:
    """~50 images: random noise, smooth scenes, flat, two-level and gradient ones, in grey,
    RGB, RGBA and palette modes, tiny to large, square and elongated."""
    rng = np.random.default_rng(7)
    images: list[Image.Image] = []
    for i in range(48):
        width, height = (int(v) for v in rng.integers(1, 300, 2))
        kind = i % 6
        if kind == 0:
            img = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
        elif kind == 1:
            img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        elif kind == 2:
            img = scene(i, (max(width, 8), max(height, 8)))
        elif kind == 3:
            img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
        elif kind == 4:
            halves = np.zeros((height, width), dtype=np.uint8)
            halves[:, : width // 2] = int(rng.integers(1, 256))
            img = Image.fromarray(halves)
        else:
            ramp = np.linspace(0, int(rng.integers(1, 256)), width).astype(np.uint8)
            img = Image.fromarray(np.tile(ramp, (height, 1)))
        images.append(img)
    images += [Image.new("L", (64, 48), 0), Image.new("L", (64, 48), 255)]
    images += [scene(1).convert("RGBA"), scene(2).convert("P"), scene(3, (1000, 20))]
    return images


def test_phash_is_imagehash_phash_bit_for_bit() -> None:
    import imagehash

    for img in varied_images():
        assert phash(img) == str(imagehash.phash(img)), (img.mode, img.size)


def test_perceptual_hash_is_the_imagehash_of_the_whole_image_and_its_central_crops() -> None:
    import imagehash

    for img in varied_images():
        gray = img.convert("L")
        factor = max(1, min(gray.size) // HASH_INPUT_SIDE)
        gray = gray.reduce(factor) if factor > 1 else gray
        width, height = gray.size
        expected = [str(imagehash.phash(gray))]
        for keep in CENTER_CROPS:
            dx, dy = round(width * (1 - keep) / 2), round(height * (1 - keep) / 2)
            crop = gray.crop((dx, dy, width - dx, height - dy))
            expected.append(str(imagehash.phash(crop)))
        assert perceptual_hash(img) == ",".join(expected), (img.mode, img.size)


def test_hamming_pairs_finds_every_pair_within_the_distance() -> None:
    left = np.array([0b0, 0b1111, 2**63], dtype=np.uint64)
    right = np.array([0b1, 0b1111_0000_1111, 2**63 + 7], dtype=np.uint64)
    assert sorted(hamming_pairs(left, right, 3)) == [
        (0, 0, 1),
        (1, 0, 3),
        (1, 2, 2),
        (2, 0, 2),
        (2, 2, 3),
    ]
    assert hamming_pairs(left, right[:0], 3) == []


def write(root: Path, rel: str, img: Image.Image, fmt: str = "PNG") -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    img.save(root / rel, format=fmt)


def test_the_contract_names_both_files_and_draws_the_pairs(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i in range(4):
        for label, base in (("cat", 0), ("dog", 100)):
            write(root, f"train/{label}/{i}.png", scene(base + i))
            write(root, f"val/{label}/{i}.png", scene(base + 10 + i))
            write(root, f"test/{label}/{i}.png", scene(base + 20 + i))
    write(root, "test/cat/copy.jpg", EDITS["resized"](scene(2)), "JPEG")  # of train/cat/2.png
    write(root, "train/dog/again.jpg", EDITS["re-encoded"](scene(101)), "JPEG")  # same split
    info = build_manifest(root, SplitConfig(), tmp_path / "out")
    config = ContractConfig(min_images_per_class={"train": 1, "val": 1, "test": 1})
    verdict = check_contract(info, config, tmp_path / "report", {}, root)
    assert not verdict.success and verdict.failed_rules == ["near_duplicate"]
    assert "test/cat/copy.jpg ~ train/cat/2.png (distance" in verdict.message
    assert "again.jpg" not in verdict.message  # a copy within one split is no leakage
    assert "near_duplicates.png" in verdict.markdown
    sheet = Image.open(tmp_path / "report" / "near_duplicates.png")
    assert sheet.height >= 96 and sheet.width > 2 * 96

    off = ContractConfig(min_images_per_class={"train": 1, "val": 1, "test": 1},
                         near_duplicate_distance=None)  # fmt: skip
    manifest = pd.read_parquet(info.manifest_path)
    counts = pd.read_parquet(info.counts_path)
    assert run_contract(manifest, counts, off).success
    pairs = near_pairs(manifest, 6, ("train", "val", "test"))
    assert pairs[["path", "other"]].values.tolist() == [["test/cat/copy.jpg", "train/cat/2.png"]]


def test_the_band_search_finds_exactly_the_pairs_of_the_full_comparison(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pigeonhole: two hashes at most d bits apart are equal on one of d + 1 bands; random,
    planted and skewed (many equal bands) hashes, at several distances."""
    from tlops.data import near_duplicates as nd

    rng = np.random.default_rng(0)
    left = rng.integers(0, 2**63, 3000, dtype=np.uint64) << np.uint64(1)
    right = rng.integers(0, 2**63, 600, dtype=np.uint64)
    for k in range(60):  # near copies, 0 to 9 bits apart
        value = int(left[k * 7])
        for bit in rng.choice(64, int(rng.integers(0, 10)), replace=False):
            value ^= 1 << int(bit)
        right[k] = np.uint64(value)
    left[:400] &= np.uint64(0xFFFFF)  # skewed: the high bands all zero
    right[100:200] &= np.uint64(0xFFFFF)
    monkeypatch.setattr(nd, "BRUTE_PAIRS", 0)  # the band search even on small inputs
    for distance in (0, 2, 6, 9):
        expected = sorted(nd._brute_pairs(left, right, distance))
        assert nd.hamming_pairs(left, right, distance) == expected
        assert len(expected) >= 1
