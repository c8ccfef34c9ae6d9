"""The promotion policy: which overrides touch it, who may not, and where it came from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run

from tlops.config import load_config
from tlops.errors import ConfigError
from tlops.jobs.policy import (
    PolicyOrigin,
    load_deployed_config,
    policy_keys,
    policy_origin,
    policy_sha256,
    policy_tags,
    refuse_policy_overrides,
)

SMOKE = Path(__file__).resolve().parents[3] / "configs" / "smoke.yaml"
GATE = "gate.values=[{metric: test_accuracy, min: 0.5}]"


def test_gate_registry_and_a_model_naming_name_are_policy_keys() -> None:
    sets = [GATE, "train.seed=1", "registry.champion_alias=prod", "name=other", "gate.values=[]"]
    assert policy_keys(sets, names_model=True) == ["gate.values", "registry.champion_alias", "name"]
    # with registry.model_name set, name only names the experiment
    assert policy_keys(sets, names_model=False) == ["gate.values", "registry.champion_alias"]
    assert policy_keys(["data.rev=v1", "data.allow_dirty=true"], names_model=True) == []


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (GATE, "gate.values"),
        ("gate={}", "gate"),
        ("registry.model_name=prod", "registry.model_name"),
        ("registry.kind=backbone", "registry.kind"),
        ("name=prod", "name"),  # smoke.yaml has no registry.model_name: name picks the model
    ],
)
def test_a_policy_override_is_refused_naming_the_key(override: str, key: str) -> None:
    cfg = load_config(SMOKE, [override])
    with pytest.raises(ConfigError, match=rf"^--set {key}: a CI run may not override"):
        refuse_policy_overrides(["train.seed=2", override], cfg, "a CI run")
    refuse_policy_overrides(["train.seed=2"], cfg, "a CI run")  # not a policy key: fine


def test_a_deployment_run_refuses_policy_overrides_and_paths_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(["git", "init", "-q"], tmp_path)
    (tmp_path / "configs").mkdir()
    shutil.copy(SMOKE, tmp_path / "configs" / "shapes.yaml")
    run(["git", "add", "configs"], tmp_path)
    run(["git", "commit", "-qm", "config"], tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"--set gate\.values: a deployment run may not"):
        load_deployed_config("configs/shapes.yaml", ["train.seed=1", "gate.values=[]"])
    for outside in (str(SMOKE), "../smoke.yaml"):
        with pytest.raises(ConfigError, match="must be relative to the project"):
            load_deployed_config(outside, [])
    cfg, origin = load_deployed_config("configs/shapes.yaml", ["train.seed=1"])
    assert cfg.train.seed == 1
    assert origin == PolicyOrigin(source="committed", file="configs/shapes.yaml")


def test_origin_committed_uncommitted_or_override(tmp_path: Path) -> None:
    run(["git", "init", "-q"], tmp_path)
    config = tmp_path / "run.yaml"
    shutil.copy(SMOKE, config)
    cfg = load_config(config)
    assert policy_origin(config, [], cfg).source == "uncommitted-file"  # untracked
    run(["git", "add", "run.yaml"], tmp_path)
    assert policy_origin(config, [], cfg).source == "uncommitted-file"  # staged only
    run(["git", "commit", "-qm", "config"], tmp_path)
    assert policy_origin(config, ["train.seed=3"], cfg).source == "committed"
    overridden = policy_origin(config, ["train.seed=3", GATE, "name=x"], cfg)
    assert overridden == PolicyOrigin(
        source="override", file=str(config), overrides=("gate.values", "name")
    )
    config.write_text(config.read_text() + "\ngate: {max_recall_drop: 0.5}\n")
    assert policy_origin(config, [], load_config(config)).source == "uncommitted-file"
    outside = tmp_path.parent / f"{tmp_path.name}-outside.yaml"
    shutil.copy(SMOKE, outside)
    assert policy_origin(outside, [], cfg).source == "uncommitted-file"  # no repository
    assert policy_origin(None, [], cfg).source == "unknown"


def test_policy_hash_covers_gate_and_registry_and_the_promoted_model() -> None:
    base = load_config(SMOKE)
    same = load_config(SMOKE, ["train.seed=5", "evaluate.top_k=1"])
    assert policy_sha256(base) == policy_sha256(same)
    for other in (GATE, "registry.champion_alias=prod", "name=other"):
        assert policy_sha256(load_config(SMOKE, [other])) != policy_sha256(base), other
    # naming the model explicitly as it was named implicitly is the same policy
    assert policy_sha256(load_config(SMOKE, ["registry.model_name=smoke"])) == policy_sha256(base)
    tags = policy_tags(base, PolicyOrigin(source="override", file="x.yaml", overrides=("name",)))
    assert tags == {
        "policy.sha256": policy_sha256(base), "policy.source": "override",
        "policy.overrides": "name", "policy.file": "x.yaml",
    }  # fmt: skip
    assert policy_tags(base, None)["policy.source"] == "unknown"
