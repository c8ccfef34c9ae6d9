"""Benchmark: what training costs and what it reaches, printed as one JSON document.

Sections (``--only SECTION`` runs one; repeatable):

- ``feature_cache``: the frozen phase on cached pooled features versus the plain frozen-base
  ``fit`` on decoded images, same head, same epochs (MobileNetV2, real ImageNet weights,
  flowers128, stratified 80/20).
- ``input_pipeline``: images/s that ``make_dataset`` delivers (first epoch decodes, second comes
  from its cache) versus images/s that a training step consumes at the same size and batch.
- ``end_to_end_overhead``: the real ``tlops train configs/demo.yaml`` as a subprocess; wall time
  minus the fit seconds of its ``training.json``, with a timeline from Prefect's log and the
  import times of the heavy packages.
- ``accuracy``: test accuracy of ``tlops.jobs.train.train_model`` + ``evaluate_model`` (fine_tune
  strategy) on a held-out stratified 20% of flowers128 and facemask256, next to a logistic
  regression probe on the frozen, average-pooled features of the same split.

Real assets come from ``$TLOPS_ASSETS`` (default ``<repo>/../shared/assets``); a section that
needs them prints ``{"skipped": ...}`` when they are absent. Nothing is copied into the repo:
every run folder, cache and tracking store is a temporary directory. ``--quick`` is a smoke run
(small images, few images per class, one or two epochs). Run with ``make bench`` or
``.venv/bin/python bench/train.py [--quick] [--only accuracy]``. Timings are wall-clock seconds
on whatever shares the CPU; ``load_avg`` is recorded at start and end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tlops.adapters.dvc import dir_md5
from tlops.backbones import get_spec
from tlops.config import RunConfig, SplitConfig
from tlops.data.inputs import SplitData, encode_labels, load_images, make_dataset, read_split
from tlops.data.manifest import manifest_digest
from tlops.data.version import DataVersion
from tlops.jobs.validate import ManifestInfo, build_manifest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS: tuple[str, ...] = ("feature_cache", "input_pipeline", "end_to_end_overhead", "accuracy")
BACKBONE = "mobilenet_v2"
WEIGHTS_FILE = Path("weights") / "mobilenet_v2_1.0_224_no_top.h5"
FLOWERS = Path("datasets") / "flowers128"
FACEMASK = Path("datasets") / "facemask256"

Json = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    """Sizes and epochs of one benchmark mode (full or ``--quick``)."""

    mode: str
    batch_size: int
    cache_size: int  # feature_cache and input_pipeline image size
    cache_epochs: int
    consume_steps: int
    e2e_epochs: int
    e2e_runs: int
    accuracy_size: int
    frozen_epochs: int
    fine_tune_epochs: dict[str, int]
    caps: dict[str, int] | None  # at most this many images per class and split


FULL = Settings(
    mode="full",
    batch_size=32,
    cache_size=96,
    cache_epochs=10,
    consume_steps=15,
    e2e_epochs=5,
    e2e_runs=2,
    accuracy_size=128,
    frozen_epochs=10,
    fine_tune_epochs={"flowers128": 5, "facemask256": 3},
    caps=None,
)
QUICK = Settings(
    mode="quick",
    batch_size=32,
    cache_size=64,
    cache_epochs=2,
    consume_steps=5,
    e2e_epochs=1,
    e2e_runs=1,
    accuracy_size=64,
    frozen_epochs=2,
    fine_tune_epochs={"flowers128": 1, "facemask256": 1},
    caps={"train": 40, "val": 10, "test": 10},
)


# -- helpers ----------------------------------------------------------------------------------


def assets_root() -> Path:
    """``$TLOPS_ASSETS``, else ``<repo>/../shared/assets``."""
    return Path(os.environ.get("TLOPS_ASSETS") or ROOT.parent / "shared" / "assets").resolve()


def missing(*paths: Path) -> Json | None:
    """``{"skipped": ...}`` naming the first absent asset, else None."""
    for path in paths:
        if not path.exists():
            return {"skipped": f"{path} not found (set TLOPS_ASSETS to the shared assets)"}
    return None


def rounded(value: float, digits: int = 3) -> float:
    """A float for the JSON report."""
    return round(float(value), digits)


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def cap_manifest(info: ManifestInfo, caps: dict[str, int] | None) -> ManifestInfo:
    """Keep at most ``caps[split]`` images per class and split (the rest get no split)."""
    if not caps:
        return info
    frame = pd.read_parquet(info.manifest_path).sort_values("path").reset_index(drop=True)
    rank = frame.groupby(["split", "label"]).cumcount()
    limit = frame["split"].map(caps)
    frame.loc[limit.notna() & (rank >= limit), "split"] = ""
    frame.to_parquet(info.manifest_path, index=False)
    per_split = {str(k): int(v) for k, v in frame["split"].value_counts().items() if k}
    return info.model_copy(update={"digest": manifest_digest(frame), "per_split": per_split})


def split_folder(
    folder: Path, split: SplitConfig, out_dir: Path, caps: dict[str, int] | None
) -> ManifestInfo:
    """The manifest of a folder without split folders: stratified by sha256, optionally capped."""
    return cap_manifest(build_manifest(folder, split, out_dir), caps)


def merge(first: SplitData, second: SplitData) -> SplitData:
    """One split made of two (same class list)."""
    return SplitData(
        paths=first.paths + second.paths,
        labels=np.concatenate([first.labels, second.labels]).astype(np.int32),
        classes=first.classes,
        relpaths=first.relpaths + second.relpaths,
    )


def counts(data: SplitData) -> dict[str, int]:
    """Images per class of a split."""
    values = np.bincount(data.labels, minlength=len(data.classes))
    return {c: int(n) for c, n in zip(data.classes, values, strict=True)}


def build(size: int, num_classes: int, weights: Path) -> Any:
    """The tlops classifier on MobileNetV2 (alpha 1.0, the assets' ImageNet weights)."""
    from tlops.config import AugmentConfig, HeadConfig
    from tlops.model.classifier import build_base, build_classifier

    spec = get_spec(BACKBONE)
    base = build_base(spec, size, str(weights), 1.0)
    return build_classifier(base, spec, num_classes, HeadConfig(), AugmentConfig(), size, 0)


def run_config(size: int, batch: int, frozen: int, fine_tune: int, weights: Path) -> RunConfig:
    """A fine_tune run config on MobileNetV2 with the assets' weights, no augmentation."""
    return RunConfig.model_validate(
        {
            "name": "bench",
            "data": {"image_size": size},
            "backbone": {"name": BACKBONE, "weights": str(weights), "alpha": 1.0},
            "train": {
                "strategy": "fine_tune",
                "frozen": {"epochs": frozen, "learning_rate": 1e-3},
                "fine_tune": {"epochs": fine_tune, "learning_rate": 1e-4},
                "batch_size": batch,
                "seed": 0,
            },
        }
    )


def epoch_timer() -> Any:
    """A Keras callback that records the wall seconds of every epoch in ``.seconds``."""
    import keras

    class EpochTimer(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._start = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.seconds.append(rounded(time.perf_counter() - self._start, 2))

    return EpochTimer()


def accuracies(history: dict[str, list[float]]) -> Json:
    """Final and best validation accuracy of a Keras history."""
    values = [float(v) for v in history.get("val_accuracy", [])]
    if not values:
        return {"val_accuracy_final": None, "val_accuracy_best": None}
    return {
        "val_accuracy_final": rounded(values[-1], 4),
        "val_accuracy_best": rounded(max(values), 4),
        "best_epoch": int(np.argmax(values)) + 1,
    }


# -- 1. feature cache -------------------------------------------------------------------------


def feature_cache(settings: Settings, assets: Path) -> Json:
    """Frozen-phase head training: cached features + head fit versus plain frozen-base fit."""
    weights, folder = assets / WEIGHTS_FILE, assets / FLOWERS
    if skipped := missing(weights, folder):
        return skipped
    section_start = time.perf_counter()
    import keras

    from tlops.model.classifier import freeze_base
    from tlops.model.training import _compile
    from tlops.model.views import ViewPlan, cached_store

    size, batch, epochs = settings.cache_size, settings.batch_size, settings.cache_epochs
    # test_fraction must be > 0: its ~1% joins train, giving a stratified 80/20 train/val
    split = SplitConfig(val_fraction=0.2, test_fraction=0.01, seed=0)
    cfg = run_config(size, batch, epochs, 0, weights)
    with tempfile.TemporaryDirectory() as tmp:
        info = split_folder(folder, split, Path(tmp) / "manifest", settings.caps)
        root = Path(folder)
        train = merge(
            read_split(info.manifest_path, root, "train"),
            read_split(info.manifest_path, root, "test"),
        )
        val = read_split(info.manifest_path, root, "val")
        keras.utils.set_random_seed(0)
        clf = build(size, len(train.classes), weights)
        freeze_base(clf)
        initial = [w.copy() for w in clf.head_model.get_weights()]
        k = len(train.classes)
        y_train = encode_labels(train.labels, k, clf.binary)
        y_val = encode_labels(val.labels, k, clf.binary)

        # (a) features once, then the head alone on them
        store_dir = Path(tmp) / "features"
        plan = ViewPlan(1, cfg.train.augment, 0, size, batch, clf.binary)
        start = time.perf_counter()
        store, hit = cached_store(clf.feature_model, train, val, plan, store_dir)
        train_x, val_x = store.load()
        features = {
            "train": np.asarray(train_x[0], np.float32),
            "val": np.asarray(val_x, np.float32),
        }
        extracted = time.perf_counter()
        _compile(clf.head_model, cfg, cfg.train.frozen.learning_rate, clf.binary)
        timer_a = epoch_timer()
        hist_a = clf.head_model.fit(
            features["train"], y_train, validation_data=(features["val"], y_val),
            batch_size=batch, epochs=epochs, shuffle=True, callbacks=[timer_a], verbose=2,
        )  # fmt: skip
        head_done = time.perf_counter()
        _, hit_again = cached_store(clf.feature_model, train, val, plan, store_dir)
        reload_s = time.perf_counter() - head_done

        # (b) the same head from the same start, on the full model over decoded images
        clf.head_model.set_weights(initial)
        keras.utils.set_random_seed(0)
        _compile(clf.model, cfg, cfg.train.frozen.learning_rate, clf.binary)
        timer_b = epoch_timer()
        start_b = time.perf_counter()
        train_ds = make_dataset(train, size, batch, binary=clf.binary, shuffle=True, seed=0)
        val_ds = make_dataset(val, size, batch, binary=clf.binary, shuffle=False, seed=0)
        hist_b = clf.model.fit(
            train_ds, validation_data=val_ds, epochs=epochs, callbacks=[timer_b], verbose=2
        )
        plain_s = time.perf_counter() - start_b

    extract_s, head_s = extracted - start, head_done - extracted
    cached_total = extract_s + head_s
    acc_a, acc_b = accuracies(hist_a.history), accuracies(hist_b.history)
    gap = abs(float(acc_a["val_accuracy_best"]) - float(acc_b["val_accuracy_best"]))
    gap_final = abs(float(acc_a["val_accuracy_final"]) - float(acc_b["val_accuracy_final"]))
    speedup = plain_s / cached_total
    return {
        "config": {
            "dataset": "flowers128",
            "backbone": f"{BACKBONE} alpha 1.0, {WEIGHTS_FILE.name}",
            "image_size": size,
            "batch_size": batch,
            "epochs": epochs,
            "split": "stratified by sha256: val 20%, train 80% (seed 0)",
            "train_images": len(train),
            "val_images": len(val),
            "head": "dropout 0.2 + softmax, adam 1e-3, same initial weights in (a) and (b)",
        },
        "cached": {
            "feature_extraction_s": rounded(extract_s, 2),
            "feature_cache_hit": hit,
            "head_epochs_s": rounded(head_s, 2),
            "head_epoch_s": timer_a.seconds,
            "total_s": rounded(cached_total, 2),
            "rerun_feature_load_s": rounded(reload_s, 2),
            "rerun_cache_hit": hit_again,
            **acc_a,
        },
        "plain_frozen_fit": {
            "total_s": rounded(plain_s, 2),
            "epoch_s": timer_b.seconds,
            "note": "epoch 1 also decodes the images (make_dataset caches them in memory)",
            **acc_b,
        },
        "speedup": rounded(speedup, 2),
        "speedup_on_rerun_with_cache_hit": rounded(plain_s / (reload_s + head_s), 1),
        "val_accuracy_gap_points": rounded(gap * 100, 2),
        "val_accuracy_gap_points_final_epoch": rounded(gap_final * 100, 2),
        "goal": {
            "target": f">= 5x faster for {epochs} epochs, best val accuracy within 1 point",
            "speedup_met": speedup >= 5.0,
            "accuracy_met": gap <= 0.01,
        },
        "wall_s": rounded(time.perf_counter() - section_start, 1),
    }


# -- 2. input pipeline ------------------------------------------------------------------------


def iterate_epoch(dataset: Any) -> tuple[int, float]:
    """Images in one full pass over a batched dataset, and its seconds."""
    start = time.perf_counter()
    n = 0
    for images, _ in dataset:
        n += int(images.shape[0])
    return n, time.perf_counter() - start


def consumption(settings: Settings, weights: Path, sample: SplitData) -> Json:
    """Images/s of ``clf.model.train_on_batch`` with the base frozen and with its top unfrozen."""
    import keras

    from tlops.model.classifier import freeze_base, unfreeze_top
    from tlops.model.training import _compile

    size, batch = settings.cache_size, settings.batch_size
    cfg = run_config(size, batch, 1, 1, weights)
    keras.utils.set_random_seed(0)
    clf = build(size, len(sample.classes), weights)
    images = load_images(sample.paths[:batch], size)
    labels = encode_labels(sample.labels[:batch], len(sample.classes), clf.binary)
    out: Json = {}
    for phase in ("frozen", "fine_tune"):
        if phase == "frozen":
            freeze_base(clf)
        else:
            unfreeze_top(clf, get_spec(BACKBONE).fine_tune_from)
        _compile(clf.model, cfg, 1e-4, clf.binary)
        for _ in range(3):  # warm up: tracing and the first steps
            clf.model.train_on_batch(images, labels)
        start = time.perf_counter()
        for _ in range(settings.consume_steps):
            clf.model.train_on_batch(images, labels)
        seconds = time.perf_counter() - start
        out[phase] = {
            "steps": settings.consume_steps,
            "images_per_s": rounded(settings.consume_steps * batch / seconds, 1),
        }
    return out


def input_pipeline(settings: Settings, assets: Path) -> Json:
    """make_dataset throughput (decode epoch, cached epoch) against training-step consumption."""
    weights = assets / WEIGHTS_FILE
    datasets = {"flowers128": assets / FLOWERS, "facemask256": assets / FACEMASK}
    if skipped := missing(weights, datasets["flowers128"]):
        return skipped
    start = time.perf_counter()
    size, batch = settings.cache_size, settings.batch_size
    split = SplitConfig(val_fraction=0.2, test_fraction=0.01, seed=0)
    inputs: Json = {}
    sample: SplitData | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in datasets.items():
            if not folder.is_dir():
                inputs[name] = {"skipped": f"{folder} not found"}
                continue
            info = split_folder(folder, split, Path(tmp) / name, settings.caps)
            train = read_split(info.manifest_path, folder, "train")
            sample = sample or train
            binary = len(train.classes) == 2
            ds = make_dataset(train, size, batch, binary=binary, shuffle=True, seed=0)
            n1, s1 = iterate_epoch(ds)
            n2, s2 = iterate_epoch(ds)
            inputs[name] = {
                "images": n1,
                "decode_epoch_s": rounded(s1, 2),
                "decode_epoch_images_per_s": rounded(n1 / s1, 1),
                "cached_epoch_s": rounded(s2, 2),
                "cached_epoch_images_per_s": rounded(n2 / s2, 1),
            }
    assert sample is not None
    consumed = consumption(settings, weights, sample)
    fastest = max(v["images_per_s"] for v in consumed.values())
    ratios: Json = {}
    for name, result in inputs.items():
        if "skipped" in result:
            continue
        ratios[name] = {
            f"{epoch}_vs_{phase}": rounded(result[f"{epoch}_epoch_images_per_s"] / rate, 2)
            for epoch in ("decode", "cached")
            for phase, rate in ((p, v["images_per_s"]) for p, v in consumed.items())
        }
    decode_ok = all(
        r["decode_epoch_images_per_s"] >= 2 * fastest for r in inputs.values() if "skipped" not in r
    )
    return {
        "config": {
            "image_size": size,
            "batch_size": batch,
            "split": "train part of a stratified 80/20 split",
            "pipeline": "tlops.data.inputs.make_dataset(shuffle=True): Pillow decode in tf.data "
            "map "
            "(AUTOTUNE), in-memory cache, shuffle, batch, prefetch; iterated in Python",
            "consumer": f"{BACKBONE} alpha 1.0 classifier, train_on_batch on one in-memory batch "
            "of real images (5-class head); frozen = base frozen, fine_tune = top unfrozen "
            f"from {get_spec(BACKBONE).fine_tune_from}, BatchNorm frozen",
            "caveat": "input and consumption measured separately; in a real fit they share "
            "the same CPU cores",
        },
        "input": inputs,
        "consumption": consumed,
        "ratio_input_over_consumption": ratios,
        "goal": {
            "target": "input >= 2x consumption (decode epoch vs the faster, frozen consumer)",
            "met": decode_ok,
        },
        "wall_s": rounded(time.perf_counter() - start, 1),
    }


# -- 3. end-to-end overhead -------------------------------------------------------------------

_LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \| \w+\s*\| (.*)$")
_EVENTS = (
    (re.compile(r"prefect - Starting temporary server"), "prefect server starting"),
    (re.compile(r"Beginning flow run"), "flow started"),
    (re.compile(r"Task run '(.+)-\w+' - Finished in state"), "task finished: {0}"),
    (re.compile(r"Flow run '.+' - Finished in state"), "flow finished"),
    (re.compile(r"prefect - Stopping temporary server"), "prefect server stopping"),
)


def timeline(stderr: str, started: datetime) -> list[Json]:
    """Milestones in Prefect's log: seconds since launch and since the milestone before."""
    events: list[Json] = []
    previous = 0.0
    for line in stderr.splitlines():
        match = _LOG_LINE.match(line.strip())
        if not match:
            continue
        clock = datetime.strptime(match.group(1), "%H:%M:%S.%f").time()
        moment = datetime.combine(started.date(), clock)
        if moment < started - timedelta(hours=12):  # past midnight
            moment += timedelta(days=1)
        for pattern, label in _EVENTS:
            found = pattern.search(match.group(2))
            if found:
                seconds = (moment - started).total_seconds()
                events.append(
                    {
                        "t_s": rounded(seconds, 2),
                        "dt_s": rounded(seconds - previous, 2),
                        "event": label.format(*found.groups()),
                    }
                )
                previous = seconds
                break
    return events


def timed_command(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of a command (run in the repo)."""
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def import_times(quick: bool) -> Json:
    """Wall seconds of a fresh interpreter importing each heavy package (page cache warm)."""
    python = sys.executable
    env = dict(os.environ)
    modules = ["tensorflow", "flows.train"] if quick else [
        "tensorflow", "keras", "prefect", "mlflow", "great_expectations", "dvc.repo", "flows.train"
    ]  # fmt: skip
    out: Json = {"python -c pass": rounded(timed_command([python, "-c", "pass"], env), 2)}
    for module in modules:
        out[f"import {module}"] = rounded(timed_command([python, "-c", f"import {module}"], env), 2)
    tlops = str(Path(python).with_name("tlops"))
    out["tlops --help"] = rounded(timed_command([tlops, "--help"], env), 2)
    return out


def one_cli_run(env: dict[str, str], home: Path, epochs: int) -> Json:
    """Run ``tlops train configs/demo.yaml`` once; wall, fit seconds from training.json."""
    before = set(home.glob("runs/*/training.json"))
    command = [
        str(Path(sys.executable).with_name("tlops")), "train", "configs/demo.yaml",
        "--set", f"train.fine_tune.epochs={epochs}",
    ]  # fmt: skip
    started = datetime.now()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {
            "command": " ".join(command[1:]),
            "returncode": done.returncode,
            "wall_s": rounded(wall, 2),
            "stderr_tail": done.stderr[-2000:],
        }
    found = sorted(set(home.glob("runs/*/training.json")) - before)
    record = json.loads(found[-1].read_text(encoding="utf-8")) if found else {"phases": []}
    fit = sum(float(p["seconds"]) for p in record["phases"])
    summary = [line for line in done.stdout.splitlines() if line.startswith("- ")]
    events = timeline(done.stderr, started)
    train_task = next((e["dt_s"] for e in events if e["event"] == "task finished: train"), None)
    return {
        "returncode": 0,
        "wall_s": rounded(wall, 2),
        "training_json": str(found[-1].relative_to(home)) if found else None,
        "phase_seconds": {p["name"]: p["seconds"] for p in record["phases"]},
        "fit_s": rounded(fit, 2),
        "overhead_s": rounded(wall - fit, 2),
        "train_task_minus_fit_s": rounded(train_task - fit, 2) if train_task else None,
        "summary": summary,
        "timeline": events,
        "exit_after_last_event_s": rounded(wall - events[-1]["t_s"], 2) if events else None,
    }


def end_to_end_overhead(settings: Settings, assets: Path) -> Json:
    """Wall time of the real CLI minus its fit seconds; import times of its packages."""
    start = time.perf_counter()
    if not (ROOT / "data").is_dir():
        subprocess.run(
            [str(Path(sys.executable).with_name("tlops")), "sample", "--out", "data",
             "--if-missing"], cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
    runs: list[Json] = []
    stray = ROOT / "mlruns"
    stray_before = stray.exists()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        env = {
            **os.environ,
            "TLOPS_HOME": str(home),
            "TLOPS_CACHE": str(Path(tmp) / "cache"),
            "PREFECT_HOME": str(Path(tmp) / "prefect"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
        }
        env.pop("GITHUB_STEP_SUMMARY", None)
        for index in range(settings.e2e_runs):
            result = one_cli_run(env, home, settings.e2e_epochs)
            result["state"] = (
                "cold: fresh TLOPS_CACHE, PREFECT_HOME, MLflow db"
                if index == 0
                else "warm: same folders, data cache and databases as the run before"
            )
            runs.append(result)
    imports = import_times(settings.mode == "quick")
    best = min((r["overhead_s"] for r in runs if r.get("returncode") == 0), default=None)
    return {
        "config": {
            "command": "tlops train configs/demo.yaml --set "
            f"train.fine_tune.epochs={settings.e2e_epochs}",
            "prefect_api": "external" if os.environ.get("PREFECT_API_URL") else "ephemeral",
            "env": "temporary TLOPS_HOME, TLOPS_CACHE, PREFECT_HOME; "
            "MLFLOW_TRACKING_URI=sqlite:///<tmp>/mlflow.db",
        },
        "runs": runs,
        "repo_left_clean": stray_before or not stray.exists(),
        "import_s": imports,
        "overhead_s_best": best,
        "goal": {"target": "fixed overhead < 20 s", "met": best is not None and best < 20},
        "wall_s": rounded(time.perf_counter() - start, 1),
    }


# -- 4. accuracy ------------------------------------------------------------------------------


def extract(model: Any, paths: list[str], size: int, chunk: int = 256) -> np.ndarray:
    """Pooled features of files, decoded and run in chunks (bounded memory)."""
    parts = [
        np.asarray(model.predict(load_images(paths[i : i + chunk], size), verbose=0, batch_size=32))
        for i in range(0, len(paths), chunk)
    ]
    return np.concatenate(parts).astype(np.float32)


def probe(size: int, weights: Path, splits: dict[str, SplitData]) -> Json:
    """Logistic regression on frozen, average-pooled MobileNetV2 features."""
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    clf = build(size, len(splits["train"].classes), weights)
    feats = {name: extract(clf.feature_model, data.paths, size) for name, data in splits.items()}
    extracted = time.perf_counter()
    out: Json = {}
    for fit_on in (("train",), ("train", "val")):
        x = np.concatenate([feats[s] for s in fit_on])
        y = np.concatenate([splits[s].labels for s in fit_on])
        model = LogisticRegression(max_iter=1000).fit(x, y)
        accuracy = float((model.predict(feats["test"]) == splits["test"].labels).mean())
        out["+".join(fit_on)] = rounded(accuracy, 4)
    return {
        "test_accuracy": out,
        "feature_s": rounded(extracted - start, 1),
        "fit_s": rounded(time.perf_counter() - extracted, 1),
    }


Goal = Callable[[float, float], tuple[bool, str]]  # (tlops accuracy, best probe) -> met, text


def accuracy_one(settings: Settings, name: str, folder: Path, weights: Path, goal: Goal) -> Json:
    """Probe and tlops fine_tune training on one dataset, same held-out 20% test split."""
    from tlops.jobs.train import evaluate_model, train_model

    start = time.perf_counter()
    size = settings.accuracy_size
    split = SplitConfig(val_fraction=0.15, test_fraction=0.2, seed=0)
    cfg = run_config(
        size, settings.batch_size, settings.frozen_epochs, settings.fine_tune_epochs[name], weights
    )
    md5, nfiles, nbytes = dir_md5(folder)
    data = DataVersion(
        path=str(folder), md5=md5, nfiles=nfiles, size=nbytes, rev="bench",
        remote_url=None, dirty=False, dvc_file="bench",
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        info = split_folder(folder, split, Path(tmp) / "manifest", settings.caps)
        splits = {s: read_split(info.manifest_path, folder, s) for s in ("train", "val", "test")}
        probed = probe(size, weights, splits)
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        with environ(TLOPS_HOME=str(Path(tmp) / "home"), TLOPS_CACHE=str(Path(tmp) / "cache")):
            began = time.perf_counter()
            trained = train_model(cfg, data, info, run_dir, None)
            train_s = time.perf_counter() - began
            evaluated = evaluate_model(cfg, trained, data, info, run_dir)
            eval_s = time.perf_counter() - began - train_s
    test_acc = float(evaluated.metrics["test_accuracy"])
    probe_best = max(probed["test_accuracy"].values())
    met, target = goal(test_acc, probe_best)
    return {
        "config": {
            "image_size": size,
            "split": "stratified by sha256 (seed 0): train 65%, val 15%, test 20%",
            "images": {s: len(d) for s, d in splits.items()},
            "test_per_class": counts(splits["test"]),
            "tlops": cfg.train.model_dump(
                mode="json", include={"strategy", "frozen", "fine_tune", "batch_size", "seed"}
            )
            | {"fine_tune_from": get_spec(BACKBONE).fine_tune_from, "augment": "off"},
            "probe": "sklearn LogisticRegression(max_iter=1000) on raw pooled features, "
            "fit on train and on train+val",
        },
        "tlops": {
            "test_accuracy": rounded(test_acc, 4),
            "test_macro_f1": rounded(evaluated.metrics.get("test_macro_f1", float("nan")), 4),
            "kept_phase": trained.kept_phase,
            "best_val_accuracy": {
                k: (rounded(v, 4) if v is not None else None) for k, v in trained.phase_best.items()
            },
            "phase_epochs": trained.phase_epochs,
            "images_per_s": trained.images_per_s,
            "feature_cache": trained.feature_cache,
            "train_s": rounded(train_s, 1),
            "evaluate_s": rounded(eval_s, 1),
        },
        "probe": probed,
        "tlops_minus_best_probe_points": rounded((test_acc - probe_best) * 100, 2),
        "goal": {"target": target, "met": met},
        "wall_s": rounded(time.perf_counter() - start, 1),
    }


def accuracy(settings: Settings, assets: Path) -> Json:
    """tlops fine_tune versus the frozen-feature probe on flowers128 and facemask256."""
    weights = assets / WEIGHTS_FILE
    if skipped := missing(weights):
        return skipped
    start = time.perf_counter()
    goals: dict[str, tuple[Path, Goal]] = {
        "flowers128": (
            assets / FLOWERS,
            lambda acc, best: (acc >= best + 0.05, "tlops test accuracy >= best probe + 5 points"),
        ),
        "facemask256": (
            assets / FACEMASK,
            lambda acc, best: (acc >= 0.99, "tlops test accuracy >= 0.99"),
        ),
    }
    out: Json = {}
    for name, (folder, goal) in goals.items():
        out[name] = missing(folder) or guarded(
            functools.partial(accuracy_one, settings, name, folder, weights, goal)
        )
    out["wall_s"] = rounded(time.perf_counter() - start, 1)
    return out


# -- main -------------------------------------------------------------------------------------


def guarded(action: Callable[[], Json]) -> Json:
    """Run a section; an exception becomes ``{"error": ...}`` so the others still report."""
    try:
        return action()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(exc).__name__}: {exc}"}


def versions() -> Json:
    """Versions of the frameworks that the numbers depend on."""
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}


def main(argv: list[str] | None = None) -> None:
    """Run the chosen sections and print one JSON document (training logs go to stderr)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and short")
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only this section (repeatable)"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    args = parser.parse_args(argv)
    for key, value in (("GX_ANALYTICS_ENABLED", "false"), ("DVC_NO_ANALYTICS", "1"),
                       ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
                       ("TF_CPP_MIN_LOG_LEVEL", "2")):  # fmt: skip
        os.environ.setdefault(key, value)
    settings = QUICK if args.quick else FULL
    chosen = args.only or list(SECTIONS)
    assets = assets_root()
    runners: dict[str, Callable[[Settings, Path], Json]] = {
        "feature_cache": feature_cache,
        "input_pipeline": input_pipeline,
        "end_to_end_overhead": end_to_end_overhead,
        "accuracy": accuracy,
    }
    start = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    results: Json = {}
    with contextlib.redirect_stdout(sys.stderr):  # Keras' fit logs print to stdout
        framework = versions()
        for name in SECTIONS:
            if name in chosen:
                results[name] = guarded(functools.partial(runners[name], settings, assets))
    document = {
        "benchmark": "train",
        "mode": settings.mode,
        "settings": asdict(settings),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        **framework,
        "assets": str(assets),
        "note": "wall-clock seconds on a CPU shared with other processes; see load_avg",
        "load_avg": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "sections": results,
        "total_s": rounded(time.perf_counter() - start, 1),
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
