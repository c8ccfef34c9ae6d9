"""kill -9 of a real ``tlops train`` at each promotion step, then the next run: one consistent
registry every time (issue 10, items 1-2). Also an injected MLflow failure through the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMOKE, TINY, tlops_cli
from test_promotion_steps import assert_consistent

from tlops.adapters import registry

ROOT = Path(__file__).resolve().parents[2]
FIRST = "gate.values=[{metric: test_accuracy, min: 0.0}]"
#: kill points and whether the killed candidate ends as champion (rolled forward)
KILLS = {
    "after_register": False,
    "after_intent": False,
    "after_alias": True,
    "after_ledger": True,
    "after_complete": True,
}


def train_args(repo: Path, name: str, *sets: str) -> list[str]:
    extra = [item for s in sets for item in ("--set", s)]
    return ["train", SMOKE, "--set", f"data.repo={repo}", "--set", f"name={name}", *TINY, *extra]


def kill_at(point: str, args: list[str], env: dict[str, str], ready: Path) -> None:
    """Start ``tlops`` with a blocking fault point, wait until it blocks there, kill -9 it.

    Its output goes to a file (a pipe nobody reads would fill up and block it elsewhere).
    """
    env = {**env, registry.FAULT_BLOCK_ENV: point, registry.FAULT_READY_ENV: str(ready)}
    log = ready.with_suffix(".log")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args], env=env, stdout=out,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 900
        while not ready.exists():
            if proc.poll() is not None:
                pytest.fail(f"tlops exited {proc.returncode} before {point}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"tlops never reached {point}:\n{log.read_text()}")
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.timeout(3600)  # seven real trains and six status runs
def test_kill_at_every_promotion_step_then_the_next_run_reconciles(
    repo: Path, tracked: str, prefect_api: str, tmp_path: Path
) -> None:
    name = "shapes-kill"
    env = {
        **os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": tracked,
    }  # fmt: skip
    done = tlops_cli(train_args(repo, name, FIRST), prefect_api)
    assert done.returncode == 0, done.stdout + done.stderr
    champion = registry.version_by_alias(name, "champion")
    assert champion is not None

    for seed, (point, rolled_forward) in enumerate(KILLS.items(), start=1):
        before = {v.version for v in registry.versions(name)}
        kill_at(point, train_args(repo, name, FIRST, f"train.seed={seed}"), env,
                tmp_path / f"{point}.ready")  # fmt: skip
        (new,) = {v.version for v in registry.versions(name)} - before
        # the next run of the model: `tlops status` settles it (a train does the same first)
        status = tlops_cli(["status", name], prefect_api)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"reconciled {name}:" in status.stdout
        assert_consistent(name)
        now = registry.version_by_alias(name, "champion")
        assert now is not None
        if rolled_forward:
            assert now.version == new, (point, status.stdout)
            assert registry.version_by_alias(name, "previous").version == champion.version  # type: ignore[union-attr]
            champion = now
        else:
            assert now.version == champion.version, (point, status.stdout)
            assert new not in {v.version for v in registry.versions(name)}

    # one more kill, settled this time by the next train itself, which then promotes
    kill_at("after_register", train_args(repo, name, FIRST, "train.seed=98"), env,
            tmp_path / "last.ready")  # fmt: skip
    done = tlops_cli(train_args(repo, name, FIRST, "train.seed=99"), prefect_api)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reconciled first:" in done.stdout and "removed (aborted)" in done.stdout
    assert_consistent(name)
    history = tlops_cli(["history", name], prefect_api)
    assert "[aborted]" in history.stdout and "[intent]" not in history.stdout


@pytest.mark.slow
def test_failed_ledger_write_keeps_the_champion(repo: Path, tracked: str, prefect_api: str) -> None:
    """The defect of item 1: the alias moved, then the ledger write failed (exit 5): the old
    champion holds the alias afterwards, the candidate is aborted, then removed."""
    name = "shapes-ledger-fails"
    done = tlops_cli(train_args(repo, name, FIRST), prefect_api)
    assert done.returncode == 0, done.stdout + done.stderr
    first = registry.version_by_alias(name, "champion")
    assert first is not None

    done = tlops_cli(train_args(repo, name, FIRST, "train.seed=7"), prefect_api,
                     TLOPS_FAULT="after_alias")  # fmt: skip
    assert done.returncode == 5, done.stdout + done.stderr
    assert "injected failure at after_alias" in done.stderr
    assert "Traceback" not in done.stderr
    now = registry.version_by_alias(name, "champion")
    assert now is not None and now.version == first.version
    status = tlops_cli(["status", name], prefect_api)
    assert "removed (aborted)" in status.stdout
    assert_consistent(name)
    assert [v.version for v in registry.versions(name)] == [first.version]
