"""flows/startup.py: the temporary Prefect API that a flow command starts before it imports
Prefect, and when it stays off."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows.startup import TemporaryAPI, early_api
from tlops.errors import ServiceError


def _process(code: str) -> subprocess.Popen[bytes]:
    """A real child process running ``code``."""
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_server_that_exits_is_a_service_error_naming_its_code() -> None:
    gone = TemporaryAPI(process=_process("raise SystemExit(3)"))
    assert gone.process is not None
    gone.process.wait()
    with pytest.raises(ServiceError, match=r"temporary API server exited \(code 3\)"):
        gone.wait(30)


def test_a_server_that_never_answers_is_stopped_and_a_service_error() -> None:
    silent = TemporaryAPI(process=_process("import time; time.sleep(120)"))
    child = silent.process
    assert child is not None
    with pytest.raises(ServiceError, match="did not answer within 1 s"):
        silent.wait(1)
    assert silent.process is None
    assert child.poll() is not None  # terminated, not left behind
    silent.stop()  # stopping twice is harmless


@pytest.mark.parametrize(
    "env",
    [
        {"PREFECT_API_URL": "http://127.0.0.1:1/api"},
        {"TLOPS_PRELOAD": "0"},
        {"PREFECT_SERVER_EPHEMERAL_ENABLED": "false"},
    ],
)
def test_no_early_server_when_the_environment_names_an_api_or_turns_it_off(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("PREFECT_API_URL", "TLOPS_PRELOAD", "PREFECT_SERVER_EPHEMERAL_ENABLED"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert early_api() is None
