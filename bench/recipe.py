"""Benchmark: `tlops train` against the TF transfer-learning tutorial's recipe, one JSON document.

Per dataset (``flowers128`` at 128 px, ``facemask256`` at 160 px, from ``$TLOPS_ASSETS``), in one
run on one stratified split (made by tlops' own split by sha256: val 20 %, test 20 %; exact
duplicate files dropped first, then the later file of each near-duplicate pair, since tlops'
contract refuses both):

- ``recipe``: the tutorial's recipe as a plain Keras script (tf.data from the files, resize,
  RandomFlip("horizontal") + RandomRotation(0.2), MobileNetV2 frozen, GAP, dropout 0.2, Adam
  1e-4 for 10 epochs, then ``base.layers[100:]`` unfrozen at RMSprop 1e-5 for 10 more; the last
  epoch's model is scored);
- ``tlops``: the real ``tlops train`` CLI (a subprocess in a fresh git + DVC repository of the
  same split, its own Prefect server, a temporary SQLite MLflow store and cache) with only
  ``data`` and ``backbone`` set: every other setting is tlops' default;
- tlops runs twice, cold each time (fresh home, cache, Prefect home and MLflow store): once
  before the recipe and once after it, so that a change in the shared machine's load during
  the long recipe run weighs on both; ``tlops_wall_s`` is the mean of the two and
  ``tlops_runs`` lists each;
- both scored on the same test images (tlops' first run): accuracy, the difference with
  McNemar's exact p-value, wall time of each and their ratio.

``fine_tune_speed``: images per second of the fine-tuning phase of MobileNetV2 (160 px, the
default boundary) on the boundary cache against the whole model, measured in-process on the
same images and batches (second epoch of each, after the first decoded / built the cache).

Goals (issue 12): tlops' test accuracy at least the recipe's, or within its noise (McNemar
p > 0.05 and never more than 0.5 points below), in at most one fifth of its wall time on both
datasets; the boundary cache at least 4x the whole model's fine-tuning images per second.

``--quick`` is a smoke run (64 px, a few images per class, one epoch per phase); the goals are
not meaningful there. Run with ``make bench`` or ``.venv/bin/python bench/recipe.py [--quick]
[--only flowers128] [--out r.json]``. Wall-clock seconds on whatever shares the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_FILE = Path("weights") / "mobilenet_v2_1.0_224_no_top.h5"
DATASETS: dict[str, int] = {"flowers128": 128, "facemask256": 160}
GIT_ENV = {
    "GIT_AUTHOR_NAME": "tlops bench", "GIT_AUTHOR_EMAIL": "bench@tlops.invalid",
    "GIT_COMMITTER_NAME": "tlops bench", "GIT_COMMITTER_EMAIL": "bench@tlops.invalid",
}  # fmt: skip

Json = dict[str, Any]
PHASE_KEYS = (
    "name", "epochs", "seconds", "images_per_s", "path", "views", "cache", "cache_mb",
    "boundary", "best_value",
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """Sizes and epochs of one mode (full or ``--quick``)."""

    mode: str
    frozen_epochs: int
    fine_tune_epochs: int
    size: dict[str, int]
    per_class: int | None  # at most this many images per class (before the split)
    speed_images: int
    speed_size: int


FULL = Settings("full", 10, 10, DATASETS, None, 512, 160)
QUICK = Settings("quick", 1, 1, {k: 64 for k in DATASETS}, 25, 64, 64)


def assets_root() -> Path:
    """``$TLOPS_ASSETS``, else ``<repo>/../shared/assets``."""
    return Path(os.environ.get("TLOPS_ASSETS") or ROOT.parent / "shared" / "assets").resolve()


def rounded(value: float, digits: int = 3) -> float:
    """A float for the JSON report."""
    return round(float(value), digits)


# -- the split ------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    """SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lay_out(source: Path, data: Path, per_class: int | None) -> Json:
    """Copy ``source/<class>/*`` into ``data/{train,val,test}/<class>/`` by tlops' own split
    (stratified by sha256, val 20 %, test 20 %), dropping exact duplicates (first path kept)
    and the later split's file of each near-duplicate pair (:func:`near_copies`)."""
    from tlops.config import SplitConfig
    from tlops.data.split import assign_splits

    seen: set[str] = set()
    rows: list[tuple[str, str, str]] = []  # (relpath, label, sha256)
    dropped = 0
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.is_file())
        kept = 0
        for path in files:
            digest = sha256(path)
            if digest in seen:
                dropped += 1
                continue
            if per_class is not None and kept >= per_class:
                break
            seen.add(digest)
            rows.append((f"{folder.name}/{path.name}", folder.name, digest))
            kept += 1
    import pandas as pd

    split = SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=0)
    frame = pd.DataFrame(rows, columns=["path", "label", "sha256"])
    frame["split"] = assign_splits(frame, split)["split"]
    near = near_copies(source, frame)
    counts: dict[str, int] = {}
    for rel, name in zip(frame["path"], frame["split"], strict=True):
        if rel in near:
            continue
        target = data / name / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target)
        counts[name] = counts.get(name, 0) + 1
    return {
        "images": len(rows) - len(near), "duplicates_dropped": dropped,
        "near_duplicates_dropped": len(near), "per_split": counts,
    }  # fmt: skip


def near_copies(source: Path, frame: Any) -> set[str]:
    """The later split's file of every near-duplicate pair across splits (tlops' contract
    refuses them, at its default distance): dropped, as exact duplicates are. The hashes are
    the ones tlops' own manifest scan gives the files (JPEGs hashed from a draft decode)."""
    from tlops.config import ContractConfig
    from tlops.data.manifest import scan
    from tlops.data.near_duplicates import near_pairs

    distance = ContractConfig().near_duplicate_distance
    if distance is None:
        return set()
    scanned, _ = scan(source)
    hashes = dict(zip(scanned["path"], scanned["phash"], strict=True))
    frame = frame.assign(phash=[hashes[rel] for rel in frame["path"]])
    return set(near_pairs(frame, distance, ("train", "val", "test"))["path"])


def split_files(data: Path, name: str) -> tuple[list[str], list[int], list[str]]:
    """Paths, integer labels and class names of one split folder."""
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    paths, labels = [], []
    for index, label in enumerate(classes):
        for path in sorted((data / name / label).glob("*")):
            paths.append(str(path))
            labels.append(index)
    return paths, labels, classes


# -- the tutorial's recipe ------------------------------------------------------------------


def recipe(data: Path, size: int, weights: Path, settings: Settings) -> Json:
    """The TF transfer-learning tutorial as a plain Keras script; test predictions by path."""
    import keras
    import tensorflow as tf

    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    classes = split_files(data, "train")[2]
    binary = len(classes) == 2

    def dataset(name: str, shuffle: bool) -> Any:
        paths, labels, _ = split_files(data, name)

        def load(path: Any, label: Any) -> tuple[Any, Any]:
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            return tf.image.resize(image, (size, size)), label

        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        if shuffle:
            ds = ds.shuffle(len(paths), seed=0, reshuffle_each_iteration=True)
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(32).prefetch(2)

    train, val = dataset("train", True), dataset("val", False)
    augment = keras.Sequential(
        [keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.2)]
    )
    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, weights=str(weights)
    )
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(augment(inputs))
    x = keras.layers.GlobalAveragePooling2D()(base(x, training=False))
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(1 if binary else len(classes))(x)
    model = keras.Model(inputs, outputs)
    loss: Any = (
        keras.losses.BinaryCrossentropy(from_logits=True)
        if binary
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    accuracy = keras.metrics.BinaryAccuracy(threshold=0.0) if binary else "accuracy"
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=[accuracy])
    first = model.fit(train, validation_data=val, epochs=settings.frozen_epochs, verbose=2)
    frozen_s = time.perf_counter() - start
    base.trainable = True
    for layer in base.layers[:100]:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.RMSprop(1e-5), loss=loss, metrics=[accuracy])
    total = settings.frozen_epochs + settings.fine_tune_epochs
    model.fit(train, validation_data=val, epochs=total, initial_epoch=len(first.epoch), verbose=2)
    paths, labels, _ = split_files(data, "test")
    logits = np.asarray(model.predict(dataset("test", False), verbose=0))
    predicted = (logits[:, 0] > 0).astype(int) if binary else logits.argmax(axis=1)
    wall = time.perf_counter() - start
    return {
        "wall_s": rounded(wall, 1),
        "frozen_phase_s": rounded(frozen_s, 1),
        "correct": {
            str(Path(p).relative_to(data)): bool(int(y) == int(q))
            for p, y, q in zip(paths, labels, predicted, strict=True)
        },
    }


# -- tlops train ----------------------------------------------------------------------------


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Run a setup command; raise with its output when it fails."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout}\n{done.stderr}")


def prepare_repo(repo: Path, name: str, size: int, weights: Path, settings: Settings) -> None:
    """Make ``repo`` (holding ``data/``) a git + DVC repository with a pushed ``data.dvc`` and a
    committed ``tlops.yaml`` that sets only data and backbone (and, in quick mode, epochs)."""
    env = {**os.environ, **GIT_ENV, "DVC_NO_ANALYTICS": "1"}
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (
        ["git", "init", "-q", "-b", "main"], [*dvc, "init", "-q"],
        [*dvc, "remote", "add", "-d", "local", str(repo.parent / "remote")],
        [*dvc, "add", "-q", "data"], [*dvc, "push", "-q"],
    ):  # fmt: skip
        run(cmd, repo, env)
    config: Json = {
        "name": name,
        "data": {"repo": ".", "dvc_file": "data.dvc", "image_size": size},
        "backbone": {"name": "mobilenet_v2", "weights": str(weights)},
    }
    if settings.mode == "quick":
        config["train"] = {
            "frozen": {"epochs": settings.frozen_epochs},
            "fine_tune": {"epochs": settings.fine_tune_epochs},
        }
        config["contract"] = {"min_images_per_class": {"train": 2, "val": 1, "test": 1}}
    (repo / "tlops.yaml").write_text(json.dumps(config, indent=1), encoding="utf-8")
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "data"], repo, env)


def tlops_train(repo: Path, state: Path) -> Json:
    """One cold ``tlops train tlops.yaml`` in ``repo``: its own empty tlops home, feature
    cache, Prefect home and MLflow store under ``state``, as on a machine that never ran it."""
    env = {
        **os.environ, **GIT_ENV, "DVC_NO_ANALYTICS": "1",
        "TLOPS_HOME": str(state / "home"), "TLOPS_CACHE": str(state / "cache"),
        "PREFECT_HOME": str(state / "prefect"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
    }  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    env.pop("GITHUB_STEP_SUMMARY", None)
    state.mkdir(parents=True)
    tlops = str(Path(sys.executable).with_name("tlops"))
    start = time.perf_counter()
    done = subprocess.run(
        [tlops, "train", "tlops.yaml"], cwd=repo, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    found = re.search(r"MLflow run `([0-9a-f]+)`", done.stdout)
    if done.returncode not in (0, 4) or not found:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"tlops train exited {done.returncode}: {tail}")
    # the only run of this fresh TLOPS_HOME (its folder is named by the flow run)
    (run_dir,) = {p.parent for p in (state / "home" / "runs").glob("*/predictions.json")}
    rows = json.loads((run_dir / "predictions.json").read_text(encoding="utf-8"))
    training = json.loads((run_dir / "training.json").read_text(encoding="utf-8"))
    summary = [line for line in done.stdout.splitlines() if line.startswith("- ")]
    return {
        "wall_s": rounded(wall, 1),
        "exit_code": done.returncode,
        "kept_phase": training["kept_phase"],
        "phases": [{k: p[k] for k in PHASE_KEYS} for p in training["phases"]],
        "summary": summary,
        "correct": {str(r["path"]): r["true"] == r["predicted"] for r in rows},
    }


# -- comparison -----------------------------------------------------------------------------


def compare(ours: Json, theirs: Json) -> Json:
    """Accuracy of each on the same test images, the difference and McNemar's exact p."""
    from tlops.rules import mcnemar

    keys = sorted(theirs["correct"])
    missing = [k for k in keys if k not in ours["correct"]]
    if missing:
        raise RuntimeError(f"tlops scored no prediction for {len(missing)} test images")
    a = [ours["correct"][k] for k in keys]
    b = [theirs["correct"][k] for k in keys]
    only_ours, only_theirs, p = mcnemar(a, b)
    acc_a, acc_b = float(np.mean(a)), float(np.mean(b))
    ratio = ours["wall_s"] / theirs["wall_s"]
    diff = acc_a - acc_b
    accuracy_ok = diff >= 0 or (p > 0.05 and diff >= -0.005)
    return {
        "test_images": len(keys),
        "tlops_test_accuracy": rounded(acc_a, 4),
        "recipe_test_accuracy": rounded(acc_b, 4),
        "difference_points": rounded(100 * diff, 2),
        "only_tlops_right": only_ours,
        "only_recipe_right": only_theirs,
        "mcnemar_p": rounded(p, 4),
        "tlops_wall_s": ours["wall_s"],
        "recipe_wall_s": theirs["wall_s"],
        "wall_ratio_tlops_over_recipe": rounded(ratio, 3),
        "goal": {
            "accuracy": "at least the recipe's, or p > 0.05 and at most 0.5 points below",
            "accuracy_met": accuracy_ok,
            "time": "at most 1/5 of the recipe's wall time",
            "time_met": ratio <= 0.2,
        },
    }


def one_dataset(name: str, settings: Settings, assets: Path) -> Json:
    """Lay out the split; run tlops, the recipe, then tlops again (each cold), so that drift
    in the shared machine's load during the long recipe run weighs on both sides; compare."""
    source, weights = assets / "datasets" / name, assets / WEIGHTS_FILE
    for path in (source, weights):
        if not path.exists():
            return {"skipped": f"{path} not found (set TLOPS_ASSETS to the shared assets)"}
    size = settings.size[name]
    with tempfile.TemporaryDirectory(prefix=f"tlops-recipe-{name}-") as tmp:
        repo = Path(tmp) / "repo"
        layout = lay_out(source, repo / "data", settings.per_class)
        prepare_repo(repo, name, size, weights, settings)
        first = tlops_train(repo, Path(tmp) / "before")
        theirs = recipe(repo / "data", size, weights, settings)
        second = tlops_train(repo, Path(tmp) / "after")
    walls = [first["wall_s"], second["wall_s"]]
    ours = {**first, "wall_s": rounded(sum(walls) / 2, 1)}
    result = {"image_size": size, "split": layout, **compare(ours, theirs)}
    result["tlops_runs"] = [
        {"when": when, "wall_s": run["wall_s"], "test_accuracy": accuracy_of(run, theirs)}
        for when, run in (("before the recipe", first), ("after the recipe", second))
    ]
    result["tlops"] = {k: v for k, v in first.items() if k != "correct"}
    result["recipe"] = {k: v for k, v in theirs.items() if k != "correct"}
    return result


def accuracy_of(ours: Json, theirs: Json) -> float:
    """Test accuracy of one tlops run on the recipe's test images."""
    return rounded(float(np.mean([ours["correct"][k] for k in theirs["correct"]])), 4)


# -- fine-tuning speed ------------------------------------------------------------------------


def fine_tune_speed(settings: Settings, assets: Path) -> Json:
    """Fine-tuning images/s of MobileNetV2 on the boundary cache against the whole model."""
    import keras

    from tlops.backbones import get_spec
    from tlops.config import AugmentConfig, HeadConfig, RunConfig
    from tlops.data.inputs import SplitData, encode_labels, make_dataset
    from tlops.model.boundary import find_cut, split_classifier
    from tlops.model.classifier import _start_index, build_base, build_classifier, unfreeze_top
    from tlops.model.training import _compile
    from tlops.model.views import ViewCycle, ViewPlan, build_store, view_epochs

    source, weights = assets / "datasets" / "facemask256", assets / WEIGHTS_FILE
    for path in (source, weights):
        if not path.exists():
            return {"skipped": f"{path} not found (set TLOPS_ASSETS to the shared assets)"}
    size, n, batch = settings.speed_size, settings.speed_images, 32
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    paths, labels = [], []
    for index, label in enumerate(classes):
        files = sorted((source / label).glob("*"))[: n // len(classes)]
        paths += [str(p) for p in files]
        labels += [index] * len(files)
    data = SplitData(paths, np.array(labels, dtype=np.int32), classes, paths)
    spec = get_spec("mobilenet_v2")
    keras.utils.set_random_seed(0)
    base = build_base(spec, size, str(weights), 1.0)
    clf = build_classifier(base, spec, len(classes), HeadConfig(), AugmentConfig(), size, 0)
    unfreeze_top(clf, spec.fine_tune_from)
    cfg = RunConfig.model_validate({"name": "speed", "train": {"batch_size": batch}})
    timings: Json = {}

    def timed_epochs(model: Any, train: Any, extra: list[Any]) -> list[float]:
        times: list[float] = []

        class Timer(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                times.append(time.perf_counter() - self.start)

        _compile(model, cfg, 1e-4, clf.binary)
        model.fit(train, epochs=2, callbacks=[*extra, Timer()], verbose=0)
        return times

    images = make_dataset(data, size, batch, binary=clf.binary, shuffle=True, seed=0)
    whole = timed_epochs(clf.model, images, [])
    # the whole model as tlops runs it without the cache: its default augmentation runs live
    augmented = build_classifier(
        base, spec, len(classes), HeadConfig(), cfg.train.augment, size, 0
    ).model
    whole_augmented = timed_epochs(augmented, images, [])
    cut = find_cut(clf.base, _start_index(clf.base, spec.fine_tune_from))
    assert cut is not None
    halves = split_classifier(clf, cut)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        plan = ViewPlan(1, AugmentConfig(), 0, size, batch, clf.binary)
        store = build_store(halves.bottom, data, data, plan, Path(tmp) / "store")
        build_s = time.perf_counter() - start
        train_x, _ = store.load()
        cycle = ViewCycle(
            train_x, encode_labels(data.labels, len(classes), clf.binary), batch, 0, True
        )
        top = timed_epochs(halves.top, cycle, [view_epochs(cycle)])
        mb = store.nbytes() / 1e6
    whole_rate, top_rate = len(data) / whole[1], len(data) / top[1]
    timings.update(
        {
            "images": len(data), "image_size": size, "boundary": cut.layer,
            "whole_model_epoch_s": [rounded(t, 2) for t in whole],
            "whole_model_augmented_epoch_s": [rounded(t, 2) for t in whole_augmented],
            "whole_model_augmented_images_per_s": rounded(len(data) / whole_augmented[1], 1),
            "augmentation": cfg.train.augment.model_dump(),
            "boundary_cache_build_s": rounded(build_s, 2),
            "boundary_cache_mb": rounded(mb, 1),
            "boundary_epoch_s": [rounded(t, 2) for t in top],
            "whole_model_images_per_s": rounded(whole_rate, 1),
            "boundary_cache_images_per_s": rounded(top_rate, 1),
            "speedup": rounded(top_rate / whole_rate, 2),
            "speedup_vs_augmented": rounded(top_rate * whole_augmented[1] / len(data), 2),
            "goal": {"target": "boundary >= 4x whole model", "met": top_rate >= 4 * whole_rate},
        }
    )  # fmt: skip
    return timings


def guarded(section: Any) -> Json:
    """A section's result, or its error (one section's failure does not end the benchmark)."""
    try:
        return section()  # type: ignore[no-any-return]
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def main(argv: list[str] | None = None) -> None:
    """Run the chosen datasets (and the speed section); print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and short")
    parser.add_argument(
        "--only", action="append", choices=[*DATASETS, "fine_tune_speed"],
        help="run only this part (repeatable)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    args = parser.parse_args(argv)
    for key, value in (("GX_ANALYTICS_ENABLED", "false"), ("DVC_NO_ANALYTICS", "1"),
                       ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
                       ("TF_CPP_MIN_LOG_LEVEL", "2")):  # fmt: skip
        os.environ.setdefault(key, value)
    settings = QUICK if args.quick else FULL
    chosen = args.only or [*DATASETS, "fine_tune_speed"]
    assets = assets_root()
    start = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    results: Json = {}
    with contextlib.redirect_stdout(sys.stderr):  # Keras' fit logs print to stdout
        for name in DATASETS:
            if name in chosen:
                results[name] = guarded(lambda name=name: one_dataset(name, settings, assets))
        if "fine_tune_speed" in chosen:
            results["fine_tune_speed"] = guarded(lambda: fine_tune_speed(settings, assets))
    document = {
        "benchmark": "recipe",
        "mode": settings.mode,
        "settings": asdict(settings),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "assets": str(assets),
        "note": "wall-clock seconds on a CPU shared with other processes; see load_avg",
        "load_avg": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "results": results,
        "total_s": rounded(time.perf_counter() - start, 1),
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
