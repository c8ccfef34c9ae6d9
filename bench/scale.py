"""Benchmark: a team's data at scale, one JSON document (issue 14).

``near_duplicates``:

- ``planted``: 200 pairs of five kinds of edits (40 each): resized to half, re-encoded as JPEG
  quality 35, cropped 5 % per side, brightened 25 %, contrast -20 %. Each original goes in
  ``train`` and its copy in ``test``. The originals are photos of flowers128 when
  ``$TLOPS_ASSETS`` has them, else generated scenes. Counted: the pairs the contract's rule
  finds at its default distance, per kind and in all.
- ``distinct``: 10,000 distinct generated scenes split train / test. Counted: the pairs it
  reports, all of them false.
- Throughput of the perceptual hashing (images/s, one thread) and of the cross-split pair
  search on those 10,000.

``team_scale``: a git + DVC repo of 100,000 generated JPEGs (64x48, 100 classes, no split
folders) made by the benchmark; each step is its own process, timed from outside, with its
peak RSS (its own and its children's): ``dvc add``; resolve (tlops' DVC hashing), cold then
warm; manifest + contract (with the near-duplicate hashing), cold (empty row cache) then warm;
a first ``tlops train`` (a label budget of 5 images per class, tiny CNN, 1 + 1 epochs, a
promoting gate) and then the same ``tlops train`` again, which must be a no-op. Also: whether
tlops' cache holds a copy of the data.

Goals: at least 95 % of the planted pairs found and no false pair among the 10,000 distinct
images; contract with hashing at least 3,000 images/s cold; a warm no-op under 15 s end to
end; peak RSS under 2 GB; no second copy of the data on disk. ``--quick``: 50 planted pairs,
1,000 distinct images, 5,000 images for ``team_scale``.
Run ``.venv/bin/python bench/scale.py [--quick] [--out r.json]``.
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


# -- team scale -------------------------------------------------------------------------------

#: Image side, classes and the step runner: it runs a command, then prints the command's peak
#: RSS (its children's: the runner's own high-water mark is the benchmark's, kept across exec).
TEAM_SIZE = (64, 48)
TEAM_CLASSES = 100
_RUNNER = (
    "import json, resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
    "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
    "print(json.dumps({'rc': rc, 'peak_rss_mb': round(kids / 1024, 1)}))"
)


def _write_class(args: tuple[Path, int, int, int]) -> None:
    """Write the images of one class (its own seeds): a worker of :func:`team_images`."""
    folder, _label, per_class, first = args
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        scene(first + i, TEAM_SIZE).save(folder / f"{i:05d}.jpg", quality=85)


def team_images(root: Path, total: int) -> float:
    """``total`` distinct JPEG scenes in :data:`TEAM_CLASSES` class folders; seconds taken."""
    from concurrent.futures import ProcessPoolExecutor

    per_class = total // TEAM_CLASSES
    jobs = [(root / f"class{c:03d}", c, per_class, 1_000_000 + c * per_class)
            for c in range(TEAM_CLASSES)]  # fmt: skip
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_write_class, jobs))
    return time.perf_counter() - start


def step(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> Json:
    """Run ``cmd`` through the RSS runner: wall seconds, exit code, peak RSS (MB)."""
    import subprocess

    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER, *cmd], cwd=cwd, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n{done.stdout}\n{done.stderr}\n")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    facts = json.loads(lines[-1]) if lines else {"rc": done.returncode, "peak_rss_mb": None}
    return {"wall_s": round(wall, 2), **facts}


_RESOLVE = (
    "import sys; from pathlib import Path; from tlops.adapters.dvc import resolve_data; "
    "from tlops.config import DataConfig; v = resolve_data(DataConfig(repo=Path(sys.argv[1]))); "
    "print('in_place', v.in_place, v.nfiles)"
)
_CONTRACT = (
    "import sys, time, json; from pathlib import Path; from tlops.adapters.dvc import "
    "resolve_data; from tlops.config import load_config; from tlops.jobs.validate import "
    "version_manifest, check_contract, version_facts; "
    "cfg = load_config(Path(sys.argv[1]), []); v = resolve_data(cfg.data); "
    "t = time.perf_counter(); "
    "info = version_manifest(v, cfg.split, Path(sys.argv[2]), cfg.contract); "
    "verdict = check_contract(info, cfg.contract, Path(sys.argv[2]), version_facts(v), "
    "v.images_root); s = time.perf_counter() - t; "
    "print(json.dumps({'contract_s': s, 'success': verdict.success, 'message': verdict.message}))"
)


def _team_config(path: Path, repo: Path, near: bool = True) -> Path:
    """The run config of the benchmark's repo: tiny model, label budget, a promoting gate;
    ``near``: the near-duplicate rule at its default distance (else off: the hashes are still
    computed by every scan, and the pairs are what the contract steps report)."""
    rule = "" if near else ", near_duplicate_distance: null"
    text = f"""name: scale
data: {{repo: {repo}, image_size: 16, train_per_class: 5}}
backbone: {{name: tiny_cnn, weights: none}}
contract: {{formats: [JPEG], min_images_per_class: {{train: 2, val: 1, test: 1}}{rule}}}
train:
  augment: {{flip: none, rotation: 0}}
  frozen: {{epochs: 1}}
  fine_tune: {{epochs: 1}}
gate:
  rules:
    - {{kind: value, metric: test_accuracy, min: 0.0}}
"""
    path.write_text(text, encoding="utf-8")
    return path


def team_scale(total: int, work: Path) -> Json:
    """The ``team_scale`` section (see the module docstring)."""
    repo, log = work / "repo", work / "steps.log"
    env = {**os.environ, "TLOPS_HOME": str(work / "home"), "TLOPS_CACHE": str(work / "cache"),
           "PREFECT_HOME": str(work / "prefect"), "GX_ANALYTICS_ENABLED": "false",
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "DVC_NO_ANALYTICS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           }  # fmt: skip
    repo.mkdir(parents=True)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "b@example.org"],
                ["git", "config", "user.name", "bench"], ["dvc", "init", "-q"]):  # fmt: skip
        step(cmd, repo, env, log)
    generate_s = team_images(repo / "data", total)
    config = _team_config(work / "scale.yaml", repo)
    steps: Json = {"generate_s": round(generate_s, 1)}
    steps["dvc_add"] = step(["dvc", "add", "-q", "data"], repo, env, log)
    step(["git", "add", "data.dvc", ".gitignore"], repo, env, log)
    step(["git", "commit", "-qm", "data"], repo, env, log)
    python = sys.executable
    for phase in ("cold", "warm"):
        steps[f"resolve_{phase}"] = step([python, "-c", _RESOLVE, str(repo)], repo, env, log)
    for phase in ("cold", "warm"):
        out = work / f"contract-{phase}"
        facts = step([python, "-c", _CONTRACT, str(config), str(out)], repo, env, log)
        steps[f"contract_{phase}"] = facts
    # generated scenes are not all told apart by a 64-bit hash at this scale (the contract
    # steps report the pairs): the runs switch the rule off, everything else as configured
    train_config = _team_config(work / "scale-train.yaml", repo, near=False)
    tlops = [str(Path(sys.executable).parent / "tlops"), "train", str(train_config)]
    steps["train_first"] = step(tlops, repo, env, log)
    steps["train_noop_warm"] = step(tlops, repo, env, log)
    text = log.read_text(encoding="utf-8")
    cache_data = work / "cache" / "data"
    copies = sum(1 for _ in cache_data.rglob("*.jpg")) if cache_data.exists() else 0
    # the goal's steps; the first train (it makes the champion) is reported beside them
    rss = [v.get("peak_rss_mb") or 0 for k, v in steps.items() if isinstance(v, dict)
           and k != "train_first"]  # fmt: skip
    contract_rate = _rate(total, text, "cold")
    noop = steps["train_noop_warm"]
    return {
        "images": total, "classes": TEAM_CLASSES, "size": list(TEAM_SIZE),
        "steps": steps,
        "contract_images_per_s": contract_rate,
        "noop_said": "nothing changed" in text.split("$ ")[-1],
        "images_copied_into_tlops_cache": copies,
        "goal": {
            "contract": "at least 3,000 images/s cold (manifest + contract, with hashing)",
            "contract_met": bool(contract_rate and contract_rate["cold"] >= 3000),
            "noop": "a warm no-op tlops train under 15 s end to end",
            "noop_met": noop["rc"] == 0 and noop["wall_s"] < 15,
            "rss": "peak RSS under 2 GB: dvc add, resolve, contract, no-op train",
            "rss_met": max(rss) < 2048,
            "no_copy": "no second copy of the data", "no_copy_met": copies == 0,
        },
    }  # fmt: skip


def _rate(total: int, log: str, phase: str) -> Json | None:
    """Images/s of the manifest + contract (timed inside its process), cold and warm."""
    found = [json.loads(line) for line in log.splitlines() if line.startswith('{"contract_s"')]
    if len(found) < 2:
        return None
    cold, warm = found[0], found[1]
    return {
        "cold": round(total / cold["contract_s"], 1), "warm": round(total / warm["contract_s"], 1),
        "cold_s": round(cold["contract_s"], 2), "warm_s": round(warm["contract_s"], 2),
        "success": cold["success"], "message": cold["message"][:300],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Run the sections; print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 pairs, 1,000 distinct images")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    parser.add_argument("--skip-team", action="store_true", help="near duplicates only")
    parser.add_argument("--team-only", action="store_true", help="team scale only")
    args = parser.parse_args(argv)
    import tempfile

    from tlops.config import ContractConfig

    distance = ContractConfig().near_duplicate_distance or 0
    pairs, count = (50, 1000) if args.quick else (200, 10_000)
    load = [round(x, 2) for x in os.getloadavg()]
    results: Json = {}
    if not args.team_only:
        near: Json = {
            "distance": distance,
            "planted": planted(pairs, assets_root(), distance),
            "distinct": distinct(count, distance),
        }
        near["goal"] = {
            "recall": "at least 95 % of planted pairs",
            "recall_met": near["planted"]["recall"] >= 0.95,
            "false_pairs": "none among the distinct images",
            "false_pairs_met": near["distinct"]["false_pairs"] == 0,
        }
        results["near_duplicates"] = near
    if not args.skip_team:
        with tempfile.TemporaryDirectory(prefix="tlops-bench-scale-") as work:
            results["team_scale"] = team_scale(5_000 if args.quick else 100_000, Path(work))
    document = {
        "benchmark": "scale", "mode": "quick" if args.quick else "full",
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "machine": platform.machine(),
        "load_avg": {"start": load, "end": [round(x, 2) for x in os.getloadavg()]},
        "results": results,
    }  # fmt: skip
    text = json.dumps(document, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
