"""The run configuration: one frozen pydantic tree, filled from YAML plus dotted overrides.

Environment-specific values (tracking URI, Prefect API URL, remote credentials) never live here:
they come from the environment.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tlops.errors import ConfigError
from tlops.rules import (
    ChangeRule,
    GateRule,
    McNemarRule,
    PValue,
    RecallDrop,
    RecallDropRule,
    Rule,
    ValueRule,
)

Split = Literal["train", "val", "test"]
#: The export formats (``registry.exports``, ``tlops export --format``).
ExportFormat = Literal["saved_model", "onnx", "litert"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("saved_model", "onnx", "litert")
SPLITS: tuple[Split, ...] = ("train", "val", "test")
#: Folder names read as a split by default, besides the split names themselves.
DEFAULT_SPLIT_NAMES: dict[str, Split] = {"validation": "val", "valid": "val"}

ImageFormat = Literal["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"]

#: Pillow modes that the input pipeline can turn into 8-bit RGB.
CONVERTIBLE_MODES: frozenset[str] = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
     "HSV", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
)  # fmt: skip

#: Pillow's default ``Image.MAX_IMAGE_PIXELS``: the contract's largest allowed ``max_pixels``.
PILLOW_MAX_PIXELS = 89_478_485


def _default_formats() -> list[ImageFormat]:
    """PNG and JPEG."""
    return ["PNG", "JPEG"]


def _default_min_per_class() -> dict[Split, int]:
    """Five training images per class, one in val and test."""
    return {"train": 5, "val": 1, "test": 1}


class _Section(BaseModel):
    """Base of every config section: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Section):
    """Where the dataset comes from: a DVC pointer in a git repo, at a revision."""

    repo: Path = Field(Path(), description="git + DVC repository holding the pointer (from cwd)")
    dvc_file: str = Field("data.dvc", description="DVC pointer of the dataset, relative to repo")
    subdir: str = Field("", description="folder inside the tracked directory to use, e.g. target")
    rev: str | None = Field(None, description="git revision of the pointer; null = working tree")
    allow_dirty: bool = Field(
        False, description="accept a working tree whose data does not match the pointer"
    )
    image_size: int = Field(32, ge=16, le=1024, description="side of the square model input")
    train_per_class: int | None = Field(
        None, ge=1,
        description="label budget: train on at most this many images per class (the first by "
        "path); null = all",
    )  # fmt: skip
    split_names: dict[str, Split] = Field(
        default_factory=lambda: dict(DEFAULT_SPLIT_NAMES),
        description="top folder names read as a split, besides train / val / test: "
        "validation and valid (Keras tutorials, Kaggle, Roboflow) are val by default; add "
        "your own, e.g. {dev: val, holdout: test}. Without a test folder, a stratified test "
        "split is carved out of val (or train when val is small) by sha256",
    )

    @field_validator("split_names")
    @classmethod
    def _folder_names(cls, value: dict[str, str]) -> dict[str, str]:
        """Plain folder names; train / val / test always mean themselves."""
        for name, split in value.items():
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"{name!r}: a folder name (no '/', not hidden)")
            if name in SPLITS and split != name:
                raise ValueError(f"{name!r} always means the {name} split")
        return value

    @field_validator("subdir")
    @classmethod
    def _relative_subdir(cls, value: str) -> str:
        """Refuse absolute paths and ``..`` so the subdir stays inside the dataset."""
        if not stays_inside(value):
            raise ValueError("must be a relative path inside the dataset, without '..'")
        return value.strip("/")

    @field_validator("dvc_file")
    @classmethod
    def _relative_dvc_file(cls, value: str) -> str:
        """Refuse absolute paths, ``..`` and an empty name so the pointer stays in the repo."""
        if not stays_inside(value) or not value.strip("/") or value.endswith("/"):
            raise ValueError("must be a file path relative to data.repo, without '..'")
        return value


def stays_inside(value: str) -> bool:
    """Whether ``value`` is a relative path without ``..`` (so it stays under its root)."""
    return not (value.startswith(("/", "\\")) or ".." in Path(value.replace("\\", "/")).parts)


class SplitConfig(_Section):
    """How to split a dataset that has no train/val/test folders of its own."""

    val_fraction: float = Field(0.15, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _leave_training_data(self) -> SplitConfig:
        """Keep at least half of the images for training."""
        if self.val_fraction + self.test_fraction > 0.5:
            raise ValueError("val_fraction + test_fraction must be at most 0.5")
        return self


class ContractConfig(_Section):
    """Limits of the image data contract checked by Great Expectations."""

    formats: list[ImageFormat] = Field(default_factory=_default_formats, min_length=1)
    min_width: int = Field(16, ge=1)
    min_height: int = Field(16, ge=1)
    allowed_channels: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1)
    mode_policy: Literal["convert", "reject"] = Field(
        "convert",
        description="convert: any mode Pillow can turn into RGB passes; reject: only allowed_modes",
    )
    allowed_modes: list[str] = Field(default_factory=lambda: ["RGB", "L"], min_length=1)
    near_duplicate_distance: int | None = Field(
        6, ge=0, le=32,
        description="images in different splits whose perceptual hashes (64-bit pHash) differ "
        "in at most this many bits are near duplicates (resized, re-encoded, slightly cropped "
        "or brightened copies): the contract fails naming both files; null = no such rule",
    )  # fmt: skip
    label_suspects: int = Field(
        24, ge=0,
        description="training images most likely mislabeled shown in the report (confident "
        "learning on out-of-fold predictions from the frozen features); 0 = no search",
    )  # fmt: skip
    max_label_error_fraction: float | None = Field(
        None, gt=0, le=1,
        description="the run stops (exit 3) when more than this share of the training images "
        "look mislabeled; null = report only",
    )  # fmt: skip
    classes: list[str] | None = Field(None, description="the exact class set; null = as found")
    min_classes: int = Field(2, ge=2)
    min_images_per_class: dict[Split, int] = Field(
        default_factory=_default_min_per_class,
        description="minimum images of every class in each split",
    )
    max_imbalance: float = Field(
        10.0, ge=1.0, description="largest / smallest class count allowed within a split"
    )
    max_pixels: int = Field(
        PILLOW_MAX_PIXELS, ge=1, le=PILLOW_MAX_PIXELS,
        description="largest image (width x height) read; larger ones are never decoded "
        "(at most Pillow's own decompression-bomb limit)",
    )  # fmt: skip
    max_bytes: int = Field(
        64 << 20, ge=1, description="largest file (bytes) read; larger ones are never opened"
    )

    @field_validator("allowed_channels")
    @classmethod
    def _channels_in_range(cls, value: list[int]) -> list[int]:
        """Channel counts are 1 to 4."""
        bad = [c for c in value if not 1 <= c <= 4]
        if bad:
            raise ValueError(f"channel counts must be between 1 and 4, got {bad}")
        return value

    @field_validator("allowed_modes")
    @classmethod
    def _known_modes(cls, value: list[str]) -> list[str]:
        """Only Pillow modes the pipeline can convert."""
        bad = sorted(set(value) - CONVERTIBLE_MODES)
        if bad:
            raise ValueError(f"unknown image modes {bad}; known: {sorted(CONVERTIBLE_MODES)}")
        return value

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[str] | None) -> list[str] | None:
        """A configured class set has at least two distinct, non-empty names."""
        if value is None:
            return value
        if len(set(value)) != len(value) or any(not c or "/" in c for c in value):
            raise ValueError("classes must be distinct, non-empty folder names")
        if len(value) < 2:
            raise ValueError("at least two classes are needed")
        return value

    @field_validator("min_images_per_class")
    @classmethod
    def _non_negative(cls, value: dict[Split, int]) -> dict[Split, int]:
        """Counts are not negative."""
        if any(v < 0 for v in value.values()):
            raise ValueError("minimum counts must be >= 0")
        return value


class BackboneConfig(_Section):
    """The pretrained base: a Keras application (see tlops.backbones) and its weights."""

    name: str = Field("mobilenet_v2", description="backbone name; `tlops backbones` lists them")
    weights: str = Field(
        "imagenet",
        description="imagenet (Keras download, cached), none (random), a weights file path, "
        "or models:/<name>@<alias> of a backbone registered by pretrain",
    )
    alpha: float | None = Field(None, gt=0, le=2, description="width multiplier (MobileNets)")
    fine_tune_from: str | int | float | None = Field(
        None,
        description="where fine-tuning starts: a layer name, a count of top layers (int), "
        "or a fraction of the base's layers (0 < f <= 1); null = the backbone's default",
    )

    @field_validator("name")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        """Only names of the backbone registry."""
        from tlops.backbones import BACKBONES

        if value not in BACKBONES:
            raise ValueError(f"unknown backbone {value!r}; known: {', '.join(sorted(BACKBONES))}")
        return value

    @field_validator("fine_tune_from")
    @classmethod
    def _valid_start(cls, value: str | int | float | None) -> str | int | float | None:
        """A positive count, a fraction in (0, 1], or a non-empty layer name."""
        if isinstance(value, bool):
            raise ValueError("must be a layer name, a layer count or a fraction")
        if isinstance(value, int) and value < 1:
            raise ValueError("a layer count must be >= 1")
        if isinstance(value, float) and not 0 < value <= 1:
            raise ValueError("a fraction must be in (0, 1]")
        if isinstance(value, str) and not value:
            raise ValueError("a layer name must not be empty")
        return value


class HeadConfig(_Section):
    """The classifier on top of the base: pooling, dropout, optional dense, output."""

    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    hidden_units: int = Field(0, ge=0, description="0 = no hidden dense layer")
    output: Literal["auto", "softmax", "sigmoid"] = Field(
        "auto", description="auto: sigmoid for two classes, softmax otherwise"
    )


class AugmentConfig(_Section):
    """Keras preprocessing layers applied while training (off by default)."""

    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "none"
    rotation: float = Field(0.0, ge=0.0, le=0.5, description="fraction of a full turn")
    zoom: float = Field(0.0, ge=0.0, lt=1.0)
    contrast: float = Field(0.0, ge=0.0, lt=1.0)
    translation: float = Field(0.0, ge=0.0, lt=1.0)
    views: int = Field(
        1,
        ge=1,
        le=64,
        description="augmented views cached per training image (the first is the image "
        "itself); epochs cycle through them. 1 with augmentation on = augment live, whole model",
    )

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on."""
        return self.flip != "none" or any(
            v > 0 for v in (self.rotation, self.zoom, self.contrast, self.translation)
        )


def _photo_augment() -> AugmentConfig:
    """The run default: what suits photos in general (flip, a small rotation), cached as two
    views per training image (the image and one draw)."""
    return AugmentConfig(flip="horizontal", rotation=0.1, views=2)


class PhaseConfig(_Section):
    """One training phase."""

    epochs: int = Field(5, ge=0)
    learning_rate: float = Field(1e-3, gt=0, lt=10)


def _frozen_phase() -> PhaseConfig:
    """Head training on the frozen base (cheap on the cached features: ten epochs)."""
    return PhaseConfig(epochs=10, learning_rate=1e-3)


def _fine_tune_phase() -> PhaseConfig:
    """Fine-tuning at a lower learning rate."""
    return PhaseConfig(epochs=5, learning_rate=1e-4)


class TrainConfig(_Section):
    """How to train: strategy, phases, regularization, speed switches."""

    strategy: Literal["feature_extraction", "fine_tune", "full"] = Field(
        "fine_tune",
        description="feature_extraction: frozen base, head only; fine_tune: then unfreeze the "
        "top of the base at a lower LR; full: everything trainable from the start",
    )
    frozen: PhaseConfig = Field(default_factory=_frozen_phase, description="phase 1")
    fine_tune: PhaseConfig = Field(
        default_factory=_fine_tune_phase, description="phase 2 (and the only phase of full)"
    )
    batch_size: int = Field(32, ge=1, le=4096)
    optimizer: Literal["adam", "sgd", "rmsprop"] = "adam"
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    class_weights: Literal["none", "auto"] | dict[str, float] = Field(
        "none", description="none, auto (inverse frequency) or {class: weight}"
    )
    early_stopping_patience: int | None = Field(None, ge=1)
    lr_schedule: Literal["constant", "plateau", "cosine"] = "constant"
    monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    seed: int = Field(0, ge=0)
    deterministic: bool = Field(False, description="deterministic ops (slower)")
    batchnorm: Literal["auto", "frozen", "train"] = Field(
        "auto",
        description="BatchNorm of the base in the full strategy: auto = trains only for random "
        "weights; frozen = inference mode (pretrained statistics); train = adapt the statistics "
        "to the target (helps when the source domain differs)",
    )
    mixed_precision: Literal["off", "float16", "bfloat16"] = "off"
    jit_compile: bool | Literal["auto"] = Field(
        "auto",
        description="XLA compilation: auto = Keras' choice (on under JAX and on TensorFlow GPUs, "
        "off on TensorFlow CPUs)",
    )
    feature_cache: bool = Field(
        True, description="train the frozen phase on cached pooled features of the base"
    )
    boundary_cache: bool = Field(
        True,
        description="fine-tune on cached activations at the fine-tuning boundary (everything "
        "below it is frozen): only the unfrozen top of the base and the head run every epoch",
    )
    cache_budget_gb: float = Field(
        4.0, gt=0, description="largest cache of activations (float16) a run may write"
    )
    augment: AugmentConfig = Field(
        default_factory=_photo_augment,
        description="default for photos: horizontal flip and a small rotation, 2 cached views; "
        "set flip: none and rotation: 0 for data where a mirrored image is another class",
    )


class EvaluateConfig(_Section):
    """What evaluation reports."""

    top_k: int = Field(3, ge=1)
    gallery_size: int = Field(16, ge=0, le=100)
    latency_repeats: int = Field(20, ge=1, description="timed batch-1 predictions")


#: Today's gate keys before ``gate.rules`` (still accepted), and the rule kind each one sets.
LEGACY_GATE_KEYS: dict[str, str] = {
    "values": "value", "changes": "change", "mcnemar_p": "mcnemar",
    "max_recall_drop": "recall_drop",
}  # fmt: skip


class _LegacyGate(_Section):
    """The gate keys of configs written before ``gate.rules``, validated on their own so a bad
    one is named where it was written (``gate.values.0``, ``gate.mcnemar_p``)."""

    values: list[ValueRule] = Field(default_factory=list)
    changes: list[ChangeRule] = Field(default_factory=list)
    mcnemar_p: PValue | None = None
    max_recall_drop: RecallDrop | None = None

    def rules_by_kind(self) -> dict[str, list[Rule]]:
        """The rules of each kind these keys set, for the keys given only (in key order)."""
        given: dict[str, list[Rule]] = {
            "values": list(self.values), "changes": list(self.changes),
            "mcnemar_p": [] if self.mcnemar_p is None else [McNemarRule(p_value=self.mcnemar_p)],
            "max_recall_drop": [] if self.max_recall_drop is None
            else [RecallDropRule(max_drop=self.max_recall_drop)],
        }  # fmt: skip
        return {LEGACY_GATE_KEYS[key]: given[key] for key in LEGACY_GATE_KEYS
                if key in self.model_fields_set}  # fmt: skip


def _replace_kinds(rules: list[Any], replacements: dict[str, list[Rule]]) -> list[Any]:
    """``rules`` with every rule of a replaced kind swapped for that kind's replacements, put
    where the first rule of the kind was (at the end when there was none)."""
    out: list[Any] = []
    placed: set[str] = set()
    for rule in rules:
        kind = rule.get("kind") if isinstance(rule, dict) else getattr(rule, "kind", None)
        if kind not in replacements:
            out.append(rule)
        elif kind not in placed:
            out += replacements[kind]
            placed.add(kind)
    out += [r for kind, new in replacements.items() if kind not in placed for r in new]
    return out


class GateConfig(_Section):
    """The rules a candidate must pass to be registered and become champion (design stage 6).

    ``rules`` is a list of rules told apart by ``kind`` (see :mod:`tlops.rules`): ``value``
    (a threshold on a candidate metric), ``change`` (against the champion), ``mcnemar``
    (significantly better on paired predictions), ``recall_drop`` (no class loses more recall).
    No rules: nothing is ever promoted.

    The keys of configs written before ``rules`` still load: ``values: [...]``,
    ``changes: [...]``, ``mcnemar_p: P`` and ``max_recall_drop: D`` each set the rules of their
    kind, replacing any rules of that kind in ``rules`` (so ``--set gate.values=[]`` still clears
    the value rules and ``--set gate.mcnemar_p=null`` the McNemar rule, as they always did);
    the other kinds are kept. ``--set "gate.rules=[]"`` clears the whole gate.
    """

    rules: list[GateRule] = Field(
        default_factory=list, description="the rules, each with its kind; empty = promote nothing"
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        """Turn today's keys (values, changes, mcnemar_p, max_recall_drop) into rules."""
        if not isinstance(data, dict) or not any(key in data for key in LEGACY_GATE_KEYS):
            return data
        legacy = _LegacyGate.model_validate({k: data[k] for k in LEGACY_GATE_KEYS if k in data})
        tree = {key: value for key, value in data.items() if key not in LEGACY_GATE_KEYS}
        rules = tree.get("rules", [])
        if isinstance(rules, list):  # anything else: refused by the field, naming gate.rules
            tree["rules"] = _replace_kinds(rules, legacy.rules_by_kind())
        return tree

    @property
    def configured(self) -> bool:
        """Whether any rule is configured (no rules: nothing is ever promoted)."""
        return bool(self.rules)


class RegistryConfig(_Section):
    """Where a promoted model goes in the MLflow model registry."""

    model_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="default: the run name"
    )
    kind: Literal["classifier", "backbone"] = Field(
        "classifier",
        description="what a promotion registers: the classifier, or (tlops pretrain) its "
        "backbone, for later configs to name as backbone.weights: models:/NAME@ALIAS",
    )
    champion_alias: str = Field("champion", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
    previous_alias: str = Field("previous", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
    exports: list[ExportFormat] = Field(
        default_factory=list,
        description="formats exported before the gate and attached to the registered version "
        "(saved_model: TF Serving / Triton; onnx: onnxruntime; litert: mobile), each checked "
        "for parity with the Keras model on the test split; a failed parity rejects the "
        "candidate (exit 4); gate value rules may name onnx_latency_ms_batch1, litert_size_mb...",
    )
    export_max_prob_diff: float = Field(
        1e-4, gt=0, le=1,
        description="parity: the largest probability difference an export may have from the "
        "Keras model on any test image (besides 100 % argmax agreement)",
    )  # fmt: skip

    @field_validator("exports")
    @classmethod
    def _unique_exports(cls, value: list[str]) -> list[str]:
        """Each format once."""
        if len(set(value)) != len(value):
            raise ValueError(f"each format at most once, got {value}")
        return value


class RunConfig(_Section):
    """One run of a tlops flow: the whole, validated configuration."""

    name: str = Field(
        "tlops", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="model / run name"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    contract: ContractConfig = Field(default_factory=ContractConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)

    @property
    def model_name(self) -> str:
        """The registered model's name: ``registry.model_name``, else the run name."""
        return self.registry.model_name or self.name

    def flat(self) -> dict[str, str]:
        """The resolved config as dotted keys and string values (for MLflow params)."""
        return flatten(self.model_dump(mode="json"))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested dict into ``{"a.b": "value"}``; lists and nulls become JSON."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value if isinstance(value, str) else json.dumps(value)
    return out


#: Largest config file read (bytes): a run config is a few KiB.
MAX_CONFIG_BYTES = 1 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases: no "billion laughs" expansion.

    An alias is a pointer to an earlier node; nested ones expand exponentially once the tree
    is copied (as overrides do), so a config that uses either is refused at its line.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Refuse an alias or an anchored node, naming where it is."""
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            what = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise yaml.MarkedYAMLError(
                problem=f"YAML {what}{event.anchor} found: anchors and aliases are not allowed"
                " in tlops configs",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` of ``text`` without anchors and aliases (see :class:`_NoAliasLoader`)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass: safe


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-typed value."""
    key, sep, raw = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(k.strip() for k in keys):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. data.rev=v1")
    try:
        value = safe_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({problem})") from None
    return [k.strip() for k in keys], value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``tree`` with each dotted ``KEY=VALUE`` override set."""
    result: dict[str, Any] = json.loads(json.dumps(tree, default=str))
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for i, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                where = ".".join(keys[: i + 1])
                raise ConfigError(f"--set {text!r}: {where} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return result


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: config file is {size} bytes, more than the limit of "
            f"{MAX_CONFIG_BYTES // (1 << 20)} MiB"
        )
    try:
        loaded = safe_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
    return loaded


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming the first bad field and why (and how many more there are)."""
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def build_config(tree: dict[str, Any], source: str) -> RunConfig:
    """Validate a config tree; errors become :class:`ConfigError` naming the field."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None


def load_config(path: Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load ``path`` (or the defaults when None), apply overrides and validate."""
    tree = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides:
        tree = apply_overrides(tree, overrides)
        source += " with --set " + " ".join(overrides)
    return build_config(tree, source)


def config_schema() -> dict[str, Any]:
    """The JSON schema of :class:`RunConfig`."""
    return RunConfig.model_json_schema()


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (what a run logs as its artifact)."""
    return yaml.dump(config.model_dump(mode="json"), Dumper=_PlainDumper, sort_keys=False)


class _PlainDumper(yaml.SafeDumper):
    """PyYAML's safe dumper that never writes anchors / aliases (configs refuse them)."""

    def ignore_aliases(self, data: Any) -> bool:
        """Every node written in full."""
        return True


def config_sha256(config: RunConfig) -> str:
    """sha256 of :func:`dump_config`: the ``config.sha256`` tag of runs and versions, which
    ``tlops reproduce`` checks the run's ``config.yaml`` artifact against."""
    return hashlib.sha256(dump_config(config).encode("utf-8")).hexdigest()
