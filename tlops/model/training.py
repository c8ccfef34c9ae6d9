"""Training: feature extraction on the frozen base, then fine-tuning of its top, resumable.

Model code is ``keras.*`` only (the tf.data input comes from :mod:`tlops.data.inputs`). Every epoch
writes a checkpoint (weights + a small JSON state), so a killed run started again with the same
config resumes at its last finished epoch. Each phase ends on its best epoch by the monitored
validation metric, and the better phase is kept.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlops.config import PhaseConfig, RunConfig
from tlops.data.inputs import SplitData, encode_labels, make_dataset
from tlops.model.boundary import BoundaryModels, find_cut, split_classifier
from tlops.model.classifier import (
    Classifier,
    _start_index,
    count_params,
    freeze_base,
    unfreeze_all,
    unfreeze_top,
)
from tlops.model.views import (
    ViewCycle,
    ViewPlan,
    cache_bytes,
    cached_store,
    derived_store,
    features_of,
    view_epochs,
)
from tlops.paths import atomic_path

CallbackFactory = Callable[[str, int], list[Any]]  # (phase, epoch offset) -> keras callbacks


@dataclass
class PhaseResult:
    """What one phase did."""

    name: str
    epochs: int
    history: dict[str, list[float]]
    best_value: float | None
    best_epoch: int | None
    trainable_params: int
    non_trainable_params: int
    seconds: float
    images_per_s: float
    used_feature_cache: bool  # trained on cached activations (pooled or boundary)
    path: str = "whole_model"  # pooled_cache | boundary_cache | whole_model
    views: int = 1  # train views cycled through (1: the images themselves)
    cache: str = "off"  # hit | miss | off
    cache_mb: float = 0.0
    boundary: str | None = None  # first layer of the top, for the boundary cache


@dataclass
class TrainResult:
    """The whole training: phases, which one was kept, how it started."""

    phases: list[PhaseResult]
    kept_phase: str
    monitor: str
    resumed_at: str | None = None
    feature_cache: str = "off"  # the frozen phase's: off | augmentation | hit | miss
    notes: list[str] = field(default_factory=list)

    def history(self) -> dict[str, dict[str, list[float]]]:
        """Keras-style history per phase."""
        return {p.name: p.history for p in self.phases}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return asdict(self)


# -- checkpoints ------------------------------------------------------------------------------

#: Names inside a checkpoint's ``.npz``: the variables' paths (for people), each one's values.
PATHS_ENTRY, WEIGHT_PREFIX = "paths", "v"


def _atomic_write(path: Path, text: str) -> None:
    """Write text to a uniquely named temporary beside the target and rename it into place."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _save_weights(model: Any, path: Path) -> None:
    """Save every variable of ``model`` (trainable or not, in the model's own order, each with
    its path) atomically as an uncompressed ``.npz``.

    A checkpoint is written every epoch: Keras' HDF5 writer takes about 250 ms for
    MobileNetV2's 262 variables, this about 30 ms.
    """
    variables = list(model.weights)
    arrays: dict[str, Any] = {f"{WEIGHT_PREFIX}{i}": v.numpy() for i, v in enumerate(variables)}
    arrays[PATHS_ENTRY] = np.array([v.path for v in variables])
    with atomic_path(path, suffix=".tmp.npz") as tmp, tmp.open("wb") as handle:
        np.savez(handle, **arrays)


def _copy_weights(source: Path, path: Path) -> None:
    """Atomically make ``path`` a copy of the weights file ``source``."""
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        shutil.copyfile(source, tmp)


def _load_weights(model: Any, path: Path) -> None:
    """Give ``model`` the variables saved by :func:`_save_weights`, matched by order and shape
    (as Keras matches its own weights files: layer names are numbered per process); the
    optimizer's slots are not part of a resume (they restart). A file of another model is
    refused (ValueError)."""
    variables = list(model.weights)
    with np.load(path, allow_pickle=False) as saved:
        count = len(saved.files) - 1
        if count != len(variables):
            raise ValueError(
                f"{path}: the checkpoint holds {count} variables, the model {len(variables)}"
            )
        arrays = [saved[f"{WEIGHT_PREFIX}{i}"] for i in range(count)]
    for variable, array in zip(variables, arrays, strict=True):
        if tuple(variable.shape) != array.shape:
            raise ValueError(f"{path}: {variable.path} has shape {array.shape} in the checkpoint")
    for variable, array in zip(variables, arrays, strict=True):
        variable.assign(array)


class CheckpointLease:
    """One run's exclusive hold on a checkpoint folder (an ``flock`` on ``<folder>/.lock``).

    The kernel drops the lock when the holder exits, killed or not, so a folder whose lock is
    free belongs to no live run: a later run of the same inputs takes it and resumes.
    """

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder = folder
        self._fd = fd

    def remove(self) -> None:
        """Delete the folder (the run is done with it); the lock is still held meanwhile."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def release(self) -> None:
        """Drop the lock (closing its file); the folder stays for a later run to resume."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


LOCK_FILE = ".lock"


def _try_lock(folder: Path) -> CheckpointLease | None:
    """Lock ``folder`` (created if needed) for this run, or None when a live run holds it."""
    for _ in range(100):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # its holder removed it between mkdir and open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        # the holder before us may have removed the folder (this lock file with it) meanwhile
        try:
            current = (folder / LOCK_FILE).stat()
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
            return CheckpointLease(folder, fd)
        os.close(fd)
    raise OSError(f"{folder}: could not lock the checkpoint folder (removed under us 100 times)")


def _holder(folder: Path) -> str:
    """Who holds a checkpoint folder, as its lock file says (host and pid)."""
    try:
        return (folder / LOCK_FILE).read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def checkpoint_folder(
    root: Path, key: str, log: Callable[[str], None] = print
) -> Iterator[CheckpointLease]:
    """Hold the checkpoint folder of one training (``root/key``) for as long as the block runs.

    A resumable folder is owned by one run at a time. When another live run of the same inputs
    holds ``root/key``, this run does not wait for it: it trains in a folder of its own
    (``root/key-2``, ``-3``...), never reading or deleting the other's epochs. Free folders
    that hold a checkpoint state (a killed run's) are taken first, so a killed run is resumed
    whichever folder it had.
    """

    def number(path: Path) -> int:
        tail = path.name.removeprefix(f"{key}-")
        return int(tail) if tail.isdigit() else 0

    extra = sorted((p for p in root.glob(f"{key}-*") if number(p) >= 2), key=number)
    existing = [root / key, *extra]
    order = sorted(existing, key=lambda p: not (p / "state.json").is_file())
    taken: list[Path] = []
    lease = None
    for folder in order:
        lease = _try_lock(folder)
        if lease is not None:
            break
        taken.append(folder)
    n = max((number(p) for p in existing), default=0)
    while lease is None:
        n = max(n + 1, 2)
        lease = _try_lock(root / f"{key}-{n}")
    if taken:
        busy = ", ".join(f"{p} (held by {_holder(p)})" for p in taken)
        log(
            f"checkpoints: {busy} in use by another run of the same inputs; this run trains in"
            f" {lease.folder} and neither resumes nor deletes the other's epochs"
        )
    try:
        yield lease
    finally:
        lease.release()


class Checkpoints:
    """Per-epoch weights and state of one training, in a folder keyed by its inputs."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        folder.mkdir(parents=True, exist_ok=True)
        self.state = self._load()

    def _load(self) -> dict[str, Any]:
        """The saved state, or a fresh one when absent or made by other inputs."""
        path = self.folder / "state.json"
        fresh: dict[str, Any] = {"fingerprint": self.fingerprint, "phases": {}}
        if not path.is_file():
            return fresh
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return state if state.get("fingerprint") == self.fingerprint else fresh

    def phase(self, name: str) -> dict[str, Any]:
        """State of one phase: epochs done, history, best, complete."""
        phases: dict[str, Any] = self.state["phases"]
        state: dict[str, Any] = phases.setdefault(
            name, {"epochs_done": 0, "history": {}, "best": None, "best_epoch": None, "done": False}
        )
        return state

    def weights(self, name: str, kind: str) -> Path:
        """Path of a phase's ``latest`` or ``best`` weights."""
        return self.folder / f"{name}-{kind}.weights.npz"

    def save(self) -> None:
        """Persist the state."""
        _atomic_write(self.folder / "state.json", json.dumps(self.state, indent=1))


def _better(value: float, best: float | None, monitor: str) -> bool:
    """Whether ``value`` beats ``best`` for the monitored metric."""
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if monitor.endswith("loss") else value > best


def _epoch_checkpoint(model: Any, ckpt: Checkpoints, name: str, monitor: str) -> Any:
    """A Keras callback that checkpoints the full model every epoch and tracks the best."""
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            state = ckpt.phase(name)
            for key, value in (logs or {}).items():
                state["history"].setdefault(key, []).append(float(value))
            latest = ckpt.weights(name, "latest")
            _save_weights(model, latest)
            value = float((logs or {}).get(monitor, float("nan")))
            if _better(value, state["best"], monitor):
                state["best"], state["best_epoch"] = value, epoch
                _copy_weights(latest, ckpt.weights(name, "best"))
            state["epochs_done"] = epoch + 1
            ckpt.save()

    return EpochCheckpoint()


# -- cached activations -----------------------------------------------------------------------


def feature_cache_key(parts: dict[str, str]) -> str:
    """sha256 of the inputs that determine cached activations."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _files_digest(*splits: SplitData) -> str:
    """sha256 of the splits' files and labels, in order (the label budget changes them)."""
    digest = hashlib.sha256()
    for data in splits:
        digest.update(json.dumps([data.relpaths, data.labels.tolist()]).encode())
    return digest.hexdigest()


@dataclass
class PhaseData:
    """What a phase trains: the whole model on images, or a top model on cached activations."""

    path: str  # pooled_cache | boundary_cache | whole_model
    fit_model: Any
    train: ViewCycle | None = None
    val: ViewCycle | None = None
    views: int = 1
    cache: str = "off"  # hit | miss | off
    cache_mb: float = 0.0
    boundary: str | None = None


#: What a phase's training path is made of (kept in the checkpoint state for a resumed run).
PATH_FIELDS = ("path", "views", "cache", "cache_mb", "boundary")


def _views(cfg: RunConfig) -> int:
    """Train views to cache: ``train.augment.views`` with augmentation on, else 1."""
    return cfg.train.augment.views if cfg.train.augment.enabled else 1


def _cached_source(
    clf: Classifier, cfg: RunConfig, inputs: TrainInputs, name: str, notes: list[str]
) -> tuple[str, Any, Any, str | None] | None:
    """(kind, frozen model, top model, boundary layer) of the phase's cache, or None when the
    phase runs the whole model (a line in ``notes`` says why, where it is not the config)."""
    if name == "frozen" and cfg.train.feature_cache:
        return "pooled", clf.feature_model, clf.head_model, None
    if name != "fine_tune" or not cfg.train.boundary_cache:
        return None
    start = _start_index(clf.base, inputs.fine_tune_from)
    cut = find_cut(clf.base, start)
    layer = clf.base.layers[start].name
    if cut is None:
        notes.append(
            f"phase fine_tune: no single tensor crosses the base below {layer}: the whole model "
            "runs every epoch"
        )
        return None
    if cut.index < start:
        notes.append(
            f"phase fine_tune: residual branches cross the base at {layer}; its activations are "
            f"cached at {cut.layer}, the nearest single-tensor boundary below"
        )
    halves = split_classifier(clf, cut)
    return "boundary", halves.bottom, halves.top, cut.layer


def _store_folder(
    cfg: RunConfig, inputs: TrainInputs, kind: str, boundary: str | None, views: int
) -> Path:
    """Where the store of ``kind`` (pooled or boundary) for this run's inputs lives."""
    assert inputs.cache_dir is not None
    augment = cfg.train.augment.model_dump(mode="json") if views > 1 else {}
    key = feature_cache_key(
        {
            **inputs.cache_key, "kind": kind, "boundary": boundary or "", "views": str(views),
            "augment": json.dumps(augment, sort_keys=True),
            "seed": str(cfg.train.seed if views > 1 else 0),
            "files": _files_digest(inputs.train, inputs.val),
        }
    )  # fmt: skip
    return inputs.cache_dir / kind / key


def _fits(cfg: RunConfig, inputs: TrainInputs, views: int, shape: tuple[int, ...]) -> bool:
    """Whether a store of this activation shape fits ``train.cache_budget_gb``."""
    need = cache_bytes(len(inputs.train), len(inputs.val), views, shape)
    return need <= cfg.train.cache_budget_gb * 1e9


def _shared_boundary(
    clf: Classifier, cfg: RunConfig, inputs: TrainInputs, views: int
) -> tuple[BoundaryModels, Path] | None:
    """The halves and boundary store folder that fine-tuning will use, when it will: the frozen
    phase then computes its pooled features from that store, so the bottom of the base runs
    once per image and view for both phases."""
    tune = cfg.train.strategy == "fine_tune" and cfg.train.fine_tune.epochs > 0
    if not (tune and cfg.train.boundary_cache):
        return None
    cut = find_cut(clf.base, _start_index(clf.base, inputs.fine_tune_from))
    if cut is None or not _fits(cfg, inputs, views, cut.shape):
        return None
    return split_classifier(clf, cut), _store_folder(cfg, inputs, "boundary", cut.layer, views)


def phase_data(
    clf: Classifier,
    cfg: RunConfig,
    inputs: TrainInputs,
    name: str,
    notes: list[str],
    built: set[Path] | None = None,
) -> PhaseData:
    """How phase ``name`` trains: on a cache of activations (built here on a miss) when its
    switch is on, the frozen part is single-tensor and the cache fits the budget; else the
    whole model, with the reason in ``notes``. ``built`` collects the stores this run made
    (a store made by the frozen phase for fine-tuning is a miss of this run, not a hit)."""
    built = set() if built is None else built
    whole = PhaseData("whole_model", clf.model)
    if inputs.cache_dir is None or name == "full":
        return whole
    views = _views(cfg)
    if cfg.train.augment.enabled and views == 1:
        notes.append(
            f"phase {name}: augmentation is on with train.augment.views=1, so it runs live: the "
            "whole model runs every epoch"
        )
        return whole
    source = _cached_source(clf, cfg, inputs, name, notes)
    if source is None:
        return whole
    kind, frozen, top, boundary = source
    shape = tuple(int(d) for d in frozen.output.shape[1:])
    if not _fits(cfg, inputs, views, shape):
        need = cache_bytes(len(inputs.train), len(inputs.val), views, shape)
        notes.append(
            f"phase {name}: the {kind} cache would take {need / 1e9:.2f} GB, over "
            f"train.cache_budget_gb={cfg.train.cache_budget_gb}: the whole model runs every epoch"
        )
        return whole
    folder = _store_folder(cfg, inputs, kind, boundary, views)
    plan = ViewPlan(
        views, cfg.train.augment, cfg.train.seed, cfg.data.image_size, cfg.train.batch_size,
        clf.binary,
    )  # fmt: skip
    shared = _shared_boundary(clf, cfg, inputs, views) if kind == "pooled" else None
    if shared is not None:
        halves, boundary_folder = shared
        source_store, hit = cached_store(
            halves.bottom, inputs.train, inputs.val, plan, boundary_folder
        )
        if not hit:
            built.add(boundary_folder)
        store, hit = derived_store(halves.pooled, source_store, cfg.train.batch_size, folder)
    else:
        store, hit = cached_store(frozen, inputs.train, inputs.val, plan, folder)
    if not hit:
        built.add(folder)
    train_x, val_x = store.load()
    k, batch, seed = len(inputs.train.classes), cfg.train.batch_size, cfg.train.seed
    train_y = encode_labels(inputs.train.labels, k, clf.binary)
    val_y = encode_labels(inputs.val.labels, k, clf.binary)
    return PhaseData(
        path=f"{kind}_cache",
        fit_model=top,
        train=ViewCycle(train_x, train_y, batch, seed, shuffle=True),
        val=ViewCycle(val_x[None], val_y, batch, seed, shuffle=False),
        views=views,
        cache="miss" if folder in built else "hit",
        cache_mb=round(store.nbytes() / 1e6, 1),
        boundary=boundary,
    )


# -- phases -----------------------------------------------------------------------------------


def _class_weights(cfg: RunConfig, data: SplitData) -> dict[int, float] | None:
    """Keras ``class_weight`` from the config: none, auto (inverse frequency) or given."""
    setting = cfg.train.class_weights
    if setting == "none":
        return None
    if setting == "auto":
        counts = np.bincount(data.labels, minlength=len(data.classes)).astype(float)
        counts[counts == 0] = 1.0
        return {i: float(len(data) / (len(data.classes) * c)) for i, c in enumerate(counts)}
    unknown = sorted(set(setting) - set(data.classes))
    if unknown:
        from tlops.errors import ConfigError

        raise ConfigError(f"train.class_weights: unknown classes {unknown}")
    return {i: float(setting.get(c, 1.0)) for i, c in enumerate(data.classes)}


#: Training steps run per call of the compiled train function: the same updates, batch after
#: batch, with Keras' per-step Python cost paid once per 16 (10 epochs of a head on 2,587
#: cached feature rows: 3.9 s -> 3.0 s).
STEPS_PER_EXECUTION = 16


def _compile(model: Any, cfg: RunConfig, learning_rate: float, binary: bool) -> None:
    """Compile with the configured optimizer, loss (label smoothing) and accuracy."""
    import keras

    optimizers = {
        "adam": keras.optimizers.Adam,
        "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.9),
        "rmsprop": keras.optimizers.RMSprop,
    }
    smoothing = cfg.train.label_smoothing
    if binary:
        loss: Any = keras.losses.BinaryCrossentropy(label_smoothing=smoothing)
        accuracy: Any = keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
        accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    model.compile(
        optimizer=optimizers[cfg.train.optimizer](learning_rate=learning_rate),
        loss=loss,
        metrics=[accuracy],
        jit_compile=cfg.train.jit_compile,
        steps_per_execution=STEPS_PER_EXECUTION,
    )


def _schedule_callbacks(cfg: RunConfig, phase: PhaseConfig) -> list[Any]:
    """Early stopping and the learning-rate schedule of the config."""
    import keras

    monitor = cfg.train.monitor
    mode = "min" if monitor.endswith("loss") else "max"
    callbacks: list[Any] = []
    if cfg.train.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, mode=mode, patience=cfg.train.early_stopping_patience
            )
        )
    if cfg.train.lr_schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=0.5, patience=2)
        )
    elif cfg.train.lr_schedule == "cosine":
        base, total = phase.learning_rate, max(phase.epochs, 1)
        callbacks.append(
            keras.callbacks.LearningRateScheduler(
                lambda epoch: base * 0.5 * (1 + math.cos(math.pi * epoch / total))
            )
        )
    return callbacks


def plan_phases(cfg: RunConfig) -> list[tuple[str, PhaseConfig]]:
    """The phases of the configured strategy, in order."""
    strategy = cfg.train.strategy
    if strategy == "feature_extraction":
        return [("frozen", cfg.train.frozen)]
    if strategy == "fine_tune":
        return [("frozen", cfg.train.frozen), ("fine_tune", cfg.train.fine_tune)]
    return [("full", cfg.train.fine_tune)]


def _train_batchnorm(cfg: RunConfig) -> bool:
    """Whether ``full`` trains BatchNorm: ``train.batchnorm``; auto = only for random weights."""
    if cfg.train.batchnorm == "auto":
        return cfg.backbone.weights == "none"
    return cfg.train.batchnorm == "train"


def _prepare(
    clf: Classifier, name: str, fine_tune_from: str | int | float, train_batchnorm: bool
) -> None:
    """Set which layers train in this phase.

    BatchNorm stays frozen (inference mode) in the fine-tuning phase; in the ``full`` strategy
    it trains when ``train_batchnorm`` (see :func:`_train_batchnorm`).
    """
    if name == "frozen":
        freeze_base(clf)
    elif name == "fine_tune":
        unfreeze_top(clf, fine_tune_from)
    else:
        unfreeze_all(clf, batchnorm=train_batchnorm)


@dataclass
class TrainInputs:
    """Everything :func:`train` needs besides the model and the config."""

    train: SplitData
    val: SplitData
    checkpoint_dir: Path
    fingerprint: str
    fine_tune_from: str | int | float
    cache_dir: Path | None = None  # where cached activations live; None = never cache
    cache_key: dict[str, str] = field(default_factory=dict)  # weights, data, size, ...
    callbacks: CallbackFactory | None = None
    log: Callable[[str], None] = print
    #: called once, before the first epoch, with the training images' pooled features of the
    #: untrained base (the label-error search); it may raise to stop the run
    on_features: Callable[[np.ndarray], None] | None = None


def _fit_phase(
    clf: Classifier,
    cfg: RunConfig,
    inputs: TrainInputs,
    name: str,
    phase: PhaseConfig,
    data: PhaseData,
    ckpt: Checkpoints,
    offset: int,
) -> float:
    """Run the remaining epochs of one phase on ``data``; return the seconds it took."""
    state = ckpt.phase(name)
    initial = int(state["epochs_done"])
    fit_model = data.fit_model
    _compile(fit_model, cfg, phase.learning_rate, clf.binary)
    if initial and ckpt.weights(name, "latest").is_file():
        _load_weights(clf.model, ckpt.weights(name, "latest"))
        inputs.log(f"phase {name}: resuming after epoch {initial} of {phase.epochs}")
    callbacks = [_epoch_checkpoint(clf.model, ckpt, name, cfg.train.monitor)]
    callbacks += _schedule_callbacks(cfg, phase)
    if inputs.callbacks is not None:
        callbacks += inputs.callbacks(name, offset)
    size, batch = cfg.data.image_size, cfg.train.batch_size
    start = time.perf_counter()
    if data.train is not None:
        fit_model.fit(
            data.train,
            validation_data=data.val,
            epochs=phase.epochs,
            initial_epoch=initial,
            class_weight=_class_weights(cfg, inputs.train),
            callbacks=[view_epochs(data.train), *callbacks],
            verbose=2,
        )
    else:
        seed = cfg.train.seed
        fit_model.fit(
            make_dataset(inputs.train, size, batch, binary=clf.binary, shuffle=True, seed=seed),
            validation_data=make_dataset(
                inputs.val, size, batch, binary=clf.binary, shuffle=False, seed=seed
            ),
            epochs=phase.epochs,
            initial_epoch=initial,
            class_weight=_class_weights(cfg, inputs.train),
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles itself
            verbose=2,
        )
    return time.perf_counter() - start


def kept_margin(best: dict[str, float | None], kept: str, monitor: str, n_val: int) -> str:
    """How clearly the kept phase won, in validation images when the monitor is accuracy.

    A difference within two binomial standard deviations of the accuracy
    (``2 sqrt(n p (1 - p))`` images) is called noise: the phases are then as good as each other
    on this validation split, and the kept one is the better by chance as much as by skill.
    """
    scored = {k: v for k, v in best.items() if v is not None}
    others = {k: v for k, v in scored.items() if k != kept}
    if kept not in scored or not others:
        return f"kept {kept}"
    other, value = max(others.items(), key=lambda kv: kv[1] if monitor != "val_loss" else -kv[1])
    if monitor != "val_accuracy":
        return f"kept {kept} ({monitor} {scored[kept]:.4f} vs {value:.4f} for {other})"
    images = round((scored[kept] - value) * n_val)
    p = max(scored[kept], value)
    noise = 2 * math.sqrt(n_val * p * (1 - p))
    verdict = "within noise" if abs(images) <= noise else "beyond noise"
    return (
        f"kept {kept}: {images} more of {n_val} validation images right than {other} "
        f"({verdict}: 2 sd = {noise:.1f} images)"
    )


def describe_path(data: PhaseResult | PhaseData) -> str:
    """How a phase trains (or trained): "boundary cache at block_13_expand (4 views, 61.4 MB,
    hit)", "pooled cache (1 view, 0.2 MB, miss)" or "whole model"."""
    if data.path == "whole_model":
        return "whole model"
    at = f" at {data.boundary}" if data.boundary else ""
    plural = "s" if data.views > 1 else ""
    size = f"{data.views} view{plural}, {data.cache_mb} MB, {data.cache}"
    return f"{data.path.replace('_', ' ')}{at} ({size})"


def path_line(name: str, data: PhaseResult | PhaseData) -> str:
    """One log line saying how a phase trains."""
    return f"phase {name}: {describe_path(data)}"


def _feature_cache_state(cfg: RunConfig, data: PhaseData) -> str:
    """The frozen phase's cache as ``TrainResult.feature_cache`` names it."""
    if data.path == "pooled_cache":
        return data.cache
    if cfg.train.augment.enabled and _views(cfg) == 1:
        return "augmentation"
    return "off"


def _frozen_features(
    clf: Classifier, cfg: RunConfig, inputs: TrainInputs, data: PhaseData
) -> np.ndarray:
    """The training images' pooled features of the base before any phase trains it: the pooled
    cache's first view when the phase trains on it, else one pass of ``clf.feature_model``."""
    if data.path == "pooled_cache" and data.train is not None:
        return np.asarray(data.train.views[0])
    size, batch = cfg.data.image_size, cfg.train.batch_size
    return features_of(clf.feature_model, inputs.train, size, batch, clf.binary)


def train(clf: Classifier, cfg: RunConfig, inputs: TrainInputs) -> TrainResult:
    """Train ``clf`` through the phases of the strategy; the model ends on the kept phase.

    1. plan the phases; load the checkpoint state (same fingerprint = resume);
    2. the frozen phase trains the head on cached pooled features, fine-tuning the top of the
       base on cached boundary activations (:func:`phase_data`), each over the cached views;
    3. each phase: set trainable layers, recompile (lower LR for fine-tuning), fit the epochs
       still to do, restore its best epoch;
    4. keep the phase with the best validation metric and restore its weights.
    """
    ckpt = Checkpoints(inputs.checkpoint_dir, inputs.fingerprint)
    monitor = cfg.train.monitor
    result = TrainResult(phases=[], kept_phase="", monitor=monitor)
    done_before = {n: int(ckpt.phase(n)["epochs_done"]) for n, _ in plan_phases(cfg)}
    if any(done_before.values()):
        result.resumed_at = ", ".join(f"{n}: {e} epochs" for n, e in done_before.items() if e)
    offset, built = 0, set[Path]()
    for name, phase in plan_phases(cfg):
        _prepare(clf, name, inputs.fine_tune_from, _train_batchnorm(cfg))
        state = ckpt.phase(name)
        seconds, data = (
            0.0,
            PhaseData(**{"path": "whole_model", **state.get("path", {})}, fit_model=clf.model),
        )
        if not state["done"] and phase.epochs > int(state["epochs_done"]):
            data = phase_data(clf, cfg, inputs, name, result.notes, built)
            inputs.log(path_line(name, data))
            state["path"] = {k: getattr(data, k) for k in PATH_FIELDS}
        if inputs.on_features is not None and not result.phases:
            inputs.on_features(_frozen_features(clf, cfg, inputs, data))
        if not state["done"] and phase.epochs > int(state["epochs_done"]):
            seconds = _fit_phase(clf, cfg, inputs, name, phase, data, ckpt, offset)
        if name == "frozen":
            result.feature_cache = _feature_cache_state(cfg, data)
        if ckpt.weights(name, "best").is_file():
            _load_weights(clf.model, ckpt.weights(name, "best"))
        state["done"] = True
        ckpt.save()
        trainable, frozen = count_params(clf.model)
        epochs_run = len(state["history"].get("loss", []))
        run_epochs = max(epochs_run - done_before[name], 0)
        result.phases.append(
            PhaseResult(
                name=name,
                epochs=epochs_run,
                history=state["history"],
                best_value=state["best"],
                best_epoch=state["best_epoch"],
                trainable_params=trainable,
                non_trainable_params=frozen,
                seconds=round(seconds, 3),
                images_per_s=round(run_epochs * len(inputs.train) / seconds, 1) if seconds else 0.0,
                used_feature_cache=data.path != "whole_model",
                **{k: getattr(data, k) for k in PATH_FIELDS},
            )
        )
        offset += epochs_run
    scored = [p for p in result.phases if p.best_value is not None]
    kept = scored[0] if scored else result.phases[-1]
    for p in scored[1:]:
        if _better(float(p.best_value or 0.0), kept.best_value, monitor):
            kept = p
    result.kept_phase = kept.name
    if ckpt.weights(kept.name, "best").is_file():
        _load_weights(clf.model, ckpt.weights(kept.name, "best"))
    return result
