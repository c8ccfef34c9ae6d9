"""The common folder layouts (issue 14, part 1): ``validation`` and ``valid`` are val, a map of
others, and a test split carved by sha256 when a dataset has train and val folders only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tlops.config import ContractConfig, DataConfig, SplitConfig, load_config
from tlops.data.contract import run_contract
from tlops.data.manifest import class_counts, scan
from tlops.errors import ConfigError
from tlops.jobs.validate import build_manifest


def write(root: Path, splits: dict[str, int], classes: tuple[str, ...] = ("cat", "dog")) -> None:
    """``splits[folder]`` distinct PNGs per class under ``root/<folder>/<class>/``."""
    seed = 0
    for folder, n in splits.items():
        for label in classes:
            (root / folder / label).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed += 1
                pixels = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / folder / label / f"{label}{i}.png")


def contract_passes(root: Path, info_path: str) -> bool:
    manifest = pd.read_parquet(info_path)
    _, layout = scan(root)
    counts = class_counts(manifest, layout)
    limits = ContractConfig(min_width=8, min_height=8, min_images_per_class={"train": 1,
                            "val": 1, "test": 1}, max_imbalance=10)  # fmt: skip
    return bool(run_contract(manifest, counts, limits).success)


@pytest.mark.parametrize("val_folder", ["validation", "valid"])
def test_validation_and_valid_are_val_and_paths_stay_as_they_are(
    val_folder: str, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    write(root, {"train": 3, val_folder: 2, "test": 2})
    info = build_manifest(root, SplitConfig(), tmp_path / "out")
    manifest = pd.read_parquet(info.manifest_path)
    assert info.split_source == "folders"
    assert info.per_split == {"train": 6, "val": 4, "test": 4}
    val = manifest[manifest["split"] == "val"]
    assert val["path"].str.startswith(f"{val_folder}/").all()  # the original relative path
    assert contract_passes(root, info.manifest_path)


def test_train_and_val_only_get_a_test_carved_from_val_stably(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write(root, {"train": 6, "validation": 6})
    first = build_manifest(root, SplitConfig(), tmp_path / "a")
    again = build_manifest(root, SplitConfig(), tmp_path / "b")
    assert first.split_source == "folders; test carved from val by sha256"
    assert first.per_split == {"train": 12, "val": 6, "test": 6}  # half of each class
    a, b = pd.read_parquet(first.manifest_path), pd.read_parquet(again.manifest_path)
    assert a["split"].tolist() == b["split"].tolist() and first.digest == again.digest
    test = a[a["split"] == "test"]
    assert test.groupby("label").size().to_dict() == {"cat": 3, "dog": 3}  # stratified
    assert test["path"].str.startswith("validation/").all()
    assert contract_passes(root, first.manifest_path)


def test_a_small_val_keeps_its_images_and_test_comes_from_train(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write(root, {"train": 10, "val": 2})
    info = build_manifest(root, SplitConfig(test_fraction=0.15), tmp_path / "out")
    assert info.split_source == "folders; test carved from train by sha256"
    manifest = pd.read_parquet(info.manifest_path)
    test = manifest[manifest["split"] == "test"]
    assert test["path"].str.startswith("train/").all()
    assert test.groupby("label").size().to_dict() == {"cat": 2, "dog": 2}  # 15 % of 24, each
    assert info.per_split["val"] == 4


def test_an_existing_empty_test_folder_is_not_replaced(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write(root, {"train": 3, "val": 4})
    (root / "test" / "cat").mkdir(parents=True)
    info = build_manifest(root, SplitConfig(), tmp_path / "out")
    assert info.split_source == "folders" and "test" not in info.per_split


def test_own_split_names_and_an_unknown_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write(root, {"train": 3, "dev": 2, "holdout": 2})
    info = build_manifest(
        root, SplitConfig(), tmp_path / "out", split_names={"dev": "val", "holdout": "test"}
    )
    assert info.per_split == {"train": 6, "val": 4, "test": 4}
    plain = build_manifest(root, SplitConfig(), tmp_path / "plain")  # defaults: dev unknown
    manifest = pd.read_parquet(plain.manifest_path)
    assert set(manifest["split"]) == {"train", "dev", "holdout"}
    assert not contract_passes(root, plain.manifest_path)  # split_folder names them


def test_split_names_config() -> None:
    assert DataConfig().split_names == {"validation": "val", "valid": "val"}
    assert load_config(None, ["data.split_names={dev: val}"]).data.split_names == {"dev": "val"}
    for bad in ("{dev: holdout}", "{train: val}", "{'a/b': val}"):
        with pytest.raises(ConfigError, match="split_names"):
            load_config(None, [f"data.split_names={bad}"])
