"""Config paths of the data stay inside their root: ``data.dvc_file`` like ``data.subdir``
(issue 10, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlops.config import load_config
from tlops.errors import ConfigError

SMOKE = Path(__file__).resolve().parents[3] / "configs" / "smoke.yaml"


def test_dvc_file_must_stay_inside_the_repo() -> None:
    for value in ("/etc/data.dvc", "../other/data.dvc", "a/../../data.dvc", ""):
        with pytest.raises(ConfigError, match=r"data\.dvc_file: .*relative to data\.repo"):
            load_config(SMOKE, [f"data.dvc_file={value!r}"])
    accepted = load_config(SMOKE, ["data.dvc_file=datasets/flowers.dvc"])
    assert accepted.data.dvc_file == "datasets/flowers.dvc"
