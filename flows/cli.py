"""The ``tlops`` command line.

Exit codes (design section 7): 0 success, 2 bad config or usage, 3 data contract failed,
4 gate rejected the candidate, 5 an external service failed, 1 a bug.
Heavy imports (Prefect, DVC, GX) happen inside the commands that need them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from tlops.config import RunConfig, load_config
from tlops.errors import ConfigError, ServiceError, TlopsError

app = typer.Typer(
    name="tlops",
    help="Transfer learning of image classifiers as an orchestrated MLOps workflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")

ConfigArg = Annotated[Path, typer.Argument(help="run config (YAML), e.g. configs/demo.yaml")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a config value: --set data.image_size=96 (repeatable)"),
]
RevOpt = Annotated[
    str | None, typer.Option("--data-rev", help="git revision of data.dvc (default: working tree)")
]
DirtyOpt = Annotated[
    bool,
    typer.Option("--allow-dirty", help="accept data that differs from data.dvc (lineage: dirty)"),
]


ModelUriArg = Annotated[
    str, typer.Argument(help="registered model: models:/NAME@ALIAS or models:/NAME/VERSION")
]


def _fail(exc: TlopsError) -> typer.Exit:
    """Print a one-line cause to stderr and turn it into the exit code of its kind."""
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(exc.exit_code)


def _guard(action: Callable[[], T]) -> T:
    """Run a command body, mapping expected failures to their exit codes."""
    import httpx

    try:
        return action()
    except TlopsError as exc:
        raise _fail(exc) from None
    except httpx.HTTPError as exc:
        raise _fail(ServiceError(f"Prefect API unreachable or failing: {exc}")) from None


def _publish_summary(markdown: str) -> None:
    """Print a run summary and append it to ``$GITHUB_STEP_SUMMARY`` when set."""
    typer.echo(markdown)
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with Path(target).open("a", encoding="utf-8") as handle:
            handle.write(markdown + "\n")


def _load(
    config: Path, overrides: list[str] | None, data_rev: str | None, dirty: bool
) -> RunConfig:
    """Load a config file with overrides; ``--data-rev`` and ``--allow-dirty`` are overrides."""
    extra = list(overrides or [])
    if data_rev is not None:
        extra.append(f"data.rev={json.dumps(data_rev)}")
    if dirty:
        extra.append("data.allow_dirty=true")
    return load_config(config, extra)


@app.command()
def schema() -> None:
    """Print the JSON schema of the run config."""
    from tlops.config import config_schema

    typer.echo(json.dumps(config_schema(), indent=2))


@app.command()
def backbones() -> None:
    """List the backbones: default input size, minimum size, preprocessing, fine-tune start."""
    from tlops.backbones import BACKBONES

    typer.echo(f"{'name':<20} {'size':>5} {'min':>4}  {'preprocess':<10} fine-tune from")
    for spec in BACKBONES.values():
        typer.echo(
            f"{spec.name:<20} {spec.default_size:>5} {spec.min_size:>4}  {spec.preprocess:<10} "
            f"{spec.fine_tune_from}"
        )


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="folder to write (tracked by DVC as data/)")] = Path(
        "data"
    ),
    force: Annotated[bool, typer.Option(help="replace a non-empty folder")] = False,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="do nothing when the folder already exists")
    ] = False,
) -> None:
    """Write the embedded sample dataset (offline, deterministic) into OUT."""
    from tlops.sample import write_sample

    if if_missing and out.exists():
        typer.echo(f"{out} exists; leaving it as it is")
        return
    try:
        summary = write_sample(out, force=force)
    except FileExistsError as exc:
        raise _fail(TlopsError(f"{exc} (use --force to replace it)")) from None
    parts = ", ".join(f"{part} {sum(s.values())}" for part, s in summary.parts.items())
    typer.echo(f"wrote {summary.nfiles} images to {summary.root} ({parts})")


#: Heavy packages each flow will need, imported in the background while it starts (stage order).
_DATA_STAGES = ("dvc.repo", "dvc.api", "great_expectations")
PRELOAD: dict[str, tuple[str, ...]] = {
    "validate_flow": _DATA_STAGES,
    "train_flow": (*_DATA_STAGES, "mlflow", "tlops.model", "tlops.training", "tlops.evaluation"),
}


def _preload(modules: tuple[str, ...]) -> threading.Thread:
    """Import ``modules`` in a daemon thread; a failed import is left for its stage to report.

    Started once Prefect and the flow module are imported, it overlaps the heavy imports
    (TensorFlow alone takes 10-20 s) with the start of Prefect's temporary API server, which
    runs in a subprocess while the main thread waits for it.
    """

    def work() -> None:
        for name in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=work, name="tlops-preload", daemon=True)
    thread.start()
    return thread


def _start_prefect_api(preload: tuple[str, ...]) -> None:
    """Start Prefect's temporary API server (no ``PREFECT_API_URL``) while ``preload`` imports.

    This is the server Prefect itself would start at the first API call (the same
    ``SubprocessASGIServer`` singleton, so the flow reuses it); starting it here lets the heavy
    imports run in a thread while the main thread only waits for the server's health check.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        _preload(preload)
        return
    from prefect.server.api.server import SubprocessASGIServer

    _preload(preload)
    SubprocessASGIServer().start()


def _run_flow(
    flow_module: str, flow_name: str, config: Path, overrides: list[str] | None,
    data_rev: str | None, allow_dirty: bool,
) -> None:  # fmt: skip
    """Load the config, run a flow (imported only now: Prefect is slow to import), summarize."""

    def body() -> None:
        cfg = _load(config, overrides, data_rev, allow_dirty)
        run_flow = getattr(importlib.import_module(flow_module), flow_name)
        if os.environ.get("TLOPS_PRELOAD", "1") != "0":
            _start_prefect_api(PRELOAD.get(flow_name, ()))
        outcome = run_flow(cfg)
        _publish_summary(outcome.summary())
        code = int(getattr(outcome, "exit_code", 0))
        if code:
            raise typer.Exit(code)

    _guard(body)


@app.command()
def validate(
    config: ConfigArg,
    set_: SetOpt = None,
    data_rev: RevOpt = None,
    allow_dirty: DirtyOpt = False,
) -> None:
    """Resolve the data version, scan it, and run the data contract (exit 3 if it fails)."""
    _run_flow("flows.validate", "validate_flow", config, set_, data_rev, allow_dirty)


@app.command()
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    data_rev: RevOpt = None,
    allow_dirty: DirtyOpt = False,
) -> None:
    """Validate the data, train (frozen base, then fine-tuning), evaluate, track in MLflow."""
    _run_flow("flows.train", "train_flow", config, set_, data_rev, allow_dirty)


@app.command()
def pretrain(
    config: ConfigArg,
    set_: SetOpt = None,
    data_rev: RevOpt = None,
    allow_dirty: DirtyOpt = False,
) -> None:
    """Train on a source dataset and register the backbone (not the classifier) if the gate
    passes; a train config then names it as ``backbone.weights: models:/NAME@champion``."""
    overrides = [*(set_ or []), "registry.kind=backbone"]
    _run_flow("flows.train", "train_flow", config, overrides, data_rev, allow_dirty)


@app.command()
def reproduce(model_uri: ModelUriArg) -> None:
    """Retrain a registered version with its data revision and config; print metric changes.

    The rerun is tracked like any run (same experiment, tag ``tlops.reproduces``) but never
    registered: its gate rules are cleared.
    """

    def body() -> None:
        import tempfile

        from tlops.promotion import reproduction_config, reproduction_report
        from tlops.registry import resolve

        info = resolve(model_uri)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = reproduction_config(info, Path(tmp))
        run_flow = importlib.import_module("flows.train").train_flow
        if os.environ.get("TLOPS_PRELOAD", "1") != "0":
            _start_prefect_api(PRELOAD["train_flow"])
        outcome = run_flow(cfg)
        from tlops.tracking import set_tags

        set_tags(outcome.run_id, {"tlops.reproduces": f"models:/{info.name}/{info.version}"})
        _publish_summary(reproduction_report(info, outcome.evaluated.metrics, outcome.run_id))

    _guard(body)


@app.command()
def compare(
    experiments: Annotated[list[str], typer.Argument(help="experiment (run config) names")],
    metric: Annotated[str, typer.Option(help="metric to compare")] = "test_accuracy",
) -> None:
    """Compare the latest finished run of experiments on one metric (the first is the reference)."""

    def body() -> None:
        from tlops.tracking import latest_run

        rows = [(name, latest_run(name)) for name in experiments]
        missing = [name for name, run in rows if run is None]
        if missing:
            raise ConfigError(f"no finished run in experiment(s): {', '.join(missing)}")
        reference = float(rows[0][1]["metrics"].get(metric, float("nan")))  # type: ignore[index]
        typer.echo(f"| experiment | backbone weights | {metric} | vs {experiments[0]} |")
        typer.echo("|---|---|---|---|")
        for name, run in rows:
            assert run is not None
            value = float(run["metrics"].get(metric, float("nan")))
            weights = run["tags"].get("backbone.weights", "?")
            typer.echo(
                f"| {name} | {weights} | {value:.4f} | {100 * (value - reference):+.1f} points |"
            )

    _guard(body)


@app.command()
def history(model_name: Annotated[str, typer.Argument(help="registered model name")]) -> None:
    """Print the promotion ledger of a registered model: every alias move, oldest first."""

    def body() -> None:
        from tlops.registry import ledger

        entries = ledger(model_name)
        if not entries:
            typer.echo(f"{model_name}: no alias has moved yet")
        for e in entries:
            before = f"v{e.from_version}" if e.from_version else "(none)"
            typer.echo(
                f"{e.when}  @{e.alias}: {before} -> v{e.to_version}  flow run {e.flow_run_id}"
                f"  {e.why}"
            )

    _guard(body)


@app.command()
def lineage(model_uri: ModelUriArg) -> None:
    """Print the lineage card of a registered version: data, backbone, config, code, gate."""

    def body() -> None:
        from tlops.promotion import lineage_card
        from tlops.registry import resolve

        typer.echo(lineage_card(resolve(model_uri)))

    _guard(body)


@app.command()
def predict(
    model_uri: ModelUriArg,
    paths: Annotated[list[Path], typer.Argument(help="image files or folders")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="classes per image")] = 3,
    output: Annotated[
        str, typer.Option("--format", help="table, json or csv", case_sensitive=False)
    ] = "table",
) -> None:
    """Predict the top-k classes of images with a registered model (unreadable files reported)."""

    def body() -> None:
        from tlops.predict import format_predictions, predict_files

        if output.lower() not in {"table", "json", "csv"}:
            raise ConfigError(f"--format {output!r}: must be table, json or csv")
        rows = predict_files(model_uri, paths, top_k)
        typer.echo(format_predictions(rows, output.lower()))
        if rows and all(r.error for r in rows):
            raise typer.Exit(3)

    _guard(body)


#: Offline-first: no usage analytics unless the environment asks for them.
QUIET_ANALYTICS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}


def main() -> None:
    """Entry point of the ``tlops`` script."""
    for key, value in QUIET_ANALYTICS.items():
        os.environ.setdefault(key, value)
    app()


if __name__ == "__main__":
    main()
