"""A Prefect home seeded with the template that ``make setup`` builds (flows/prefect_home.py):
a real server starts on it and a real flow runs against it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

from flows.prefect_home import DATABASE_FILE, build
from flows.startup import TemporaryAPI

FLOW = """
from prefect import flow

@flow(name="seeded-home")
def hello() -> int:
    return 41 + 1

print("flow answered", hello())
"""


def _revision(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def test_a_seeded_home_serves_a_real_flow_run(tmp_path: Path) -> None:
    template = build(tmp_path / "share" / "prefect.db")
    home = tmp_path / "home"
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = TemporaryAPI(env=env).start()
    try:
        server.wait(120)
        assert _revision(home / DATABASE_FILE) == _revision(template)
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=10) as answer:
            assert answer.status == 200
        run_env = {**os.environ, **env, "PREFECT_API_URL": server.api_url}
        done = subprocess.run(
            [sys.executable, "-c", FLOW], env=run_env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "flow answered 42" in done.stdout
    finally:
        server.stop()
    with sqlite3.connect(home / DATABASE_FILE) as db:  # the run is in the seeded database
        names = [row[0] for row in db.execute("SELECT f.name FROM flow f")]
    assert names == ["seeded-home"]
