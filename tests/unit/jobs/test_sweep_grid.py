"""Grid sweeps: parsing ``--grid``, expanding and validating grid points, choosing the best."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tlops.config import RunConfig, load_config
from tlops.errors import ConfigError, DataError, ServiceError
from tlops.jobs.sweep import (
    MAX_TRIALS,
    Trial,
    TrialResult,
    check_worker_environment,
    choose_best,
    expand_grid,
    markdown_table,
    parent_params,
    parse_axis,
    parse_grid,
    split_values,
    trial_failure,
    worker_environment,
)
from tlops.jobs.train import EvalSummary, TrainSummary

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "smoke.yaml"


def result(
    index: int, best: float | None, kept: str = "fine_tune", test: float = 0.5
) -> TrialResult:
    """A trial result whose kept phase scored ``best`` on validation."""
    trained = TrainSummary(
        model_path="m.keras", result_path="training.json", kept_phase=kept,
        phase_best={"frozen": 0.1, kept: best} if kept != "frozen" else {"frozen": best},
        phase_epochs={"frozen": 1, kept: 1}, classes=["a", "b"], binary=True, weights_kind="random",
        weights_sha256="0" * 64, feature_cache="off", resumed_at=None, device="CPU",
        runtime_tags={}, images_per_s={}, trainable_params={},
    )  # fmt: skip
    evaluated = EvalSummary(metrics={"test_accuracy": test}, artifacts={})
    return TrialResult(
        index=index, run_id=f"run{index}", model_uri=f"runs:/run{index}/model", out_dir="x",
        trained=trained, evaluated=evaluated,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("0.01,0.001", ["0.01", "0.001"]),
        ("adam, sgd ,rmsprop", ["adam", "sgd", "rmsprop"]),
        ("[1,2],[3]", ["[1,2]", "[3]"]),
        ('{"metric": "a", "min": 1},"x,y"', ['{"metric": "a", "min": 1}', '"x,y"']),
        ("single", ["single"]),
    ],
)
def test_values_split_on_top_level_commas(text: str, values: list[str]) -> None:
    assert split_values(text) == values


def test_an_axis_keeps_values_as_typed() -> None:
    axis = parse_axis("train.frozen.learning_rate=0.01,0.001")
    assert axis.key == "train.frozen.learning_rate"
    assert axis.values == ["0.01", "0.001"]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("train.frozen.learning_rate", "expected KEY=V1,V2"),
        ("=1,2", "expected KEY=V1,V2"),
        ("train..epochs=1", "expected KEY=V1,V2"),
        ("head.dropout=0.1,,0.2", "empty value"),
        ("head.dropout=0.1,0.1", "listed twice"),
        ("name=a,b", "--grid name: cannot vary"),
        ("data.rev=v1,v2", "--grid data.rev: cannot vary"),
        ("split.seed=0,1", "--grid split.seed: cannot vary"),
        ("train.monitor=val_accuracy,val_loss", "compared on one validation metric"),
        ("gate.values=[],[]", "--grid gate.values: cannot vary"),
        ("registry.model_name=a,b", "--grid registry.model_name: cannot vary"),
        ("head.dropout=[0.1", "not valid YAML"),
    ],
)
def test_bad_axes_name_the_option(option: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_axis(option)


def test_a_grid_needs_axes_each_once_and_not_too_many_trials() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        parse_grid([])
    with pytest.raises(ConfigError, match=r"head\.dropout: given twice"):
        parse_grid(["head.dropout=0.1", "head.dropout=0.2"])
    with pytest.raises(ConfigError, match="one is inside the other"):
        parse_grid(["train.frozen={epochs: 1},{epochs: 2}", "train.frozen.epochs=3"])
    values = ",".join(str(i) for i in range(1, 10))
    with pytest.raises(ConfigError, match=f"more than the limit of {MAX_TRIALS}"):
        parse_grid([f"train.frozen.epochs={values}", f"train.fine_tune.epochs={values}"])


def test_expansion_is_the_product_in_order_with_values_typed_like_set() -> None:
    base = load_config(SMOKE, ["train.frozen.epochs=7"])
    grid = parse_grid(["train.frozen.learning_rate=0.01,0.001", "head.dropout=0,0.5"])
    trials = expand_grid(base, grid)
    assert grid.size == len(trials) == 4
    assert [t.index for t in trials] == [0, 1, 2, 3]
    assert [(t.config.train.frozen.learning_rate, t.config.head.dropout) for t in trials] == [
        (0.01, 0.0), (0.01, 0.5), (0.001, 0.0), (0.001, 0.5)
    ]  # fmt: skip
    assert all(t.config.train.frozen.epochs == 7 for t in trials)  # the rest of the base stays
    assert trials[1].label == "train.frozen.learning_rate=0.01, head.dropout=0.5"
    assert trials[1].number == "#2"
    # the grid wins over --set for its own keys
    overridden = expand_grid(
        load_config(SMOKE, ["head.dropout=0.3"]), parse_grid(["head.dropout=0.1"])
    )
    assert overridden[0].config.head.dropout == 0.1


def test_structured_values_are_yaml_like_set_values() -> None:
    grid = parse_grid(["backbone.fine_tune_from=0.5,2,block_16_expand"])
    starts = [t.config.backbone.fine_tune_from for t in expand_grid(RunConfig(), grid)]
    assert starts == [0.5, 2, "block_16_expand"]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("head.dropuot=0.1,0.2", "--grid point head.dropuot=0.1: head.dropuot: unknown field"),
        ("head.dropout=0.1,1.5", "--grid point head.dropout=1.5: head.dropout: Input should be"),
        ("train.optimizer=adam,lion", "--grid point train.optimizer=lion: train.optimizer"),
        ("train.frozen.learning_rate=0.01,1e-2", "the same config as --grid point"),
    ],
)
def test_every_grid_point_is_validated_naming_it(option: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand_grid(load_config(SMOKE), parse_grid([option]))


def test_parent_params_leave_out_the_swept_keys() -> None:
    grid = parse_grid(["train.frozen=[]", "head.dropout=0.1"])
    params = parent_params(RunConfig(), grid)
    assert "head.dropout" not in params
    assert not any(k.startswith("train.frozen.") for k in params)
    assert params["train.fine_tune.epochs"] == "5"


def test_the_best_is_chosen_on_validation_accuracy_not_test() -> None:
    results = [result(0, 0.7, test=0.9), result(1, 0.8, test=0.6), result(2, 0.75)]
    assert choose_best(results, "val_accuracy").index == 1


def test_the_best_loss_is_the_lowest() -> None:
    results = [result(0, 0.4), result(1, 0.2, kept="frozen"), result(2, 0.3)]
    assert choose_best(results, "val_loss").index == 1


def test_ties_go_to_the_earlier_point_and_unscored_trials_are_never_chosen() -> None:
    results = [result(0, None), result(1, float("nan")), result(2, 0.5), result(3, 0.5)]
    assert choose_best(results, "val_accuracy").index == 2
    assert choose_best(results, "val_loss").index == 2
    with pytest.raises(ConfigError, match="no trial has a validation val_accuracy"):
        choose_best(results[:2], "val_accuracy")


def test_a_failed_trial_keeps_the_kind_of_its_error_and_says_which() -> None:
    trials = expand_grid(RunConfig(), parse_grid(["head.dropout=0.1,0.2,0.3"]))
    error = trial_failure([(trials[1], ServiceError("MLflow down"))], 3)
    assert isinstance(error, ServiceError)
    assert str(error) == "trial #2 (head.dropout=0.2): MLflow down"
    several = trial_failure(
        [(trials[0], DataError("bad image")), (trials[2], ServiceError("x"))], 3
    )
    assert isinstance(several, DataError)
    assert str(several).startswith("2 of 3 trials failed; first: trial #1 (head.dropout=0.1)")
    bug = ZeroDivisionError("division by zero")
    assert trial_failure([(trials[0], bug)], 3) is bug


def test_a_worker_must_log_where_the_flow_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    flow_side = worker_environment()
    check_worker_environment(flow_side)  # the same process: the same values
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI='http://elsewhere:5000'"):
        check_worker_environment(flow_side)


def test_the_table_marks_the_chosen_trial() -> None:
    trials: list[Trial] = expand_grid(RunConfig(), parse_grid(["head.dropout=0.1,0.2"]))
    table = markdown_table(trials, [result(0, 0.5), result(1, 0.75, test=0.25)], 1, "val_accuracy")
    lines = table.splitlines()
    assert lines[0] == "| trial | grid point | val val_accuracy | test accuracy | MLflow run |"
    assert lines[2] == "| #1 | head.dropout=0.1 | 0.5000 | 0.5000 | `run0` |"
    assert lines[3] == "| #2 (chosen) | head.dropout=0.2 | 0.7500 | 0.2500 | `run1` |"


def test_the_cli_refuses_a_bad_grid_before_starting_anything() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "sweep", str(SMOKE), "--grid", "head.dropout=0.1,7"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--grid point head.dropout=7: head.dropout" in done.stderr
    assert "Prefect" not in done.stderr + done.stdout
