"""Suspected label errors: planted flips in generated features are ranked first; the review's
files; the job's hook stops a run over the contract's limit."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlops.config import load_config
from tlops.data.inputs import SplitData
from tlops.data.label_errors import review_labels, write_review
from tlops.jobs.train import LabelErrorLimitError, label_check, review_facts

CLASSES = ["cat", "dog", "fox"]


def _features(per_class: int, flips: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, set[int]]:
    """Three well-separated clusters in 32 dimensions; ``flips`` images get another class's
    label. Returns features, given labels and the flipped indices."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (3, 32)) * 4
    true = np.repeat(np.arange(3), per_class)
    features = centers[true] + rng.normal(0, 1, (len(true), 32))
    given = true.copy()
    flipped = {int(i) for i in rng.choice(len(true), flips, replace=False)}
    for i in flipped:
        given[i] = (true[i] + 1) % 3
    return features.astype(np.float32), given, flipped


def test_planted_label_flips_are_the_top_suspects_with_their_true_class() -> None:
    features, given, flipped = _features(60, 6)
    paths = [f"train/{CLASSES[g]}/{i}.png" for i, g in enumerate(given)]
    review = review_labels(features, given, CLASSES, paths, top=10)
    assert review.checked == 180
    top = {paths.index(s.path) for s in review.suspects[: len(flipped)]}
    assert top == flipped
    assert review.flagged <= 12  # the clean clusters are not flagged wholesale
    for s in review.suspects[: len(flipped)]:
        i = paths.index(s.path)
        assert s.given == CLASSES[given[i]]
        assert s.predicted == CLASSES[(given[i] - 1) % 3]  # the class it was flipped from
        assert s.given_probability < 0.5 < s.predicted_probability
    assert f"{review.flagged} of 180" in review.line()


def test_clean_labels_give_few_suspects_and_too_small_a_class_no_search() -> None:
    features, given, _ = _features(40, 0, seed=3)
    review = review_labels(features, given, CLASSES, [str(i) for i in range(120)], top=5)
    assert review.fraction <= 0.02 and not review.skipped
    one = np.array([0, 0, 0, 1])
    small = review_labels(np.ones((4, 3)), one, ["a", "b"], list("wxyz"), top=5)
    assert small.skipped and small.checked == 0 and "not searched" in small.line()


def _images(root: Path, n: int) -> list[str]:
    rel = []
    for i in range(n):
        path = root / "train" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 12, 3), i * 7 % 255, np.uint8)).save(path)
        rel.append(f"train/{i}.png")
    return rel


def test_the_review_is_written_as_markdown_csv_and_thumbnails(tmp_path: Path) -> None:
    features, given, flipped = _features(20, 2)
    paths = _images(tmp_path / "data", len(given))
    review = review_labels(features, given, CLASSES, paths, top=4)
    files = write_review(review, tmp_path / "data", tmp_path / "out")
    assert sorted(f.name for f in files) == [
        "label_suspects.csv", "label_suspects.md", "label_suspects.png"
    ]  # fmt: skip
    text = (tmp_path / "out" / "label_suspects.md").read_text()
    assert all(paths[i] in text for i in flipped)
    with (tmp_path / "out" / "label_suspects.csv").open() as f:
        rows = list(csv.DictReader(f))
    # only flagged images are suspects: here the two flips, though four may be shown
    assert {r["path"] for r in rows} == {paths[i] for i in flipped}
    with Image.open(tmp_path / "out" / "label_suspects.png") as sheet:
        assert sheet.height >= 2 * 96


def _split(tmp_path: Path) -> tuple[SplitData, np.ndarray]:
    features, given, _ = _features(20, 6)
    paths = _images(tmp_path / "data", len(given))
    split = SplitData([str(tmp_path / "data" / p) for p in paths], given, CLASSES, paths)
    return split, features


def test_the_hook_stops_the_run_above_the_contracts_limit_and_names_the_suspects(
    tmp_path: Path,
) -> None:
    split, features = _split(tmp_path)
    found: list = []
    cfg = load_config(None, ["contract.max_label_error_fraction=0.02"])
    check = label_check(cfg, split, tmp_path / "data", tmp_path / "labels", found)
    assert check is not None
    with pytest.raises(LabelErrorLimitError, match="max_label_error_fraction") as err:
        check(features)
    assert err.value.exit_code == 3 and "look mislabeled" in str(err.value)
    assert (tmp_path / "labels" / "label_suspects.md").is_file()  # the report is still written
    facts = review_facts(found, tmp_path / "labels")
    assert facts["label_metrics"]["label_suspects_fraction"] == pytest.approx(found[0].fraction)
    assert len(facts["label_files"]) == 3


def test_without_a_limit_the_hook_reports_only_and_zero_suspects_turns_it_off(
    tmp_path: Path,
) -> None:
    split, features = _split(tmp_path)
    found: list = []
    check = label_check(load_config(None, []), split, tmp_path / "data", tmp_path / "l", found)
    assert check is not None
    check(features)
    assert found[0].flagged >= 6
    off = load_config(None, ["contract.label_suspects=0"])
    assert label_check(off, split, tmp_path / "data", tmp_path / "l", []) is None
