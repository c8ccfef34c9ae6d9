"""Deterministic, stratified train/val/test split by content hash.

Used when a dataset has no split folders of its own. Every copy of an image (same sha256) lands
in the same split, so duplicates never leak across splits, and the assignment depends only on
the file contents, the labels and the seed: stable across runs, machines and file names.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from tlops.config import SplitConfig


def _rank_key(sha256: str, seed: int) -> str:
    """A seeded, machine-independent ordering key for one image."""
    return hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """How many of ``n`` images go to train, val and test (val/test get at least one if n>=3)."""
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    if n >= 3:
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    return n - n_val - n_test, n_val, n_test


def assign_splits(manifest: pd.DataFrame, config: SplitConfig) -> pd.DataFrame:
    """Return a copy of ``manifest`` whose ``split`` column is filled, stratified by label.

    Rows without a hash (unreadable) or label get the split of nothing: they stay ``""`` and the
    contract reports them.
    """
    out = manifest.copy()
    usable = out[(out["label"] != "") & out["sha256"].notna()]
    # one decision per distinct image: its first label (sorted) decides
    first_label = usable.sort_values(["sha256", "label"]).drop_duplicates("sha256")
    decided: dict[str, str] = {}
    for _label, group in first_label.groupby("label", sort=True):
        shas = sorted(group["sha256"], key=lambda s: _rank_key(s, config.seed))
        n_train, n_val, _ = split_counts(len(shas), config.val_fraction, config.test_fraction)
        for i, sha in enumerate(shas):
            decided[sha] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    out["split"] = [decided.get(s, "") if isinstance(s, str) else "" for s in out["sha256"]]
    return out


#: Carving a test split out of val needs this many val images in every class (half each).
MIN_VAL_PER_CLASS_TO_CARVE = 4


def carve_test(manifest: pd.DataFrame, config: SplitConfig) -> tuple[pd.DataFrame, str]:
    """A test split for a dataset with train and val folders but no test: a copy of
    ``manifest`` with some rows moved to ``test``, and the split they came from.

    From val when every class has at least :data:`MIN_VAL_PER_CLASS_TO_CARVE` val images:
    half of each class (rounded down), so val and test are alike; otherwise from train, a
    ``test_fraction`` of the whole dataset, stratified the same way. Within a class, images
    are taken in the seeded order of their sha256 (as :func:`assign_splits` does), so the
    carve is the same on every run and machine, and all copies of an image move together.
    """
    out = manifest.copy()
    usable = out[(out["label"] != "") & out["sha256"].notna()]
    val = usable[usable["split"] == "val"]
    per_class = val.drop_duplicates("sha256").groupby("label").size()
    classes = sorted(usable[usable["split"] == "train"]["label"].unique())
    enough = bool(len(per_class)) and all(
        per_class.get(c, 0) >= MIN_VAL_PER_CLASS_TO_CARVE for c in classes
    )
    source = "val" if enough else "train"
    pool = usable[usable["split"] == source].sort_values(["sha256", "label"])
    first = pool.drop_duplicates("sha256")
    share = 0.5 if enough else config.test_fraction * len(usable) / max(1, len(first))
    moved: set[str] = set()
    for _label, group in first.groupby("label", sort=True):
        shas = sorted(group["sha256"], key=lambda s: _rank_key(s, config.seed))
        n_test = int(len(shas) * share) if enough else round(len(shas) * min(share, 0.5))
        if len(shas) >= 2:
            n_test = min(max(n_test, 1), len(shas) - 1)  # each class keeps one and gives one
        moved.update(shas[:n_test])
    in_source = out["split"] == source
    out.loc[in_source & out["sha256"].isin(moved), "split"] = "test"
    return out, source
