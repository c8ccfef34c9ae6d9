"""`tlops validate` end to end: real Prefect flow runs, real DVC repo, real GX."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from conftest import commit_data, copy_repo, init_repo, run, tlops_cli, write_images

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


@pytest.fixture
def cli(prefect_api: str):  # type: ignore[no-untyped-def]
    """Run ``tlops`` in a subprocess; returns (exit code, stdout + stderr)."""

    def invoke(args: list[str], **env: str) -> tuple[int, str]:
        done = tlops_cli(args, prefect_api, **env)
        return done.returncode, done.stdout + done.stderr

    return invoke


@pytest.fixture(scope="module")
def _template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Built once: the repo below and its remote, for each test to copy."""
    base = tmp_path_factory.mktemp("validate-template")
    init_repo(base / "repo", base / "remote")
    write_images(base / "repo" / "data", {"cat": 4, "dog": 4}, seed=7)
    commit_data(base / "repo", "good data", tag="good")
    return base / "repo", base / "remote"


@pytest.fixture
def repo(_template: tuple[Path, Path], tmp_path: Path) -> Path:
    """A git + DVC repo holding a small valid dataset, tagged ``good`` (a private copy of the
    module's template, its remote at ``tmp_path/remote``)."""
    return copy_repo(*_template, tmp_path)[0]


def _flow_runs(name: str) -> list[tuple[str, str]]:
    """(state type, id) of every run of a flow, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def query() -> list[tuple[str, str]]:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[name]))
            )
            return [(r.state_type.value if r.state_type else "", str(r.id)) for r in runs]

    return asyncio.run(query())


def _artifact(key: str) -> str:
    """The latest markdown artifact under ``key``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def query() -> str:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
            return str(found[0].data) if found else ""

    return asyncio.run(query())


def test_validate_passes_and_publishes_summary(repo: Path, tmp_path: Path, cli) -> None:
    summary = tmp_path / "step-summary.md"
    before = len(_flow_runs("tlops-validate"))
    code, output = cli(
        ["validate", SMOKE, "--set", f"data.repo={repo}"], GITHUB_STEP_SUMMARY=str(summary)
    )
    assert code == 0, output
    assert "data contract passed" in output
    assert run(["git", "rev-parse", "good"], repo).strip()[:12] in output
    assert "data contract passed" in summary.read_text()
    runs = _flow_runs("tlops-validate")
    assert len(runs) == before + 1
    assert "COMPLETED" in {state for state, _ in runs}
    assert "Image data contract: PASSED" in _artifact("data-contract")


def test_contract_failure_exits_3_naming_files(repo: Path, cli) -> None:
    bad = repo / "data" / "test" / "dog" / "broken image.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    leak = next((repo / "data" / "train" / "cat").iterdir())
    (repo / "data" / "val" / "cat" / "copy.png").write_bytes(leak.read_bytes())
    commit_data(repo, "bad data")
    code, output = cli(["validate", SMOKE, "--set", f"data.repo={repo}"])
    assert code == 3, output
    assert "decodable" in output
    assert "test/dog/broken image.png" in output
    assert "leakage" in output and "val/cat/copy.png" in output
    assert "FAILED" in {state for state, _ in _flow_runs("tlops-validate")}
    assert "Image data contract: FAILED" in _artifact("data-contract")

    # the older, good version still validates by revision while the bad one sits in the tree
    code, output = cli(["validate", SMOKE, "--set", f"data.repo={repo}", "--data-rev", "good"])
    assert code == 0, output


def test_dirty_data_exit_3_then_allowed(repo: Path, cli) -> None:
    (repo / "data" / "train" / "cat" / "extra.png").write_bytes(
        next((repo / "data" / "test" / "dog").iterdir()).read_bytes()
    )
    args = ["validate", SMOKE, "--set", f"data.repo={repo}"]
    code, output = cli(args)
    assert code == 3, output
    assert "does not match data.dvc" in output
    code, output = cli([*args, "--allow-dirty"])
    # allowed, but the copied test image now leaks into train: the contract catches it
    assert code == 3, output
    assert "leakage" in output and "train/cat/extra.png" in output


def test_unknown_rev_exit_2_and_lost_remote_exit_5(repo: Path, tmp_path: Path, cli) -> None:
    args = ["validate", SMOKE, "--set", f"data.repo={repo}"]
    code, output = cli([*args, "--data-rev", "nope"])
    assert code == 2, output
    assert "unknown git revision 'nope'" in output
    import shutil

    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(tmp_path / "remote")
    code, output = cli([*args, "--data-rev", "good"])
    assert code == 5, output
    assert "could not fetch" in output


def test_unsafe_file_name_exits_3_with_one_escaped_line(repo: Path, cli) -> None:
    """A newline (and a table row) in a file name: exit 3 naming it escaped, no traceback."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(99).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    unsafe = repo / "data" / "val" / "dog" / "x\n| decodable | forged | pass |.png"
    Image.fromarray(pixels).save(unsafe, format="PNG")  # a valid, distinct image
    commit_data(repo, "unsafe name")
    code, output = cli(["validate", SMOKE, "--set", f"data.repo={repo}"])
    assert code == 3, output
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if line.startswith("error: ")]
    assert "file_name" in line and "val/dog/x\\n| decodable | forged | pass |.png" in line
    assert "\n| decodable | forged" not in _artifact("data-contract")


def test_without_an_api_a_flow_command_starts_its_own_early_and_leaves_nothing_running(
    repo: Path, tmp_path: Path
) -> None:
    """No PREFECT_API_URL: ``tlops`` starts Prefect's temporary server itself, before Prefect
    is imported (flows/startup.py), runs the flow on it, sends its last logs and stops it."""
    import os
    import subprocess
    import sys

    import psutil

    home = str(tmp_path / "prefect-home")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"PREFECT_HOME": home, "PYTHONPATH": str(ROOT)})
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "validate", SMOKE, "--set", f"data.repo={repo}"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "data contract passed" in output
    assert "Starting temporary server" not in output  # not Prefect's own, started later
    assert "Error logging to API" not in output  # the server outlived the last log
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("PREFECT_HOME") == home:
                left.append(proc.info["cmdline"])
    assert left == []


def test_a_train_validation_layout_without_test_validates_with_a_carved_test(
    repo: Path, cli
) -> None:
    import shutil

    data = repo / "data"
    (data / "val").rename(data / "validation")  # the Keras-tutorial / Kaggle layout
    shutil.rmtree(data / "test")
    commit_data(repo, "train + validation only")
    code, output = cli(["validate", SMOKE, "--set", f"data.repo={repo}"])
    assert code == 0, output
    assert "data contract passed" in output
    assert "splits from folders; test carved from train by sha256" in output
