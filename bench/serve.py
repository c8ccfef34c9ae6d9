"""Benchmark: the served champion over HTTP and batch prediction from files, one JSON document.

- ``serving``: a MobileNetV2 classifier (160 px, 5 classes; the shared ImageNet weights when
  ``$TLOPS_ASSETS`` has them, else random weights: the cost is the same) is logged and
  registered as tlops does it (the pyfunc LoggedModel that speaks images), made ``@champion``,
  and served by the real ``mlflow models serve -m models:/NAME@champion --env-manager local``
  on a free loopback port. Clients POST base64 JPEG photos (``dataframe_split``), single
  images and batches of 32, at concurrency 1, 4 and 16, a fixed number of requests each:
  requests/s, p50 / p99 latency and failures. The model's own batch-1 latency
  (``predict_on_batch`` of one decoded image, in this process) and the in-process answer of
  the pyfunc (decode + resize + predict, no HTTP) are measured on the same image, so that the
  serving overhead at concurrency 1 reads as a ratio.
- ``batch_prediction``: the same images as files, decoded with training's decode and predicted
  in batches of 32 by Keras, ONNX (onnxruntime) and LiteRT (ai-edge-litert), the exports made
  by :mod:`tlops.model.exports`: images/s of each (decode included) and their parity.

Goals (issue 13): serving adds at most 20 % to the model's own batch-1 latency at concurrency
1 (p50), and no request fails under load. ``--quick``: 64 px, few requests (a smoke run).
Run ``.venv/bin/python bench/serve.py [--quick] [--out r.json]``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WEIGHTS_FILE = Path("weights") / "mobilenet_v2_1.0_224_no_top.h5"
CLASSES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]
Json = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    """Sizes of one mode (full or ``--quick``)."""

    mode: str
    image_size: int
    requests: int  # per concurrency level, single-image requests
    batch_requests: int  # per concurrency level, requests of ``batch`` images
    batch: int
    concurrency: tuple[int, ...]
    files: int  # images for batch prediction


FULL = Settings("full", 160, 200, 24, 32, (1, 4, 16), 512)
QUICK = Settings("quick", 64, 16, 4, 8, (1, 4), 32)


def assets_root() -> Path:
    """``$TLOPS_ASSETS``, else ``<repo>/../shared/assets``."""
    return Path(os.environ.get("TLOPS_ASSETS") or ROOT.parent / "shared" / "assets").resolve()


def rounded(value: float, digits: int = 3) -> float:
    """A float for the report."""
    return round(float(value), digits)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` percentile (0..100) of ``values``."""
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- the images -------------------------------------------------------------------------------


def photos(folder: Path, count: int, assets: Path) -> tuple[list[Path], str]:
    """``count`` JPEG photos: flowers128's when the assets are there, else generated scenes
    (smooth gradients with noise, 240x180) written to ``folder``."""
    flowers = assets / "datasets" / "flowers128"
    if flowers.is_dir():
        found = sorted(p for p in flowers.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg"})
        if len(found) >= count:
            step = len(found) // count
            return found[::step][:count], "flowers128"
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    y, x = np.mgrid[0:180, 0:240]
    for i in range(count):
        base = np.stack([(x * rng.uniform(0.3, 1)) % 256, (y * rng.uniform(0.3, 1)) % 256,
                         ((x + y) * rng.uniform(0.2, 0.6)) % 256], axis=-1)  # fmt: skip
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        files.append(path)
    return files, "generated"


# -- the champion -----------------------------------------------------------------------------


def build_model(size: int, weights: Path | None) -> Any:
    """tlops' classifier: MobileNetV2 base, the default head, 5 classes (no augmentation)."""
    import keras

    from tlops.backbones import get_spec
    from tlops.config import AugmentConfig, HeadConfig
    from tlops.model.classifier import build_base, build_classifier

    keras.utils.set_random_seed(0)
    spec = get_spec("mobilenet_v2")
    base = build_base(spec, size, str(weights) if weights else None, None)
    return build_classifier(base, spec, len(CLASSES), HeadConfig(), AugmentConfig(), size, 0)


def register_champion(keras_file: Path, meta: Json) -> str:
    """Log and register the model as tlops does; make it ``@champion``; its name."""
    from tlops.adapters import registry, tracking
    from tlops.adapters.pyfunc import log_image_model

    name = f"served-{uuid.uuid4().hex[:8]}"
    run_id = tracking.start_run(name, "train", {}, {})
    logged = log_image_model(run_id, keras_file, meta)
    tracking.finish_run(run_id)
    info = registry.register(name, run_id, logged.uri, {}, "")
    registry.set_alias(name, "champion", info.version)
    return name


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(name: str, log: Path) -> Iterator[int]:
    """``mlflow models serve`` of ``models:/NAME@champion`` on a free port; yields the port."""
    port = free_port()
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@champion",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
            env={**os.environ, "PATH": path}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"mlflow models serve exited: {log.read_text()[-2000:]}")
                with contextlib.suppress(OSError):
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/ping")
                    if conn.getresponse().status == 200:
                        break
                time.sleep(0.5)
            else:
                raise RuntimeError("mlflow models serve did not answer in 300 s")
            yield port
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def body(images: list[bytes]) -> bytes:
    """A ``dataframe_split`` request of base64 images."""
    rows = [[base64.b64encode(data).decode()] for data in images]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


def load(port: int, bodies: list[bytes], concurrency: int, total: int, expect: int) -> Json:
    """``total`` POSTs of ``bodies`` (cycled) from ``concurrency`` threads, each on its own
    keep-alive connection: requests/s, latency percentiles and failures."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Content-Type": "application/json"}
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            start = time.perf_counter()
            try:
                conn.request("POST", "/invocations", bodies[index % len(bodies)], headers)
                answer = conn.getresponse()
                data = answer.read()
                ok = answer.status == 200 and len(json.loads(data)["predictions"]) == expect
                why = "" if ok else f"status {answer.status}: {data[:200]!r}"
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                why = f"{type(exc).__name__}: {exc}"
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - start
            with lock:
                (failures.append(why) if why else latencies.append(elapsed * 1000))

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency, "requests": total, "failed": len(failures),
        "first_failure": failures[0] if failures else None,
        "requests_per_s": rounded(total / wall, 2),
        "images_per_s": rounded(total * expect / wall, 1),
        "p50_ms": rounded(percentile(latencies, 50), 2),
        "p99_ms": rounded(percentile(latencies, 99), 2),
    }  # fmt: skip


def median_ms(call: Any, repeats: int) -> float:
    """Median milliseconds of ``call()`` after two warm-up calls."""
    call()
    call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) * 1000


def scoring_in_process_ms(name: str, request: bytes) -> Json:
    """Median ms of MLflow's scoring function for one request, in this process: called
    directly, and in a worker thread as the scoring server calls it."""
    from concurrent.futures import ThreadPoolExecutor

    import mlflow.pyfunc
    from mlflow.pyfunc.scoring_server import invocations

    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    schema = model.metadata.get_input_schema()
    text = request.decode()

    def call() -> Any:
        return invocations(text, "application/json", model, schema)

    with ThreadPoolExecutor(1) as pool:
        threaded = median_ms(lambda: pool.submit(call).result(), 50)
    return {"direct": rounded(median_ms(call, 50), 2), "worker_thread": rounded(threaded, 2)}


def serving(settings: Settings, keras_file: Path, meta: Json, files: list[Path], tmp: Path) -> Json:
    """The served champion under load, with the model's own batch-1 latency beside it."""
    import keras
    import pandas as pd

    from tlops.adapters.pyfunc import answer
    from tlops.data.inputs import load_image
    from tlops.model.serving import ModelCard

    model = keras.models.load_model(keras_file, safe_mode=True)
    card = ModelCard.from_meta(meta)
    first = files[0].read_bytes()
    image = load_image(files[0], settings.image_size)[None]
    own_ms = median_ms(lambda: model.predict_on_batch(image), 50)
    frame = pd.DataFrame({"image": [first]})
    answer_ms = median_ms(lambda: answer(model, card, frame), 50)
    encoded = [p.read_bytes() for p in files[:64]]
    singles = [body([data]) for data in encoded]
    step = settings.batch
    batches = [body(encoded[i : i + step]) for i in range(0, len(encoded) - step + 1, step)]
    name = register_champion(keras_file, meta)
    scoring_ms = scoring_in_process_ms(name, body([first]))
    levels: dict[str, list[Json]] = {"single": [], f"batch_{settings.batch}": []}
    with served(name, tmp / "serve.log") as port:
        load(port, singles, 1, 5, 1)  # warm-up: the first requests build the predict function
        load(port, batches[:1], 1, 2, settings.batch)
        for concurrency in settings.concurrency:
            levels["single"].append(load(port, singles, concurrency, settings.requests, 1))
            levels[f"batch_{settings.batch}"].append(
                load(port, batches, concurrency, settings.batch_requests, settings.batch)
            )
    at_one = levels["single"][0]["p50_ms"]
    overhead = at_one / own_ms - 1
    failed = sum(level["failed"] for rows in levels.values() for level in rows)
    return {
        "model_batch1_ms": rounded(own_ms, 2),
        "pyfunc_answer_in_process_ms": rounded(answer_ms, 2),
        # MLflow's own request handling (JSON -> DataFrame -> schema -> predict -> JSON), in
        # this process, without HTTP, then as the server runs it (in a worker thread)
        "mlflow_scoring_in_process_ms": scoring_ms,
        "served_p50_ms_concurrency_1": at_one,
        "serving_overhead": rounded(overhead, 3),
        "levels": levels,
        "goal": {
            "overhead": "served p50 at concurrency 1 at most 1.2x the model's own batch-1 latency",
            "overhead_met": overhead <= 0.2,
            "no_failures": "no request fails under load",
            "no_failures_met": failed == 0,
        },
    }


def batch_prediction(settings: Settings, keras_file: Path, meta: Json, files: list[Path],
                     tmp: Path) -> Json:  # fmt: skip
    """Images/s from files (training's decode, then batches) for Keras, ONNX and LiteRT."""
    import keras

    from tlops.data.inputs import load_images
    from tlops.model.classifier import predict_batches, probabilities
    from tlops.model.exports import FORMATS, load_runner, parity, run_batches, write_export

    model = keras.models.load_model(keras_file, safe_mode=True)
    paths = [str(p) for p in files]
    start = time.perf_counter()
    images = load_images(paths, settings.image_size)
    decode_s = time.perf_counter() - start
    runners: dict[str, Any] = {"keras": lambda batch: predict_batches(model, batch, len(batch))}
    for fmt in FORMATS:
        if fmt != "saved_model":
            runners[fmt] = load_runner(fmt, write_export(model, fmt, tmp / "exports" / fmt))
    reference = probabilities(predict_batches(model, images, settings.batch), meta["binary"])
    out: Json = {"images": len(images), "decode_images_per_s": rounded(len(images) / decode_s, 1)}
    for name, runner in runners.items():
        run_batches(runner, images[: settings.batch], settings.batch)  # warm-up
        start = time.perf_counter()
        raw = run_batches(runner, images, settings.batch)
        predict_s = time.perf_counter() - start
        agreement, largest = parity(reference, probabilities(raw, meta["binary"]))
        out[name] = {
            "predict_images_per_s": rounded(len(images) / predict_s, 1),
            "files_images_per_s": rounded(len(images) / (decode_s + predict_s), 1),
            "argmax_agreement": agreement, "max_prob_diff": float(f"{largest:.3g}"),
        }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    """Build, register and serve the champion; load it; predict from files; print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and short")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    for key, value in (("GX_ANALYTICS_ENABLED", "false"), ("TF_CPP_MIN_LOG_LEVEL", "2")):
        os.environ.setdefault(key, value)
    assets = assets_root()
    weights = assets / WEIGHTS_FILE
    load_avg = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="tlops-bench-serve-") as folder:
        tmp = Path(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        os.environ["TLOPS_HOME"] = str(tmp / "home")
        with contextlib.redirect_stdout(sys.stderr):
            files, source = photos(tmp / "photos", settings.files, assets)
            clf = build_model(settings.image_size, weights if weights.is_file() else None)
            keras_file = tmp / "model.keras"
            clf.model.save(keras_file)
            meta = {"classes": CLASSES, "binary": False, "image_size": settings.image_size,
                    "backbone": "mobilenet_v2"}  # fmt: skip
            results = {
                "serving": serving(settings, keras_file, meta, files, tmp),
                "batch_prediction": batch_prediction(settings, keras_file, meta, files, tmp),
            }
    document = {
        "benchmark": "serve", "mode": settings.mode, "settings": asdict(settings),
        "images": source, "weights": "imagenet (shared assets)" if weights.is_file() else "random",
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "machine": platform.machine(),
        "load_avg": {"start": load_avg, "end": [round(x, 2) for x in os.getloadavg()]},
        "note": "wall-clock figures on a CPU shared with other processes; see load_avg",
        "results": results,
    }  # fmt: skip
    text = json.dumps(document, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
