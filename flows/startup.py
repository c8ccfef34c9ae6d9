"""Starting a flow from the command line: fast, and quiet about expected failures.

A ``tlops`` command that runs a flow pays for Prefect's temporary API server (a subprocess
whose health check the main thread waits for) and for the heavy imports of its stages (DVC,
Great Expectations, TensorFlow: 10-20 s alone). :func:`start_flow` overlaps the two: it starts
the API server, imports the flow, quiets the console tracebacks of expected failures, and
imports :data:`PRELOAD` in a daemon thread while the server comes up. :data:`ENV_DEFAULTS` are the
environment values the ``tlops`` script sets unless the environment says otherwise.

Nothing here runs at import time; Prefect is imported only by the functions that need it.
The temporary server is started first of all, before Prefect itself is imported (6-7 s on 2
cores): :class:`TemporaryAPI` runs the very command Prefect's ``SubprocessASGIServer`` runs, on
a free loopback port, and the flow runs with Prefect's API setting pointing at it (the server
stops when the process exits). A Prefect profile that names an API, or disables the temporary
server, wins: the early server is stopped unused.

``TLOPS_PRELOAD=0`` turns the preloading and the early server start off (Prefect then starts
its server at the first API call).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flows.exit_codes import expected_failure
from flows.prefect_home import seed
from tlops.errors import ServiceError

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

#: Heavy packages each flow will need, imported in the background while it starts (stage order).
_DATA_STAGES = ("dvc.repo", "dvc.api", "great_expectations")
PRELOAD: dict[str, tuple[str, ...]] = {
    "validate_flow": _DATA_STAGES,
    # never MLflow: the main thread imports it at once (the "nothing changed" check), and two
    # threads importing its protobuf modules together fail ("Couldn't build proto file into
    # descriptor pool: Depends on file 'databricks.proto'"), seen in CI
    "train_flow": _DATA_STAGES,
    # the sweep's parent process: its trials train in Dask workers, each importing for itself
    "run_sweep": (*_DATA_STAGES, "mlflow"),
}


#: What a flow that will train imports in the background once it knows it will (see
#: :func:`training_ahead`): TensorFlow and the rest, after the data stages' packages.
TRAINING_PRELOAD: dict[str, tuple[str, ...]] = {
    "train_flow": (
        "tlops.model.classifier",
        "tlops.model.training",
        "tlops.model.metrics",
        "sklearn.metrics",  # evaluation, and the label-error search before the first epoch
        "sklearn.neighbors",
        "sklearn.model_selection",
        "cleanlab.filter",
    ),
}

#: Set by :func:`training_ahead`; the preload thread waits for it before the training imports.
_TRAINING_AHEAD = threading.Event()


def training_ahead() -> None:
    """Say that this process will train: the preload thread goes on to import TensorFlow.

    Until then it does not: a scheduled retrain that finds nothing changed answers without
    it, and an import in a second thread holds the GIL most of the time, which made the
    "nothing changed" check of the main thread three times slower (10 s instead of 3 s)."""
    _TRAINING_AHEAD.set()


def apply_env_defaults() -> None:
    """Set each of :data:`ENV_DEFAULTS` that the environment does not set already."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def preload(modules: tuple[str, ...], training: tuple[str, ...] = ()) -> threading.Thread:
    """Import ``modules`` in a daemon thread, then, once :func:`training_ahead` was called,
    ``training``; a failed import is left for its stage to report.

    Started once Prefect and the flow module are imported, it overlaps the heavy imports
    (TensorFlow alone takes 10-20 s) with the start of Prefect's temporary API server, which
    runs in a subprocess while the main thread waits for it, and with the data stages.
    """

    def work() -> None:
        for name in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)
        if training:
            _TRAINING_AHEAD.wait()
        for name in training:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=work, name="tlops-preload", daemon=True)
    thread.start()
    return thread


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TemporaryAPI:
    """Prefect's temporary API server, started before Prefect is imported.

    The command and environment are those of Prefect's own ``SubprocessASGIServer`` (uvicorn
    on ``prefect.server.api.server:create_app``, UI off, ephemeral services), so the flow sees
    the same server, only sooner.
    """

    port: int = field(default_factory=_free_port)
    #: environment values of the server besides this process's own
    env: dict[str, str] = field(default_factory=dict)
    #: a new Prefect home gets the empty database ``make setup`` built (:mod:`flows.prefect_home`)
    seeded: bool = True
    process: subprocess.Popen[bytes] | None = None
    settings: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def api_url(self) -> str:
        """The API's URL, as ``PREFECT_API_URL`` takes it."""
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> TemporaryAPI:
        """Start the server process (not waiting for it)."""
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **self.env,
        }
        if self.seeded:
            seed(env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        atexit.register(self.stop)  # never outlive this process, whatever happens
        return self

    def wait(self, timeout_s: float) -> None:
        """Block until the server answers its health check; a ServiceError (exit 5) when it
        exits or does not answer within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ServiceError(f"Prefect's temporary API server exited (code {code})")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise ServiceError(
            f"Prefect's temporary API server did not answer within {timeout_s:.0f} s "
            "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
        )

    def use(self) -> None:
        """Point Prefect's settings at this server until :meth:`stop` (at the latest when the
        process exits, after Prefect has sent its last logs: this server's exit handler was
        registered before Prefect's, so it runs after them)."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        self.settings.enter_context(temporary_settings(updates={PREFECT_API_URL: self.api_url}))

    def stop(self) -> None:
        """Restore Prefect's settings, stop the server (terminate, then kill after 5 s)."""
        with contextlib.suppress(ValueError, RuntimeError):  # a reset from another context
            self.settings.close()
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def early_api() -> TemporaryAPI | None:
    """The temporary API server, started now, when nothing in the environment names an API
    or turns the early start off (``TLOPS_PRELOAD=0``)."""
    if os.environ.get("TLOPS_PRELOAD", "1") == "0" or os.environ.get("PREFECT_API_URL"):
        return None
    if os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED", "").lower() in ("0", "false"):
        return None
    return TemporaryAPI().start()


def _profile_names_an_api() -> bool:
    """Whether Prefect's settings (a profile) name an API or turn the temporary one off."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    return bool(PREFECT_API_URL.value()) or not PREFECT_SERVER_EPHEMERAL_ENABLED.value()


def _timeout_s() -> float:
    """How long the temporary server may take to start (see :data:`ENV_DEFAULTS`)."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())


class _NoExpectedTraceback(logging.Formatter):
    """Formats like ``inner``, but without the traceback of an expected failure."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        """The record's lines; an expected exception is left to the CLI's one line."""
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or expected_failure(exc) is None:
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def quiet_expected_tracebacks() -> None:
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


def start_flow(flow_module: str, flow_name: str, prefect_api: bool = True) -> Callable[..., Any]:
    """The flow ``flow_module.flow_name``, ready to run; the order matters:

    1. unless ``TLOPS_PRELOAD=0`` or ``prefect_api`` is False (a remote Dask cluster's runs
       use a real API), or the environment names an API: start the temporary API server;
    2. import the flow (Prefect is slow to import, so only now), which sets up Prefect's
       logging, and quiet the console tracebacks of expected failures on its handlers;
    3. start the flow's :data:`PRELOAD` imports in a thread, and wait for the server.

    The returned callable runs the flow against that server, which stops when the process
    exits (as Prefect's own temporary server does).
    """
    server = early_api() if prefect_api else None
    try:
        run_flow: Callable[..., Any] = getattr(importlib.import_module(flow_module), flow_name)
        quiet_expected_tracebacks()
        if prefect_api and os.environ.get("TLOPS_PRELOAD", "1") != "0":
            preload(PRELOAD.get(flow_name, ()), TRAINING_PRELOAD.get(flow_name, ()))
        if server is not None and _profile_names_an_api():
            server.stop()
            server = None
        if server is not None:
            server.wait(_timeout_s())
    except BaseException:
        if server is not None:
            server.stop()
        raise
    if server is None:
        return run_flow
    started = server

    def run(*args: Any, **kwargs: Any) -> Any:
        started.use()
        return run_flow(*args, **kwargs)

    return run
