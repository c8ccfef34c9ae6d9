"""Starting a flow from the command line: fast, and quiet about expected failures.

A ``tlops`` command that runs a flow pays for Prefect's temporary API server (a subprocess
whose health check the main thread waits for) and for the heavy imports of its stages (DVC,
Great Expectations, TensorFlow: 10-20 s alone). :func:`start_flow` overlaps the two: it imports
the flow, quiets the console tracebacks of expected failures, then starts the imports of
:data:`PRELOAD` in a daemon thread and the API server beside them. :data:`ENV_DEFAULTS` are the
environment values the ``tlops`` script sets unless the environment says otherwise.

Nothing here runs at import time; Prefect is imported only by the functions that need it.
``TLOPS_PRELOAD=0`` turns the preloading and the early server start off (Prefect then starts
its server at the first API call).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from flows.exit_codes import expected_failure

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
    "train_flow": (
        *_DATA_STAGES,
        "tlops.model.classifier",
        "tlops.model.training",
        "tlops.model.metrics",
    ),
    # the sweep's parent process: its trials train in Dask workers, each importing for itself
    "run_sweep": (*_DATA_STAGES, "mlflow"),
}


def apply_env_defaults() -> None:
    """Set each of :data:`ENV_DEFAULTS` that the environment does not set already."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def preload(modules: tuple[str, ...]) -> threading.Thread:
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


def start_prefect_api(modules: tuple[str, ...]) -> None:
    """Start Prefect's temporary API server (no ``PREFECT_API_URL``) while ``modules`` import.

    This is the server Prefect itself would start at the first API call (the same
    ``SubprocessASGIServer`` singleton, so the flow reuses it); starting it here lets the heavy
    imports run in a thread while the main thread only waits for the server's health check.
    With a configured API (or the temporary server disabled) only the preloading starts.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        preload(modules)
        return
    from prefect.server.api.server import SubprocessASGIServer

    preload(modules)
    SubprocessASGIServer().start()


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

    1. import the flow (Prefect is slow to import, so only now), which sets up Prefect's
       logging;
    2. quiet the console tracebacks of expected failures on Prefect's handlers;
    3. unless ``TLOPS_PRELOAD=0`` or ``prefect_api`` is False (a remote Dask cluster's runs
       use a real API): start the flow's :data:`PRELOAD` imports, then the temporary API.
    """
    run_flow: Callable[..., Any] = getattr(importlib.import_module(flow_module), flow_name)
    quiet_expected_tracebacks()
    if prefect_api and os.environ.get("TLOPS_PRELOAD", "1") != "0":
        start_prefect_api(PRELOAD.get(flow_name, ()))
    return run_flow
