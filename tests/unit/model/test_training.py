"""Training mechanics on tiny data: phases, kept phase, checkpoints, the feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlops.backbones import get_spec
from tlops.config import RunConfig, load_config
from tlops.data.inputs import SplitData
from tlops.model.classifier import build_base, build_classifier
from tlops.model.training import Checkpoints, TrainInputs, _better, plan_phases, train


def _split(root: Path, n: int, seed: int) -> SplitData:
    """Two classes of 12x12 images: dark or bright."""
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for label in (0, 1):
        for i in range(n):
            level = 40 if label == 0 else 200
            pixels = np.clip(rng.normal(level, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
            path = root / f"{seed}_{label}_{i}.png"
            Image.fromarray(pixels).save(path)
            paths.append(str(path))
            labels.append(label)
    return SplitData(paths, np.array(labels, dtype=np.int32), ["dark", "bright"], paths)


def _config(*overrides: str) -> RunConfig:
    base = [
        "backbone.name=tiny_cnn", "backbone.weights=none", "data.image_size=16",
        "train.batch_size=4", "train.frozen.epochs=2", "train.fine_tune.epochs=2",
        "head.output=softmax",
    ]  # fmt: skip
    return load_config(None, [*base, *overrides])


def _classifier(cfg: RunConfig) -> object:
    spec = get_spec("tiny_cnn")
    base = build_base(spec, cfg.data.image_size, None, None)
    return build_classifier(base, spec, 2, cfg.head, cfg.train.augment, 16, 0)


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[SplitData, SplitData]:
    root = tmp_path_factory.mktemp("images")
    return _split(root, 8, 1), _split(root, 3, 2)


def test_plan_phases_per_strategy() -> None:
    assert [n for n, _ in plan_phases(_config())] == ["frozen", "fine_tune"]
    assert [n for n, _ in plan_phases(_config("train.strategy=full"))] == ["full"]
    only = plan_phases(_config("train.strategy=feature_extraction"))
    assert [n for n, _ in only] == ["frozen"]


def test_better_follows_the_monitor() -> None:
    assert _better(0.9, 0.8, "val_accuracy") and not _better(0.7, 0.8, "val_accuracy")
    assert _better(0.2, 0.3, "val_loss") and _better(0.5, None, "val_loss")
    assert not _better(float("nan"), None, "val_accuracy")


def test_fine_tune_runs_both_phases_and_reuses_cached_features(
    splits: tuple[SplitData, SplitData], tmp_path: Path
) -> None:
    cfg = _config()
    train_split, val_split = splits
    cache = tmp_path / "features.npz"

    def run(tag: str) -> object:
        inputs = TrainInputs(
            train=train_split, val=val_split, checkpoint_dir=tmp_path / tag, fingerprint=tag,
            fine_tune_from=0.5, feature_cache_file=cache, log=lambda _: None,
        )  # fmt: skip
        return train(_classifier(cfg), cfg, inputs)

    first = run("a")
    assert [p.name for p in first.phases] == ["frozen", "fine_tune"]
    assert first.feature_cache == "miss" and cache.is_file()
    assert first.phases[0].used_feature_cache and not first.phases[1].used_feature_cache
    frozen, tuned = first.phases
    assert frozen.trainable_params < tuned.trainable_params  # the top of the base trains
    assert [len(v) for v in frozen.history.values()] == [2] * len(frozen.history)
    assert first.kept_phase in ("frozen", "fine_tune")
    best = {p.name: p.best_value for p in first.phases}
    assert best[first.kept_phase] == max(v for v in best.values() if v is not None)
    with np.load(cache) as stored:
        assert stored["train"].shape == (16, 128) and stored["val"].shape == (6, 128)

    second = run("b")
    assert second.feature_cache == "hit"


def test_augmentation_bypasses_the_feature_cache(
    splits: tuple[SplitData, SplitData], tmp_path: Path
) -> None:
    cfg = _config("train.augment.flip=horizontal", "train.strategy=feature_extraction")
    inputs = TrainInputs(
        train=splits[0], val=splits[1], checkpoint_dir=tmp_path / "c", fingerprint="c",
        fine_tune_from=0.5, feature_cache_file=tmp_path / "f.npz", log=lambda _: None,
    )  # fmt: skip
    result = train(_classifier(cfg), cfg, inputs)
    assert result.feature_cache == "augmentation"
    assert not (tmp_path / "f.npz").exists()
    assert not result.phases[0].used_feature_cache
    assert "augmentation is on" in result.notes[0]


def test_checkpoint_state_of_other_inputs_is_ignored(tmp_path: Path) -> None:
    ckpt = Checkpoints(tmp_path, "one")
    ckpt.phase("frozen")["epochs_done"] = 3
    ckpt.save()
    assert Checkpoints(tmp_path, "one").phase("frozen")["epochs_done"] == 3
    assert Checkpoints(tmp_path, "two").phase("frozen")["epochs_done"] == 0
    assert json.loads((tmp_path / "state.json").read_text())["fingerprint"] == "one"
