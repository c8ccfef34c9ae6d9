"""`tlops sweep` end to end: a local Dask cluster, a real `mlflow server`, Prefect, DVC and GX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import SMOKE, TINY, tlops_cli


def test_sweep_trains_the_grid_as_child_runs_and_promotes_only_the_best(
    repo: Path, tracked: str, prefect_api: str
) -> None:
    from mlflow import MlflowClient

    name = "shapes-sweep"
    args = [
        "sweep", SMOKE, "--set", f"data.repo={repo}", "--set", f"name={name}", *TINY,
        "--set", 'gate.values=[{"metric": "test_accuracy", "min": 0.0}]',
        "--grid", "train.frozen.learning_rate=0.01,0.001", "--workers", "2",
    ]  # fmt: skip
    done = tlops_cli(args, prefect_api)
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout

    client = MlflowClient(tracked)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == f"{name}-sweep-2trials"
    assert parent.data.tags["sweep.grid"] == "train.frozen.learning_rate=0.01,0.001"
    assert "train.frozen.learning_rate" not in parent.data.params
    assert all(c.info.status == "FINISHED" for c in children)
    rates = {c.data.params["train.frozen.learning_rate"] for c in children}
    assert rates == {"0.01", "0.001"}
    for child in children:
        rate = child.data.params["train.frozen.learning_rate"]
        assert child.info.run_name.endswith(f"train.frozen.learning_rate={rate}")
        assert "test_accuracy" in child.data.metrics
        assert len(child.outputs.model_outputs) == 1  # its model, a LoggedModel of the run

    # the chosen trial: the best validation accuracy of its kept phase, gated and registered
    chosen_id = parent.data.tags["sweep.best_run_id"]
    (chosen,) = [c for c in children if c.info.run_id == chosen_id]
    (other,) = [c for c in children if c.info.run_id != chosen_id]

    def score(run: Any) -> float:
        return float(run.data.metrics[f"best_{run.data.tags['kept_phase']}"])

    assert score(chosen) >= score(other)
    if score(chosen) == score(other):  # ties go to the first grid point
        assert chosen.data.params["train.frozen.learning_rate"] == "0.01"
    assert chosen.data.tags["gate.decision"] == "promote"
    assert not any(key.startswith("gate.") for key in other.data.tags)
    (version,) = client.search_model_versions(f"name='{name}'")
    assert version.run_id == chosen_id
    assert chosen.data.tags["registered.version"] == version.version

    # the summary: the trials table, the chosen trial, the promotion
    rate = chosen.data.params["train.frozen.learning_rate"]
    assert f"(chosen) | train.frozen.learning_rate={rate} |" in output
    assert "- chosen: trial #" in output and f"run `{chosen_id}`" in output
    assert f"`{other.info.run_id}`" in output
    assert f"promoted: {name} v{version.version} is champion" in output
    assert "2 trials on local Dask, 2 workers" in output
