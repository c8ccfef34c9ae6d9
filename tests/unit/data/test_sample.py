"""Tests of the offline, deterministic sample dataset (tlops.data.sample)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlops.data.sample import SOURCE_CLASSES, TARGET_CLASSES, SampleSummary, write_sample

SOURCE_SIZES = {"train": 100, "val": 15, "test": 15}
TARGET_SIZES = {"train": 10, "val": 10, "test": 60}
EXPECTED_PARTS = {
    "source": {split: n * len(SOURCE_CLASSES) for split, n in SOURCE_SIZES.items()},
    "target": {split: n * len(TARGET_CLASSES) for split, n in TARGET_SIZES.items()},
}


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleSummary:
    out = tmp_path_factory.mktemp("sample") / "data"
    out.mkdir()  # an existing empty folder is fine without force
    return write_sample(out, seed=0)


def test_classes() -> None:
    assert len(SOURCE_CLASSES) == 34
    assert SOURCE_CLASSES[:10] == TARGET_CLASSES == tuple("0123456789")
    assert "I" not in SOURCE_CLASSES and "O" not in SOURCE_CLASSES
    assert len(set(SOURCE_CLASSES)) == len(SOURCE_CLASSES)


def test_summary(sample: SampleSummary) -> None:
    assert sample.parts == EXPECTED_PARTS
    assert sample.nfiles == 34 * 130 + 10 * 80
    assert sample.nfiles == sum(1 for p in sample.root.rglob("*") if p.is_file())


def test_layout_and_counts(sample: SampleSummary) -> None:
    root = sample.root
    assert sorted(p.name for p in root.iterdir()) == ["source", "target"]
    for part, classes, sizes in (
        ("source", SOURCE_CLASSES, SOURCE_SIZES),
        ("target", TARGET_CLASSES, TARGET_SIZES),
    ):
        assert sorted(p.name for p in (root / part).iterdir()) == sorted(sizes)
        names: Counter[str] = Counter()
        for split, n in sizes.items():
            folder = root / part / split
            assert sorted(p.name for p in folder.iterdir()) == sorted(classes)
            for cls in classes:
                files = sorted((folder / cls).iterdir())
                assert len(files) == n, (part, split, cls)
                for f in files:
                    assert f.is_file()
                    assert f.suffix == ".png"
                    stem_cls, index = f.stem.split("_")
                    assert stem_cls == cls
                    assert len(index) == 5 and index.isdigit()
                    names[f"{cls}/{f.name}"] += 1
        # file names (indices) are unique within a class across its splits
        assert max(names.values()) == 1
    # nothing left behind next to the dataset (temporary or old folders)
    assert [p.name for p in root.parent.iterdir()] == [root.name]


def test_modes_sizes_and_contrast(sample: SampleSummary) -> None:
    for part, mode in (("source", "RGB"), ("target", "L")):
        stds = []
        for path in sorted((sample.root / part).rglob("*.png")):
            with Image.open(path) as image:
                assert image.format == "PNG"
                assert image.mode == mode, path
                assert image.size == (32, 32), path
                assert not image.info.get("dpi")
                stds.append(float(np.asarray(image.convert("L"), dtype=np.float64).std()))
        # every glyph/digit shows: a blank image with the strongest noise has a std of about 7
        assert min(stds) > 10.0, (part, min(stds))


def test_target_images_are_distinct(sample: SampleSummary) -> None:
    hashes = [h for rel, h in _hashes(sample.root).items() if rel.startswith("target/")]
    assert len(hashes) == 800
    assert len(set(hashes)) == len(hashes)


def test_deterministic_and_force_replaces(sample: SampleSummary, tmp_path: Path) -> None:
    out = tmp_path / "again"
    (out / "source").mkdir(parents=True)
    (out / "stale.txt").write_text("old content")
    with pytest.raises(FileExistsError, match="again"):
        write_sample(out, seed=0)
    assert (out / "stale.txt").read_text() == "old content"

    summary = write_sample(out, seed=0, force=True)
    assert summary.root == out
    assert summary.parts == EXPECTED_PARTS
    assert not (out / "stale.txt").exists()
    assert _hashes(out) == _hashes(sample.root)
    assert [p.name for p in tmp_path.iterdir()] == ["again"]


def test_refuses_a_file(tmp_path: Path) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(FileExistsError, match="file"):
        write_sample(out, force=True)
    assert out.read_text() == "x"


def test_rejects_negative_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed"):
        write_sample(tmp_path / "out", seed=-1)
    assert not (tmp_path / "out").exists()


def test_committed_data_dvc_matches_the_sample(sample: SampleSummary) -> None:
    """The committed data.dvc names exactly what `tlops sample` writes on this machine."""
    import yaml

    from tlops.adapters.dvc import dir_md5

    pointer = Path(__file__).resolve().parents[3] / "data.dvc"
    out = yaml.safe_load(pointer.read_text(encoding="utf-8"))["outs"][0]
    assert dir_md5(sample.root) == (out["md5"], out["nfiles"], out["size"])
