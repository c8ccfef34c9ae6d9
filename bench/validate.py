"""Benchmark: manifest + data contract throughput, printed as JSON.

Datasets: a generated folder of 10,000 small images (10 classes, no split folders) and, when
present, the real flowers128 photos of the shared assets (``$TLOPS_ASSETS``, default
``../shared/assets``). Run with ``make bench`` or ``.venv/bin/python bench/validate.py``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tlops.config import ContractConfig, SplitConfig
from tlops.jobs.validate import build_manifest, check_contract


def generate(root: Path, n: int, classes: int = 10, size: int = 48) -> None:
    """Write ``n`` distinct PNG/JPEG images in ``classes`` class folders (no split folders)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)
        fmt = "PNG" if i % 2 else "JPEG"
        img.save(folder / f"img_{i:05d}.{fmt.lower().replace('jpeg', 'jpg')}", format=fmt)


def measure(name: str, root: Path, contract: ContractConfig) -> dict[str, object]:
    """Time the manifest scan and the GX contract on one folder."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        info = build_manifest(root, SplitConfig(), Path(out))
        scanned = time.perf_counter()
        verdict = check_contract(info, contract, Path(out), {})
        done = time.perf_counter()
    return {
        "dataset": name,
        "images": info.nfiles,
        "manifest_s": round(scanned - start, 3),
        "contract_s": round(done - scanned, 3),
        "total_s": round(done - start, 3),
        "manifest_images_per_s": round(info.nfiles / (scanned - start)),
        "total_images_per_s": round(info.nfiles / (done - start)),
        "contract_passed": verdict.success,
        "failed_rules": verdict.failed_rules,
    }


def main() -> None:
    """Run every benchmark that applies here and print one JSON document."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    results: list[dict[str, object]] = []
    # warm the GX import so it is not billed to the first dataset
    import great_expectations  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "generated"
        start = time.perf_counter()
        generate(root, 10_000)
        generated = round(time.perf_counter() - start, 2)
        lenient = ContractConfig(min_images_per_class={"train": 1, "val": 1, "test": 1})
        results.append({**measure("generated-10k", root, lenient), "generate_s": generated})
    assets = Path(os.environ.get("TLOPS_ASSETS", Path(__file__).parents[1] / "../shared/assets"))
    flowers = assets / "datasets" / "flowers128"
    if flowers.is_dir():
        results.append(measure("flowers128", flowers, ContractConfig(formats=["JPEG"])))
    else:
        results.append({"dataset": "flowers128", "skipped": f"{flowers} not found"})
    print(
        json.dumps(
            {
                "benchmark": "validate",
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
