"""Hyperparameter grid sweeps: parse ``--grid`` options, expand them into trial configs, choose.

A grid is a list of axes, each a dotted config key with the values to try, written on the
command line as ``--grid train.frozen.learning_rate=0.01,0.001``. Every value is read exactly as
a ``--set`` value (YAML), and every grid point is validated before anything runs.

The best trial is chosen on the **validation** split, by the config's ``train.monitor`` (the same
metric that picks the kept phase and drives early stopping), never on the test split: choosing
on test would make the test accuracy of the winner an optimistic, selected number, and the gate
judges the winner on that test split.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from tlops.adapters import tracking
from tlops.adapters.tracking import tracking_uri
from tlops.config import RunConfig, apply_overrides, build_config, parse_override
from tlops.errors import ConfigError, ServiceError, TlopsError
from tlops.jobs.context import RunContext
from tlops.jobs.register import PromotionResult
from tlops.jobs.train import EvalSummary, TrainSummary, run_tags
from tlops.paths import default_cache_root, tlops_home
from tlops.redact import redact_text

#: Most trials one sweep may expand to (a typo in a grid should not start a thousand trainings).
MAX_TRIALS = 64

#: Config keys a grid may not vary, and why (a key or any key below it).
FIXED_KEYS: dict[str, str] = {
    "name": "the experiment of every trial and of the parent run",
    "data.repo": "the data is resolved and validated once per sweep",
    "data.dvc_file": "the data is resolved and validated once per sweep",
    "data.subdir": "the data is resolved and validated once per sweep",
    "data.rev": "the data is resolved and validated once per sweep",
    "data.allow_dirty": "the data is resolved and validated once per sweep",
    "split": "the data is split and validated once per sweep",
    "contract": "the data is validated once per sweep",
    "train.monitor": "trials are compared on one validation metric",
    "gate": "only the chosen trial is gated, with the sweep's rules",
    "registry": "only the chosen trial is registered, under the sweep's model name",
}


class GridAxis(BaseModel):
    """One hyperparameter of the grid: a dotted config key and the values to try (as typed)."""

    model_config = ConfigDict(frozen=True)

    key: str = Field(description="dotted config key, e.g. train.frozen.learning_rate")
    values: list[str] = Field(min_length=1, description="values as YAML text, e.g. ['0.01']")


class Grid(BaseModel):
    """The grid of a sweep: the cartesian product of its axes, in the order given."""

    model_config = ConfigDict(frozen=True)

    axes: list[GridAxis] = Field(min_length=1)

    @property
    def size(self) -> int:
        """How many grid points (trials) the axes expand to."""
        return math.prod(len(axis.values) for axis in self.axes)

    def describe(self) -> str:
        """The grid as typed: ``key=v1,v2; key2=a,b``."""
        return "; ".join(f"{a.key}={','.join(a.values)}" for a in self.axes)


class Trial(BaseModel):
    """One grid point: its overrides and the validated config they give."""

    model_config = ConfigDict(frozen=True)

    index: int
    point: dict[str, str]
    config: RunConfig

    @property
    def label(self) -> str:
        """The grid point as ``key=value, key2=value``."""
        return ", ".join(f"{k}={v}" for k, v in self.point.items())

    @property
    def number(self) -> str:
        """``#1``, ``#2``, ... (one-based, for people)."""
        return f"#{self.index + 1}"


class TrialResult(BaseModel):
    """What one trial leaves: its MLflow run and model, and the train and eval summaries."""

    model_config = ConfigDict(frozen=True)

    index: int
    run_id: str
    model_uri: str
    out_dir: str
    trained: TrainSummary
    evaluated: EvalSummary

    def score(self) -> float | None:
        """The kept phase's best validation value of ``train.monitor`` (None if it has none)."""
        value = self.trained.phase_best.get(self.trained.kept_phase)
        if value is None or math.isnan(value):
            return None
        return float(value)


def split_values(text: str) -> list[str]:
    """Split ``a,b,c`` on the commas outside brackets, braces and quotes.

    So list or mapping values keep their commas: ``[1,2],[3]`` is two values.
    """
    values: list[str] = []
    depth, quote = 0, ""
    current: list[str] = []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    return values


def fixed_reason(key: str) -> str | None:
    """Why a grid may not vary ``key`` (None when it may)."""
    for fixed, why in FIXED_KEYS.items():
        if key == fixed or key.startswith(fixed + "."):
            return why
    return None


def parse_axis(text: str) -> GridAxis:
    """Parse one ``--grid KEY=V1,V2`` option; errors name the option."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"--grid {text!r}: expected KEY=V1,V2 with a dotted key")
    why = fixed_reason(key)
    if why:
        raise ConfigError(f"--grid {key}: cannot vary in a sweep ({why})")
    values = split_values(raw)
    if any(not v for v in values):
        raise ConfigError(f"--grid {text!r}: empty value (values are separated by commas)")
    if len(set(values)) != len(values):
        raise ConfigError(f"--grid {text!r}: a value is listed twice")
    for value in values:
        try:
            parse_override(f"{key}={value}")  # read as --set reads it
        except ConfigError:
            raise ConfigError(f"--grid {key}: value {value!r} is not valid YAML") from None
    return GridAxis(key=key, values=values)


def parse_grid(options: list[str]) -> Grid:
    """Parse the ``--grid`` options into a grid; at least one, each key once."""
    if not options:
        raise ConfigError("--grid: give at least one KEY=V1,V2")
    axes = [parse_axis(text) for text in options]
    keys = [axis.key for axis in axes]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"--grid {twice[0]}: given twice (list all its values in one option)")
    nested = [(a, b) for a in keys for b in keys if b.startswith(a + ".")]
    if nested:
        raise ConfigError(f"--grid {nested[0][0]} and {nested[0][1]}: one is inside the other")
    grid = Grid(axes=axes)
    if grid.size > MAX_TRIALS:
        raise ConfigError(f"--grid: {grid.size} trials, more than the limit of {MAX_TRIALS}")
    return grid


def expand_grid(base: RunConfig, grid: Grid) -> list[Trial]:
    """Every grid point as a validated trial config (grid values override ``base``).

    The order is the cartesian product of the axes in the order given (the last varies fastest).
    A point whose config is invalid, or the same as another's (``0.01`` and ``1e-2``), raises
    :class:`ConfigError` naming the point (and the field).
    """
    tree = base.model_dump(mode="json")
    trials: list[Trial] = []
    combos = itertools.product(*(axis.values for axis in grid.axes))
    for index, combo in enumerate(combos):
        point = {axis.key: value for axis, value in zip(grid.axes, combo, strict=True)}
        overrides = [f"{k}={v}" for k, v in point.items()]
        source = "--grid point " + ", ".join(overrides)
        config = build_config(apply_overrides(tree, overrides), source)
        same = next((t for t in trials if t.config == config), None)
        if same is not None:
            raise ConfigError(f"{source}: the same config as --grid point {same.label}")
        trials.append(Trial(index=index, point=point, config=config))
    return trials


def choose_best(results: list[TrialResult], monitor: str) -> TrialResult:
    """The trial with the best validation score: highest accuracy or lowest loss.

    Trials without a score (no epochs, or NaN after diverging) are never chosen; ties go to
    the earlier grid point.
    """
    scored = [(r.score(), r) for r in results]
    valid = [(s, r) for s, r in scored if s is not None]
    if not valid:
        raise ConfigError(
            f"no trial has a validation {monitor} to choose by (no epochs, or all diverged)"
        )
    sign = -1.0 if monitor.endswith("loss") else 1.0
    return max(valid, key=lambda pair: (sign * pair[0], -pair[1].index))[1]


def trial_failure(failures: Sequence[tuple[Trial, BaseException]], total: int) -> BaseException:
    """The error a sweep raises when trials failed: the first failure, saying which trial.

    An expected failure (a :class:`TlopsError`) keeps its kind, so the exit code stays that of
    its cause (5 for a service); anything else is returned as it is (a bug, exit 1).
    """
    trial, exc = failures[0]
    if not isinstance(exc, TlopsError):
        return exc
    others = f"{len(failures)} of {total} trials failed; first: " if len(failures) > 1 else ""
    return type(exc)(f"{others}trial {trial.number} ({trial.label}): {exc}")


def worker_environment() -> dict[str, str]:
    """Where this process logs and keeps files: what a trial's worker must share with the flow.

    Resolved values, so a default relative to another working directory counts as different.
    """
    return {
        "MLFLOW_TRACKING_URI": tracking_uri(),
        "TLOPS_HOME": str(tlops_home().resolve()),
        "TLOPS_CACHE": str(default_cache_root().resolve()),
    }


def check_worker_environment(expected: dict[str, str]) -> None:
    """Raise :class:`ConfigError` when this process sees other values than ``expected``.

    Trials on a remote Dask cluster must log to the same MLflow store and use the same tlops
    folders as the flow; the workers' environment is theirs, so it is checked, not set.
    """
    here = worker_environment()
    wrong = [k for k, v in expected.items() if here.get(k, "") != v]
    if wrong:
        shown = ", ".join(f"{k}={here.get(k, '')!r} (flow: {expected[k]!r})" for k in wrong)
        shown = redact_text(shown)  # a tracking URI may carry credentials
        raise ConfigError(f"the Dask worker's environment differs from the flow's: {shown}")


def check_scheduler(address: str, timeout_s: float = 15.0) -> None:
    """Raise :class:`ServiceError` unless a Dask scheduler answers at ``address``."""
    from distributed import Client

    try:
        with Client(address, timeout=timeout_s, set_as_default=False):  # type: ignore[no-untyped-call]
            pass
    except (OSError, TimeoutError) as exc:
        raise ServiceError(f"Dask scheduler at {address} unreachable: {exc}") from None


def parent_params(base: RunConfig, grid: Grid) -> dict[str, str]:
    """The parent run's params: the base config without the swept keys (those vary by trial)."""
    swept = [axis.key for axis in grid.axes]
    return {
        key: value
        for key, value in base.flat().items()
        if not any(key == s or key.startswith(s + ".") for s in swept)
    }


def parent_tags(grid: Grid, monitor: str, cluster: str) -> dict[str, str]:
    """Tags of the parent run that say what was swept, how, and how the winner is chosen."""
    return {
        "tlops.sweep": "parent",
        "sweep.grid": grid.describe(),
        "sweep.grid_json": json.dumps([a.model_dump() for a in grid.axes]),
        "sweep.trials": str(grid.size),
        "sweep.chosen_by": f"validation {monitor}",
        "sweep.cluster": cluster,
    }


def markdown_table(trials: list[Trial], results: list[TrialResult], best: int, monitor: str) -> str:
    """The trials as a Markdown table: grid point, validation score, test accuracy, run id."""
    by_index = {r.index: r for r in results}
    lines = [
        f"| trial | grid point | val {monitor} | test accuracy | MLflow run |",
        "|---|---|---|---|---|",
    ]
    for trial in trials:
        result = by_index[trial.index]
        score = result.score()
        shown = f"{score:.4f}" if score is not None else "n/a"
        mark = " (chosen)" if trial.index == best else ""
        lines.append(
            f"| {trial.number}{mark} | {trial.label} | {shown} |"
            f" {result.evaluated.metrics.get('test_accuracy', float('nan')):.4f} |"
            f" `{result.run_id}` |"
        )
    return "\n".join(lines)


def parent_run_name(ctx: RunContext, grid: Grid) -> str:
    """The parent run's name: ``<name>-sweep-<n>trials``."""
    return f"{ctx.config.name}-sweep-{grid.size}trials"


def open_parent_run(ctx: RunContext, grid: Grid, cluster: str) -> str:
    """Open the sweep's parent MLflow run in the base config's experiment; return its id.

    Its params are the base config without the swept keys, its tags the run's (data, code, the
    flow run) and the grid's (:func:`parent_tags`); the dataset is its input.
    """
    cfg = ctx.config
    tags = {
        **run_tags(cfg, ctx.data, ctx.flow_run_id),
        **parent_tags(grid, cfg.train.monitor, cluster),
    }
    name, params = parent_run_name(ctx, grid), parent_params(cfg, grid)
    run_id = tracking.start_run(cfg.name, name, params, tags)
    tracking.log_dataset(run_id, ctx.data, ctx.manifest.digest, context="train")
    return run_id


def finish_parent_run(
    parent: RunContext, trials: list[Trial], results: list[TrialResult], best: TrialResult,
    promotion: PromotionResult,
) -> str:  # fmt: skip
    """Record the chosen trial and the promotion on the parent run (``parent.run_id``) and
    finish it; return the Markdown of the sweep (the trials table and the promotion)."""
    cfg = parent.config
    monitor, chosen, score = cfg.train.monitor, trials[best.index], best.score()
    metrics = {"best_test_accuracy": best.evaluated.metrics["test_accuracy"]}
    if score is not None:
        metrics[f"best_{monitor}"] = score
    tracking.log_metrics(parent.run_id, metrics)
    tracking.set_tags(
        parent.run_id,
        {
            "sweep.best_run_id": best.run_id,
            "sweep.best_trial": f"{chosen.number} {chosen.label}",
            "sweep.promotion": promotion.line(),
        },
    )
    tracking.finish_run(parent.run_id, "FINISHED")
    table = markdown_table(trials, results, best.index, monitor)
    return f"## sweep {cfg.name}\n\n{table}\n\n**{promotion.line()}**"
