"""Config YAML is read safely: no anchors / aliases ("billion laughs"), a size cap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tlops.config import load_config
from tlops.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
MAX_CONFIG_BYTES = 1 << 20  # the documented cap: 1 MiB


def alias_bomb(levels: int = 6, width: int = 9) -> str:
    """A "billion laughs" document: each level is a list of ``width`` aliases of the last."""
    lines = ["name: bomb", 'l0: &l0 ["lol"]']
    for i in range(1, levels + 1):
        refs = ", ".join([f"*l{i - 1}"] * width)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_with_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["train.seed=1"])  # --set round-trips the tree: the bomb would expand
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    assert "at line 2" in message  # the first anchor
    assert "anchors and aliases are not allowed" in message


def test_alias_in_a_set_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="anchors and aliases are not allowed"):
        load_config(None, ["contract.classes=[&a x, *a]"])


def test_oversized_config_file_is_refused_naming_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    padding = "# " + "x" * 1000 + "\n"
    path.write_text("name: huge\n" + padding * (MAX_CONFIG_BYTES // len(padding) + 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert "1 MiB" in str(caught.value)


def test_cli_exits_2_with_one_line_on_an_alias_bomb(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(levels=7, width=10), encoding="utf-8")  # 10**7 leaves
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "validate", str(path), "--set", "train.seed=1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1
    assert "anchors and aliases are not allowed" in done.stderr
