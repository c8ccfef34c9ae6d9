"""The content-hash split: deterministic, stratified, duplicates together, names ignored."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from tlops.config import SplitConfig
from tlops.data.split import assign_splits, split_counts


@pytest.mark.parametrize(
    ("n", "val", "test", "counts"),
    [
        (0, 0.15, 0.15, (0, 0, 0)),
        (1, 0.15, 0.15, (1, 0, 0)),
        (2, 0.15, 0.15, (2, 0, 0)),
        (3, 0.15, 0.15, (1, 1, 1)),  # at least one each from 3 images on
        (3, 0.0, 0.15, (2, 0, 1)),  # no val asked for: none
        (10, 0.2, 0.2, (6, 2, 2)),
        (100, 0.15, 0.15, (70, 15, 15)),
        (7, 0.1, 0.3, (4, 1, 2)),
    ],
)
def test_split_counts(n: int, val: float, test: float, counts: tuple[int, int, int]) -> None:
    assert split_counts(n, val, test) == counts
    assert sum(counts) == n


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def manifest(per_label: dict[str, int], prefix: str = "img") -> pd.DataFrame:
    """A manifest frame: one distinct image per row (``relpath``, ``label``, ``sha256``)."""
    rows = [
        {"relpath": f"{label}/{prefix}{i}.png", "label": label, "sha256": sha(f"{label}-{i}"),
         "split": ""}
        for label, n in per_label.items() for i in range(n)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def splits_by_sha(frame: pd.DataFrame) -> dict[str, str]:
    return dict(zip(frame["sha256"], frame["split"], strict=True))


def test_stratified_by_label() -> None:
    out = assign_splits(manifest({"cat": 20, "dog": 10, "eel": 3}), SplitConfig())
    counts = out.groupby(["label", "split"]).size().to_dict()
    assert counts == {
        ("cat", "test"): 3, ("cat", "train"): 14, ("cat", "val"): 3,
        ("dog", "test"): 2, ("dog", "train"): 6, ("dog", "val"): 2,
        ("eel", "test"): 1, ("eel", "train"): 1, ("eel", "val"): 1,
    }  # fmt: skip


def test_depends_on_contents_and_seed_only() -> None:
    frame = manifest({"a": 30, "b": 30})
    first = assign_splits(frame, SplitConfig(seed=1))
    assert (frame["split"] == "").all()  # the input is not changed
    # rows shuffled and files renamed: the same image gets the same split
    renamed = frame.sample(frac=1.0, random_state=3).assign(
        relpath=lambda f: [f"x/{i}.png" for i in range(len(f))]
    )
    assert splits_by_sha(assign_splits(renamed, SplitConfig(seed=1))) == splits_by_sha(first)
    other = assign_splits(frame, SplitConfig(seed=2))
    assert splits_by_sha(other) != splits_by_sha(first)  # another seed, another split
    assert other["split"].value_counts().to_dict() == first["split"].value_counts().to_dict()


def test_duplicates_share_a_split_and_unusable_rows_get_none() -> None:
    frame = manifest({"a": 12, "b": 12})
    copies = frame.iloc[:12].assign(relpath=lambda f: "copy/" + f["relpath"])
    relabelled = frame.iloc[12:].assign(label="a")  # same images filed under another label too
    odd = pd.DataFrame([
        {"relpath": "a/broken.png", "label": "a", "sha256": np.nan, "split": ""},
        {"relpath": "loose.png", "label": "", "sha256": sha("loose"), "split": ""},
    ])  # fmt: skip
    out = assign_splits(pd.concat([frame, copies, relabelled, odd], ignore_index=True),
                        SplitConfig())  # fmt: skip
    per_sha = out[out["sha256"].notna() & (out["label"] != "")].groupby("sha256")["split"]
    assert (per_sha.nunique() == 1).all()  # every copy of an image in one split
    assert out.loc[out["relpath"] == "a/broken.png", "split"].item() == ""
    assert out.loc[out["relpath"] == "loose.png", "split"].item() == ""
    assert set(out["split"]) == {"train", "val", "test", ""}
