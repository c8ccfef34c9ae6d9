"""Split a classifier at the fine-tuning boundary, with stock Keras.

Below the boundary everything is frozen and deterministic (BatchNorm in inference mode), so its
output can be computed once and cached; fine-tuning then trains the *top* model (the unfrozen
top of the base, the pooling and the head) on those cached activations. Both halves are
functional sub-models made of the very layer objects of the whole classifier: training the top
trains the whole model, and what is saved is still the one whole model.

A cut is valid when exactly one tensor crosses it (residual branches crossing the requested
boundary would need two); :func:`find_cut` moves the cut down to the nearest layer where that
holds, so the layers between keep their requested trainability and only run every epoch.

One difference from training the whole model: Keras 3 does not pass ``training=False`` into a
nested base, so stochastic layers below the cut (EfficientNet's drop-connect) are active in a
whole-model ``fit``; computed once for the cache, they run in inference mode (deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from tlops.model.classifier import Classifier


@dataclass(frozen=True)
class Cut:
    """Where the base is split: ``base.layers[index:]`` form the top."""

    index: int
    layer: str  # name of the first layer of the top
    shape: tuple[int, ...]  # the boundary activation of one image


@dataclass(frozen=True)
class BoundaryModels:
    """The two halves of a classifier: raw image -> boundary activation -> probabilities."""

    cut: Cut
    bottom: Any  # raw image (S, S, 3) in 0..255 -> boundary activation (no augmentation)
    top: Any  # boundary activation -> probabilities, sharing the classifier's layers
    pooled: Any  # boundary activation -> pooled features (what the frozen phase trains on)


def _inputs_of(layer: Any) -> list[Any]:
    """The symbolic tensors ``layer`` consumes in its graph."""
    return [t for node in layer._inbound_nodes for t in node.input_tensors]


def crossing_tensors(base: Any, index: int) -> list[Any]:
    """The tensors made below ``base.layers[index]`` and used at or above it (the base's own
    output counts as used above)."""
    position = {id(layer): i for i, layer in enumerate(base.layers)}
    crossing: dict[int, Any] = {}
    consumers = [t for layer in base.layers[index:] for t in _inputs_of(layer)]
    for tensor in [*consumers, *keras.tree.flatten(base.output)]:
        producer = tensor._keras_history.operation
        if position.get(id(producer), index) < index:
            crossing[id(tensor)] = tensor
    return list(crossing.values())


def find_cut(base: Any, start: int) -> Cut | None:
    """The highest cut at or below layer ``start`` that a single tensor crosses; None when the
    only such cut is the base's input (nothing to cache)."""
    for index in range(min(start, len(base.layers) - 1), 1, -1):
        crossing = crossing_tensors(base, index)
        if len(crossing) == 1:
            shape = tuple(int(d) for d in crossing[0].shape[1:])
            return Cut(index=index, layer=base.layers[index].name, shape=shape)
    return None


def split_classifier(clf: Classifier, cut: Cut) -> BoundaryModels:
    """The bottom and top models of ``clf`` at ``cut``, sharing its layers and weights.

    The top ends in the classifier's own pooling and head (the head model), so a training step
    of the top on a cached activation is a training step of the whole model on its image.
    """
    base = clf.base
    (boundary,) = crossing_tensors(base, cut.index)
    lower = keras.Model(base.input, boundary, name="base_bottom")
    upper = keras.Model(boundary, base.output, name="base_top")
    preprocess = clf.model.get_layer("preprocess")
    pool = clf.model.get_layer("pool")

    raw = keras.Input(clf.model.input.shape[1:], name="image")
    bottom = keras.Model(raw, lower(preprocess(raw), training=False), name="boundary_bottom")
    activation = keras.Input(cut.shape, name="boundary")
    probabilities = clf.head_model(pool(upper(activation, training=False)))
    top = keras.Model(activation, probabilities, name="boundary_top")
    features = keras.Input(cut.shape, name="boundary_features")
    pooled = keras.Model(features, pool(upper(features, training=False)), name="boundary_pooled")
    return BoundaryModels(cut=cut, bottom=bottom, top=top, pooled=pooled)
