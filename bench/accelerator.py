"""Benchmark: the training path on whatever accelerator Keras sees, under any Keras backend.

Made for machines with a GPU but no TensorFlow (JAX or PyTorch only), where the design says the
GPU paths get checked: ``KERAS_BACKEND=jax .venv/bin/python bench/accelerator.py``. It needs
only keras, numpy, pandas, pyarrow, pydantic, pyyaml, Pillow, scikit-learn and matplotlib (no
MLflow, Prefect, DVC, GX or TensorFlow), and the shared assets (MobileNetV2 ImageNet weights,
flowers128), from ``$TLOPS_ASSETS`` (default ``<repo>/../shared/assets``).

For each variant (precision x XLA), it runs the real ``tlops.jobs.train.train_model`` and
``evaluate_model`` (fine_tune strategy: frozen phase on cached features, then the top of
MobileNetV2 unfrozen at a lower learning rate) on a stratified 65/15/20 split of flowers128,
and prints one JSON document: device, backend, per-phase images/s and seconds, kept phase,
test accuracy, latency. ``--quick`` is a smoke run (few images, one epoch per phase).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlops.adapters.dvc import dir_md5  # noqa: E402
from tlops.config import RunConfig, SplitConfig  # noqa: E402
from tlops.data.inputs import read_split  # noqa: E402
from tlops.data.version import DataVersion  # noqa: E402
from tlops.jobs.validate import build_manifest  # noqa: E402

WEIGHTS_FILE = Path("weights") / "mobilenet_v2_1.0_224_no_top.h5"
FLOWERS = Path("datasets") / "flowers128"
VARIANTS: dict[str, dict[str, Any]] = {
    "float32_xla": {"mixed_precision": "off", "jit_compile": True},
    "bfloat16_xla": {"mixed_precision": "bfloat16", "jit_compile": True},
    "float32_no_xla": {"mixed_precision": "off", "jit_compile": False},
}


def run_config(args: argparse.Namespace, weights: Path, variant: dict[str, Any]) -> RunConfig:
    """The fine_tune config of one variant."""
    return RunConfig.model_validate(
        {
            "name": "accelerator-bench",
            "data": {"image_size": args.size},
            "backbone": {"name": "mobilenet_v2", "weights": str(weights), "alpha": 1.0},
            "train": {
                "strategy": "fine_tune",
                "frozen": {"epochs": args.frozen_epochs, "learning_rate": 1e-3},
                "fine_tune": {"epochs": args.fine_tune_epochs, "learning_rate": 1e-4},
                "batch_size": args.batch_size,
                "seed": 0,
                **variant,
            },
            "evaluate": {"gallery_size": 0, "latency_repeats": 20},
        }
    )


def one_variant(
    name: str, args: argparse.Namespace, weights: Path, folder: Path, tmp: Path, info: Any
) -> dict[str, Any]:
    """Train and evaluate one variant in its own TLOPS_HOME / TLOPS_CACHE."""
    from tlops.jobs.train import evaluate_model, train_model

    cfg = run_config(args, weights, VARIANTS[name])
    md5, nfiles, nbytes = dir_md5(folder)
    data = DataVersion(
        path=str(folder), md5=md5, nfiles=nfiles, size=nbytes, rev="bench",
        remote_url=None, dirty=False, dvc_file="bench",
    )  # fmt: skip
    run_dir = tmp / name / "run"
    run_dir.mkdir(parents=True)
    os.environ["TLOPS_HOME"] = str(tmp / name / "home")
    os.environ["TLOPS_CACHE"] = str(tmp / name / "cache")
    start = time.perf_counter()
    trained = train_model(cfg, data, info, run_dir, None)
    train_s = time.perf_counter() - start
    evaluated = evaluate_model(cfg, trained, data, info, run_dir)
    record = json.loads((run_dir / "training.json").read_text(encoding="utf-8"))
    return {
        "config": {k: cfg.train.model_dump(mode="json")[k] for k in VARIANTS[name]},
        "device": trained.device,
        "phases": [
            {k: p[k] for k in ("name", "epochs", "seconds", "images_per_s", "used_feature_cache")}
            | {"best_val": p.get("best_value")}
            for p in record["phases"]
        ],
        "kept_phase": trained.kept_phase,
        "train_s": round(train_s, 1),
        "evaluate_s": round(time.perf_counter() - start - train_s, 1),
        "test_accuracy": round(float(evaluated.metrics["test_accuracy"]), 4),
        "test_macro_f1": round(float(evaluated.metrics.get("test_macro_f1", float("nan"))), 4),
        "latency": {k: v for k, v in evaluated.metrics.items() if "latency" in k},
    }


def main() -> None:
    """Parse arguments, run the variants, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1+1 epochs")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--frozen-epochs", type=int, default=10)
    parser.add_argument("--fine-tune-epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if args.quick:
        args.size, args.frozen_epochs, args.fine_tune_epochs = 64, 1, 1
    assets = Path(os.environ.get("TLOPS_ASSETS") or ROOT.parent / "shared" / "assets").resolve()
    weights, folder = assets / WEIGHTS_FILE, assets / FLOWERS
    if not weights.is_file() or not folder.is_dir():
        print(json.dumps({"skipped": f"assets not found under {assets} (set TLOPS_ASSETS)"}))
        return
    import keras

    from tlops.model.runtime import _versions, gpu_names

    report: dict[str, Any] = {
        "backend": keras.backend.backend(),
        "gpus": gpu_names(),
        "versions": _versions(),
        "data": "flowers128, stratified by sha256 (seed 0): train 65%, val 15%, test 20%",
        "settings": {k: v for k, v in vars(args).items() if k not in {"out", "variant"}},
        "variants": {},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        split = SplitConfig(val_fraction=0.15, test_fraction=0.2, seed=0)
        info = build_manifest(folder, split, tmp / "manifest")
        if args.quick:
            sys.path.insert(0, str(ROOT / "bench"))
            from train import cap_manifest

            info = cap_manifest(info, {"train": 40, "val": 10, "test": 10})
        report["images"] = {
            s: len(read_split(info.manifest_path, folder, s)) for s in ("train", "val", "test")
        }
        for name in args.variant or list(VARIANTS):
            try:
                report["variants"][name] = one_variant(name, args, weights, folder, tmp, info)
            except Exception as exc:  # report and go on with the next variant
                report["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps({name: report["variants"][name]}), file=sys.stderr, flush=True)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
