"""The ``tlops`` command line.

Exit codes (design section 7): 0 success, 2 bad config or usage, 3 data contract failed,
4 gate rejected the candidate, 5 an external service failed, 1 a bug.
Heavy imports (Prefect, DVC, GX) happen inside the commands that need them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from tlops.config import RunConfig, load_config
from tlops.errors import ConfigError, ServiceError, TlopsError
from tlops.jobs.policy import PolicyOrigin, policy_origin, refuse_policy_overrides
from tlops.paths import storage_error
from tlops.redact import redact_text

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
VerifyOpt = Annotated[
    bool,
    typer.Option(
        "--verify",
        help="recompute the md5 of the cached data too (every run checks file sizes and mtimes);"
        " a cached copy that fails is replaced ($TLOPS_VERIFY_DATA=1 does the same)",
    ),
]


def _request_verify(verify: bool) -> None:
    """``--verify``: ask the data resolution (in this process) for a full md5 check."""
    if verify:
        os.environ["TLOPS_VERIFY_DATA"] = "1"


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
DEFAULT_REPORT = Path("tlops-report.md")


def _fail(exc: TlopsError) -> typer.Exit:
    """Print a one-line cause to stderr and turn it into the exit code of its kind."""
    typer.secho(f"error: {redact_text(str(exc))}", fg=typer.colors.RED, err=True)
    return typer.Exit(exc.exit_code)


def _expected(exc: BaseException) -> TlopsError | None:
    """The expected failure ``exc`` is, as a :class:`TlopsError`; None for a bug.

    A storage failure (full disk, read-only or forbidden folder, :data:`STORAGE_ERRNOS`) is
    one, anywhere in a run: flows and tasks raise the task's own exception, unwrapped.
    """
    import httpx

    if isinstance(exc, TlopsError):
        return exc
    if isinstance(exc, httpx.HTTPError):
        return ServiceError(f"Prefect API unreachable or failing: {exc}")
    return storage_error(exc)


def _guard(action: Callable[[], T], on_error: Callable[[TlopsError], None] | None = None) -> T:
    """Run a command body, mapping expected failures to their exit codes (``on_error`` first
    sees the failure, e.g. to write a CI report; its own storage failure is said, not raised)."""
    try:
        return action()
    except Exception as exc:
        error = _expected(exc)
        if error is None:
            raise
        if on_error is not None:
            try:
                on_error(error)
            except OSError as report_exc:
                why = storage_error(report_exc) or report_exc
                typer.secho(f"error: writing the report: {why}", fg=typer.colors.RED, err=True)
        raise _fail(error) from None


class _NoExpectedTraceback(logging.Formatter):
    """Formats like ``inner``, but without the traceback of an expected failure."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        """The record's lines; an expected exception is left to the CLI's one line."""
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or _expected(exc) is None:
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def _quiet_expected_tracebacks() -> None:
    """Prefect logs a failed task or flow run with its traceback on the console; for an
    expected failure the console keeps Prefect's line and the CLI's ``error:`` line (the
    Prefect API's copy of the log keeps the traceback)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *map(logging.getLogger, logging.root.manager.loggerDict)]
    for handler in {h for lg in loggers for h in lg.handlers}:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(
            handler.formatter, _NoExpectedTraceback
        ):
            handler.setFormatter(_NoExpectedTraceback(handler.formatter))


def _append_step_summary(markdown: str) -> bool:
    """Append to ``$GITHUB_STEP_SUMMARY``; False when it is not set."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        try:
            with Path(target).open("a", encoding="utf-8") as handle:
                handle.write(markdown + "\n")
        except OSError as exc:  # a failed flush or close names no file: name it
            raise OSError(exc.errno, exc.strerror, exc.filename or target) from None
    return bool(target)


def _publish_summary(markdown: str) -> None:
    """Print a run summary and append it to ``$GITHUB_STEP_SUMMARY`` when set."""
    markdown = redact_text(markdown)
    typer.echo(markdown)
    _append_step_summary(markdown)


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
    from tlops.data.sample import write_sample

    if if_missing and out.exists():
        typer.echo(f"{out} exists; leaving it as it is")
        return
    try:
        summary = write_sample(out, force=force)
    except FileExistsError as exc:
        raise _fail(ConfigError(f"{exc} (use --force to replace it)")) from None
    parts = ", ".join(f"{part} {sum(s.values())}" for part, s in summary.parts.items())
    typer.echo(f"wrote {summary.nfiles} images to {summary.root} ({parts})")


#: Heavy packages each flow will need, imported in the background while it starts (stage order).
_DATA_STAGES = ("dvc.repo", "dvc.api", "great_expectations")
PRELOAD: dict[str, tuple[str, ...]] = {
    "validate_flow": _DATA_STAGES,
    # never MLflow: the main thread imports it at once (the "nothing changed" check), and two
    # threads importing its protobuf modules together fail ("Couldn't build proto file into
    # descriptor pool: Depends on file 'databricks.proto'"), seen in CI
    "train_flow": (
        *_DATA_STAGES,
        "tlops.model.classifier",
        "tlops.model.training",
        "tlops.model.metrics",
    ),
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


def _flow(flow_module: str, flow_name: str) -> Callable[..., Any]:
    """Import a flow (Prefect is slow to import), then start its API and the preloading."""
    run_flow: Callable[..., Any] = getattr(importlib.import_module(flow_module), flow_name)
    _quiet_expected_tracebacks()
    if os.environ.get("TLOPS_PRELOAD", "1") != "0":
        _start_prefect_api(PRELOAD.get(flow_name, ()))
    return run_flow


def ci_mode(flag: bool) -> bool:
    """``--ci``, or ``$CI`` set to anything but empty / 0 / false (as CI services do)."""
    return flag or os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def _report_text(outcome: Any) -> str:
    """The run summary followed by the full report file when the flow wrote one."""
    text = str(outcome.summary())
    path = getattr(outcome, "report_path", None)
    if path and Path(path).is_file():
        text += "\n\n" + Path(path).read_text(encoding="utf-8")
    return text


def _write_report(text: str, ci: bool, report: Path | None) -> None:
    """CI: the report to ``$GITHUB_STEP_SUMMARY``, else to ``--report`` / tlops-report.md."""
    text = redact_text(text)
    summarized, failure = False, None
    try:
        summarized = ci and _append_step_summary(text)
    except OSError as exc:  # e.g. a full disk: the report file below is still written
        failure = exc
    target = report or (DEFAULT_REPORT if ci and not summarized else None)
    if target is not None:
        try:
            target.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:  # a failed flush or close names no file: name it
            raise OSError(exc.errno, exc.strerror, exc.filename or str(target)) from None
        typer.echo(f"report: {target}")
    if failure is not None:
        raise failure


def _note_override(policy: PolicyOrigin) -> None:
    """Say on stderr that ``--set`` replaced policy keys (the run records it too)."""
    if policy.overrides:
        typer.secho(
            f"note: --set {', '.join(policy.overrides)} overrides the promotion policy of"
            f" {policy.file}; recorded on the run and any version as policy.source=override",
            fg=typer.colors.YELLOW, err=True,
        )  # fmt: skip


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
        cfg = _load(config, [*(overrides or []), *fixed], data_rev, allow_dirty)
        if ci and flow_name == "train_flow":
            refuse_policy_overrides(overrides or [], cfg, "a CI run")
        run_flow = _flow(flow_module, flow_name)
        extra: dict[str, Any] = {}
        if flow_name == "train_flow":  # the trigger and the policy's origin become run tags
            policy = policy_origin(config, overrides or [], cfg)
            _note_override(policy)
            extra = {"trigger": "ci" if ci else "manual", "policy": policy}
        outcome = run_flow(cfg, **extra)
        if ci or report:
            typer.echo(outcome.summary())
            _write_report(_report_text(outcome), ci, report)
        else:
            _publish_summary(outcome.summary())
        code = int(getattr(outcome, "exit_code", 0))
        if code:
            raise typer.Exit(code)

    def failed(exc: TlopsError) -> None:
        if ci or report:
            text = f"### tlops {flow_name}: failed (exit {exc.exit_code})\n\nerror: {exc}"
            text = redact_text(text)
            _write_report(text, ci, report)

    _guard(body, failed)


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
    grid: Annotated[
        list[str],
        typer.Option(
            "--grid",
            help="a hyperparameter and its values, read like --set values: --grid"
            " train.frozen.learning_rate=0.01,0.001 (repeatable; trials = every combination)",
        ),
    ],
    set_: SetOpt = None,
    data_rev: RevOpt = None,
    allow_dirty: DirtyOpt = False,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="processes of the local Dask cluster [default: 2]"),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (its workers"
            " need this project, PREFECT_API_URL, and the same MLflow store and tlops folders)",
        ),
    ] = None,
) -> None:
    """Train a hyperparameter grid in parallel on Dask: one MLflow child run per trial under a
    parent run; only the trial with the best validation score is gated and registered."""

    def body() -> None:
        from tlops.jobs.sweep import expand_grid, parse_grid

        if address and workers is not None:
            raise ConfigError("--workers sizes the local cluster; drop it with --address")
        cfg = _load(config, set_, data_rev, allow_dirty)
        spec = parse_grid(grid)
        expand_grid(cfg, spec)  # every grid point is validated before anything starts
        if ci_mode(False):  # (a grid cannot vary the policy: tlops.jobs.sweep.FIXED_KEYS)
            refuse_policy_overrides(set_ or [], cfg, "a CI run")
        policy = policy_origin(config, set_ or [], cfg)
        _note_override(policy)
        run_sweep = importlib.import_module("flows.sweep").run_sweep
        _quiet_expected_tracebacks()
        if os.environ.get("TLOPS_PRELOAD", "1") != "0" and not address:  # remote: a real API
            _start_prefect_api((*PRELOAD["validate_flow"], "mlflow"))
        outcome = run_sweep(cfg, spec, workers or 2, address, policy)
        _publish_summary(outcome.summary())
        if outcome.exit_code:
            raise typer.Exit(outcome.exit_code)

    _guard(body)


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
        outcome = _flow("flows.train", "train_flow")(cfg, force=True)
        from tlops.adapters.tracking import set_tags

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

    _guard(body)


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

    _guard(body)


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

    _guard(body)


@app.command()
def status(
    model_name: Annotated[str, typer.Argument(help="registered model name")],
    last: Annotated[int, typer.Option("--last", min=1, help="how many recent runs")] = 5,
    alias: Annotated[str, typer.Option("--alias", help="the champion alias")] = "champion",
    previous: Annotated[
        str, typer.Option("--previous-alias", help="the previous champion's alias")
    ] = "previous",
) -> None:
    """The champion, when it was promoted, what it was trained on, the last runs with their
    verdicts, and the next scheduled run of its deployments (when the Prefect API has any).

    First settles what a stopped run left half promoted (reconcile) and says what it did."""

    def body() -> None:
        from tlops.jobs.lineage import lineage_card
        from tlops.jobs.reconcile import try_reconcile
        from tlops.jobs.status import model_status, render_status

        for line in try_reconcile(model_name, alias, previous, lineage_card).lines():
            typer.echo(line)
        found = model_status(model_name, alias, last)
        typer.echo(redact_text(render_status(found, _schedule_lines(model_name))))

    _guard(body)


def _schedule_lines(model_name: str) -> list[str]:
    """Deployments of ``model_name`` from the configured Prefect API; none without one.

    Without ``PREFECT_API_URL`` there is no server whose scheduler would run a deployment, so
    nothing is asked (and no temporary server is started just for this).
    """
    if not os.environ.get("PREFECT_API_URL"):
        return ["  schedule: PREFECT_API_URL not set (deployments live on a Prefect server)"]
    from flows.deploy import model_deployments

    lines = []
    for d in model_deployments(model_name):
        cron = ", ".join(d.cron) or "no schedule"
        state = " (paused)" if d.paused else ""
        lines.append(
            f"  deployment tlops-retrain/{d.name}{state}: {cron}, pool {d.work_pool},"
            f" config {d.config_path}; next run: {d.next_run or 'none scheduled'}"
        )
    return lines


@app.command()
def lineage(model_uri: ModelUriArg) -> None:
    """Print the lineage card of a registered version: data, backbone, config, code, gate."""

    def body() -> None:
        from tlops.adapters.registry import resolve
        from tlops.jobs.lineage import lineage_card

        typer.echo(redact_text(lineage_card(resolve(model_uri))))

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
        from tlops.adapters.registry import parse_model_uri

        if output.lower() not in {"table", "json", "csv"}:
            raise ConfigError(f"--format {output!r}: must be table, json or csv")
        parse_model_uri(model_uri)  # a malformed URI fails before Keras is imported
        from tlops.jobs.predict import format_predictions, predict_files

        rows = predict_files(model_uri, paths, top_k)
        typer.echo(format_predictions(rows, output.lower()))
        if rows and all(r.error for r in rows):
            raise typer.Exit(3)

    _guard(body)


#: Defaults unless the environment says otherwise: offline-first (no usage analytics); time
#: for Prefect's temporary server to start on a busy 2-core machine (Prefect's default, 20 s,
#: was seen to run out while TensorFlow was importing beside it); and Prefect client retries
#: on HTTP 500 too, which a SQLite-backed Prefect server answers when concurrent flow runs
#: hit "database is locked" (seen here with two flows and a worker on one server).
ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500",
}


def main() -> None:
    """Entry point of the ``tlops`` script."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    app()


if __name__ == "__main__":
    main()
