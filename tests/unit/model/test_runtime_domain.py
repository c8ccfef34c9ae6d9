"""The training runtime: seeds, precision policy, device description and distribution scope,
on whatever this machine has (CPU here; one or more GPUs on an accelerator machine)."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator

import numpy as np
import pytest

from tlops.config import TrainConfig
from tlops.model.runtime import Runtime, configure, strategy_scope


@pytest.fixture(autouse=True)
def _float32_after() -> Iterator[None]:
    """The precision policy is process-wide: put it back for the next test."""
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")


def draws() -> tuple[list[float], list[float]]:
    """Random numbers from NumPy and from Keras' backend generator."""
    import keras

    host = np.random.random(3).tolist()
    backend = keras.ops.convert_to_numpy(keras.random.uniform((3,))).tolist()
    return host, backend


def test_configure_describes_this_machine() -> None:
    import keras

    runtime = configure(TrainConfig(seed=3))
    assert runtime.backend == keras.backend.backend()
    assert runtime.precision == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    if runtime.device.startswith("GPU x"):
        count = int(runtime.device.split()[1].removeprefix("x").rstrip(":"))
        multi = count > 1 and runtime.backend == "tensorflow"
        assert runtime.strategy == ("MirroredStrategy" if multi else "default")
        assert runtime.replicas == (count if multi else 1)
    else:
        assert runtime.device == f"CPU ({platform.machine()})"
        assert (runtime.strategy, runtime.replicas) == ("default", 1)
    assert runtime.versions["keras"] == keras.__version__
    assert runtime.versions["python"] == platform.python_version()
    if runtime.backend == "tensorflow":
        import tensorflow as tf

        assert runtime.versions["tensorflow"] == tf.__version__ and "cuda" in runtime.versions
    tags = runtime.tags()
    assert {k: tags[k] for k in ("backend", "device", "strategy", "precision")} == {
        "backend": runtime.backend, "device": runtime.device, "strategy": runtime.strategy,
        "precision": "float32",
    }  # fmt: skip
    assert tags["version.keras"] == keras.__version__
    assert "replicas" not in tags


@pytest.mark.parametrize(("mode", "policy"), [("bfloat16", "mixed_bfloat16"),
                                              ("float16", "mixed_float16")])  # fmt: skip
def test_mixed_precision_sets_the_global_policy(mode: str, policy: str) -> None:
    import keras

    runtime = configure(TrainConfig(mixed_precision=mode))  # type: ignore[arg-type]
    assert runtime.precision == policy and runtime.tags()["precision"] == policy
    assert keras.mixed_precision.global_policy().name == policy
    layer = keras.layers.Dense(2)
    assert layer.compute_dtype == mode and layer.variable_dtype == "float32"
    configure(TrainConfig())
    assert keras.mixed_precision.global_policy().name == "float32"


def test_the_seed_makes_runs_repeatable() -> None:
    configure(TrainConfig(seed=11))
    first = draws()
    configure(TrainConfig(seed=11))
    assert draws() == first
    configure(TrainConfig(seed=12))
    assert draws() != first


def test_strategy_scope() -> None:
    default = Runtime("tensorflow", "CPU (x)", "default", 1, "float32", {})
    assert isinstance(strategy_scope(default), contextlib.nullcontext)
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    mirrored = Runtime("tensorflow", "CPU (x)", "MirroredStrategy", 1, "float32", {})
    with strategy_scope(mirrored):
        assert tf.distribute.has_strategy()
        assert isinstance(tf.distribute.get_strategy(), tf.distribute.MirroredStrategy)
    assert not tf.distribute.has_strategy()
