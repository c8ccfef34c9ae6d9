"""Credentials in the tracking URI and the DVC remote URL reach no output, report or tag of a
real train run (a real `mlflow server`, Prefect API, git + DVC repo)."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import SMOKE, TINY, run, tlops_cli

SECRETS = ("s3cr3t", "tok3n", "abc123")


def test_train_status_and_lineage_never_show_credentials(
    repo: Path, mlflow_server: str, prefect_api: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    host = mlflow_server.removeprefix("http://")
    secret_uri = f"http://alice:s3cr3t@{host}"  # the server ignores the credentials
    remote = "https://bob:tok3n@dvc.example/store?sig=abc123&sv=2020-01-01"
    run([sys.executable, "-m", "dvc", "remote", "modify", "local", "url", remote], repo)
    name = "shapes-secret"
    report = tmp_path / "report.md"
    args = [
        "train", SMOKE, "--set", f"data.repo={repo}", "--set", f"name={name}", *TINY,
        "--set", "gate.values=[{metric: test_accuracy, min: 0.0}]", "--report", str(report),
    ]  # fmt: skip
    done = tlops_cli(args, prefect_api, MLFLOW_TRACKING_URI=secret_uri)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"promoted: {name} v1 is champion" in done.stdout
    assert f"alice:***@{host}" in done.stdout  # the summary names the server, not the password
    shown = [done.stdout, done.stderr, report.read_text()]
    for command in (["status", name], ["lineage", f"models:/{name}@champion"]):
        again = tlops_cli(command, prefect_api, MLFLOW_TRACKING_URI=secret_uri)
        assert again.returncode == 0, again.stdout + again.stderr
        shown += [again.stdout, again.stderr]
    assert "dvc.example/store" in shown[-2]  # the lineage card names the remote
    for text in shown:
        assert not any(secret in text for secret in SECRETS), text

    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias(name, "champion")
    assert version.tags["data.remote"].startswith("https://bob:***@dvc.example/store")
    stored = [*version.tags.values(), client.get_registered_model(name).description or ""]
    assert version.run_id
    run_data = client.get_run(version.run_id)
    stored += [*run_data.data.tags.values(), *run_data.data.params.values()]
    stored += [d.dataset.source for d in run_data.inputs.dataset_inputs]
    for text in stored:
        assert not any(secret in text for secret in SECRETS), text
