"""The training runtime: seeds, determinism, mixed precision, device and distribution.

Backend-specific calls are guarded by ``keras.backend.backend()`` so the rest of the training
code stays ``keras.*`` only and also runs under the JAX or PyTorch backends.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from typing import Any

from tlops.config import TrainConfig


@dataclass(frozen=True)
class Runtime:
    """What training runs on: backend, device, strategy, precision, versions."""

    backend: str
    device: str
    strategy: str
    replicas: int
    precision: str
    versions: dict[str, str]

    def tags(self) -> dict[str, str]:
        """As MLflow tags."""
        return {
            "backend": self.backend,
            "device": self.device,
            "strategy": self.strategy,
            "precision": self.precision,
            **{f"version.{k}": v for k, v in self.versions.items()},
        }


def gpu_names() -> list[str]:
    """Names of the visible GPUs, for the active backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        names = []
        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            names.append(str(details.get("device_name", gpu.name)))
        return names
    if backend == "jax":
        import jax

        return [str(d.device_kind) for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def _versions() -> dict[str, str]:
    """Framework versions (TF and CUDA where the TF backend is used)."""
    import keras

    versions = {"keras": keras.__version__, "python": platform.python_version()}
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
        build = tf.sysconfig.get_build_info()
        versions["cuda"] = (
            str(build.get("cuda_version", "none")) if build.get("is_cuda_build") else "none"
        )
    elif backend == "jax":
        import jax

        versions["jax"] = jax.__version__
    return versions


def configure(train: TrainConfig) -> Runtime:
    """Seed everything, set determinism and the precision policy; describe the device."""
    import keras

    keras.utils.set_random_seed(train.seed)
    backend = keras.backend.backend()
    if train.deterministic and backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    policy = "float32" if train.mixed_precision == "off" else f"mixed_{train.mixed_precision}"
    keras.mixed_precision.set_global_policy(policy)
    gpus = gpu_names()
    multi = backend == "tensorflow" and len(gpus) > 1
    return Runtime(
        backend=backend,
        device=f"GPU x{len(gpus)}: {', '.join(gpus)}" if gpus else f"CPU ({platform.machine()})",
        strategy="MirroredStrategy" if multi else "default",
        replicas=len(gpus) if multi else 1,
        precision=policy,
        versions=_versions(),
    )


def strategy_scope(runtime: Runtime) -> Any:
    """The distribution scope to build and compile models in."""
    if runtime.strategy == "MirroredStrategy":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()
