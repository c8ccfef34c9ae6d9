"""Backbones, the classifier built on them, and the switches of transfer learning.

Everything here uses ``keras`` and ``keras.ops`` only (no TensorFlow import, no ``Lambda``
layers), so the models run under any Keras 3 backend and load in safe mode.

A note on BatchNormalization: the base is called with ``training=False`` (as in the Keras
fine-tuning guide), but in Keras 3 ``fit`` passes ``training=True`` down to every layer and that
overrides the explicit ``False`` (keras-team/keras#20285). What really keeps a BatchNormalization
layer in inference mode during training is ``layer.trainable = False``: :func:`freeze_base` and
:func:`unfreeze_top` keep every BatchNormalization layer frozen for that reason.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np

from tlops.backbones import BackboneSpec
from tlops.config import AugmentConfig, HeadConfig
from tlops.errors import ConfigError, ServiceError
from tlops.model.forward import forward

#: Preprocess modes (see :mod:`tlops.backbones`).
PREPROCESS_MODES: tuple[str, ...] = ("tf", "caffe", "torch", "included", "unit")

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def preprocess_layer(mode: str, name: str = "preprocess") -> Any:
    """Built-in Keras layers that turn raw RGB in 0..255 into what a backbone expects.

    Only stock layers, so a saved model loads anywhere (plain Keras, ``mlflow models serve``)
    without tlops installed. Modes: ``tf`` x/127.5 - 1; ``unit`` x/255; ``torch`` ImageNet
    mean/std on x/255 (per-channel rescaling); ``caffe`` RGB->BGR minus the ImageNet means (a
    frozen 1x1 convolution: a channel permutation plus a bias, set by :func:`init_preprocess`);
    ``included`` identity (the backbone rescales itself).
    """
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"unknown preprocess mode {mode!r}; known: {PREPROCESS_MODES}")
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)
    if mode == "unit":
        return keras.layers.Rescaling(1.0 / 255.0, name=name)
    if mode == "torch":
        scale = [1.0 / (255.0 * s) for s in _TORCH_STD]
        offset = [-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD, strict=True)]
        return keras.layers.Rescaling(scale, offset=offset, name=name)
    if mode == "caffe":
        return keras.layers.Conv2D(3, 1, use_bias=True, trainable=False, name=name)
    return keras.layers.Identity(name=name)


def init_preprocess(layer: Any) -> None:
    """Set the fixed weights of a built ``caffe`` preprocess layer (no-op for the others)."""
    if isinstance(layer, keras.layers.Conv2D):
        permute = np.zeros((1, 1, 3, 3), dtype="float32")
        for out_channel, in_channel in enumerate((2, 1, 0)):  # BGR from RGB
            permute[0, 0, in_channel, out_channel] = 1.0
        layer.set_weights([permute, -np.array(_CAFFE_MEAN_BGR, dtype="float32")])


# --------------------------------------------------------------------------- bases


def weights_kind(weights: str | None) -> Literal["none", "imagenet", "file"]:
    """What ``weights`` means: None or ``none`` = random, ``imagenet``, else a file path."""
    if weights is None or weights.lower() == "none":
        return "none"
    if weights.lower() == "imagenet":
        return "imagenet"
    return "file"


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (Keras' can run to many lines)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_image_size(spec: BackboneSpec, image_size: int) -> None:
    """Refuse images smaller than the backbone's minimum."""
    if image_size < spec.min_size:
        raise ConfigError(
            f"data.image_size: backbone {spec.name} needs images of at least "
            f"{spec.min_size} pixels, got {image_size}"
        )


def _check_weights_file(spec: BackboneSpec, path: Path) -> None:
    """Refuse a weights file that does not exist."""
    if not path.is_file():
        raise ConfigError(f"backbone.weights: weights file {path} of {spec.name} not found")


def tiny_cnn(image_size: int) -> Any:
    """tlops' own small CNN: 4 blocks of conv 3x3 -> BN -> ReLU, max pooling after 3 of them."""
    inputs = keras.Input((image_size, image_size, 3), name="tiny_cnn_input")
    x = inputs
    for block, filters in enumerate((32, 64, 96, 128), start=1):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, name=f"block{block}_conv"
        )(x)
        # momentum 0.9: small datasets give few steps; 0.99 leaves the moving stats unsettled
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn")(x)
        x = keras.layers.ReLU(name=f"block{block}_relu")(x)
        if block < 4:
            x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


def _application(
    spec: BackboneSpec, image_size: int, weights: str | None, alpha: float | None
) -> Any:
    """A ``keras.applications`` backbone without its top."""
    kwargs: dict[str, Any] = {}
    if spec.has_alpha and alpha is not None:
        kwargs["alpha"] = alpha
    if spec.keras_name.startswith("MobileNetV3"):
        kwargs["include_preprocessing"] = True
    constructor = getattr(keras.applications, spec.keras_name)
    try:
        return constructor(
            include_top=False,
            weights=weights,
            input_shape=(image_size, image_size, 3),
            pooling=None,
            **kwargs,
        )
    except ValueError as exc:
        raise ConfigError(
            f"backbone {spec.name} cannot be built with image_size={image_size}, "
            f"alpha={alpha}, weights={weights}: {_first_line(exc)}"
        ) from None
    except Exception as exc:
        if weights == "imagenet":
            raise ServiceError(
                f"could not get the imagenet weights of {spec.name}: {_first_line(exc)}"
            ) from exc
        raise


def _load_weights_file(spec: BackboneSpec, base: Any, path: Path) -> None:
    """Load a weights file into ``base``; a file that does not fit is a :class:`ConfigError`.

    Keras' warnings while loading are held back: on failure they only repeat the error; after
    a load that left layers freshly initialized (Keras warns instead of failing) they fail it.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            base.load_weights(str(path))
        except Exception as exc:
            raise ConfigError(
                f"backbone.weights: weights file {path} does not fit backbone {spec.name}: "
                f"{_first_line(exc)}"
            ) from None
    for warning in caught:
        if "freshly-initialized" in str(warning.message):
            raise ConfigError(
                f"backbone.weights: weights file {path} loads only partly into backbone "
                f"{spec.name}: {warning.message}"
            )
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def build_base(
    spec: BackboneSpec, image_size: int, weights: str | None, alpha: float | None
) -> Any:
    """The backbone without top or pooling, for ``(image_size, image_size, 3)`` inputs.

    ``weights``: None (or ``"none"``) = random, ``"imagenet"`` = the Keras download, anything
    else = the path of a weights file (``.weights.h5`` or ``.keras``) saved from this backbone.
    """
    _check_image_size(spec, image_size)
    kind = weights_kind(weights)
    path = Path(weights) if weights is not None and kind == "file" else None
    if path is not None:
        _check_weights_file(spec, path)
    if spec.name == "tiny_cnn":
        if kind == "imagenet":
            raise ConfigError(
                "backbone.weights: tiny_cnn has no imagenet weights; use none or a weights file"
            )
        base = tiny_cnn(image_size)
    else:
        base = _application(spec, image_size, "imagenet" if kind == "imagenet" else None, alpha)
    if path is not None:
        _load_weights_file(spec, base, path)
    return base


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def arrays_sha256(model: Any) -> str:
    """SHA-256 over every weight array of ``model`` in order (dtype, shape and bytes)."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        value = np.ascontiguousarray(array)
        digest.update(f"{value.dtype.str}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def weights_fingerprint(base: Any, weights: str | None) -> tuple[str, str]:
    """What identifies the base's weights: ``(kind, sha256)``.

    ``("file", sha256 of the file's bytes)`` for a weights file, else ``("arrays", sha256 over
    the base's weight arrays in order)``, the same for identical weights.
    """
    if weights is not None and weights_kind(weights) == "file":
        return "file", file_sha256(Path(weights))
    return "arrays", arrays_sha256(base)


# --------------------------------------------------------------------------- classifier


@dataclass
class Classifier:
    """A classifier and the models that share its layers.

    ``model``: raw image (S, S, 3) in 0..255 -> probabilities (augment -> preprocess -> base ->
    pool -> head). ``feature_model``: raw image -> pooled features, no augmentation.
    ``head_model``: pooled features -> probabilities, with the very layer objects of ``model``'s
    head, so training it trains ``model``.
    """

    model: Any
    base: Any
    feature_model: Any
    head_model: Any
    num_classes: int
    binary: bool


def is_binary(head: HeadConfig, num_classes: int) -> bool:
    """Whether the output is one sigmoid unit; sigmoid needs exactly two classes."""
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least two classes, got {num_classes}")
    if head.output == "sigmoid" and num_classes != 2:
        raise ConfigError(f"head.output: sigmoid needs exactly two classes, got {num_classes}")
    return head.output == "sigmoid" or (head.output == "auto" and num_classes == 2)


def augmentation(augment: AugmentConfig, seed: int) -> Any | None:
    """The enabled random layers as one ``augment`` Sequential (active only in training)."""
    layers: list[Any] = []
    if augment.flip != "none":
        layers.append(keras.layers.RandomFlip(augment.flip, seed=seed, name="flip"))
    if augment.rotation > 0:
        layers.append(keras.layers.RandomRotation(augment.rotation, seed=seed + 1, name="rotation"))
    if augment.zoom > 0:
        layers.append(keras.layers.RandomZoom(augment.zoom, seed=seed + 2, name="zoom"))
    if augment.contrast > 0:
        layers.append(keras.layers.RandomContrast(augment.contrast, seed=seed + 3, name="contrast"))
    if augment.translation > 0:
        layers.append(
            keras.layers.RandomTranslation(
                augment.translation, augment.translation, seed=seed + 4, name="translation"
            )
        )
    if not layers:
        return None
    return keras.Sequential(layers, name="augment")


def head_layers(head: HeadConfig, num_classes: int, binary: bool) -> list[Any]:
    """Dropout, optional hidden dense + dropout, and the float32 output layer."""
    layers: list[Any] = [keras.layers.Dropout(head.dropout, name="head_dropout")]
    if head.hidden_units > 0:
        layers.append(keras.layers.Dense(head.hidden_units, activation="relu", name="head_hidden"))
        layers.append(keras.layers.Dropout(head.dropout, name="head_hidden_dropout"))
    units, activation = (1, "sigmoid") if binary else (num_classes, "softmax")
    layers.append(
        keras.layers.Dense(units, activation=activation, dtype="float32", name="predictions")
    )
    return layers


def _apply(layers: list[Any], x: Any) -> Any:
    """Call ``layers`` in sequence."""
    for layer in layers:
        x = layer(x)
    return x


def build_classifier(
    base: Any,
    spec: BackboneSpec,
    num_classes: int,
    head: HeadConfig,
    augment: AugmentConfig,
    image_size: int,
    seed: int,
) -> Classifier:
    """The classifier on ``base``, with its feature and head models sharing the layers."""
    binary = is_binary(head, num_classes)
    shape = (image_size, image_size, 3)
    preprocess = preprocess_layer(spec.preprocess)
    pool = keras.layers.GlobalAveragePooling2D(name="pool")
    heads = head_layers(head, num_classes, binary)

    image = keras.Input(shape, name="image")
    augmenter = augmentation(augment, seed)
    x = augmenter(image) if augmenter is not None else image
    # training=False documents intent; BN.trainable=False is what keeps BN in inference mode.
    features = pool(base(preprocess(x), training=False))
    init_preprocess(preprocess)  # built by the call above
    model = keras.Model(image, _apply(heads, features), name="classifier")

    raw = keras.Input(shape, name="image")
    feature_model = keras.Model(raw, pool(base(preprocess(raw), training=False)), name="features")

    pooled = keras.Input((int(base.output.shape[-1]),), name="features")
    head_model = keras.Model(pooled, _apply(heads, pooled), name="head")
    return Classifier(model, base, feature_model, head_model, num_classes, binary)


# --------------------------------------------------------------------------- trainability


def _is_batchnorm(layer: Any) -> bool:
    """Whether ``layer`` is a BatchNormalization layer."""
    return isinstance(layer, keras.layers.BatchNormalization)


def trainable_layer_count(base: Any) -> int:
    """How many layers of ``base`` have trainable weights."""
    return sum(1 for layer in base.layers if layer.trainable and layer.trainable_weights)


def set_trainable(layer: Any, value: bool) -> None:
    """Set ``trainable`` on ``layer`` and, recursively, all its sublayers.

    Keras 3 on TensorFlow skips an assignment that does not change the layer's own value
    (``KerasAutoTrackable.__setattr__`` short-circuits ``True is True``), so ``base.trainable =
    True`` would not reach sublayers frozen one by one; toggling first always propagates.
    """
    layer.trainable = not value
    layer.trainable = value


def freeze_base(clf: Classifier) -> None:
    """Freeze the whole base: only the head trains."""
    set_trainable(clf.base, False)


def _start_index(base: Any, start: str | int | float) -> int:
    """Index in ``base.layers`` of the first layer to unfreeze."""
    layers = base.layers
    if isinstance(start, bool):
        raise ConfigError(
            f"backbone.fine_tune_from: expected a layer name, count or fraction, got {start!r}"
        )
    if isinstance(start, str):
        names = [layer.name for layer in layers]
        if start not in names:
            raise ConfigError(
                f"backbone.fine_tune_from: no layer named {start!r} in backbone {base.name}"
            )
        return names.index(start)
    if isinstance(start, int):
        if start < 1:
            raise ConfigError(f"backbone.fine_tune_from: a layer count must be >= 1, got {start}")
        return max(0, len(layers) - start)
    if not 0 < start <= 1:
        raise ConfigError(f"backbone.fine_tune_from: a fraction must be in (0, 1], got {start}")
    return len(layers) - math.ceil(start * len(layers))


def unfreeze_top(clf: Classifier, start: str | int | float) -> int:
    """Unfreeze the base from ``start`` up; BatchNormalization layers stay frozen.

    ``start``: a layer name (that layer and all above it), an int N (the last N of
    ``base.layers``) or a float f in (0, 1] (the last ceil(f * len(base.layers)) layers).
    Returns how many layers of the base now have trainable weights.
    """
    base = clf.base
    index = _start_index(base, start)
    set_trainable(base, True)
    for position, layer in enumerate(base.layers):
        if position < index or _is_batchnorm(layer):
            layer.trainable = False
    return trainable_layer_count(base)


def unfreeze_all(clf: Classifier, *, batchnorm: bool = True) -> int:
    """Make the whole base trainable (the ``full`` strategy); returns the trainable layer count.

    With ``batchnorm=True`` BatchNormalization layers train too, and in Keras 3 that means they
    run in training mode under ``fit`` (batch statistics, moving averages updated) despite the
    base's ``training=False`` call: right for training from scratch. ``batchnorm=False`` keeps
    them frozen (inference mode), as when fine-tuning pretrained weights.
    """
    set_trainable(clf.base, True)
    if not batchnorm:
        for layer in clf.base.layers:
            if _is_batchnorm(layer):
                layer.trainable = False
    return trainable_layer_count(clf.base)


def count_params(model: Any) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts of ``model``."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    frozen = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return int(trainable), int(frozen)


def predict_batches(model: Any, images: np.ndarray, batch: int) -> np.ndarray:
    """``model``'s output for ``images``, through ``predict_on_batch`` in batches of ``batch``
    (the last one padded): one compiled shape, the one latency timing and serving use, and
    no dataset built around an in-memory array (``model.predict``'s first-call cost). Several
    batches run at once on a CPU (:func:`tlops.model.forward.forward`)."""
    batch = max(1, min(batch, len(images)))
    if not len(images):  # no images: the output's shape, from one blank image
        blank = np.zeros((1, *images.shape[1:]), images.dtype)
        return next(forward(model, [blank]))[:0]

    def padded() -> Iterator[np.ndarray]:
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            short = batch - len(chunk)
            if short:
                chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), chunk.dtype)])
            yield chunk

    out = list(forward(model, padded()))
    return np.concatenate(out)[: len(images)]


def probabilities(output: np.ndarray, binary: bool) -> np.ndarray:
    """Model output as class probabilities of shape (n, k); one sigmoid unit -> [1 - p, p]."""
    values = np.asarray(output)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float32)
    if binary:
        p = values.reshape(len(values), -1)
        if p.shape[1] != 1:
            raise ValueError(f"a sigmoid output has one column, got shape {values.shape}")
        return np.concatenate([1.0 - p, p], axis=1)
    if values.ndim != 2:
        raise ValueError(f"a softmax output is (n, k), got shape {values.shape}")
    return values
