"""An empty, migrated Prefect database to start a new Prefect home from.

On its first start in a Prefect home, Prefect's server creates its SQLite database by running
every Alembic migration: measured here, a server in a new home answered after 11.7 s, one in a
home whose database exists after 4.4 s. Every first run on a new machine, and every run on a
fresh CI runner, pays the difference.

``make setup`` builds one empty database per installed Prefect version (:func:`build`: a real
server started once in a temporary home, then copied with SQLite's backup API), in the virtual
environment. :func:`seed` puts a copy of it in a Prefect home that has neither a database nor
profiles yet, just before tlops starts its temporary server; that server then starts as on a
second run (it still checks the migrations and registers its block types). A home with its
own database or profiles, or a database URL in the environment, is never touched; without a
template Prefect migrates as it always does.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import tempfile
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

#: Environment variables that point Prefect's server at another database than the home's.
DATABASE_URL_VARIABLES = (
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
)
#: The database file of a Prefect home (Prefect's default connection URL).
DATABASE_FILE = "prefect.db"
#: Files whose presence says a Prefect home is in use (or configured) already.
IN_USE = (DATABASE_FILE, "profiles.toml")


def template_path() -> Path:
    """Where ``make setup`` keeps the empty database of the installed Prefect version."""
    return Path(sys.prefix) / "share" / "tlops" / f"prefect-{version('prefect')}.db"


def prefect_home(env: Mapping[str, str]) -> Path:
    """The Prefect home that ``env`` gives Prefect (``PREFECT_HOME``, else ``~/.prefect``)."""
    return Path(env.get("PREFECT_HOME") or "~/.prefect").expanduser()


def seed(env: Mapping[str, str], template: Path | None = None) -> bool:
    """Copy the empty database into the Prefect home of ``env`` when that home is new and
    uses its own SQLite file; whether it did. Two runs seeding one home at once: one copy
    wins (created with a hard link, never replacing a database a server may have opened)."""
    template = template or template_path()
    if any(env.get(name) for name in DATABASE_URL_VARIABLES) or not template.is_file():
        return False
    home = prefect_home(env)
    if any((home / name).exists() for name in IN_USE):
        return False
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=home, prefix=f".{DATABASE_FILE}.", suffix=".tmp")
        os.close(fd)
        copy = Path(name)
        try:
            copy.write_bytes(template.read_bytes())
            copy.chmod(0o644)  # as Prefect makes it (mkstemp's copy is private)
            os.link(copy, home / DATABASE_FILE)
        finally:
            copy.unlink(missing_ok=True)
    except OSError:  # another run's copy won, or the home is not writable: Prefect migrates
        return False
    return True


def build(dest: Path, timeout_s: float = 300) -> Path:
    """Start Prefect's server once in a temporary home, stop it, and keep a consistent copy of
    the database it created at ``dest`` (replaced atomically)."""
    from flows.startup import TemporaryAPI

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tlops-prefect-home-") as home:
        env = {"PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        server = TemporaryAPI(env=env, seeded=False).start()
        try:
            server.wait(timeout_s)
        finally:
            server.stop()
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        try:
            _backup(Path(home) / DATABASE_FILE, tmp)
            tmp.chmod(0o644)  # mkstemp makes it private; every user of the venv reads it
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest


def _backup(source: Path, dest: Path) -> None:
    """Copy the SQLite database ``source`` (with its write-ahead log) into ``dest``."""
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(dest)) as out,
    ):
        src.backup(out)
        tables = {row[0] for row in out.execute("SELECT name FROM sqlite_master")}
        out.execute("PRAGMA journal_mode=DELETE")
    if "alembic_version" not in tables:
        raise RuntimeError(f"{source}: the server left no migrated database")


def main() -> None:
    """``python -m flows.prefect_home``: build the template unless it is there already. A
    template that cannot be built is said in one line and is not an error: without it, a new
    Prefect home migrates its database as Prefect always does."""
    path = template_path()
    if path.is_file():
        print(f"prefect database template: {path} (there already)")
        return
    try:
        print(f"prefect database template: {build(path)}")
    except Exception as exc:  # setup goes on; only the speed-up is lost
        print(f"prefect database template: not built ({type(exc).__name__}: {exc}); new "
              "Prefect homes run Prefect's migrations")  # fmt: skip


if __name__ == "__main__":
    main()
