"""Benchmark: a team's data at scale, one JSON document (issue 14).

Built so far: the ``near_duplicates`` section.

- ``planted``: 200 pairs of five kinds of edits (40 each): resized to half, re-encoded as JPEG
  quality 35, cropped 5 % per side, brightened 25 %, contrast -20 %. Each original goes in
  ``train`` and its copy in ``test``. The originals are photos of flowers128 when
  ``$TLOPS_ASSETS`` has them, else generated scenes. Counted: the pairs the contract's rule
  finds at its default distance, per kind and in all.
- ``distinct``: 10,000 distinct generated scenes split train / test. Counted: the pairs it
  reports, all of them false.
- Throughput of the perceptual hashing (images/s, one thread) and of the cross-split pair
  search on those 10,000.

Goals: at least 95 % of the planted pairs found, and no false pair among the 10,000 distinct
images. ``--quick``: 50 planted pairs and 1,000 distinct images.
Run ``.venv/bin/python bench/scale.py [--quick] [--out r.json]``.

Not built yet (issue 14, parts 2, 3 and 5): ``dvc add``, resolve, manifest + contract and a
no-op ``tlops train`` on 100,000 generated JPEGs, cold and warm, with peak RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

Json = dict[str, Any]


def assets_root() -> Path:
    """``$TLOPS_ASSETS``, else ``<repo>/../shared/assets``."""
    return Path(os.environ.get("TLOPS_ASSETS") or ROOT.parent / "shared" / "assets").resolve()


def scene(seed: int, size: tuple[int, int] = (160, 120)) -> Any:
    """A photo-like generated image: smooth random blobs of colour with a little noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 6, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))


def _jpeg(img: Any, quality: int) -> Any:
    from PIL import Image

    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _crop(img: Any, side: float) -> Any:
    dx, dy = int(img.width * side), int(img.height * side)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


def edits() -> dict[str, Callable[[Any], Any]]:
    """The five kinds of copies."""
    from PIL import ImageEnhance

    return {
        "resized": lambda im: im.resize((im.width // 2, im.height // 2)),
        "re-encoded": lambda im: _jpeg(im, 35),
        "cropped": lambda im: _crop(im, 0.05),
        "brightened": lambda im: ImageEnhance.Brightness(im).enhance(1.25),
        "contrast": lambda im: ImageEnhance.Contrast(im).enhance(0.8),
    }


def originals(count: int, assets: Path) -> tuple[list[Any], str]:
    """``count`` originals: flowers128 photos (spread over the folder) or generated scenes."""
    from PIL import Image

    folder = assets / "datasets" / "flowers128"
    files = sorted(folder.rglob("*.jpg")) if folder.is_dir() else []
    if len(files) >= count:
        step = len(files) // count
        return [Image.open(f).convert("RGB") for f in files[::step][:count]], "flowers128"
    return [scene(10_000_000 + i) for i in range(count)], "generated"


def frame(rows: list[tuple[str, str, str | None]]) -> Any:
    """A manifest of (path, split, phash) rows, each its own sha256."""
    import pandas as pd

    return pd.DataFrame(
        [(p, s, h, f"sha-{p}") for p, s, h in rows], columns=["path", "split", "phash", "sha256"]
    )


def planted(pairs: int, assets: Path, distance: int) -> Json:
    """The share of planted pairs that the rule finds, per kind of edit."""
    from tlops.data.near_duplicates import near_pairs, perceptual_hash

    kinds = edits()
    base, source = originals(pairs, assets)
    rows, kind_of = [], {}
    for i, img in enumerate(base):
        kind = list(kinds)[i % len(kinds)]
        rows.append((f"train/{i}.png", "train", perceptual_hash(img)))
        rows.append((f"test/{i}.jpg", "test", perceptual_hash(kinds[kind](img))))
        kind_of[f"test/{i}.jpg"] = kind
    found = near_pairs(frame(rows), distance, ("train", "val", "test"))
    right = {p for p, o in zip(found["path"], found["other"], strict=True)
             if o == p.replace("test/", "train/").replace(".jpg", ".png")}  # fmt: skip
    per_kind = {k: 0 for k in kinds}
    for path in right:
        per_kind[kind_of[path]] += 1
    total = {k: sum(1 for v in kind_of.values() if v == k) for k in kinds}
    return {
        "originals": source, "pairs": len(base), "found": len(right),
        "recall": round(len(right) / len(base), 4),
        "per_kind": {k: f"{per_kind[k]}/{total[k]}" for k in kinds},
        "other_pairs_reported": int(len(found) - len(right)),
    }  # fmt: skip


def distinct(count: int, distance: int) -> Json:
    """False pairs among ``count`` distinct generated scenes, and the time of each step."""
    from tlops.data.near_duplicates import near_pairs, perceptual_hash

    images = [scene(i) for i in range(count)]
    start = time.perf_counter()
    hashes = [perceptual_hash(img) for img in images]
    hashing = time.perf_counter() - start
    rows = [(f"{i}.png", "train" if i % 5 else "test", h) for i, h in enumerate(hashes)]
    start = time.perf_counter()
    found = near_pairs(frame(rows), distance, ("train", "val", "test"))
    search = time.perf_counter() - start
    return {
        "images": count, "false_pairs": len(found),
        "closest": found.head(3)[["path", "other", "distance"]].values.tolist(),
        "hash_images_per_s_one_thread": round(count / hashing, 1),
        "pair_search_s": round(search, 2),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Run the sections; print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 pairs, 1,000 distinct images")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    args = parser.parse_args(argv)
    from tlops.config import ContractConfig

    distance = ContractConfig().near_duplicate_distance or 0
    pairs, count = (50, 1000) if args.quick else (200, 10_000)
    load = [round(x, 2) for x in os.getloadavg()]
    near = {
        "distance": distance,
        "planted": planted(pairs, assets_root(), distance),
        "distinct": distinct(count, distance),
    }
    near["goal"] = {
        "recall": "at least 95 % of planted pairs", "recall_met": near["planted"]["recall"] >= 0.95,
        "false_pairs": "none among the distinct images",
        "false_pairs_met": near["distinct"]["false_pairs"] == 0,
    }  # fmt: skip
    document = {
        "benchmark": "scale", "mode": "quick" if args.quick else "full",
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "machine": platform.machine(),
        "load_avg": {"start": load, "end": [round(x, 2) for x in os.getloadavg()]},
        "results": {"near_duplicates": near},
        "not_built": ["dvc add / resolve / manifest + contract / no-op train at 100k images"],
    }  # fmt: skip
    text = json.dumps(document, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
