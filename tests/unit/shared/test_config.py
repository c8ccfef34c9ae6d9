"""The config tree: every shipped config loads, every invalid one fails naming its field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tlops.config import RunConfig, apply_overrides, dump_config, load_config
from tlops.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))
INVALID = sorted((ROOT / "tests" / "configs" / "invalid").glob("*.yaml"))


#: The field (or file problem) each invalid config's message must name.
def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real ``tlops`` CLI in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


EXPECTED_IN_MESSAGE = {
    "unknown_field": "data.image_sise: unknown field",
    "bad_image_size": "data.image_size",
    "wrong_type": "contract.min_width",
    "bad_format": "contract.formats.1",
    "bad_channels": "contract.allowed_channels",
    "bad_mode": "contract.allowed_modes",
    "one_class": "contract.classes",
    "duplicate_classes": "contract.classes",
    "fractions_too_large": "split",
    "subdir_escapes": "data.subdir",
    "bad_name": "name",
    "unknown_split": "contract.min_images_per_class.training",
    "not_a_mapping": "top level must be a mapping",
    "bad_yaml": "invalid YAML at line",
    "negative_imbalance": "contract.max_imbalance",
}


def test_there_are_shipped_and_invalid_configs() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"demo", "smoke"} <= names
    assert {p.stem for p in INVALID} == set(EXPECTED_IN_MESSAGE)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_config_is_valid(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, RunConfig)
    # round trip: the dumped YAML loads to the same config
    assert RunConfig.model_validate(json.loads(config.model_dump_json())) == config


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_config_fails_naming_the_field(path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    assert EXPECTED_IN_MESSAGE[path.stem] in message


@pytest.mark.parametrize("path", INVALID[:3], ids=lambda p: p.stem)
def test_cli_exits_2_on_invalid_config(path: Path) -> None:
    done = cli("validate", str(path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert EXPECTED_IN_MESSAGE[path.stem] in done.stderr
    assert done.stderr.count("\n") == 1  # one line


def test_overrides_are_typed_and_validated() -> None:
    config = load_config(
        ROOT / "configs" / "demo.yaml",
        ["data.image_size=96", "contract.formats=[PNG, JPEG]", "data.rev=v1"],
    )
    assert config.data.image_size == 96
    assert config.contract.formats == ["PNG", "JPEG"]
    assert config.data.rev == "v1"
    with pytest.raises(ConfigError, match=r"data\.image_size: Input should be less"):
        load_config(ROOT / "configs" / "demo.yaml", ["data.image_size=4096"])
    with pytest.raises(ConfigError, match=r"data\.nope: unknown field"):
        load_config(None, ["data.nope=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["data.image_size"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"data": {"image_size": 3}}, ["data.image_size.x=1"])


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_config_is_frozen_and_flattens() -> None:
    config = load_config(ROOT / "configs" / "demo.yaml")
    with pytest.raises(ValueError, match="frozen"):
        config.data.image_size = 64  # type: ignore[misc]
    flat = config.flat()
    assert flat["data.image_size"] == "32"
    assert flat["contract.classes"].startswith('["0"')
    assert "name: digits" in dump_config(config)


def test_schema_command_prints_json_schema() -> None:
    done = cli("schema")
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    assert schema["title"] == "RunConfig"
    assert schema["additionalProperties"] is False
    assert {"data", "split", "contract"} <= set(schema["properties"])
