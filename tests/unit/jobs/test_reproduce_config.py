"""``tlops reproduce`` trains exactly the registered config: the full ``config.yaml`` artifact,
checked against the ``config.sha256`` tag; a tag that had to be cut is visibly marked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from tlops.adapters import registry, tracking
from tlops.config import RunConfig, dump_config, load_config
from tlops.data.version import DataVersion
from tlops.decision.gate import Evidence, Verdict, decide
from tlops.errors import ConfigError
from tlops.jobs.register import lineage_tags
from tlops.jobs.reproduce import reproduction_config
from tlops.jobs.train import run_tags
from tlops.rules import GateRule

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real MLflow store (SQLite, artifacts beside it), shared by this module's tests."""
    home = tmp_path_factory.mktemp("store") / "mlflow"
    home.mkdir()
    return f"sqlite:///{home / 'mlflow.db'}"


@pytest.fixture
def store(sqlite_store: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The module's MLflow store as this test's tracking URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store)
    return sqlite_store


def long_config() -> RunConfig:
    """A valid config whose YAML is well over MLflow's 5,000-character tag limit."""
    classes = ", ".join(f"class_with_a_long_name_{i:03d}" for i in range(300))
    cfg = load_config(None, [f"contract.classes=[{classes}]", "gate.values=[{metric: x, min: 0}]"])
    assert len(dump_config(cfg)) > 8000
    return cfg


def register_like_a_run(cfg: RunConfig, tmp: Path, name: str = "repro") -> registry.VersionInfo:
    """What the train flow does for the config: run tags, the config artifact, a version."""
    from tlops.jobs import train as steps

    data = DataVersion(
        path=str(tmp), md5="0" * 32 + ".dir", nfiles=1, size=1, rev="a" * 40, remote_url=None,
        dirty=False, dvc_file="data.dvc",
    )  # fmt: skip
    tags = run_tags(cfg, data, "local")
    run_id = tracking.start_run(cfg.name, "run", {}, tags)
    if hasattr(steps, "log_config"):
        steps.log_config(run_id, cfg, tmp)
    else:  # what record_run logged before it had a function of its own
        (tmp / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        tracking.log_artifacts(run_id, {"": [tmp / "config.yaml"]})
    verdict = Verdict(decision="promote", results=[], champion_version=None, reason="test")
    version_tags = lineage_tags(tracking.get_tags(run_id), cfg, {}, verdict, "fp")
    return registry.register(name, run_id, f"runs:/{run_id}/model", version_tags, "")


def test_cut_tag_values_are_marked_and_never_parse() -> None:
    from tlops.adapters.tracking import tag_value

    text = dump_config(long_config())
    for limit in range(1000, 8000, 175):  # 40 cut points
        value = tag_value(text, limit)
        assert len(value) <= limit
        assert value.startswith("@cut")
        with pytest.raises(yaml.YAMLError):
            yaml.safe_load(value)
    assert tag_value("short") == "short"


def test_reproduce_loads_the_full_config_from_the_artifact(store: str, tmp_path: Path) -> None:
    cfg = long_config()
    info = register_like_a_run(cfg, tmp_path)
    assert info.tags["config"].startswith("@cut")  # the card's copy: visibly cut
    assert len(info.tags["config.sha256"]) == 64
    folder = tmp_path / "reproduce"
    folder.mkdir()
    again = reproduction_config(info, folder)
    assert again.contract == cfg.contract  # all 300 classes: exactly the registered config
    assert again.train == cfg.train
    assert again.data.rev == "a" * 40
    assert not again.gate.configured


def test_reproduce_refuses_a_config_that_differs_from_its_sha256(
    store: str, tmp_path: Path
) -> None:
    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    info = register_like_a_run(cfg, tmp_path)
    assert info.run_id
    other = tmp_path / "other" / "config.yaml"
    other.parent.mkdir()
    other.write_text(dump_config(load_config(None, ["train.seed=7"])), encoding="utf-8")
    tracking.log_artifacts(info.run_id, {"": [other]})  # the artifact no longer matches
    folder = tmp_path / "reproduce"
    folder.mkdir()
    with pytest.raises(ConfigError, match="refusing to reproduce") as caught:
        reproduction_config(info, folder)
    assert "sha256" in str(caught.value)
    # the CLI: one line, exit 2, nothing trained
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "reproduce", f"models:/{info.name}/{info.version}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]  # (after MLflow's download progress bar)
    assert last.startswith("error: ") and "refusing to reproduce" in last


def test_reproduce_refuses_a_version_without_config_sha256(store: str, tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    run_id = tracking.start_run(cfg.name, "old", {}, {})
    tags = {"config": dump_config(cfg), "data.rev": "a" * 40}  # registered before the tag
    info = registry.register("old-model", run_id, f"runs:/{run_id}/model", tags, "")
    with pytest.raises(ConfigError, match="refusing to reproduce"):
        reproduction_config(info, tmp_path)


#: One valid rule of each kind (YAML form); a kind added to the union without one fails below.
RULE_OF_KIND: dict[str, dict[str, Any]] = {
    "value": {"kind": "value", "metric": "test_accuracy", "min": 0.0},
    "change": {"kind": "change", "metric": "test_accuracy", "min_delta": -1.0},
    "mcnemar": {"kind": "mcnemar", "p_value": 0.5},
    "recall_drop": {"kind": "recall_drop", "max_drop": 1.0},
}
#: Every kind of the union, by introspection: a new rule class is tested automatically.
KINDS = sorted(cls.model_fields["kind"].default for cls in get_args(get_args(GateRule)[0]))


@pytest.mark.parametrize("kind", KINDS)
def test_reproduce_never_registers_whatever_kind_of_rule_the_version_had(
    kind: str, store: str, tmp_path: Path
) -> None:
    assert kind in RULE_OF_KIND, f"add a rule of kind {kind!r} to RULE_OF_KIND"
    rule = yaml.safe_dump([RULE_OF_KIND[kind]], default_flow_style=True).strip()
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"gate.rules={rule}"])
    assert [r.kind for r in cfg.gate.rules] == [kind] and cfg.gate.configured
    info = register_like_a_run(cfg, tmp_path, name=f"repro-{kind.replace('_', '-')}")
    folder = tmp_path / "reproduce"
    folder.mkdir()
    again = reproduction_config(info, folder)
    assert again.gate.rules == [] and not again.gate.configured
    assert again.model_copy(update={"gate": cfg.gate}) == cfg.model_copy(
        update={"data": again.data}
    )  # only the gate and the data revision differ
    # a perfect candidate, with a champion or without, is never promoted by the rerun's gate
    perfect = Evidence(
        metrics={"test_accuracy": 1.0, "test_recall_a": 1.0, "test_recall_b": 1.0},
        correct=[True] * 50, classes=["a", "b"], fingerprint="new.code",
    )  # fmt: skip
    poor = Evidence(
        metrics={"test_accuracy": 0.1, "test_recall_a": 0.1, "test_recall_b": 0.1},
        correct=[False] * 50, classes=["a", "b"], fingerprint="old.code", version="1",
    )  # fmt: skip
    assert decide(cfg.gate, perfect, poor).passed  # the original gate would promote it
    for champion in (None, poor):
        verdict = decide(again.gate, perfect, champion)
        assert not verdict.passed and verdict.decision == "no_rules"
