"""Exit codes of every command (design section 7) for the failures that need no flow run.

Flow runs (0, 3, 4, 5 and 1 from train / validate / pretrain / sweep / deploy) are covered by
the flow tests; these run in-process on a temporary SQLite tracking store.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.reports import ci_mode, write_report

SMOKE = str(Path(__file__).resolve().parents[3] / "configs" / "smoke.yaml")
BAD = str(Path(__file__).resolve().parents[2] / "configs" / "invalid" / "unknown_field.yaml")


def _free_port() -> int:
    """A free TCP port on 127.0.0.1 (nothing listens on it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One empty SQLite tracking store for the module (its schema is created once)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str) -> CliRunner:
    """Commands run in an empty folder against the module's empty tracking store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return CliRunner()


CASES = [
    # (arguments, exit code, text in the output)
    (["schema"], 0, '"RunConfig"'),
    (["backbones"], 0, "mobilenet_v2"),
    (["no-such-command"], 2, "No such command"),
    (["train"], 2, "Missing argument"),
    (["train", "missing.yaml"], 2, "missing.yaml"),
    (["validate", BAD], 2, "unknown field"),
    (["pretrain", SMOKE, "--set", "train.seed=x"], 2, "train.seed"),
    (["sweep", SMOKE, "--grid", "train.seed"], 2, "--grid"),
    (["deploy", SMOKE], 2, "Missing option '--name'"),
    (["deploy", BAD, "--name", "x"], 2, "unknown field"),
    (["predict", "digits", "x.png"], 2, "expected models:/NAME@ALIAS"),
    (["predict", "models:/digits@champion", "x.png", "--format", "xml"], 2, "--format"),
    (["lineage", "models:/nobody@champion"], 2, "no registered model 'nobody'"),
    (["reproduce", "models:/nobody/1"], 2, "no version 1 of registered model 'nobody'"),
    (["history", "nobody"], 2, "no registered model named 'nobody'"),
    (["status", "nobody"], 2, "no registered model or experiment"),
    (["compare", "nobody"], 2, "no finished run in experiment(s): nobody"),
]


@pytest.mark.parametrize(("args", "code", "text"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_exit_codes(cli: CliRunner, args: list[str], code: int, text: str) -> None:
    done = cli.invoke(app, args)
    assert done.exit_code == code, done.output
    assert text in done.output


def test_version_needs_no_service(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import version

    import tlops

    # nothing listens on either port: --version asks neither MLflow nor Prefect
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{_free_port()}/api")
    done = cli.invoke(app, ["--version"])
    assert done.exit_code == 0, done.output
    assert done.output == f"tlops {version('tlops')}\n"
    assert version("tlops") == tlops.__version__  # the package metadata and the source agree


def test_sample_refuses_an_existing_folder_with_2(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("x")
    done = cli.invoke(app, ["sample", "--out", "data"])
    assert done.exit_code == 2 and "--force" in done.output
    assert (tmp_path / "data" / "keep.txt").read_text() == "x"  # nothing overwritten


def test_unreachable_tracking_server_exits_5(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    for args in (["history", "digits"], ["status", "digits"], ["lineage", "models:/d@champion"]):
        done = cli.invoke(app, args)
        assert done.exit_code == 5, (args, done.output)
        assert "MLflow (http://127.0.0.1:" in done.output


def test_ci_mode_and_where_the_report_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert not ci_mode(False)
    for value, expected in (("true", True), ("1", True), ("false", False), ("", False)):
        monkeypatch.setenv("CI", value)
        assert ci_mode(False) is expected
    assert ci_mode(True)
    # CI without a step summary: the default file
    write_report("# report", ci=True, report=None)
    assert (tmp_path / "tlops-report.md").read_text() == "# report\n"
    # CI with a step summary: appended there; --report also writes its file
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    write_report("# second", ci=True, report=tmp_path / "out.md")
    assert summary.read_text() == "earlier step\n# second\n"
    assert (tmp_path / "out.md").read_text() == "# second\n"


POLICY_CASES = [
    # a CI run (--ci, or $CI) and a deployment may not override the promotion policy
    (["train", SMOKE, "--ci", "--set", "train.seed=1", "--set", "gate.values=[]"], "gate.values"),
    (["pretrain", SMOKE, "--set", "registry.champion_alias=prod"], "registry.champion_alias"),
    (["train", SMOKE, "--set", "name=prod"], "name"),  # smoke.yaml: name picks the model
    (
        ["sweep", SMOKE, "--grid", "train.seed=1,2", "--set", "gate.mcnemar_p=0.01"],
        "gate.mcnemar_p",
    ),
    (["deploy", SMOKE, "--name", "x", "--set", "gate.changes=[]"], "gate.changes"),
]


@pytest.mark.parametrize(
    ("args", "key"), POLICY_CASES, ids=[" ".join(c[0][:1] + c[0][2:]) for c in POLICY_CASES]
)
def test_ci_and_deployments_may_not_override_the_policy(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], key: str
) -> None:
    if "--ci" not in args and args[0] != "deploy":
        monkeypatch.setenv("CI", "true")
    done = cli.invoke(app, args)
    assert done.exit_code == 2, done.output
    assert f"error: --set {key}: a " in done.output and "may not override" in done.output
    if args[0] in {"train", "pretrain"}:  # CI mode still writes its report
        assert "failed (exit 2)" in (tmp_path / "tlops-report.md").read_text()
