"""Gate, registration, promotion, ledger, lineage and prediction against a real `mlflow server`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import SMOKE, TINY, tlops_cli

ROOT = Path(__file__).resolve().parents[2]
FIRST = "gate.values=[{metric: test_accuracy, min: 0.0}]"
IMPOSSIBLE = "gate.changes=[{metric: test_accuracy, min_delta: 2.0}]"
ANY_CHANGE = "gate.changes=[{metric: test_accuracy, min_delta: -1.0}]"


def train_args(repo: Path, name: str, *sets: str) -> list[str]:
    extra = [item for s in sets for item in ("--set", s)]
    return ["train", SMOKE, "--set", f"data.repo={repo}", "--set", f"name={name}", *TINY, *extra]


def test_promote_reject_promote_with_ledger_lineage_and_predict(
    repo: Path, tracked: str, prefect_api: str, tmp_path: Path
) -> None:
    import mlflow
    from mlflow import MlflowClient

    name = "shapes-gated"
    client = MlflowClient(tracked)

    # (no rules: test_train_flow's complete run registers nothing)
    # 1. first candidate, a value rule, no champion: promoted, change rules skipped
    done = tlops_cli(train_args(repo, name, FIRST, ANY_CHANGE), prefect_api)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"promoted: {name} v1 is champion" in done.stdout
    assert "skipped (no champion yet)" in done.stdout
    v1 = client.get_model_version_by_alias(name, "champion")
    assert v1.version == "1"
    # the version carries the policy it passed, and that --set overrode it (local CLI: allowed)
    from tlops.config import load_config
    from tlops.jobs.policy import policy_sha256

    passed = load_config(Path(SMOKE), [f"name={name}", FIRST, ANY_CHANGE])
    assert v1.tags["policy.sha256"] == policy_sha256(passed)
    assert v1.tags["policy.source"] == "override"
    assert v1.tags["policy.overrides"] == "name,gate.values,gate.changes"
    assert "overrides the promotion policy" in done.stderr

    # 2. a candidate that must beat the champion by 2.0 accuracy: rejected, exit 4, rule named;
    # in CI mode the report goes to $GITHUB_STEP_SUMMARY; CI may not --set the policy (name,
    # gate), so it comes from a config file (not committed: recorded as such)
    summary = tmp_path / "step_summary.md"
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        Path(SMOKE).read_text()
        + f"\nname: {name}\ngate:\n  changes: {IMPOSSIBLE.partition('=')[2]}\n"
    )
    args = ["train", str(strict), "--set", f"data.repo={repo}", *TINY, "--set", "train.seed=1",
            "--ci"]  # fmt: skip
    done = tlops_cli(args, prefect_api, GITHUB_STEP_SUMMARY=str(summary))
    assert done.returncode == 4, done.stdout + done.stderr
    report = summary.read_text()
    assert f"## tlops: {name} candidate" in report and "vs champion v1" in report
    assert "**failing rule:** test_accuracy vs champion" in report
    assert "| class | recall | champion recall |" in report
    assert "| true \\ predicted | left | right | top |" in report
    assert "### newly misclassified:" in report
    assert "gate: reject" in done.stdout and "test_accuracy vs champion" in done.stdout
    assert "| FAIL |" in done.stdout
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    rejected = client.search_runs(
        [client.get_experiment_by_name(name).experiment_id], "tags.`gate.decision` = 'reject'"
    )
    assert len(rejected) == 1 and rejected[0].data.tags["gate.champion_compared"] == "1"
    assert rejected[0].data.tags["policy.source"] == "uncommitted-file"
    assert rejected[0].data.tags["policy.file"] == str(strict)
    verdict = json.loads(
        Path(
            client.download_artifacts(rejected[0].info.run_id, "gate/gate_verdict.json")
        ).read_text()
    )
    assert verdict["decision"] == "reject"
    assert verdict["results"][0]["threshold"] == "+delta >= 2"

    # 3. a candidate allowed any change: promoted; previous points at v1
    done = tlops_cli(train_args(repo, name, ANY_CHANGE, "train.seed=2"), prefect_api)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"promoted: {name} v2 is champion (previous: v1)" in done.stdout
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert client.get_model_version_by_alias(name, "previous").version == "1"

    # the version carries the lineage record
    v2 = client.get_model_version(name, "2")
    pointer = (repo / "data.dvc").read_text()
    assert v2.tags["data.md5"] in pointer
    assert v2.tags["backbone"] == "tiny_cnn" and v2.tags["backbone.weights_sha256"]
    assert v2.tags["gate.decision"] == "promote" and v2.tags["gate.champion_compared"] == "1"
    for key in ("git.commit", "lock.sha256", "prefect.flow_run_id", "version.keras", "device"):
        assert v2.tags[key], key
    assert "seed: 2" in v2.tags["config"]
    assert "data.md5" in client.get_registered_model(name).description

    # status: the champion, its promotion, what it was trained on, the runs with their verdicts
    state = tlops_cli(["status", name], prefect_api)
    assert state.returncode == 0, state.stdout + state.stderr
    assert f"champion: v2 (run {v2.run_id})" in state.stdout
    assert f"data: md5 {v2.tags['data.md5']}" in state.stdout
    assert "gate reject" in state.stdout and "gate promote" in state.stdout
    assert "ci " in state.stdout and "-> v2" in state.stdout

    # ledger: both champion moves, the previous move, in order
    history = tlops_cli(["history", name], prefect_api)
    assert history.returncode == 0, history.stderr
    lines = history.stdout.strip().splitlines()
    assert "@champion: (none) -> v1" in lines[0]
    assert "@champion: v1 -> v2" in lines[1]
    assert "@previous: (none) -> v1" in lines[2]

    # lineage card
    card = tlops_cli(["lineage", f"models:/{name}@champion"], prefect_api)
    assert card.returncode == 0, card.stderr
    assert f"## {name} v2" in card.stdout and v2.tags["data.md5"] in card.stdout
    assert "### gate" in card.stdout and "### config" in card.stdout
    missing = tlops_cli(["lineage", f"models:/{name}@nobody"], prefect_api)
    assert missing.returncode == 2 and "no registered model" in missing.stderr

    # reproduce: same data rev and config, tracked, never registered, metrics compared
    again = tlops_cli(["reproduce", f"models:/{name}/2"], prefect_api)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"### tlops reproduce: {name} v2" in again.stdout
    row = next(line for line in again.stdout.splitlines() if line.startswith("| test_accuracy |"))
    assert row.split("|")[2].strip() == f"{float(v2.tags['metric.test_accuracy']):.4f}"
    assert len(client.search_model_versions(f"name='{name}'")) == 2
    rerun = client.search_runs(
        [client.get_experiment_by_name(name).experiment_id],
        f"tags.`tlops.reproduces` = 'models:/{name}/2'",
    )
    assert len(rerun) == 1 and rerun[0].data.params["train.seed"] == "2"

    # predict: files and folders, an unreadable file reported, JSON out
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    left = repo / "data" / "test" / "left"
    done = tlops_cli(
        ["predict", f"models:/{name}@champion", str(left), str(bad), "--format", "json",
         "--top-k", "2"], prefect_api,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 4 and rows[-1]["error"]
    assert all(len(r["top"]) == 2 for r in rows[:3])
    assert {label for r in rows[:3] for label, _ in r["top"]} <= {"left", "right", "top"}
    csv_out = tlops_cli(["predict", f"models:/{name}/1", str(left), "--format", "csv"], prefect_api)
    assert csv_out.stdout.splitlines()[0] == "path,rank,class,probability,error"

    # pyfunc: the registered version labels encoded images, as tlops predict does
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")  # $MLFLOW_TRACKING_URI
    answer = model.predict(pd.DataFrame({"image": [Path(rows[0]["path"]).read_bytes()]}))
    assert answer.iloc[0]["label"] == rows[0]["top"][0][0]
    probs = np.array(list(answer.iloc[0]["probabilities"].values()))
    assert probs.shape == (3,) and np.isclose(probs.sum(), 1.0, atol=1e-4)


def test_concurrent_candidates_never_both_become_champion(
    repo: Path, tracked: str, prefect_api: str
) -> None:
    from mlflow import MlflowClient

    name = "shapes-race"
    env = {
        **os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": tracked,
    }  # fmt: skip
    cli = [sys.executable, "-m", "flows.cli"]
    rules = (FIRST, IMPOSSIBLE)
    commands = [[*cli, *train_args(repo, name, *rules, f"train.seed={s}")] for s in (11, 12)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in commands
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    codes = sorted(p.returncode for p in procs)
    # each process's exit code and the end of its output, untruncated: a failure names its cause
    ends = [
        f"exit {p.returncode}:\n{out[-1500:]}\n{err[-4000:]}"
        for p, (out, err) in zip(procs, outputs, strict=True)
    ]
    assert codes == [0, 4], "\n\n".join(ends)
    client = MlflowClient(tracked)
    (version,) = client.search_model_versions(f"name='{name}'")
    assert client.get_model_version_by_alias(name, "champion").version == version.version
    loser = next(out for p, out in zip(procs, outputs, strict=True) if p.returncode == 4)
    assert "test_accuracy vs champion" in loser[0]  # judged against the winner, not "none"


def test_failure_while_promoting_leaves_nothing_half_written(
    repo: Path, tracked: str, prefect_api: str
) -> None:
    """A failure (a failing MLflow write) after the version is registered and its gate evidence
    tagged, before the alias call: exit 5, the version is deleted."""
    from mlflow import MlflowClient

    point = "after_gate_tags"
    name = f"shapes-fault-{point.replace('_', '-')}"
    done = tlops_cli(train_args(repo, name, FIRST), prefect_api, TLOPS_FAULT=point)
    assert done.returncode == 5, done.stdout + done.stderr
    assert f"injected failure at {point}" in done.stdout + done.stderr
    client = MlflowClient(tracked)
    assert not client.search_model_versions(f"name='{name}'")
    history = tlops_cli(["history", name], prefect_api)
    assert "no alias has moved yet" in history.stdout
