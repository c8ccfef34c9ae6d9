"""The registry adapter against a real SQLite MLflow store: versions, aliases, the ledger,
model URIs, downloads, the promotion lock and the fault hook."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from tlops.adapters import registry, tracking
from tlops.errors import ConfigError, ServiceError

#: the real SQLite MLflow store of this module (see tests/unit/mlflow_fixtures.py)
pytest_plugins = ["unit.mlflow_fixtures"]


def unique(prefix: str) -> str:
    """A model or experiment name no other test of the module uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def registered(model_run: Any, name: str, tags: dict[str, str] | None = None) -> Any:
    """A new version of ``name`` from a fresh run with a model folder."""
    run_id = model_run(name)
    return registry.register(name, run_id, f"runs:/{run_id}/model", tags or {}, "a version")


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("models:/flowers@champion", ("flowers", "champion", None)),
        ("models:/flowers/12", ("flowers", None, "12")),
        ("models:/a@b@c", ("a", "b@c", None)),
    ],
)
def test_parse_model_uri(uri: str, parsed: tuple[str, str | None, str | None]) -> None:
    assert registry.parse_model_uri(uri) == parsed


@pytest.mark.parametrize(
    "uri", ["runs:/abc/model", "models:/flowers", "models:/flowers/latest", "models:/@x",
            "models:/x@", "models:/x/", "flowers@champion"],
)  # fmt: skip
def test_bad_model_uris_are_config_errors(uri: str) -> None:
    with pytest.raises(ConfigError) as caught:
        registry.parse_model_uri(uri)
    assert caught.value.exit_code == 2 and uri in str(caught.value)


def test_register_creates_the_model_and_numbered_versions(model_run: Any) -> None:
    name = unique("reg")
    assert registry.versions(name) == []
    long = "x" * 6000
    first = registered(model_run, name, {"data.md5": "m" * 32, "config": long})
    second = registered(model_run, name)
    assert (first.name, first.version, second.version) == (name, "1", "2")
    assert first.run_id and first.source.endswith(f"{first.run_id}/artifacts/model")
    assert first.description == "a version" and first.created_ms > 0
    assert first.tags["data.md5"] == "m" * 32
    cut = first.tags["config"]
    assert len(cut) <= tracking.TAG_LIMIT and cut.startswith("@cut")  # marked, never parses
    assert [v.version for v in registry.versions(name)] == ["1", "2"]
    assert registry.state_of(first) is None  # not registered by a promotion
    tagged = first.model_copy(update={"tags": {registry.STATE_TAG: "pending"}})
    assert registry.state_of(tagged) == "pending"
    bogus = first.model_copy(update={"tags": {registry.STATE_TAG: "weird"}})
    assert registry.state_of(bogus) is None


def test_aliases_move_and_are_listed_on_versions(model_run: Any) -> None:
    name = unique("alias")
    v1, v2 = registered(model_run, name), registered(model_run, name)
    assert registry.version_by_alias(name, "champion") is None
    registry.set_alias(name, "champion", v1.version)
    registry.set_alias(name, "previous", v1.version)
    found = registry.version_by_alias(name, "champion")
    assert found is not None and found.version == "1"
    assert {v.version: v.aliases for v in registry.versions(name)} == {
        "1": ["champion", "previous"], "2": [],
    }  # fmt: skip
    registry.set_alias(name, "champion", v2.version)
    assert registry.version_by_alias(name, "champion").version == "2"  # type: ignore[union-attr]
    registry.set_alias(name, "champion", None)
    registry.set_alias(name, "champion", None)  # removing a missing alias is no error
    assert registry.version_by_alias(name, "champion") is None
    assert {v.version: v.aliases for v in registry.versions(name)} == {"1": ["previous"], "2": []}


def test_version_by_alias_of_an_unknown_model_is_none(store: str) -> None:
    assert registry.version_by_alias(unique("nobody"), "champion") is None


def test_resolve_and_its_config_errors(model_run: Any) -> None:
    name = unique("resolve")
    v1 = registered(model_run, name)
    registry.set_alias(name, "champion", v1.version)
    assert registry.resolve(f"models:/{name}@champion").version == "1"
    assert registry.resolve(f"models:/{name}/1").run_id == v1.run_id
    for uri in (f"models:/{name}@previous", f"models:/{name}/7", f"models:/{unique('x')}/1"):
        with pytest.raises(ConfigError) as caught:
            registry.resolve(uri)
        assert uri in str(caught.value)


def test_tag_and_delete_versions(model_run: Any) -> None:
    name = unique("tags")
    v1, v2 = registered(model_run, name), registered(model_run, name)
    registry.tag_version(name, v1.version, {registry.STATE_TAG: "complete", "long": "y" * 9000})
    tags = registry.resolve(f"models:/{name}/1").tags
    assert tags[registry.STATE_TAG] == "complete" and tags["long"].startswith("@cut")
    registry.delete_version(name, v2.version)
    assert [v.version for v in registry.versions(name)] == ["1"]
    with pytest.raises(ConfigError):
        registry.resolve(f"models:/{name}/2")
    with pytest.raises(ServiceError) as caught:
        registry.delete_version(name, v2.version)  # already gone: an MLflow failure
    assert caught.value.exit_code == 5


def test_move_alias_writes_intent_then_confirmation(model_run: Any) -> None:
    name = unique("ledger")
    v1, v2 = registered(model_run, name), registered(model_run, name)
    first = registry.move_alias(name, "champion", v1.version, "first", "flow-1", v1.run_id)
    assert (first.state, first.from_version, first.to_version) == ("confirmed", None, "1")
    assert first.settled is not None and first.key.startswith(registry.LEDGER_PREFIX)
    second = registry.move_alias(name, "champion", v2.version, "better", "flow-2", v2.run_id)
    assert second.from_version == "1"
    assert registry.version_by_alias(name, "champion").version == "2"  # type: ignore[union-attr]
    entries = registry.ledger(name)
    assert [(e.to_version, e.state, e.why, e.flow_run_id) for e in entries] == [
        ("1", "confirmed", "first", "flow-1"), ("2", "confirmed", "better", "flow-2"),
    ]  # fmt: skip
    # the intent was rewritten in place: one tag per move, the same key
    assert [e.key for e in entries] == [first.key, second.key]


def test_ledger_entries_settle_and_keep_their_key(model_run: Any) -> None:
    name = unique("settle")
    v1 = registered(model_run, name)
    long = registry.intend_move(name, "previous", v1.version, None, "w" * 3000, "flow", None)
    assert len(long.why) == 1500  # cut to fit a tag
    intent = registry.intend_move(name, "champion", v1.version, None, "gate passed", "flow", None)
    assert intent.state == "intent" and intent.key != long.key
    assert [e.state for e in registry.ledger(name)] == ["intent", "intent"]
    aborted = registry.write_ledger(name, intent.settle("aborted", "undone"))
    assert aborted.key == intent.key
    _, entry = registry.ledger(name)
    assert (entry.state, entry.why) == ("aborted", "gate passed; undone") and entry.settled


def test_settling_a_long_reason_keeps_what_settling_appended(model_run: Any) -> None:
    """A reason already near the limit is cut in its middle: the settled state's note at its
    end ("alias restored") is what a reader of an aborted promotion needs, and stays."""
    name = unique("longwhy")
    v1 = registered(model_run, name)
    intent = registry.intend_move(name, "champion", v1.version, None, "g" * 1490, "flow", None)
    registry.write_ledger(name, intent.settle("aborted", "promotion failed: boom; alias restored"))
    (entry,) = registry.ledger(name)
    assert entry.state == "aborted" and len(entry.why) == 1500
    assert entry.why.startswith("g" * 900) and entry.why.endswith("boom; alias restored")


def test_ledger_skips_what_tlops_did_not_write_and_reads_old_entries(model_run: Any) -> None:
    name = unique("handmade")
    registered(model_run, name)
    client = tracking.client()
    client.set_registered_model_tag(name, f"{registry.LEDGER_PREFIX}0001.champion.1", "{broken")
    client.set_registered_model_tag(name, "other.tag", "x")
    old = {  # an entry of an older tlops: no state, no settled
        "when": "2025-01-01T00:00:00Z", "alias": "champion", "from_version": None,
        "to_version": "1", "why": "old", "flow_run_id": "f", "run_id": None,
    }  # fmt: skip
    key = f"{registry.LEDGER_PREFIX}0002.champion.1"
    client.set_registered_model_tag(name, key, json.dumps(old))
    (entry,) = registry.ledger(name)
    assert (entry.key, entry.state, entry.why) == (key, "confirmed", "old")


def test_ledger_of_an_unknown_model_is_a_config_error(store: str) -> None:
    with pytest.raises(ConfigError):
        registry.ledger(unique("nobody"))


def test_description(model_run: Any) -> None:
    name = unique("describe")
    assert registry.description(name) is None
    registered(model_run, name)
    assert registry.description(name) == ""
    registry.set_description(name, "## card\n" + "z" * 6000)
    text = registry.description(name)
    assert text is not None and text.startswith("## card") and len(text) == 5000


def test_download_and_model_files(model_run: Any, tmp_path: Path) -> None:
    name = unique("download")
    v1 = registered(model_run, name)
    folder = registry.download(v1, tmp_path / "one")
    keras_file, meta = registry.model_files(folder)
    assert keras_file.read_bytes() == b"not really keras"
    assert meta == {"classes": ["a", "b"], "binary": False, "image_size": 16}
    again = registry.download_classifier(v1, tmp_path / "two")  # the run's own model folder
    assert (again / "tlops.json").read_text(encoding="utf-8") == (folder / "tlops.json").read_text(
        encoding="utf-8"
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError):
        registry.model_files(tmp_path / "empty")


def test_owner_alive() -> None:
    me = registry.owner()
    assert registry.owner_alive(me) is True
    assert registry.owner_alive("not json") is None
    assert registry.owner_alive("[1, 2]") is None
    elsewhere = {**json.loads(me), "host": "some-other-host"}
    assert registry.owner_alive(json.dumps(elsewhere)) is None  # cannot be known here
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    gone = {**json.loads(me), "pid": done.stdout.strip(), "start": "1"}
    assert registry.owner_alive(json.dumps(gone)) is False


def test_promotion_lock_serializes_one_model_only(store: str) -> None:
    name = unique("lock")
    entered = threading.Event()

    def contender(model: str) -> None:
        with registry.promotion_lock(model):
            entered.set()

    with registry.promotion_lock(name):
        other = threading.Thread(target=contender, args=(unique("other"),))
        other.start()
        assert entered.wait(10)  # another model's lock is free
        other.join()
        entered.clear()
        same = threading.Thread(target=contender, args=(name,))
        same.start()
        assert not entered.wait(0.5)  # held: the second promotion of this model waits
    assert entered.wait(10)
    same.join()


def test_fault_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    registry.fault("after_alias")  # no hook set: nothing happens
    monkeypatch.setenv(registry.FAULT_ENV, "after_alias")
    registry.fault("after_register")  # another point: nothing happens
    with pytest.raises(ServiceError) as caught:
        registry.fault("after_alias")
    assert caught.value.exit_code == 5 and "after_alias" in str(caught.value)
