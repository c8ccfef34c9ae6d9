"""MLflow runs left RUNNING by a killed process are failed by the next run (issue 10, item 14)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPENER = """
import sys, time
from tlops.adapters import tracking
print(tracking.start_run("orphans", sys.argv[1], {"p": "1"}, {}), flush=True)
time.sleep(600)
"""


def _open_run(name: str) -> tuple[subprocess.Popen[str], str]:
    """A process that opens a run with the real ``start_run``, then stays alive."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", OPENER, name], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    assert run_id, f"{name}: no run opened (exit {proc.poll()})"
    return proc, run_id


def test_the_next_run_fails_runs_of_killed_processes_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from tlops.adapters import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    killed, killed_run = _open_run("killed")
    alive, alive_run = _open_run("alive")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        client = MlflowClient(uri)
        # a run opened on another machine: its process cannot be checked, so it is left alone
        experiment = client.get_experiment_by_name("orphans").experiment_id
        elsewhere = client.create_run(experiment, run_name="elsewhere").info.run_id
        owner = {"host": "elsewhere", "boot": "b", "pidns": "p", "pid": "1", "start": "1"}
        client.set_tag(elsewhere, "tlops.owner", json.dumps(owner))
        assert client.get_run(killed_run).info.status == "RUNNING"

        new_run = tracking.start_run("orphans", "next", {"p": "1"}, {})

        status = {r: client.get_run(r).info.status for r in (killed_run, alive_run, elsewhere)}
        assert status == {killed_run: "FAILED", alive_run: "RUNNING", elsewhere: "RUNNING"}
        reason = client.get_run(killed_run).data.tags["tlops.failed_reason"]
        assert f"pid {killed.pid}" in reason and new_run in reason
        assert client.get_run(new_run).info.status == "RUNNING"
        # the run of the live process is not failed by yet another run either
        tracking.start_run("orphans", "again", {"p": "1"}, {})
        assert client.get_run(alive_run).info.status == "RUNNING"
    finally:
        alive.send_signal(signal.SIGKILL)
        alive.wait(timeout=30)
