"""The fingerprint's parts: each follows its own input only, and the whole stays as it was."""

from __future__ import annotations

from pathlib import Path

from tlops.config import load_config
from tlops.decision.changes import compare_parts
from tlops.jobs.gate import change_fingerprint, fingerprint_tags

SMOKE = Path(__file__).resolve().parents[3] / "configs" / "smoke.yaml"
MD5 = "0" * 32 + ".dir"
CODE = {"code.sha256": "a" * 64, "lock.sha256": "b" * 64, "git.commit": "c" * 40}


def test_the_tags_hold_the_whole_fingerprint_and_its_parts() -> None:
    cfg = load_config(SMOKE)
    tags = fingerprint_tags(cfg, MD5, CODE)
    assert tags["tlops.fingerprint"] == change_fingerprint(cfg, MD5, CODE)
    assert tags["fingerprint.data"] == MD5[:12]
    assert tags["fingerprint.code"] == "a" * 12 and tags["fingerprint.lock"] == "b" * 12
    assert len(tags["fingerprint.config"]) == 12


def test_each_part_follows_its_own_input() -> None:
    cfg = load_config(SMOKE)
    base = fingerprint_tags(cfg, MD5, CODE)
    retrained = {
        "config": fingerprint_tags(load_config(SMOKE, ["train.seed=7"]), MD5, CODE),
        "data": fingerprint_tags(cfg, "1" * 32 + ".dir", CODE),
        "code": fingerprint_tags(cfg, MD5, {**CODE, "code.sha256": "e" * 64}),
        "lock": fingerprint_tags(cfg, MD5, {**CODE, "lock.sha256": "f" * 64}),
    }
    for part, tags in retrained.items():
        assert compare_parts(tags, base).changed == [part], part
        assert tags["tlops.fingerprint"] != base["tlops.fingerprint"], part


def test_what_changes_no_weights_changes_no_part() -> None:
    cfg = load_config(SMOKE)
    base = fingerprint_tags(cfg, MD5, CODE)
    evaluated = fingerprint_tags(load_config(SMOKE, ["evaluate.latency_repeats=9"]), MD5, CODE)
    other_commit = fingerprint_tags(cfg, MD5, {**CODE, "git.commit": "d" * 40})
    assert evaluated == base and other_commit == base
    assert compare_parts(evaluated, base).describe(noop=True) == "nothing: a no-op"
