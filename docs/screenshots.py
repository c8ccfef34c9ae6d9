"""Screenshots of the MLflow UI for the README: runs list, one run, the registered model.

Starts a real ``mlflow server`` on 127.0.0.1 (a free port) over the local store, the same one
``make ui`` serves, looks up what to show through ``MlflowClient``, drives headless Chromium
over its DevTools pipe (load a page, wait until the data is on it, capture it) and writes PNGs
under ``docs/img/``. The server and Chromium are always stopped at the end.

What makes the pictures match what a team sees on its own server:

- Chromium reaches the server under a host name (``UI_HOST``, mapped to 127.0.0.1 inside
  Chromium only), as a team reaches its tracking server; on ``localhost`` MLflow 3 opens its
  assistant panel over a third of every page.
- The runs list shows a few metric, parameter and tag columns through MLflow's own "shared view"
  (an experiment tag ``mlflow.sharedViewState.<key>``); the tag exists only while the pictures
  are taken.
- On the registered model page the long description (tlops's lineage record) and the tags are
  folded, as a reader would fold them, so that the versions table and its aliases are in view.

Run it from the repository root after ``make demo`` (Chromium: ``apt-get install chromium``)::

    make screenshots        # or: .venv/bin/python docs/screenshots.py --help
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
UI_HOST = "mlflow.tlops.test"  # a reserved .test name, resolved by Chromium's own rules only
SHARE_KEY = "tlops-screenshots"
SHARE_TAG = f"mlflow.sharedViewState.{SHARE_KEY}"
RUNS_COLUMNS = (
    "metrics.`test_accuracy`",
    "metrics.`test_macro_f1`",
    "params.`train.fine_tune.epochs`",
    "tags.`gate.decision`",
    "tags.`registered.version`",
)
ML_VIEW = "workflowType=machine_learning"  # the UI's "Model training" mode, not "GenAI"
TEXT = "document.body.innerText"
FOLD_SECTIONS = (  # click the open "Description" and "Tags" section headers
    "[...document.querySelectorAll('[role=button][aria-expanded=true]')]"
    ".filter(e => ['Description', 'Tags'].includes(e.innerText.trim().split(/\\s/)[0]))"
    ".forEach(e => e.click())"
)
FILTER_METRICS = (  # type "test_" into the run page's metric search box, as a reader would
    "(() => { const box = [...document.querySelectorAll('input')]"
    ".find(e => e.placeholder === 'Search metrics'); if (!box) return;"
    " Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(box, 'test_');"
    " box.dispatchEvent(new Event('input', {bubbles: true})); })()"
)


class ScreenshotError(RuntimeError):
    """A missing prerequisite or a failed step, with a one-line cause for the user."""


@dataclass(frozen=True)
class Shot:
    """One page to capture.

    ``route`` is an MLflow 3 hash route; ``ready`` a JavaScript condition that holds once the
    page shows its data; ``prepare`` JavaScript run after that (fold, filter), or empty.
    """

    name: str
    route: str
    height: int
    ready: str
    prepare: str = ""


@dataclass(frozen=True)
class Targets:
    """What the store holds to show: experiment id, the run to open, the registered model."""

    experiment_id: str
    run_id: str
    model: str

    def shots(self) -> list[Shot]:
        """The three pages, each with a window height that fits what matters on it."""
        exp = f"/#/experiments/{self.experiment_id}"
        return [
            Shot(
                "mlflow-runs.png",
                f"{exp}/runs?viewStateShareKey={SHARE_KEY}&{ML_VIEW}",
                height=560,
                ready=f"{TEXT}.includes('matching runs') && {TEXT}.includes('test_accuracy')",
            ),
            Shot(
                "mlflow-run.png",
                f"{exp}/runs/{self.run_id}?{ML_VIEW}",
                height=1450,
                ready=f"{TEXT}.includes('Parameters (') && {TEXT}.includes('Registered models')",
                prepare=FILTER_METRICS,
            ),
            Shot(
                "mlflow-model.png",
                f"/#/models/{self.model}?{ML_VIEW}",
                height=1000,
                ready="!!document.querySelector('[data-testid=model-version-table] [role=row] a')",
                prepare=FOLD_SECTIONS,
            ),
        ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the store defaults are those of ``make ui``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend-store-uri", default="sqlite:///mlflow/mlflow.db")
    parser.add_argument("--default-artifact-root", default="./mlflow/artifacts")
    parser.add_argument("--experiment", default="digits", help="experiment whose runs to show")
    parser.add_argument("--model", default="digits", help="registered model to show")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="PNG folder")
    parser.add_argument("--width", type=int, default=1400, help="browser window width (px)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for a page")
    return parser.parse_args(argv)


def find_chromium() -> str:
    """Path of a Chromium (or Chrome) binary, or a clear error naming the package to install."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise ScreenshotError("chromium not found: install it (apt-get install chromium)")


def check_store(store_uri: str) -> None:
    """Fail early when a SQLite store does not exist (the server would create an empty one)."""
    prefix = "sqlite:///"
    if store_uri.startswith(prefix) and not (ROOT / store_uri[len(prefix) :]).is_file():
        raise ScreenshotError(f"no MLflow store at {store_uri}: run make demo first")


# --- the MLflow server -------------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll ``url/health`` until it answers 200; fail if the server exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ScreenshotError(f"mlflow server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise ScreenshotError(f"mlflow server did not answer /health in {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a child process, killing it if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def server_env(port: int) -> dict[str, str]:
    """The environment of the server: accept ``UI_HOST`` besides the loopback names."""
    hosts = [f"{host}:{port}" for host in ("127.0.0.1", "localhost", UI_HOST)]
    return {
        **os.environ,
        "MLFLOW_SERVER_ALLOWED_HOSTS": ",".join(hosts),
        "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": f"http://{UI_HOST}:{port}",
    }


@contextmanager
def mlflow_server(store_uri: str, artifact_root: str, log: Path) -> Iterator[int]:
    """Run ``mlflow server`` over the store on a free loopback port; yield the port, then stop.

    It runs from the repository root, so the relative default paths mean what ``make ui`` means.
    """
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")), "server",
        "--backend-store-uri", store_uri, "--default-artifact-root", artifact_root,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=server_env(port), stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            wait_healthy(f"http://127.0.0.1:{port}", proc, log, timeout=180)
            yield port
        finally:
            stop(proc)


# --- what to show ------------------------------------------------------------------------------


def run_to_open(client: MlflowClient, experiment_id: str, model: str) -> str | None:
    """The run behind the model's ``champion`` alias, else the experiment's latest run.

    The champion's run is the one a team opens from the registry. ``None``: no run at all.
    """
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model, "champion").run_id)
    except MlflowException:
        pass
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"])
    return str(runs[0].info.run_id) if runs else None


def find_targets(client: MlflowClient, experiment: str, model: str) -> Targets:
    """Look up the experiment, the registered model and the run to open, or say what is missing."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ScreenshotError(f"no experiment {experiment!r} in the store: run make demo first")
    exp_id = str(found.experiment_id)
    try:
        client.get_registered_model(model)
    except MlflowException as error:
        raise ScreenshotError(f"no registered model {model!r}: run make demo first") from error
    run_id = run_to_open(client, exp_id, model)
    if run_id is None:
        raise ScreenshotError(f"experiment {experiment!r} has no runs: run make demo first")
    return Targets(experiment_id=exp_id, run_id=run_id, model=model)


@contextmanager
def shared_view(client: MlflowClient, experiment_id: str) -> Iterator[None]:
    """Store MLflow's shared view of the runs table (``RUNS_COLUMNS``) while the block runs."""
    state = {"selectedColumns": list(RUNS_COLUMNS)}
    client.set_experiment_tag(experiment_id, SHARE_TAG, json.dumps(state))
    try:
        yield
    finally:
        client.delete_experiment_tag(experiment_id, SHARE_TAG)


# --- headless Chromium over the DevTools pipe ---------------------------------------------------


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``.

    Messages are JSON, each ended by a NUL byte; events and other replies are skipped.
    """

    def __init__(self, to_browser: IO[bytes], from_browser: IO[bytes], timeout: float) -> None:
        self._out, self._in, self._timeout = to_browser, from_browser, timeout
        self._buffer = b""
        self._last_id = 0

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command (to a page when ``session`` is given) and return its result."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._out.write(json.dumps(message).encode() + b"\0")
        self._out.flush()
        while True:
            reply = json.loads(self._read_message())
            if reply.get("id") != self._last_id:
                continue
            if "error" in reply:
                raise ScreenshotError(f"chromium: {method} failed: {reply['error']}")
            result: dict[str, Any] = reply["result"]
            return result

    def evaluate(self, session: str, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        return result["result"].get("value")

    def _read_message(self) -> bytes:
        """The next NUL-terminated message, waiting at most the timeout for Chromium."""
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], self._timeout)
            chunk = os.read(self._in.fileno(), 1 << 16) if ready else b""
            if not chunk:
                raise ScreenshotError("chromium stopped answering on its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return message


@contextmanager
def chromium(binary: str, timeout: float) -> Iterator[DevTools]:
    """Start headless Chromium with a throwaway profile and its DevTools pipe (fds 3 and 4)."""
    to_read, to_write = os.pipe()  # commands: we write, Chromium reads fd 3
    from_read, from_write = os.pipe()  # replies: Chromium writes fd 4, we read

    def wire_pipe() -> None:  # runs in the child, before exec
        os.dup2(to_read, 3)
        os.dup2(from_write, 4)

    with tempfile.TemporaryDirectory(prefix="tlops-chromium-") as profile:
        command = [
            binary, "--headless=new", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--host-resolver-rules=MAP {UI_HOST} 127.0.0.1",
            "--remote-debugging-pipe", "about:blank",
        ]  # fmt: skip
        proc = subprocess.Popen(
            command, pass_fds=(3, 4), preexec_fn=wire_pipe,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_read)
        os.close(from_write)
        with os.fdopen(to_write, "wb") as out, os.fdopen(from_read, "rb") as into:
            try:
                yield DevTools(out, into, timeout)
            finally:
                stop(proc)


@contextmanager
def new_page(devtools: DevTools) -> Iterator[str]:
    """A fresh tab (no app state from an earlier page); yield its session id, then close it."""
    target = devtools.call("Target.createTarget", url="about:blank")["targetId"]
    try:
        attached = devtools.call("Target.attachToTarget", targetId=target, flatten=True)
        yield str(attached["sessionId"])
    finally:
        devtools.call("Target.closeTarget", targetId=target)


def wait_for(devtools: DevTools, session: str, condition: str, timeout: float, url: str) -> None:
    """Poll a JavaScript condition in the page until it holds."""
    deadline = time.monotonic() + timeout
    while not devtools.evaluate(session, f"Boolean({condition})"):
        if time.monotonic() > deadline:
            raise ScreenshotError(f"{url} did not show its data within {timeout:.0f}s")
        time.sleep(0.5)


def capture_page(
    devtools: DevTools, session: str, url: str, shot: Shot, width: int, timeout: float
) -> bytes:
    """Load ``url`` at the shot's size, wait for its data, prepare it; return the PNG bytes."""
    devtools.call(
        "Emulation.setDeviceMetricsOverride",
        session, width=width, height=shot.height, deviceScaleFactor=1, mobile=False,
    )  # fmt: skip
    devtools.call("Page.navigate", session, url=url)
    wait_for(devtools, session, shot.ready, timeout, url)
    if shot.prepare:
        devtools.evaluate(session, shot.prepare)
    time.sleep(1.5)  # let transitions, fonts and late cells settle
    png = devtools.call("Page.captureScreenshot", session, format="png")["data"]
    return base64.b64decode(png)


# --- the job -----------------------------------------------------------------------------------


def capture(args: argparse.Namespace) -> list[Path]:
    """The whole job, in steps: check Chromium, start the server, look up, capture each page."""
    from mlflow.tracking import MlflowClient

    binary = find_chromium()  # 1. fail fast, before starting anything
    check_store(args.backend_store_uri)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="tlops-screenshots-") as tmp:
        log = Path(tmp) / "mlflow-server.log"
        with mlflow_server(args.backend_store_uri, args.default_artifact_root, log) as port:  # 2.
            api = f"http://127.0.0.1:{port}"
            client = MlflowClient(tracking_uri=api, registry_uri=api)
            targets = find_targets(client, args.experiment, args.model)  # 3.
            with shared_view(client, targets.experiment_id), chromium(binary, args.timeout) as dt:
                for shot in targets.shots():  # 4.
                    url = f"http://{UI_HOST}:{port}{shot.route}"
                    with new_page(dt) as page:
                        png = capture_page(dt, page, url, shot, args.width, args.timeout)
                    out = args.out / shot.name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(png)
                    written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point: capture the screenshots, print what was written; exit 1 with the cause."""
    try:
        written = capture(parse_args(argv))
    except ScreenshotError as error:
        print(f"screenshots: {error}", file=sys.stderr)
        return 1
    for path in written:
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"wrote {shown} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
