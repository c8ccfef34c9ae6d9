"""Stages 4 and 5 of the train flow, and the MLflow run they are tracked in.

``train_model`` and ``evaluate_model`` read and write files only; ``open_run``, ``train_run``,
``evaluate_run`` and ``record_run`` are the same stages within one run's
:class:`~tlops.jobs.context.RunContext` (tracked in its MLflow run). Each takes small values
and returns a small pydantic value, so Prefect tasks never pass Keras models or datasets around.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from tlops.adapters import tracking
from tlops.backbones import get_spec
from tlops.config import RunConfig
from tlops.data import label_errors
from tlops.data.inputs import SplitData, load_images, read_split
from tlops.data.label_errors import LabelReview, review_labels, write_review
from tlops.data.version import DataVersion
from tlops.errors import ConfigError, DataError
from tlops.jobs.context import RunContext
from tlops.jobs.policy import PolicyOrigin, policy_tags
from tlops.jobs.validate import ManifestInfo
from tlops.paths import atomic_path, default_cache_root, tlops_home


class TrainSummary(BaseModel):
    """What the train step leaves: the model file and what happened."""

    model_config = ConfigDict(frozen=True)

    model_path: str
    result_path: str
    kept_phase: str
    phase_best: dict[str, float | None]
    phase_epochs: dict[str, int]
    classes: list[str]
    binary: bool
    weights_kind: str
    weights_sha256: str
    feature_cache: str
    resumed_at: str | None
    device: str
    runtime_tags: dict[str, str]
    images_per_s: dict[str, float]
    trainable_params: dict[str, int]
    backbone_tags: dict[str, str] = {}
    backbone_path: str = ""
    #: per phase, how it trained: "pooled cache (1 view, 0.2 MB, hit)", "whole model", ...
    phase_paths: dict[str, str] = {}
    #: ``train.<phase>.path|views|cache|cache_mb|boundary`` tags of the run
    path_tags: dict[str, str] = {}
    #: how clearly the kept phase won, in validation images (see ``kept_margin``)
    kept_margin: str = ""
    notes: list[str] = []
    #: the label-error search: its line, its files (report, table, thumbnails), its metrics
    label_review: str = ""
    label_files: list[str] = []
    label_metrics: dict[str, float] = {}


class EvalSummary(BaseModel):
    """What the evaluate step leaves: test metrics and the files that show them."""

    model_config = ConfigDict(frozen=True)

    metrics: dict[str, float]
    artifacts: dict[str, list[str]]
    predictions_path: str = ""


BACKBONE_FILE = "backbone.weights.h5"


def _weights_arg(cfg: RunConfig, run_dir: Path) -> tuple[str | None, dict[str, str]]:
    """The config's weights as ``build_base`` takes them, and lineage tags of their source.

    ``none`` means random; ``models:/NAME@ALIAS`` (or ``/VERSION``) is a backbone registered
    by ``tlops pretrain``: downloaded into the run folder, checked to be a backbone of the same
    architecture, and recorded with the version and the data it was trained on.
    """
    weights = cfg.backbone.weights
    if weights == "none":
        return None, {}
    if weights.startswith("runs:/"):
        raise ConfigError(f"backbone.weights: {weights!r}: use a registered models:/ URI")
    if not weights.startswith("models:/"):
        return weights, {}
    from tlops.adapters import registry

    info = registry.resolve(weights)
    folder = registry.download(info, run_dir / "backbone_model")
    meta_file = folder / "tlops.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    if meta.get("kind") != "backbone" or not (folder / BACKBONE_FILE).is_file():
        raise ConfigError(
            f"backbone.weights: {weights} (v{info.version}) is not a backbone registered by "
            "tlops pretrain"
        )
    if meta.get("backbone") != cfg.backbone.name:
        raise ConfigError(
            f"backbone.weights: {weights} is a {meta.get('backbone')} backbone, but "
            f"backbone.name is {cfg.backbone.name}"
        )
    source = {k: info.tags.get(k, "") for k in ("data.md5", "data.rev", "data.remote")}
    lineage = {"model": f"models:/{info.name}/{info.version}", "run_id": info.run_id, **source}
    tags = {
        "backbone.model_version": f"models:/{info.name}/{info.version}",
        "backbone.lineage": json.dumps(lineage, sort_keys=True),
    }
    return str(folder / BACKBONE_FILE), tags


def inputs_digest(cfg: RunConfig, *facts: str) -> str:
    """The sha256 (hex) of what a model is trained from: the config without its ``evaluate``
    part (which changes no weights), then ``facts`` (data md5, manifest digest, ...).

    Both identities build on it, :func:`training_fingerprint` (checkpoints, feature cache) and
    :func:`tlops.jobs.gate.change_fingerprint` (the ``tlops.fingerprint`` tag); the bytes hashed
    are fixed, since stored fingerprints are compared across runs.
    """
    parts = cfg.model_dump(mode="json", exclude={"evaluate"})
    blob = json.dumps([parts, *facts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def training_fingerprint(cfg: RunConfig, data: DataVersion, manifest: ManifestInfo) -> str:
    """Identity of a training: config without the evaluation part, data md5, manifest."""
    return inputs_digest(cfg, data.md5, manifest.digest)


def label_budget(data: SplitData, per_class: int | None) -> SplitData:
    """At most ``per_class`` images of each class (the first by path); all when None."""
    if per_class is None:
        return data
    per = [np.flatnonzero(data.labels == c)[:per_class] for c in range(len(data.classes))]
    keep = sorted(int(i) for rows in per for i in rows)
    return SplitData(
        paths=[data.paths[i] for i in keep], labels=data.labels[keep], classes=data.classes,
        relpaths=[data.relpaths[i] for i in keep], formats=data.formats,
    )  # fmt: skip


def _splits(
    manifest: ManifestInfo, data: DataVersion, per_class: int | None = None
) -> tuple[SplitData, SplitData]:
    """Train (within the label budget) and validation splits; both must hold images."""
    train = read_split(manifest.manifest_path, data.images_root, "train")
    train = label_budget(train, per_class)
    val = read_split(manifest.manifest_path, data.images_root, "val")
    if not len(train) or not len(val):
        raise DataError(f"{data.images_root}: the train and val splits need images")
    return train, val


class LabelErrorLimitError(DataError):
    """More training images look mislabeled than ``contract.max_label_error_fraction``."""


def label_check(
    cfg: RunConfig, split: SplitData, images_root: Path, out_dir: Path, found: list[LabelReview]
) -> Callable[[np.ndarray], None] | None:
    """The ``on_features`` hook of training: rank the suspected label errors of ``split``
    from its frozen features, write the review into ``out_dir`` (appended to ``found``), and
    stop the run (exit 3) above ``contract.max_label_error_fraction``; None when the config
    asks for neither a review nor a limit."""
    contract = cfg.contract
    limit = contract.max_label_error_fraction
    if not contract.label_suspects and limit is None:
        return None

    def check(features: np.ndarray) -> None:
        review = review_labels(
            features, split.labels, split.classes, split.relpaths, contract.label_suspects,
            cfg.train.seed,
        )  # fmt: skip
        write_review(review, images_root, out_dir)
        found.append(review)
        if limit is not None and (review.skipped or review.fraction > limit):
            why = review.skipped or f"{review.fraction:.1%} is over {limit:.1%}"
            raise LabelErrorLimitError(
                f"{images_root}: contract.max_label_error_fraction: {why}. {review.line()} "
                f"(report: {out_dir / label_errors.REPORT})"
            )

    return check


def review_facts(found: list[LabelReview], out_dir: Path) -> dict[str, Any]:
    """The :class:`TrainSummary` fields of the label-error review, if there was one."""
    if not found:
        return {}
    review = found[-1]
    files = [out_dir / n for n in (label_errors.REPORT, label_errors.TABLE, label_errors.SHEET)]
    metrics = {} if review.skipped else {
        "label_suspects_flagged": float(review.flagged),
        "label_suspects_fraction": round(review.fraction, 4),
    }  # fmt: skip
    return {
        "label_review": review.line(),
        "label_files": [str(f) for f in files if f.is_file()],
        "label_metrics": metrics,
    }


def train_model(
    cfg: RunConfig, data: DataVersion, manifest: ManifestInfo, run_dir: Path, run_id: str | None
) -> TrainSummary:
    """Build the classifier from the backbone spec and train it through the strategy's phases.

    1. configure the runtime (seed, precision, device) and read the splits;
    2. build the base (weights checked) and the classifier inside the distribution scope;
    3. train, checkpointing every epoch (a rerun with the same inputs resumes);
    4. save the model (``.keras``) and the training record; clear the checkpoints.
    """
    from tlops.model import classifier as tl_model
    from tlops.model.runtime import configure, strategy_scope
    from tlops.model.training import TrainInputs, checkpoint_folder, train

    runtime = configure(cfg.train)
    train_split, val_split = _splits(manifest, data, cfg.data.train_per_class)
    spec = get_spec(cfg.backbone.name)
    weights, backbone_tags = _weights_arg(cfg, run_dir)
    with strategy_scope(runtime):
        base = tl_model.build_base(spec, cfg.data.image_size, weights, cfg.backbone.alpha)
        kind, digest = tl_model.weights_fingerprint(base, weights)
        clf = tl_model.build_classifier(
            base, spec, len(train_split.classes), cfg.head, cfg.train.augment,
            cfg.data.image_size, cfg.train.seed,
        )  # fmt: skip
    fingerprint = training_fingerprint(cfg, data, manifest)
    cache_key = {
        "weights": digest, "backbone": spec.name, "alpha": str(cfg.backbone.alpha),
        "data": data.md5, "manifest": manifest.digest, "size": str(cfg.data.image_size),
        "preprocess": spec.preprocess, "precision": runtime.precision,
    }  # fmt: skip
    phases = {"frozen": 1, "fine_tune": 2, "full": 1}

    def callbacks(phase: str, offset: int) -> list[Any]:
        return [tracking.epoch_logger(run_id, phase, offset, phases[phase])] if run_id else []

    reviews: list[LabelReview] = []
    on_features = label_check(cfg, train_split, data.images_root, run_dir / "labels", reviews)
    model_path, result_path = run_dir / "model.keras", run_dir / "training.json"
    backbone_path = ""
    # the checkpoint folder is this run's alone while it trains (a concurrent run of the same
    # inputs gets its own); it is deleted only once the model is saved, still under the lock
    with checkpoint_folder(tlops_home() / "checkpoints", fingerprint[:16]) as lease:
        inputs = TrainInputs(
            train=train_split,
            val=val_split,
            checkpoint_dir=lease.folder,
            fingerprint=fingerprint,
            fine_tune_from=cfg.backbone.fine_tune_from or spec.fine_tune_from,
            cache_dir=default_cache_root() / "activations",
            cache_key=cache_key,
            callbacks=callbacks,
            on_features=on_features,
        )
        result = train(clf, cfg, inputs)
        with atomic_path(model_path, suffix=".tmp.keras") as tmp:
            clf.model.save(tmp)
        if cfg.registry.kind == "backbone":
            with atomic_path(run_dir / BACKBONE_FILE, suffix=".tmp.weights.h5") as tmp:
                clf.base.save_weights(tmp)
            backbone_path = str(run_dir / BACKBONE_FILE)
        with atomic_path(result_path) as tmp:
            tmp.write_text(json.dumps(result.to_dict(), indent=1, default=str), encoding="utf-8")
        lease.remove()
    return TrainSummary(
        model_path=str(model_path),
        result_path=str(result_path),
        classes=train_split.classes,
        binary=clf.binary,
        weights_kind=kind,
        weights_sha256=digest,
        device=runtime.device,
        runtime_tags=runtime.tags(),
        backbone_tags=backbone_tags,
        backbone_path=backbone_path,
        **phase_facts(result, cfg.train.monitor, len(val_split)),
        **review_facts(reviews, run_dir / "labels"),
    )


def phase_facts(result: Any, monitor: str, n_val: int) -> dict[str, Any]:
    """The :class:`TrainSummary` fields that come from the phases of a ``TrainResult``: best
    values, epochs, speed, which path each took (and its tags), how clearly the kept one won."""
    from tlops.model.training import PATH_FIELDS, describe_path, kept_margin

    phases = result.phases
    best = {p.name: p.best_value for p in phases}
    return {
        "kept_phase": result.kept_phase,
        "phase_best": best,
        "phase_epochs": {p.name: p.epochs for p in phases},
        "feature_cache": result.feature_cache,
        "resumed_at": result.resumed_at,
        "images_per_s": {p.name: p.images_per_s for p in phases},
        "trainable_params": {p.name: p.trainable_params for p in phases},
        "phase_paths": {p.name: describe_path(p) for p in phases},
        "path_tags": {
            f"train.{p.name}.{k}": str(getattr(p, k))
            for p in phases
            for k in PATH_FIELDS
            if getattr(p, k) is not None
        },
        "kept_margin": kept_margin(best, result.kept_phase, monitor, n_val),
        "notes": list(result.notes),
    }


def _latency(model: Any, images: np.ndarray, batch: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per image at batch 1 and at the training batch size.

    Timed through ``predict_on_batch``: the compiled predict function (``tf.function`` or
    ``jax.jit``) that serving uses, returning numpy, so asynchronous devices are waited for.
    """

    def timed(chunk: np.ndarray, times: int) -> float:
        model.predict_on_batch(chunk)  # warm up (and compile for this shape)
        seconds = []
        for _ in range(times):
            start = time.perf_counter()
            model.predict_on_batch(chunk)
            seconds.append((time.perf_counter() - start) / len(chunk))
        return float(np.median(seconds) * 1000)

    return {
        "latency_ms_batch1": timed(images[:1], repeats),
        "latency_ms_per_image_batch": timed(
            images[: max(1, min(batch, len(images)))], max(3, repeats // 4)
        ),
    }


def evaluate_model(
    cfg: RunConfig, trained: TrainSummary, data: DataVersion, manifest: ManifestInfo, run_dir: Path
) -> EvalSummary:
    """Evaluate the saved model on the test split: metrics, plots, gallery, latency, size."""
    import keras

    from tlops.model import metrics as ev
    from tlops.model import plots
    from tlops.model.classifier import predict_batches, probabilities

    test = read_split(manifest.manifest_path, data.images_root, "test")
    if not len(test):
        raise DataError(f"{data.images_root}: the test split holds no images")
    if test.classes != trained.classes:
        test = _align(test, trained.classes)
    model = keras.models.load_model(trained.model_path, safe_mode=True)
    images = load_images(test.paths, cfg.data.image_size, formats=test.formats)
    probs = probabilities(predict_batches(model, images, cfg.train.batch_size), trained.binary)
    metrics = ev.compute_metrics(test.labels, probs, trained.classes, cfg.evaluate.top_k)
    figures = run_dir / "plots"
    figures.mkdir(exist_ok=True)
    history = json.loads(Path(trained.result_path).read_text(encoding="utf-8"))
    mistakes = ev.misclassified(
        test.labels, probs, test.relpaths, trained.classes, cfg.evaluate.gallery_size
    )
    table = run_dir / "per_class.csv"
    ev.per_class_table(metrics).to_csv(table, index=False)
    files = {
        "plots": [
            str(plots.plot_confusion(metrics, figures / "confusion_matrix.png")),
            str(plots.plot_history({p["name"]: p["history"] for p in history["phases"]},
                                figures / "training_curves.png")),
            str(plots.plot_gallery(mistakes, data.images_root, figures / "misclassified.png")),
        ],
        "evaluation": [str(table)],
    }  # fmt: skip
    (run_dir / "misclassified.json").write_text(json.dumps(mistakes, indent=1), encoding="utf-8")
    files["evaluation"].append(str(run_dir / "misclassified.json"))
    predictions = write_predictions(run_dir / "predictions.json", test, probs)
    files["evaluation"].append(str(predictions))
    scalars = metrics.scalars("test_")
    scalars.update(_latency(model, images, cfg.train.batch_size, cfg.evaluate.latency_repeats))
    scalars["model_size_mb"] = Path(trained.model_path).stat().st_size / 1e6
    return EvalSummary(metrics=scalars, artifacts=files, predictions_path=str(predictions))


def write_predictions(path: Path, test: SplitData, probs: np.ndarray) -> Path:
    """Per test image: file, true and predicted class (the gate pairs these with the champion's)."""
    predicted = probs.argmax(axis=1)
    rows = [
        {"path": rel, "true": test.classes[int(t)], "predicted": test.classes[int(p)]}
        for rel, t, p in zip(test.relpaths, test.labels, predicted, strict=True)
    ]
    path.write_text(json.dumps(rows, indent=0), encoding="utf-8")
    return path


def _align(test: SplitData, classes: list[str]) -> SplitData:
    """Re-index test labels to the training classes; unknown test classes are an error."""
    unknown = sorted(set(test.classes) - set(classes))
    if unknown:
        raise DataError(f"test split has classes the model never saw: {unknown}")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[test.classes[i]] for i in test.labels], dtype=np.int32)
    return SplitData(test.paths, labels, classes, test.relpaths)


def run_tags(
    cfg: RunConfig, data: DataVersion, flow_run_id: str, policy: PolicyOrigin | None = None
) -> dict[str, str]:
    """Tags known before training: data, backbone, code, the Prefect flow run, and the
    promotion policy's hash and origin (:func:`tlops.jobs.policy.policy_tags`; None: unknown)."""
    from tlops.adapters.git import code_state
    from tlops.config import config_sha256
    from tlops.redact import redact_url

    return {
        "data.md5": data.md5,
        "data.rev": data.rev,
        "data.dirty": str(data.dirty).lower(),
        "data.nfiles": str(data.nfiles),
        "data.remote": redact_url(data.remote_url) if data.remote_url else "none",
        "config.sha256": config_sha256(cfg),
        "backbone": cfg.backbone.name,
        "backbone.weights": cfg.backbone.weights,
        "strategy": cfg.train.strategy,
        "prefect.flow_run_id": flow_run_id,
        **code_state(Path.cwd()),
        **policy_tags(cfg, policy),
    }


def log_config(run_id: str, cfg: RunConfig, run_dir: Path) -> Path:
    """Log the full resolved config as the run's ``config.yaml`` artifact (its sha256 is the
    ``config.sha256`` tag of :func:`run_tags`; ``tlops reproduce`` reads it back)."""
    from tlops.config import dump_config

    config_file = run_dir / "config.yaml"
    config_file.write_text(dump_config(cfg), encoding="utf-8")
    tracking.log_artifacts(run_id, {"": [config_file]})
    return config_file


def run_name(ctx: RunContext) -> str:
    """The MLflow run's name: ``<model>-<backbone>-<data md5[:8]>``."""
    return f"{ctx.config.model_name}-{ctx.config.backbone.name}-{ctx.data.md5[:8]}"


def open_run(ctx: RunContext) -> str:
    """Open the context's MLflow run; return its id.

    In the experiment of the config's name, named by :func:`run_name`: params (the whole
    config), the tags of :func:`run_tags` plus ``tlops.trigger`` (schedule, ci or manual, for
    filtering in the UI) and ``data.manifest`` (the manifest's digest), and the dataset as the
    run's input.
    """
    cfg = ctx.config
    tags = {
        **run_tags(cfg, ctx.data, ctx.flow_run_id, ctx.policy), "tlops.trigger": ctx.trigger,
        "data.manifest": ctx.manifest.digest,  # the files, labels and splits it was trained on
        "data.split": ctx.manifest.split_source,  # folders, sha256, or a carved test split
    }  # fmt: skip
    run_id = tracking.start_run(cfg.name, run_name(ctx), cfg.flat(), tags)
    tracking.log_dataset(run_id, ctx.data, ctx.manifest.digest, context="train")
    return run_id


def train_run(ctx: RunContext) -> TrainSummary:
    """:func:`train_model` in the context's run: every epoch and system metrics logged to it."""
    with tracking.system_metrics(ctx.run_id):
        return train_model(ctx.config, ctx.data, ctx.manifest, ctx.out, ctx.run_id)


def evaluate_run(ctx: RunContext, trained: TrainSummary) -> EvalSummary:
    """:func:`evaluate_model` on the context's data, into its folder."""
    return evaluate_model(ctx.config, trained, ctx.data, ctx.manifest, ctx.out)


def fail_run(run_id: str) -> None:
    """Mark a run FAILED after an error."""
    tracking.finish_run(run_id, "FAILED")


def record_run(ctx: RunContext, trained: TrainSummary, evaluated: EvalSummary) -> str:
    """Log results, artifacts (with the data contract's report) and the model to the context's
    run and finish it; return the model URI."""
    model_uri = _record(ctx, trained, evaluated)
    tracking.finish_run(ctx.run_id, "FINISHED")
    return model_uri


def _record(ctx: RunContext, trained: TrainSummary, evaluated: EvalSummary) -> str:
    """What :func:`record_run` logs; returns the model URI (the LoggedModel's ``models:/``)."""

    from tlops.adapters import pyfunc

    run_id, cfg, run_dir = ctx.run_id, ctx.config, ctx.out
    log_config(run_id, cfg, run_dir)
    tracking.set_tags(
        run_id,
        {
            "backbone.weights_kind": trained.weights_kind,
            "backbone.weights_sha256": trained.weights_sha256,
            "kept_phase": trained.kept_phase,
            "feature_cache": trained.feature_cache,
            "resumed_at": trained.resumed_at or "none",
            **trained.runtime_tags,
            **trained.backbone_tags,
            **trained.path_tags,
        },
    )
    summary = {f"best_{k}": v for k, v in trained.phase_best.items() if v is not None}
    summary |= {f"images_per_s_{k}": v for k, v in trained.images_per_s.items()}
    summary |= {f"trainable_params_{k}": float(v) for k, v in trained.trainable_params.items()}
    tracking.log_metrics(run_id, {**evaluated.metrics, **summary, **trained.label_metrics})
    tracking.log_artifacts(
        run_id,
        {
            "": [Path(trained.result_path)],
            "data": [Path(ctx.contract_report)],
            "data/label_suspects": [Path(p) for p in trained.label_files],
            **{k: [Path(p) for p in v] for k, v in evaluated.artifacts.items()},
        },
    )
    size = cfg.data.image_size  # the model's input size: log_image_model checks it
    meta = {
        "classes": trained.classes,
        "binary": trained.binary,
        "image_size": size,
        "backbone": cfg.backbone.name,
        "input": "served: encoded image bytes (an `image` column) or file paths (`path`); "
        "the Keras model: float32 RGB 0..255, (n, size, size, 3), preprocessing inside",
    }
    model_uri = pyfunc.log_image_model(run_id, Path(trained.model_path), meta).uri
    if not trained.backbone_path:
        return model_uri
    backbone_meta = {
        "kind": "backbone",
        "backbone": cfg.backbone.name,
        "alpha": cfg.backbone.alpha,
        "image_size": size,
        "pretrained_on": trained.classes,
        "use": "backbone.weights: models:/NAME@ALIAS in a train config with the same backbone.name",
    }
    meta_file = run_dir / "tlops.json"
    meta_file.write_text(json.dumps(backbone_meta, indent=1), encoding="utf-8")
    tracking.log_artifacts(run_id, {"backbone": [Path(trained.backbone_path), meta_file]})
    return f"runs:/{run_id}/backbone"
