"""The ``tlops`` command line: its Typer commands and their options, nothing else.

Exit codes (design section 7): 0 success, 2 bad config or usage, 3 data contract failed,
4 gate rejected the candidate, 5 an external service failed, 1 a bug (:mod:`flows.exit_codes`).
Heavy imports (Prefect, DVC, GX) happen inside the commands that need them; starting a flow
(preloading, Prefect's temporary API) is :mod:`flows.startup`, and the run summaries and CI
reports are :mod:`flows.reports`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.exit_codes import fail, guard
from flows.reports import (
    ci_mode,
    note_policy_override,
    publish_run,
    publish_summary,
    report_failure,
)
from flows.startup import apply_env_defaults, start_flow
from tlops.config import RunConfig, load_config
from tlops.errors import ConfigError
from tlops.jobs.policy import policy_origin, refuse_policy_overrides
from tlops.redact import redact_text

app = typer.Typer(
    name="tlops",
    help="Transfer learning of image classifiers as an orchestrated MLOps workflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Arguments and options of several commands.
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
VerifyOpt = Annotated[
    bool,
    typer.Option(
        "--verify",
        help="recompute the md5 of the cached data too (every run checks file sizes and mtimes);"
        " a cached copy that fails is replaced ($TLOPS_VERIFY_DATA=1 does the same)",
    ),
]
GridOpt = Annotated[
    list[str],
    typer.Option(
        "--grid",
        help="a hyperparameter and its values, read like --set values: --grid"
        " train.frozen.learning_rate=0.01,0.001 (repeatable; trials = every combination)",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=1, help="processes of the local Dask cluster [default: 2]"),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (its workers"
        " need this project, PREFECT_API_URL, and the same MLflow store and tlops folders)",
    ),
]
ModelUriArg = Annotated[
    str, typer.Argument(help="registered model: models:/NAME@ALIAS or models:/NAME/VERSION")
]
CiOpt = Annotated[
    bool,
    typer.Option(
        "--ci",
        help="CI mode (also when $CI is set): write the Markdown report (candidate vs champion,"
        " verdict, confusion matrix, newly misclassified) to $GITHUB_STEP_SUMMARY or --report",
    ),
]
ReportOpt = Annotated[
    Path | None,
    typer.Option("--report", help="also write the Markdown report to this file (CI default:"
                 " tlops-report.md when $GITHUB_STEP_SUMMARY is not set)"),
]  # fmt: skip


def _request_verify(verify: bool) -> None:
    """``--verify``: ask the data resolution (in this process) for a full md5 check."""
    if verify:
        os.environ["TLOPS_VERIFY_DATA"] = "1"


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


def package_version() -> str:
    """The installed package's version (its metadata), else the source tree's ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tlops")
    except PackageNotFoundError:
        from tlops import __version__

        return __version__


def _print_version(requested: bool) -> None:
    """``--version``: print ``tlops <version>`` and exit 0, before any command starts."""
    if requested:
        typer.echo(f"tlops {package_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Options of ``tlops`` itself, before the command (only ``--version``)."""


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
    from tlops.data.sample import write_sample

    if if_missing and out.exists():
        typer.echo(f"{out} exists; leaving it as it is")
        return
    try:
        summary = write_sample(out, force=force)
    except FileExistsError as exc:
        raise fail(ConfigError(f"{exc} (use --force to replace it)")) from None
    parts = ", ".join(f"{part} {sum(s.values())}" for part, s in summary.parts.items())
    typer.echo(f"wrote {summary.nfiles} images to {summary.root} ({parts})")


def _run_flow(
    flow_module: str, flow_name: str, config: Path, overrides: list[str] | None,
    data_rev: str | None, allow_dirty: bool, ci: bool = False, report: Path | None = None,
    fixed: tuple[str, ...] = (),
) -> None:  # fmt: skip
    """Load the config, run a flow (imported only now: Prefect is slow to import), summarize.

    In CI mode the train flow's run is tagged ``tlops.trigger=ci``, an override of the
    promotion policy is refused (exit 2, see :mod:`tlops.jobs.policy`), and the full report is
    written even when the run fails (then it names the failure and the exit code). ``fixed``
    are the command's own overrides (``pretrain``'s ``registry.kind``), not the caller's.
    """
    ci = ci_mode(ci)

    def body() -> None:
        # 1. the config; a CI run may not override the promotion policy of the train flow
        cfg = _load(config, [*(overrides or []), *fixed], data_rev, allow_dirty)
        if ci and flow_name == "train_flow":
            refuse_policy_overrides(overrides or [], cfg, "a CI run")
        # 2. the flow, with its preloading and Prefect's temporary API started
        run_flow = start_flow(flow_module, flow_name)
        # 3. the train flow's run tags: the trigger and the policy's origin
        extra: dict[str, Any] = {}
        if flow_name == "train_flow":
            policy = policy_origin(config, overrides or [], cfg)
            note_policy_override(policy)
            extra = {"trigger": "ci" if ci else "manual", "policy": policy}
        # 4. the run, its summary and report, and its exit code
        outcome = run_flow(cfg, **extra)
        publish_run(outcome, ci, report)
        code = int(getattr(outcome, "exit_code", 0))
        if code:
            raise typer.Exit(code)

    guard(body, lambda exc: report_failure(flow_name, exc, ci, report))


@app.command()
def validate(
    config: ConfigArg,
    set_: SetOpt = None,
    data_rev: RevOpt = None,
    allow_dirty: DirtyOpt = False,
    verify: VerifyOpt = False,
) -> None:
    """Resolve the data version, scan it, and run the data contract (exit 3 if it fails)."""
    _request_verify(verify)
    _run_flow("flows.validate", "validate_flow", config, set_, data_rev, allow_dirty)


@app.command()
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    data_rev: RevOpt = None,
    allow_dirty: DirtyOpt = False,
    ci: CiOpt = False,
    report: ReportOpt = None,
    verify: VerifyOpt = False,
) -> None:
    """Validate the data, train (frozen base, then fine-tuning), evaluate, gate, register.

    Nothing is retrained when the data, config and code are the champion's (exit 0).
    """
    _request_verify(verify)
    _run_flow("flows.train", "train_flow", config, set_, data_rev, allow_dirty, ci, report)


@app.command()
def pretrain(
    config: ConfigArg,
    set_: SetOpt = None,
    data_rev: RevOpt = None,
    allow_dirty: DirtyOpt = False,
    ci: CiOpt = False,
    report: ReportOpt = None,
) -> None:
    """Train on a source dataset and register the backbone (not the classifier) if the gate
    passes; a train config then names it as ``backbone.weights: models:/NAME@champion``."""
    _run_flow(
        "flows.train", "train_flow", config, set_, data_rev, allow_dirty, ci, report,
        fixed=("registry.kind=backbone",),
    )  # fmt: skip


@app.command()
def sweep(
    config: ConfigArg,
    grid: GridOpt,
    set_: SetOpt = None,
    data_rev: RevOpt = None,
    allow_dirty: DirtyOpt = False,
    workers: WorkersOpt = None,
    address: AddressOpt = None,
) -> None:
    """Train a hyperparameter grid in parallel on Dask: one MLflow child run per trial under a
    parent run; only the trial with the best validation score is gated and registered."""

    def body() -> None:
        from tlops.jobs.sweep import expand_grid, parse_grid

        # 1. the options, the config and every grid point are checked before anything starts
        if address and workers is not None:
            raise ConfigError("--workers sizes the local cluster; drop it with --address")
        cfg = _load(config, set_, data_rev, allow_dirty)
        spec = parse_grid(grid)
        expand_grid(cfg, spec)
        # 2. the policy: fixed in CI (a grid cannot vary it: tlops.jobs.sweep.FIXED_KEYS)
        if ci_mode(False):
            refuse_policy_overrides(set_ or [], cfg, "a CI run")
        policy = policy_origin(config, set_ or [], cfg)
        note_policy_override(policy)
        # 3. the flow (a remote cluster's runs need a real Prefect API), its summary and exit code
        run_sweep = start_flow("flows.sweep", "run_sweep", prefect_api=not address)
        outcome = run_sweep(cfg, spec, workers or 2, address, policy)
        publish_summary(outcome.summary())
        if outcome.exit_code:
            raise typer.Exit(outcome.exit_code)

    guard(body)


@app.command()
def reproduce(model_uri: ModelUriArg) -> None:
    """Retrain a registered version with its data revision and config; print metric changes.

    The rerun is tracked like any run (same experiment, tag ``tlops.reproduces``) but never
    registered: its gate rules are cleared.
    """

    def body() -> None:
        import tempfile

        from tlops.adapters.registry import resolve
        from tlops.jobs.reproduce import reproduction_config, reproduction_report

        info = resolve(model_uri)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = reproduction_config(info, Path(tmp))
        outcome = start_flow("flows.train", "train_flow")(cfg, force=True)
        from tlops.adapters.tracking import set_tags

        set_tags(outcome.run_id, {"tlops.reproduces": f"models:/{info.name}/{info.version}"})
        publish_summary(reproduction_report(info, outcome.evaluated.metrics, outcome.run_id))

    guard(body)


@app.command()
def compare(
    experiments: Annotated[list[str], typer.Argument(help="experiment (run config) names")],
    metric: Annotated[str, typer.Option(help="metric to compare")] = "test_accuracy",
) -> None:
    """Compare the latest finished run of experiments on one metric (the first is the reference)."""

    def body() -> None:
        from tlops.adapters.tracking import latest_run

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

    guard(body)


@app.command()
def history(model_name: Annotated[str, typer.Argument(help="registered model name")]) -> None:
    """Print the promotion ledger of a registered model: every alias move, oldest first."""

    def body() -> None:
        from tlops.adapters.registry import ledger

        entries = ledger(model_name)
        if not entries:
            typer.echo(f"{model_name}: no alias has moved yet")
        for e in entries:
            before = f"v{e.from_version}" if e.from_version else "(none)"
            state = "" if e.state == "confirmed" else f"  [{e.state}]"
            typer.echo(
                f"{e.when}  @{e.alias}: {before} -> v{e.to_version}{state}  flow run"
                f" {e.flow_run_id}  {e.why}"
            )

    guard(body)


@app.command()
def deploy(
    config: ConfigArg,
    name: Annotated[str, typer.Option("--name", help="deployment name, e.g. digits-nightly")],
    cron: Annotated[
        str | None, typer.Option("--cron", help='schedule, e.g. "0 3 * * *" (UTC); none: by hand')
    ] = None,
    pool: Annotated[
        str, typer.Option("--pool", help="work pool (a local process pool is created if missing)")
    ] = "tlops-process",
    set_: SetOpt = None,
) -> None:
    """Deploy the retrain flow for CONFIG to a Prefect work pool, optionally on a cron schedule.

    The deployment keeps the config's path, not its values: each run reads the YAML, data.dvc
    and code it finds in the project, and does nothing when they match the champion's.
    """

    def body() -> None:
        from flows.deploy import deploy_retrain

        deployment_id = deploy_retrain(config, name, pool, cron, list(set_ or []), Path.cwd())
        when = f"cron {cron!r} (UTC)" if cron else "no schedule (run it by hand)"
        typer.echo(f"deployed tlops-retrain/{name} ({deployment_id}) to pool {pool!r}: {when}")
        typer.echo(f"runs need a worker: prefect worker start --pool {pool}")
        typer.echo(f"run it now: prefect deployment run tlops-retrain/{name}")

    guard(body)


@app.command()
def status(
    model_name: Annotated[str, typer.Argument(help="registered model name")],
    last: Annotated[int, typer.Option("--last", min=1, help="how many recent runs")] = 5,
    alias: Annotated[str, typer.Option("--alias", help="the champion alias")] = "champion",
    previous: Annotated[
        str, typer.Option("--previous-alias", help="the previous champion's alias")
    ] = "previous",
) -> None:
    """The champion, when it was promoted, what it was trained on, which parts (data, config,
    code, lock) the last retrain changed, the last runs with their verdicts, and the next
    scheduled run of its deployments (when the Prefect API has any).

    First settles what a stopped run left half promoted (reconcile) and says what it did."""

    def body() -> None:
        from flows.deploy import schedule_lines
        from tlops.jobs.lineage import lineage_card
        from tlops.jobs.reconcile import try_reconcile
        from tlops.jobs.status import model_status, render_status

        for line in try_reconcile(model_name, alias, previous, lineage_card).lines():
            typer.echo(line)
        found = model_status(model_name, alias, last)
        typer.echo(redact_text(render_status(found, schedule_lines(model_name))))

    guard(body)


@app.command()
def lineage(model_uri: ModelUriArg) -> None:
    """Print the lineage card of a registered version: data, backbone, config, code, gate."""

    def body() -> None:
        from tlops.adapters.registry import resolve
        from tlops.jobs.lineage import lineage_card

        typer.echo(redact_text(lineage_card(resolve(model_uri))))

    guard(body)


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
        from tlops.adapters.registry import parse_model_uri

        if output.lower() not in {"table", "json", "csv"}:
            raise ConfigError(f"--format {output!r}: must be table, json or csv")
        parse_model_uri(model_uri)  # a malformed URI fails before Keras is imported
        from tlops.jobs.predict import format_predictions, predict_files

        rows = predict_files(model_uri, paths, top_k)
        typer.echo(format_predictions(rows, output.lower()))
        if rows and all(r.error for r in rows):
            raise typer.Exit(3)

    guard(body)


@app.command()
def export(
    model_uri: ModelUriArg,
    formats: Annotated[
        list[str],
        typer.Option("--format", help="saved_model, onnx or litert (repeatable)"),
    ],
) -> None:
    """Export a registered version (SavedModel, ONNX, LiteRT), check each format's parity with
    the Keras model on the version's test split, and attach the exports to the version.

    Parity below the goal (every argmax the same, probabilities within
    ``registry.export_max_prob_diff``) attaches nothing and exits 4.
    """

    def body() -> None:
        import tempfile

        from tlops.adapters.registry import parse_model_uri
        from tlops.config import EXPORT_FORMATS as FORMATS

        chosen = [f.lower() for f in formats]
        unknown = [f for f in chosen if f not in FORMATS]
        if unknown or len(set(chosen)) != len(chosen):
            raise ConfigError(
                f"--format {', '.join(unknown or chosen)}: each one of {', '.join(FORMATS)}, once"
            )
        parse_model_uri(model_uri)  # a malformed URI fails before TensorFlow is imported
        from tlops.jobs.export import export_version

        with tempfile.TemporaryDirectory(prefix="tlops-export-") as tmp:
            outcome = export_version(model_uri, chosen, Path(tmp))  # type: ignore[arg-type]
        publish_summary(
            "\n".join([f"### tlops export {model_uri}: attached"]
                      + [f"- {line}" for line in outcome.lines()])
        )  # fmt: skip

    guard(body)


def main() -> None:
    """Entry point of the ``tlops`` script."""
    apply_env_defaults()
    app()


if __name__ == "__main__":
    main()
