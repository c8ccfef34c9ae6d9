"""The input pipeline: any image mode and size becomes (S, S, 3) float RGB in 0..255."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlops.config import SplitConfig
from tlops.data.inputs import (
    UnreadableImageError,
    encode_labels,
    image_batches,
    load_image,
    load_images,
    make_dataset,
    read_split,
)
from tlops.errors import DataError
from tlops.jobs.validate import build_manifest


def _save(path: Path, img: Image.Image, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("RGB", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("I;16", "PNG"),
     ("CMYK", "JPEG"), ("1", "PNG"), ("LA", "PNG")],
)  # fmt: skip
def test_any_mode_becomes_rgb_of_the_configured_size(tmp_path: Path, mode: str, fmt: str) -> None:
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (30, 45, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (30, 45), dtype=np.uint16))
    else:
        img = base.convert(mode)
    path = _save(tmp_path / f"x.{fmt.lower()}", img, fmt)
    array = load_image(path, 24)
    assert array.shape == (24, 24, 3)
    assert array.dtype == np.float32
    assert array.min() >= 0.0 and array.max() <= 255.0
    assert array.std() > 1.0  # not blank: 16-bit is scaled, not clipped to white


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    array = load_image(_save(tmp_path / "clear.png", clear), 8)
    assert np.all(array == 255.0)


def test_16_bit_keeps_its_range(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 16, dtype=np.uint16), (16, 1))
    array = load_image(_save(tmp_path / "ramp.png", Image.fromarray(ramp)), 16)
    assert array[0, 0, 0] == 0.0 and array[0, -1, 0] == 255.0


def test_dataset_batches_labels_and_shapes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for split, n in (("train", 5), ("val", 2), ("test", 2)):
        for label in ("a", "b", "c"):
            for i in range(n):
                pixels = rng.integers(0, 256, (10 + i, 14, 3), dtype=np.uint8)
                _save(tmp_path / "d" / split / label / f"{i}.png", Image.fromarray(pixels))
    info = build_manifest(tmp_path / "d", SplitConfig(), tmp_path / "out")
    train = read_split(info.manifest_path, tmp_path / "d", "train")
    assert train.classes == ["a", "b", "c"] and len(train) == 15
    assert train.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    ds = make_dataset(train, 16, 4, binary=False, shuffle=True, seed=0)
    batches = list(ds.as_numpy_iterator())
    assert [len(x) for x, _ in batches] == [4, 4, 4, 3]
    images, targets = batches[0]
    assert images.shape == (4, 16, 16, 3) and targets.shape == (4, 3)
    assert np.allclose(targets.sum(axis=1), 1.0)
    # shuffled, yet every label once per epoch; same seed, same order on the first epoch
    labels = np.concatenate([t.argmax(1) for _, t in batches])
    assert sorted(labels.tolist()) == train.labels.tolist()
    again = np.concatenate([t.argmax(1) for _, t in make_dataset(
        train, 16, 4, binary=False, shuffle=True, seed=0).as_numpy_iterator()])  # fmt: skip
    assert labels.tolist() == again.tolist()
    # the same pixels as the numpy path that evaluation uses
    plain = make_dataset(train, 16, 15, binary=False, shuffle=False, seed=0)
    ((from_ds, _),) = list(plain.as_numpy_iterator())
    assert np.array_equal(from_ds, load_images(train.paths, 16))

    # the backend-neutral PyDataset (JAX / PyTorch backends): same pixels, every label once
    # per epoch, a new order after each epoch, images alone for predict
    batches_ = image_batches(train, 16, 4, binary=False, shuffle=True, seed=0)
    assert len(batches_) == 4
    first = [batches_[i] for i in range(len(batches_))]
    assert [len(x) for x, _ in first] == [4, 4, 4, 3]
    order = np.concatenate([t.argmax(1) for _, t in first])
    assert sorted(order.tolist()) == train.labels.tolist()
    batches_.on_epoch_end()
    second = np.concatenate([batches_[i][1].argmax(1) for i in range(len(batches_))])
    assert sorted(second.tolist()) == train.labels.tolist()
    assert batches_.order.tolist() != list(range(15))
    only = image_batches(train, 16, 15, binary=False, shuffle=False, seed=0, labels=False)
    (pixels,) = only[0]
    assert np.array_equal(pixels, load_images(train.paths, 16))


def test_binary_labels_are_a_column() -> None:
    assert encode_labels(np.array([0, 1, 1]), 2, True).tolist() == [[0.0], [1.0], [1.0]]
    assert encode_labels(np.array([2, 0]), 3, False).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_label_budget_keeps_the_first_images_of_each_class() -> None:
    from tlops.data.inputs import SplitData
    from tlops.jobs.train import label_budget

    data = SplitData(
        paths=[f"/d/{i}.png" for i in range(7)], labels=np.array([0, 1, 0, 1, 0, 2, 1]),
        classes=["a", "b", "c"], relpaths=[f"{i}.png" for i in range(7)],
    )  # fmt: skip
    kept = label_budget(data, 2)
    assert kept.relpaths == ["0.png", "1.png", "2.png", "3.png", "5.png"]
    assert kept.labels.tolist() == [0, 1, 0, 1, 2] and kept.classes == data.classes
    assert label_budget(data, None) is data


# --- issue 10, item 10: only the allowed formats are opened, bombs are refused ---------------

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 20\n%%EndComments\nshowpage\n"


def test_load_image_opens_only_the_given_formats(tmp_path: Path) -> None:
    eps = tmp_path / "doc.eps"
    eps.write_bytes(EPS)  # never handed to Pillow's EPS plugin (which runs Ghostscript)
    with pytest.raises(DataError, match="allowed formats") as caught:
        load_image(eps, 8)
    assert caught.value.exit_code == 3 and "doc.eps" in str(caught.value)
    rgb = Image.fromarray(np.full((20, 20, 3), 100, dtype=np.uint8))
    bmp = _save(tmp_path / "pic.bmp", rgb, "BMP")
    assert load_image(bmp, 8).shape == (8, 8, 3)  # BMP is a supported format
    with pytest.raises(DataError, match="allowed formats PNG"):
        load_image(bmp, 8, formats=("PNG",))


def test_load_image_refuses_a_bomb_pillow_only_warns_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(tmp_path / "big.png", Image.new("L", (40, 40)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: 1x to 2x the limit
    with pytest.raises(DataError, match="too many pixels"):
        load_image(path, 8)
    monkeypatch.undo()
    with pytest.raises(DataError, match="1600 pixels is over the limit of 1599"):
        load_image(path, 8, max_pixels=1599)
    assert load_image(path, 8, max_pixels=1600).shape == (8, 8, 3)


def test_strict_decoding_raises_bomb_warnings_and_restores_the_filters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    from tlops.data.inputs import strict_decoding

    path = _save(tmp_path / "big.png", Image.new("L", (40, 40)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    before = list(warnings.filters)
    with strict_decoding(), pytest.raises(Image.DecompressionBombWarning):
        Image.open(path)
    assert warnings.filters == before  # no process-wide side effect after the block


def test_read_split_opens_only_the_formats_the_manifest_found(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for label in ("a", "b"):
            for i in range(n):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                _save(tmp_path / "d" / split / label / f"{i}.png", Image.fromarray(pixels))
    info = build_manifest(tmp_path / "d", SplitConfig(), tmp_path / "out")
    train = read_split(info.manifest_path, tmp_path / "d", "train")
    # a file swapped for another format after the contract saw it is refused, not decoded
    Image.open(train.paths[0]).convert("RGB").save(train.paths[0], format="BMP")
    batches = image_batches(train, 16, 4, binary=False, shuffle=False, seed=0)
    with pytest.raises(DataError, match="allowed formats PNG"):
        batches[0]
    assert train.formats == ("PNG",)


def _photo(width: int, height: int) -> Image.Image:
    """A smooth photo-like RGB image (colour blobs): what JPEG is made for."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def test_a_large_jpeg_decodes_from_a_draft_like_the_full_decode(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    _photo(1600, 1200).save(path, quality=90)
    drafted = load_image(path, 96)
    with Image.open(path) as img:
        full = np.asarray(img.convert("RGB").resize((96, 96), Image.Resampling.BILINEAR))
    assert drafted.shape == (96, 96, 3)
    assert np.abs(drafted - full.astype(np.float32)).mean() < 2.0  # of 255 levels


def test_a_truncated_large_jpeg_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    _photo(1600, 1200).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UnreadableImageError, match=r"cut\.jpg"):
        load_image(path, 96)
