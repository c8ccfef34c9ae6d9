"""The backbone registry: Keras applications (and one small CNN of ours) with their facts.

Importing this module does not import Keras (``tlops.model.build_base`` builds them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Preprocess = Literal["tf", "caffe", "torch", "included", "unit"]


@dataclass(frozen=True)
class BackboneSpec:
    """What tlops knows about one backbone."""

    name: str
    keras_name: str  # class in keras.applications, or "" for tlops' own
    default_size: int
    min_size: int
    preprocess: Preprocess  # how raw 0..255 RGB becomes the backbone's input
    fine_tune_from: str | int | float  # default start of fine-tuning
    has_alpha: bool = False
    note: str = ""


def _spec(*args: Any, **kwargs: Any) -> tuple[str, BackboneSpec]:
    """Registry entry keyed by name."""
    spec = BackboneSpec(*args, **kwargs)
    return spec.name, spec


#: MobileNetV2 fine-tunes from ``block_16_expand`` (its last inverted-residual block and
#: ``Conv_1``: 14 % of the forward MACs): on the boundary cache that trains ~5x faster than the
#: whole model, and in bench/recipe.py it matched or beat fine-tuning from ``block_13_expand``.
#: preprocess modes: tf = x/127.5 - 1; caffe = BGR minus ImageNet means; torch = ImageNet
#: mean/std on x/255; included = the model rescales itself; unit = x/255.
BACKBONES: dict[str, BackboneSpec] = dict(
    [
        _spec("mobilenet", "MobileNet", 224, 32, "tf", 0.2, has_alpha=True),
        _spec("mobilenet_v2", "MobileNetV2", 224, 32, "tf", "block_16_expand", has_alpha=True),
        _spec("mobilenet_v3_small", "MobileNetV3Small", 224, 32, "included", 0.2, True),
        _spec("mobilenet_v3_large", "MobileNetV3Large", 224, 32, "included", 0.2, True),
        _spec("efficientnet_b0", "EfficientNetB0", 224, 32, "included", "block6a_expand_conv"),
        _spec("efficientnet_b1", "EfficientNetB1", 240, 32, "included", "block6a_expand_conv"),
        _spec("efficientnet_b2", "EfficientNetB2", 260, 32, "included", "block6a_expand_conv"),
        _spec("efficientnet_b3", "EfficientNetB3", 300, 32, "included", "block6a_expand_conv"),
        _spec("efficientnet_v2_b0", "EfficientNetV2B0", 224, 32, "included", 0.2),
        _spec("resnet50", "ResNet50", 224, 32, "caffe", "conv5_block1_1_conv"),
        _spec("resnet50_v2", "ResNet50V2", 224, 32, "tf", "conv5_block1_preact_bn"),
        _spec("vgg16", "VGG16", 224, 32, "caffe", "block5_conv1"),
        _spec("xception", "Xception", 299, 71, "tf", "block14_sepconv1"),
        _spec(
            "tiny_cnn", "", 32, 16, "unit", 0.5,
            note="tlops' own small CNN, for pretraining on the sample data in minutes",
        ),
    ]
)  # fmt: skip


def get_spec(name: str) -> BackboneSpec:
    """The spec of ``name``; a KeyError names the known backbones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise KeyError(
            f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}"
        ) from None
