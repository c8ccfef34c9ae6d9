"""Which fingerprint parts a retrain changed, from the tags of two runs or versions."""

from __future__ import annotations

from tlops.decision.changes import PartsChange, compare_parts, part_tags, parts_of

CHAMPION = part_tags({"data": "d" * 32 + ".dir", "config": "c" * 64, "code": "s" * 64,
                      "lock": "l" * 64})  # fmt: skip


def test_part_tags_are_short_hashes_and_unknown_stays_unknown() -> None:
    tags = part_tags({"data": "0123456789abcdef.dir", "config": "f" * 64, "code": "unknown"})
    assert tags == {
        "fingerprint.data": "0123456789ab",
        "fingerprint.config": "f" * 12,
        "fingerprint.code": "unknown",
    }
    assert parts_of(tags) == {"data": "0123456789ab", "config": "f" * 12}  # no hash: left out


def test_equal_parts_changed_nothing() -> None:
    same = compare_parts(dict(CHAMPION), CHAMPION)
    assert same == PartsChange(changed=[], unknown=[])
    assert same.describe(noop=True) == "nothing: a no-op"
    assert same.describe() == "nothing"  # a retrain that was forced


def test_the_changed_parts_are_named_in_order() -> None:
    retrain = {**CHAMPION, "fingerprint.config": "e" * 12, "fingerprint.data": "a" * 12}
    change = compare_parts(retrain, CHAMPION)
    assert change.changed == ["data", "config"] and change.unknown == []
    assert change.describe() == "data, config"
    lock = compare_parts({**CHAMPION, "fingerprint.lock": "0" * 12}, CHAMPION)
    assert lock.describe() == "lock"


def test_an_older_champion_without_part_tags_still_compares_three_parts() -> None:
    old = {"data.md5": "d" * 32 + ".dir", "code.sha256": "s" * 64, "lock.sha256": "9" * 64,
           "tlops.fingerprint": "x.y"}  # fmt: skip
    change = compare_parts(dict(CHAMPION), old)
    assert change.changed == ["lock"] and change.unknown == ["config"]
    assert change.describe() == "lock; not recorded: config"
    nothing = compare_parts({"tlops.fingerprint": "x.y"}, {})
    assert nothing.changed == [] and nothing.unknown == ["data", "config", "code", "lock"]


def test_an_unknown_code_hash_is_not_compared() -> None:
    retrain = {**CHAMPION, "fingerprint.code": "unknown"}
    change = compare_parts(retrain, CHAMPION)
    assert change.changed == [] and change.unknown == ["code"]


def test_no_lock_file_is_a_value_of_its_own() -> None:
    unlocked = {**CHAMPION, "fingerprint.lock": "none"}
    assert compare_parts(unlocked, dict(unlocked)).describe(noop=True) == "nothing: a no-op"
    assert compare_parts(dict(CHAMPION), unlocked).changed == ["lock"]
