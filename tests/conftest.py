"""Shared fixtures: isolated tlops folders, a real Prefect API, real git + DVC repos."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

GIT_ENV = {
    "GIT_AUTHOR_NAME": "tlops tests",
    "GIT_AUTHOR_EMAIL": "tests@tlops.invalid",
    "GIT_COMMITTER_NAME": "tlops tests",
    "GIT_COMMITTER_EMAIL": "tests@tlops.invalid",
}


#: The test layers, by folder: ``make test-fast`` runs ``-m unit`` alone.
LAYERS = ("unit", "flows", "faults")


#: The longest tests (minutes each), started first so that ``-n 2`` never ends waiting on one.
LONGEST_FIRST = (
    "flows/test_demo.py",
    "faults/test_promotion_kill.py",
    "flows/test_deployment.py",
    "flows/test_registry_flow.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its layer (``unit``, ``flows`` or ``faults``) from its folder, and
    start the longest tests first (the order of the others is kept)."""
    tests = Path(__file__).resolve().parent
    for item in items:
        parts = Path(str(item.path)).resolve().relative_to(tests).parts
        if parts and parts[0] in LAYERS:
            item.add_marker(getattr(pytest.mark, parts[0]))

    def rank(item: pytest.Item) -> int:
        relative = Path(str(item.path)).resolve().relative_to(tests).as_posix()
        return LONGEST_FIRST.index(relative) if relative in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def _isolated_tlops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own data cache and run folders; no analytics calls."""
    monkeypatch.setenv("TLOPS_CACHE", str(tmp_path / "_cache"))
    monkeypatch.setenv("TLOPS_HOME", str(tmp_path / "_home"))
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("CI", raising=False)  # CI mode is what a test asks for, not the runner's
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real, temporary Prefect server (its own SQLite database) for the whole session.

    Yields its API URL, for subprocesses (``PREFECT_API_URL``).
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # as the CLI does: retry on 500 ("database is locked" under concurrent flow runs), also
    # for what runs outside the CLI (the worker's flow runs)
    os.environ.setdefault("PREFECT_CLIENT_RETRY_EXTRA_CODES", "500")
    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


def run(cmd: list[str], cwd: Path) -> str:
    """Run a command (git or dvc) for real; fail the test with its output if it fails."""
    env = {**os.environ, **GIT_ENV, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def dvc(*args: str, cwd: Path) -> str:
    """Run the real DVC CLI of this environment."""
    return run([sys.executable, "-m", "dvc", *args], cwd)


def write_images(root: Path, classes: dict[str, int], seed: int, size: int = 20) -> None:
    """Write ``root/{train,val,test}/<class>/*.png``: distinct random RGB images.

    ``classes`` maps class name to train count; val and test get max(1, n // 3) each.
    """
    rng = np.random.default_rng(seed)
    for label, n_train in classes.items():
        for split, n in (
            ("train", n_train),
            ("val", max(1, n_train // 3)),
            ("test", max(1, n_train // 3)),
        ):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{label}_{i:03d}.png")


def init_repo(repo: Path, remote: Path) -> None:
    """A fresh git + DVC repository with a local-directory default remote."""
    repo.mkdir(parents=True)
    run(["git", "init", "-q", "-b", "main"], repo)
    dvc("init", "-q", cwd=repo)
    dvc("config", "core.analytics", "false", cwd=repo)
    dvc("remote", "add", "-d", "local", str(remote), cwd=repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)


def commit_data(repo: Path, message: str, tag: str | None = None) -> None:
    """``dvc add data``, commit the pointer, optionally tag, and push to the remote."""
    dvc("add", "-q", "data", cwd=repo)
    run(["git", "add", "data.dvc", ".gitignore"], repo)
    run(["git", "commit", "-qm", message], repo)
    if tag:
        run(["git", "tag", tag], repo)
    dvc("push", "-q", cwd=repo)


def copy_repo(repo: Path, remote: Path, dest: Path) -> tuple[Path, Path]:
    """Copy a git + DVC repo and its local remote under ``dest``, re-pointing the remote."""
    new_repo, new_remote = dest / "repo", dest / "remote"
    shutil.copytree(repo, new_repo, symlinks=True)
    shutil.copytree(remote, new_remote)
    config = new_repo / ".dvc" / "config"
    config.write_text(config.read_text().replace(str(remote), str(new_remote)))
    return new_repo, new_remote


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_answering(proc: subprocess.Popen[bytes], url: str, log: Path, what: str) -> None:
    """Block until ``url`` answers 200 (a busy 2-core machine can take minutes); a
    RuntimeError with ``log``'s text when ``proc`` exits first or five minutes pass."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{what} did not start: {log.read_text()}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port (SQLite store, served artifacts)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination", str(home / "artifacts"), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, cwd=home, start_new_session=True,
        # no job runner (its huey consumers are six more processes; tlops submits no jobs)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip

    def stop() -> None:
        """Stop the server and its uvicorn / job-runner children (its process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()

    try:
        wait_until_answering(proc, f"{url}/health", home / "server.log", "mlflow server")
    except RuntimeError:
        stop()
        raise
    try:
        yield url
    finally:
        stop()


#: Environment variables that need the CLI in a process of its own: a fault hook that blocks
#: for the test to kill the process.
PROCESS_ONLY_ENV = ("TLOPS_FAULT_BLOCK",)


#: Set to 0 to run every CLI call of the tests in a process of its own (see :func:`tlops_cli`).
IN_PROCESS_ENV = "TLOPS_TESTS_IN_PROCESS"


def tlops_cli(
    args: list[str],
    prefect_api: str,
    *,
    process: bool | None = None,
    cwd: Path | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``tlops`` CLI as a user or CI would: its exit code, stdout and stderr.

    By default it runs in this test process (the same ``flows.cli.main`` the ``tlops`` script
    calls, with ``argv``, the environment, the working folder ``cwd`` and the output streams of
    its own), which saves the 20-30 s that every new process spends importing TensorFlow,
    MLflow, Prefect and GX. With ``process=True`` (or a blocking fault hook in ``env``, or
    ``$TLOPS_TESTS_IN_PROCESS=0``) it runs in a process of its own, as for what needs one: a
    kill, concurrent runs, a fresh interpreter's import state.
    """
    if process is None:
        process = os.environ.get(IN_PROCESS_ENV, "1") == "0"
    if process or any(key in env for key in PROCESS_ONLY_ENV):
        return _cli_process(args, prefect_api, env, cwd)
    return _cli_in_process(args, prefect_api, env, cwd)


def _cli_process(
    args: list[str], prefect_api: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m flows.cli ARGS`` in its own process; flow runs go to the session's server."""
    root = Path(__file__).resolve().parents[1]
    full_env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(root), **env}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env=full_env, capture_output=True, text=True, timeout=900, cwd=cwd,
    )  # fmt: skip


def _exit_code(code: object) -> int:
    """The process exit status ``sys.exit(code)`` would give."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("text") prints the text and exits 1
    return 1


class _Buffer(io.StringIO):
    """A text buffer that a handler's ``close()`` cannot close before it is read."""

    def close(self) -> None:
        """Keep the text: the CLI's output is read after the run."""


def _console_handlers() -> list[logging.StreamHandler]:  # type: ignore[type-arg]
    """Every live logging handler that writes to the process's stdout or stderr (Prefect's
    console handler, TensorFlow's, absl's), or to an earlier run's buffer, attached to a
    logger or not: a later ``logging.config.dictConfig`` (Prefect's, at the first flow run)
    closes them all, and absl's closes its stream when that is not the current
    ``sys.stderr``."""
    streams = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}
    refs = list(logging._handlerList)  # type: ignore[attr-defined]  # weak refs, all handlers
    found: dict[int, logging.StreamHandler] = {}  # type: ignore[type-arg]
    for handler in (ref() for ref in refs):
        if isinstance(handler, logging._StderrHandler):  # type: ignore[attr-defined]
            continue  # logging.lastResort: it always writes to the sys.stderr of the moment
        if not isinstance(handler, logging.StreamHandler):
            continue
        # a handler made during an earlier in-process run (Prefect's, at its first flow run)
        # holds that run's buffer: it is a console handler too
        if id(handler.stream) in streams or isinstance(handler.stream, _Buffer):
            found[id(handler)] = handler
    return list(found.values())


class _LastResort(logging.StreamHandler):  # type: ignore[type-arg]
    """What :data:`logging.lastResort` does in a process of its own: a record that no handler
    of its logger's chain takes goes to stderr, WARNING and up, as the bare message. Under
    pytest the root logger holds pytest's capture handlers, so Python's own last resort never
    fires; they don't count here."""

    def __init__(self, stream: io.StringIO) -> None:
        super().__init__(stream)
        self.setLevel(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` only when no other handler of its chain would."""
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(h is not self and not _pytest_handler(h) for h in logger.handlers):
                return
            if not logger.propagate:
                break
            logger = logger.parent
        super().emit(record)


def _pytest_handler(handler: logging.Handler) -> bool:
    """Whether ``handler`` is one of pytest's (log capture, live logging)."""
    return type(handler).__module__.startswith("_pytest")


@contextlib.contextmanager
def _captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Point ``sys.stdout``, ``sys.stderr`` and the console log handlers at fresh buffers."""
    out, err = _Buffer(), _Buffer()
    handlers = _console_handlers()
    saved = [(h, h.stream, getattr(getattr(h, "console", None), "file", None)) for h in handlers]
    for handler in handlers:
        handler.setStream(err)
        if getattr(handler, "console", None) is not None:
            handler.console.file = err  # type: ignore[attr-defined]  # Prefect's rich console
    last_resort = _LastResort(err)
    logging.getLogger().addHandler(last_resort)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            yield out, err
        finally:
            logging.getLogger().removeHandler(last_resort)
            for handler, stream, console_file in saved:
                handler.setStream(stream)
                if console_file is not None:
                    handler.console.file = console_file  # type: ignore[attr-defined]


def _cli_in_process(
    args: list[str], prefect_api: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``flows.cli.main()`` in this process, as the ``tlops`` script runs it: the exit code of
    its ``SystemExit``, or 1 and the traceback for an uncaught exception (as Python would)."""
    from flows import cli

    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, Path.cwd()
    os.environ.update({"PREFECT_API_URL": prefect_api, **env})
    sys.argv = ["tlops", *args]
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with _captured() as (out, err):
            try:
                cli.main()
            except SystemExit as exc:
                code = _exit_code(exc.code)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        _fresh_keras_state()
    return subprocess.CompletedProcess(["tlops", *args], code, out.getvalue(), err.getvalue())


def _fresh_keras_state() -> None:
    """Drop Keras' global state (layer names, graphs, the dtype policy) between CLI runs."""
    if "keras" in sys.modules:
        keras = sys.modules["keras"]
        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy("float32")


SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
TINY = [
    "--set", "backbone.name=tiny_cnn", "--set", "backbone.weights=none",
    "--set", "data.image_size=16", "--set", "train.batch_size=8",
    "--set", "train.frozen.epochs=1", "--set", "train.fine_tune.epochs=1",
    "--set", "evaluate.latency_repeats=2",
]  # fmt: skip


def write_shapes(root: Path, per_class: int = 6) -> None:
    """Three learnable classes: bright left half, bright right half, bright top half."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 3), ("test", 3)):
        for label in ("left", "right", "top"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (20, 20, 3)).astype(np.uint8)
                if label == "left":
                    img[:, :10] += 150
                elif label == "right":
                    img[:, 10:] += 150
                else:
                    img[:10] += 150
                Image.fromarray(img).save(folder / f"{label}_{i}.png")


@pytest.fixture(scope="session")
def _shapes_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Built once per session: the shapes repo and its remote, for :func:`repo` to copy (a
    git + DVC repo takes about ten seconds of ``git`` and ``dvc`` processes to make)."""
    base = tmp_path_factory.mktemp("shapes-template")
    init_repo(base / "repo", base / "remote")
    write_shapes(base / "repo" / "data")
    commit_data(base / "repo", "shapes")
    return base / "repo", base / "remote"


@pytest.fixture
def repo(_shapes_repo: tuple[Path, Path], tmp_path: Path) -> Path:
    """A git + DVC repo (local remote) holding the three-class shapes dataset, committed: a
    private copy of the session's template, at ``tmp_path/repo`` with its remote at
    ``tmp_path/remote``."""
    return copy_repo(*_shapes_repo, tmp_path)[0]


@pytest.fixture
def tracked(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's real ``mlflow server`` as this test's MLFLOW_TRACKING_URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server
