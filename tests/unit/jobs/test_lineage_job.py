"""The lineage card (:func:`tlops.jobs.lineage.lineage_card`) of versions in a real SQLite
MLflow store, down a backbone chain."""

from __future__ import annotations

import uuid
from typing import Any

from tlops.adapters import registry
from tlops.jobs.lineage import lineage_card

#: the real SQLite MLflow store of this module (see tests/unit/mlflow_fixtures.py)
pytest_plugins = ["unit.mlflow_fixtures"]


def unique(prefix: str) -> str:
    """A model name no other test of the module uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def version(model_run: Any, name: str, tags: dict[str, str]) -> registry.VersionInfo:
    run_id = model_run(name)
    return registry.register(name, run_id, f"runs:/{run_id}/model", tags, "")


def test_card_sections_in_order_and_the_config(model_run: Any) -> None:
    name = unique("card")
    info = version(model_run, name, {
        "git.commit": "c" * 40, "data.md5": "m" * 32, "gate.decision": "promote",
        "config": "name: x\n", "unrelated": "left out",
    })  # fmt: skip
    registry.set_alias(name, "champion", info.version)
    card = lineage_card(registry.resolve(f"models:/{name}@champion"))
    lines = card.splitlines()
    assert lines[0] == f"## {name} v1"
    assert f"- MLflow run: `{info.run_id}`" in lines and "- aliases: champion" in lines
    sections = [line for line in lines if line.startswith("### ")]
    assert sections == ["### data", "### code", "### gate", "### config"]
    assert f"- data.md5: `{'m' * 32}`" in lines and "unrelated" not in card
    assert card.endswith("```yaml\nname: x\n```")


def test_a_backbone_chain_and_a_missing_link(model_run: Any) -> None:
    base = unique("backbone")
    version(model_run, base, {"data.md5": "b" * 32})
    head = unique("head")
    info = version(model_run, head, {"backbone.model_version": f"models:/{base}/1"})
    card = lineage_card(info)
    assert f"### backbone lineage (models:/{base}/1)" in card
    assert f"## {base} v1" in card and f"- data.md5: `{'b' * 32}`" in card
    gone = version(model_run, head, {"backbone.model_version": f"models:/{base}/5"})
    assert "(not available: " in lineage_card(gone)
    # a chain that points at itself stops after three levels
    loop = unique("loop")
    version(model_run, loop, {"backbone.model_version": f"models:/{loop}/1"})
    looped = lineage_card(registry.resolve(f"models:/{loop}/1"))
    assert looped.count(f"## {loop} v1") == 4
