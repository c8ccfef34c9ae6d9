"""The code state is known without git (a source hash), and a tie of unknown code is never
promoted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tlops.config import GateConfig, ValueRule
from tlops.decision.gate import Evidence, decide

ROOT = Path(__file__).resolve().parents[3]
PROBE = """
import json
from pathlib import Path
from tlops.config import load_config
from tlops.adapters.git import code_state
from tlops.jobs.gate import change_fingerprint
import tlops
state = code_state(Path.cwd())
fingerprint = change_fingerprint(load_config(Path("smoke.yaml")), "0" * 32 + ".dir", state)
print(json.dumps({"state": state, "fingerprint": fingerprint, "tlops": tlops.__file__}))
"""


def project_copy(dest: Path) -> Path:
    """The project's packages, lock file and a config, copied without ``.git``."""
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("tlops", "flows", "tasks"):
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    shutil.copy(ROOT / "uv.lock", dest / "uv.lock")
    shutil.copy(ROOT / "configs" / "smoke.yaml", dest / "smoke.yaml")
    return dest


def probe(project: Path) -> dict[str, object]:
    """code_state and the change fingerprint as a process in ``project`` sees them."""
    env = {**os.environ, "PYTHONPATH": str(project), "GIT_CEILING_DIRECTORIES": str(project.parent)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=project, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    found: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    assert str(found["tlops"]).startswith(str(project))  # the copy, not the checkout
    return found


def test_fingerprint_without_git_is_stable_and_follows_the_source(tmp_path: Path) -> None:
    from tlops.adapters import git as lineage

    source_sha256 = getattr(lineage, "source_sha256", lambda: "")  # (none before item 16)
    here = source_sha256()  # this checkout's, just before copying it
    project = project_copy(tmp_path / "project")
    first, again = probe(project), probe(project)
    state = first["state"]
    assert isinstance(state, dict)
    assert state["git.commit"] == "unknown"  # no git here
    fingerprint = first["fingerprint"]
    assert isinstance(fingerprint, str) and fingerprint and not fingerprint.endswith("unknown")
    assert len(state["code.sha256"]) == 64
    assert again["fingerprint"] == fingerprint
    assert state["code.sha256"] == here  # the same source anywhere: the same hash
    # a changed source file changes it
    with (project / "tlops" / "gate.py").open("a", encoding="utf-8") as handle:
        handle.write("\n# a change\n")
    changed = probe(project)
    assert changed["fingerprint"] != fingerprint
    assert changed["state"]["code.sha256"] != state["code.sha256"]  # type: ignore[index]


def evidence(fingerprint: str, version: str | None = None) -> Evidence:
    """Evidence of a model that passes any value rule."""
    return Evidence(
        metrics={"test_accuracy": 0.9}, correct=[True], classes=["a", "b"],
        fingerprint=fingerprint, version=version,
    )  # fmt: skip


def test_a_tie_whose_code_state_is_unknown_is_never_promoted() -> None:
    gate = GateConfig(values=[ValueRule(metric="test_accuracy", min=0.5)])
    inputs = "0123456789abcdef" * 2
    champion = evidence(f"{inputs}.{'c' * 32}", version="3")
    unknown = decide(gate, evidence(f"{inputs}.unknown"), champion)
    assert not unknown.passed and unknown.decision == "unchanged"
    # the champion's code unknown: a candidate on the same data and config is no better
    assert not decide(gate, champion, evidence(f"{inputs}.unknown", version="3")).passed
    # known, different code on the same data and config: judged by the rules
    assert decide(gate, evidence(f"{inputs}.{'d' * 32}"), champion).passed
    # other data or config with unknown code: judged by the rules too
    assert decide(gate, evidence(f"{'f' * 32}.unknown"), champion).passed
