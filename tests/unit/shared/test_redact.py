"""Credentials in a tracking URI or a DVC remote URL never reach messages, tags or output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from tlops.adapters.dvc import remote_url
from tlops.data.version import DataVersion
from tlops.errors import ServiceError
from tlops.jobs.train import run_tags

ROOT = Path(__file__).resolve().parents[3]
SECRETS = ("s3cr3t", "tok3n", "abc123", "AKIAEXAMPLE")
REMOTE = "https://bob:tok3n@dvc.example/store?sig=abc123&sv=2020-01-01"


def no_secret(text: str) -> bool:
    """Whether ``text`` is free of every test secret."""
    return not any(secret in text for secret in SECRETS)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://alice:s3cr3t@mlflow.example:8443/x", "https://alice:***@mlflow.example:8443/x"),
        ("https://tok3n@github.com/org/repo", "https://***@github.com/org/repo"),
        ("postgresql://tlops:s3cr3t@db/mlflow", "postgresql://tlops:***@db/mlflow"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Signature=abc123&X-Amz-Credential=AKIAEXAMPLE"
            "&X-Amz-Date=20260101T000000Z",
            "https://b.s3.amazonaws.com/k?X-Amz-Signature=***&X-Amz-Credential=***"
            "&X-Amz-Date=20260101T000000Z",
        ),
        ("azure://c/p?sv=2020&sig=abc123", "azure://c/p?sv=2020&sig=***"),
        ("http://h/api?token=tok3n&page=2", "http://h/api?token=***&page=2"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////work/mlflow/mlflow.db", "sqlite:////work/mlflow/mlflow.db"),
        ("/srv/dvc-remote", "/srv/dvc-remote"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    from tlops.redact import redact_text, redact_url

    assert redact_url(url) == shown
    text = "MLflow ({}) failed: see {}."
    assert redact_text(text.format(url, url)) == text.format(shown, shown)


def test_dvc_remote_url_and_run_tags_carry_no_credentials(tmp_path: Path) -> None:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text(
        f"[core]\n    remote = team\n['remote \"team\"']\n    url = {REMOTE}\n", encoding="utf-8"
    )
    shown = remote_url(tmp_path)
    assert shown is not None and shown.startswith("https://bob:***@dvc.example/store")
    assert no_secret(shown)
    # a DataVersion made elsewhere (an old flow's parameters) is redacted when tagged too
    data = DataVersion(
        path=str(tmp_path), md5="0" * 32 + ".dir", nfiles=1, size=1, rev="a" * 40,
        remote_url=REMOTE, dirty=False, dvc_file="data.dvc",
    )  # fmt: skip
    from tlops.config import RunConfig

    tags = run_tags(RunConfig(), data, "local")
    assert no_secret(tags["data.remote"]) and "dvc.example/store" in tags["data.remote"]


@pytest.fixture
def secret_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> str:
    """A tracking URI with credentials, pointing at a closed port (fails at once, no retries)."""
    uri = f"http://alice:s3cr3t@127.0.0.1:{free_port()}/?token=tok3n"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    return uri


def test_service_errors_name_the_server_without_credentials(secret_tracking_uri: str) -> None:
    from tlops.adapters import registry, tracking

    with pytest.raises(ServiceError) as caught:
        tracking.get_tags("0" * 32)
    assert "127.0.0.1" in str(caught.value) and no_secret(str(caught.value))
    with pytest.raises(ServiceError) as caught:
        registry.version_by_alias("some-model", "champion")
    assert no_secret(str(caught.value))
    assert tracking.tracking_uri() == secret_tracking_uri  # what connects keeps them


def test_cli_error_line_has_no_credentials(secret_tracking_uri: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "status", "some-model"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(os.environ),
    )  # fmt: skip
    assert done.returncode == 5, done.stdout + done.stderr
    assert "127.0.0.1" in done.stderr
    assert no_secret(done.stdout + done.stderr), done.stderr
