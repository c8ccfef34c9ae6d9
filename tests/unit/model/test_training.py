"""Training mechanics on tiny data: phases, kept phase, checkpoints, the feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlops.backbones import get_spec
from tlops.config import RunConfig, load_config
from tlops.data.inputs import SplitData, load_image
from tlops.model.classifier import augmentation, build_base, build_classifier
from tlops.model.training import (
    Checkpoints,
    TrainInputs,
    _better,
    phase_data,
    plan_phases,
    train,
)
from tlops.model.views import VIEW_SEED_STRIDE, ViewCycle, view_epochs


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
        "head.output=softmax", "train.augment.flip=none", "train.augment.rotation=0",
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


def _inputs(
    splits: tuple[SplitData, SplitData], tmp_path: Path, tag: str, cache: Path | None
) -> TrainInputs:
    return TrainInputs(
        train=splits[0], val=splits[1], checkpoint_dir=tmp_path / tag, fingerprint=tag,
        fine_tune_from=0.5, cache_dir=cache, cache_key={"weights": "w"}, log=lambda _: None,
    )  # fmt: skip


def _store(cache: Path, kind: str) -> Path:
    (folder,) = (p for p in (cache / kind).iterdir() if p.is_dir())
    return folder


def test_fine_tune_runs_both_phases_and_reuses_cached_features(
    splits: tuple[SplitData, SplitData], tmp_path: Path
) -> None:
    cfg = _config()
    cache = tmp_path / "activations"

    def run(tag: str) -> object:
        return train(_classifier(cfg), cfg, _inputs(splits, tmp_path, tag, cache))

    first = run("a")
    assert [p.name for p in first.phases] == ["frozen", "fine_tune"]
    assert first.feature_cache == "miss"
    frozen, tuned = first.phases
    assert (frozen.path, frozen.cache, frozen.views) == ("pooled_cache", "miss", 1)
    # fine-tuning trains the top of the base on activations cached at its boundary
    assert (tuned.path, tuned.cache, tuned.boundary) == ("boundary_cache", "miss", "block2_pool")
    assert frozen.used_feature_cache and tuned.used_feature_cache
    assert frozen.trainable_params < tuned.trainable_params  # the top of the base trains
    assert [len(v) for v in frozen.history.values()] == [2] * len(frozen.history)
    assert first.kept_phase in ("frozen", "fine_tune")
    best = {p.name: p.best_value for p in first.phases}
    assert best[first.kept_phase] == max(v for v in best.values() if v is not None)
    pooled = _store(cache, "pooled")
    assert np.load(pooled / "train.npy").shape == (1, 16, 128)
    assert np.load(pooled / "val.npy").shape == (6, 128)
    assert np.load(pooled / "train.npy").dtype == np.float16
    assert np.load(_store(cache, "boundary") / "train.npy").shape[:2] == (1, 16)

    second = run("b")
    assert second.feature_cache == "hit"
    assert [p.cache for p in second.phases] == ["hit", "hit"]


def test_augmentation_with_one_view_bypasses_the_caches(
    splits: tuple[SplitData, SplitData], tmp_path: Path
) -> None:
    cfg = _config("train.augment.flip=horizontal", "train.augment.views=1")
    result = train(_classifier(cfg), cfg, _inputs(splits, tmp_path, "c", tmp_path / "f"))
    assert result.feature_cache == "augmentation"
    assert not (tmp_path / "f").exists()
    assert [p.path for p in result.phases] == ["whole_model", "whole_model"]
    assert not result.phases[0].used_feature_cache
    assert "augmentation is on" in result.notes[0]


def test_augmented_views_are_cached_seeded_and_the_first_is_the_image(
    splits: tuple[SplitData, SplitData], tmp_path: Path
) -> None:
    cfg = _config(
        "train.augment.flip=horizontal", "train.augment.rotation=0.1", "train.augment.views=3",
        "train.strategy=feature_extraction",
    )  # fmt: skip
    clf = _classifier(cfg)
    result = train(clf, cfg, _inputs(splits, tmp_path, "v", tmp_path / "one"))
    (frozen,) = result.phases
    assert (frozen.path, frozen.views, frozen.cache) == ("pooled_cache", 3, "miss")
    views = np.load(_store(tmp_path / "one", "pooled") / "train.npy")
    assert views.shape == (3, 16, 128)
    images = np.stack([load_image(p, 16) for p in splits[0].paths])
    plain = np.asarray(clf.feature_model.predict(images, verbose=0))
    np.testing.assert_allclose(views[0], plain, rtol=1e-2, atol=1e-2)  # float16 storage
    # view v: one draw of the configured layers, seeded with seed + 1009 v, batch after batch
    for v in (1, 2):
        layers = augmentation(cfg.train.augment, cfg.train.seed + VIEW_SEED_STRIDE * v)
        drawn = np.concatenate(
            [layers(images[i : i + 4], training=True) for i in range(0, len(images), 4)]
        )
        expected = np.asarray(clf.feature_model.predict(drawn, verbose=0))
        np.testing.assert_allclose(views[v], expected, rtol=1e-2, atol=1e-2)
        assert not np.array_equal(views[v], views[0])
    # validation is never augmented
    val = np.load(_store(tmp_path / "one", "pooled") / "val.npy")
    held = np.stack([load_image(p, 16) for p in splits[1].paths])
    np.testing.assert_allclose(val, clf.feature_model.predict(held, verbose=0), atol=1e-2)
    # the same seed draws the same views in another run (of the same frozen base)
    train(clf, cfg, _inputs(splits, tmp_path, "w", tmp_path / "two"))
    np.testing.assert_array_equal(np.load(_store(tmp_path / "two", "pooled") / "train.npy"), views)


def test_a_cache_over_its_budget_or_switched_off_runs_the_whole_model(
    splits: tuple[SplitData, SplitData], tmp_path: Path
) -> None:
    one = ("train.frozen.epochs=1", "train.fine_tune.epochs=1")  # the path is what is tested
    cfg = _config("train.cache_budget_gb=1e-9", *one)
    result = train(_classifier(cfg), cfg, _inputs(splits, tmp_path, "d", tmp_path / "c1"))
    assert [p.path for p in result.phases] == ["whole_model", "whole_model"]
    assert any("over train.cache_budget_gb=1e-09" in n for n in result.notes)
    cfg = _config("train.boundary_cache=false", *one)
    result = train(_classifier(cfg), cfg, _inputs(splits, tmp_path, "e", tmp_path / "c2"))
    assert [p.path for p in result.phases] == ["pooled_cache", "whole_model"]


def test_epochs_cycle_through_the_views_in_seeded_orders() -> None:
    views = np.arange(3 * 10, dtype=np.float16).reshape(3, 10, 1)
    targets = np.arange(10)
    cycle = ViewCycle(views, targets, batch_size=4, seed=7, shuffle=True)
    seen: list[tuple[int, list[int]]] = []
    for epoch in range(4):
        cycle.set_epoch(epoch)
        rows = np.concatenate([cycle[i][1] for i in range(len(cycle))])
        assert sorted(rows.tolist()) == list(range(10))  # every image once per epoch
        x = np.concatenate([cycle[i][0] for i in range(len(cycle))])
        assert (x[:, 0] // 10 == epoch % 3).all()  # epoch e reads view e mod 3
        seen.append((cycle.view, cycle.order.tolist()))
    assert seen[0][1] != seen[3][1]  # a new order every epoch
    again = ViewCycle(views, targets, batch_size=4, seed=7, shuffle=True)
    again.set_epoch(3)
    assert again.order.tolist() == seen[3][1]  # seeded: a resumed run reads the same order


def test_fit_reads_view_e_mod_v_at_epoch_e() -> None:
    import keras

    read: list[int] = []

    class Recording(ViewCycle):
        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            read.append(self.view)
            return super().__getitem__(index)

    views = np.zeros((3, 8, 2), dtype=np.float16)
    cycle = Recording(views, keras.utils.to_categorical(np.arange(8) % 2, 2), 8, 0, True)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    model.fit(cycle, epochs=5, initial_epoch=1, callbacks=[view_epochs(cycle)], verbose=0)
    # Keras reads one batch before training to learn its shapes; then epochs 1..4 read views
    assert read[-4:] == [1, 2, 0, 1] and len(read) <= 5


def test_checkpoint_state_of_other_inputs_is_ignored(tmp_path: Path) -> None:
    ckpt = Checkpoints(tmp_path, "one")
    ckpt.phase("frozen")["epochs_done"] = 3
    ckpt.save()
    assert Checkpoints(tmp_path, "one").phase("frozen")["epochs_done"] == 3
    assert Checkpoints(tmp_path, "two").phase("frozen")["epochs_done"] == 0
    assert json.loads((tmp_path / "state.json").read_text())["fingerprint"] == "one"


def test_the_frozen_phase_pools_the_boundary_store_that_fine_tuning_then_reuses(
    splits: tuple[SplitData, SplitData], tmp_path: Path
) -> None:
    cfg = _config()
    clf = _classifier(cfg)
    inputs = _inputs(splits, tmp_path, "s", tmp_path / "cache")
    built: set[Path] = set()
    notes: list[str] = []
    frozen = phase_data(clf, cfg, inputs, "frozen", notes, built)
    # both stores were made by one pass of the bottom of the base over the images
    assert {p.parent.name for p in built} == {"pooled", "boundary"}
    images = np.stack([load_image(p, 16) for p in splits[0].paths])
    pooled = np.load(_store(tmp_path / "cache", "pooled") / "train.npy")[0]
    expected = np.asarray(clf.feature_model.predict(images, verbose=0))
    np.testing.assert_allclose(pooled, expected, rtol=2e-2, atol=2e-2)
    assert frozen.path == "pooled_cache" and frozen.cache == "miss"
    tuned = phase_data(clf, cfg, inputs, "fine_tune", notes, built)
    assert (tuned.path, tuned.cache) == ("boundary_cache", "miss")  # made by this run
    again = phase_data(clf, cfg, inputs, "fine_tune", notes, set())
    assert again.cache == "hit"


def test_the_label_search_gets_the_untrained_bases_features_once_on_either_path(
    splits: tuple[SplitData, SplitData], tmp_path: Path
) -> None:
    cfg = _config()
    seen: dict[str, list[np.ndarray]] = {"cached": [], "whole": []}
    for path, cache in (("cached", tmp_path / "act"), ("whole", None)):
        clf = _classifier(cfg)
        expected = clf.feature_model.predict_on_batch(  # type: ignore[attr-defined]
            np.stack([load_image(p, 16) for p in splits[0].paths])
        )
        inputs = _inputs(splits, tmp_path, path, cache)
        inputs.on_features = seen[path].append
        train(clf, cfg, inputs)
        assert len(seen[path]) == 1  # once, not once per phase
        assert seen[path][0].shape == (16, 128)
        np.testing.assert_allclose(np.asarray(seen[path][0], np.float32), expected, atol=2e-2)


def test_a_label_search_that_raises_stops_the_run_before_any_epoch(
    splits: tuple[SplitData, SplitData], tmp_path: Path
) -> None:
    cfg = _config()
    inputs = _inputs(splits, tmp_path, "stop", tmp_path / "act")

    def refuse(features: np.ndarray) -> None:
        raise RuntimeError("too many suspects")

    inputs.on_features = refuse
    with pytest.raises(RuntimeError, match="too many suspects"):
        train(_classifier(cfg), cfg, inputs)
    assert not list((tmp_path / "stop").glob("*.weights.npz"))


def test_a_checkpoint_restores_every_variable_and_refuses_another_models(
    tmp_path: Path,
) -> None:
    from tlops.model.training import _load_weights, _save_weights

    cfg = _config()
    saved, other = _classifier(cfg), _classifier(cfg)  # the same layers, other random values
    path = tmp_path / "latest.weights.npz"
    _save_weights(saved.model, path)  # type: ignore[attr-defined]
    _load_weights(other.model, path)  # type: ignore[attr-defined]
    pairs = zip(saved.model.weights, other.model.weights, strict=True)  # type: ignore[attr-defined]
    for before, after in pairs:  # trainable or not (BatchNorm statistics too)
        np.testing.assert_array_equal(before.numpy(), after.numpy())
    wider = load_config(None, ["backbone.name=tiny_cnn", "data.image_size=16"])
    spec = get_spec("tiny_cnn")
    three = build_classifier(build_base(spec, 16, None, None), spec, 3, wider.head,
                             wider.train.augment, 16, 0)  # fmt: skip
    with pytest.raises(ValueError, match=r"latest\.weights\.npz"):
        _load_weights(three.model, path)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left beside it
