"""flows/prefect_home.py: which Prefect homes get the empty database, and that a copy never
replaces a database already there."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from flows.prefect_home import DATABASE_FILE, seed


@pytest.fixture
def template(tmp_path: Path) -> Path:
    """A small SQLite file standing for the migrated template (seeding only copies it)."""
    path = tmp_path / "template.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE alembic_version (version_num TEXT)")
    return path


def test_a_new_home_gets_a_copy_and_a_second_seed_leaves_it(template: Path, tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"
    assert seed({"PREFECT_HOME": str(home)}, template)
    copied = home / DATABASE_FILE
    assert copied.read_bytes() == template.read_bytes()
    copied.write_bytes(b"this run's database")
    assert not seed({"PREFECT_HOME": str(home)}, template)
    assert copied.read_bytes() == b"this run's database"
    assert [p.name for p in home.iterdir()] == [DATABASE_FILE]  # no temporary left


@pytest.mark.parametrize(
    "setup",
    ["profiles", "database-url", "no-template"],
)
def test_a_configured_home_or_another_database_is_never_seeded(
    setup: str, template: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = {"PREFECT_HOME": str(home)}
    if setup == "profiles":
        home.mkdir()
        (home / "profiles.toml").write_text('active = "team"\n')
    elif setup == "database-url":
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = "postgresql+asyncpg://db/prefect"
    else:
        template = tmp_path / "absent.db"
    assert not seed(env, template)
    assert not (home / DATABASE_FILE).exists()


def test_a_home_that_cannot_be_written_is_left_to_prefect(template: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the home's folder would go")
    assert not seed({"PREFECT_HOME": str(blocked / "home")}, template)


def test_a_template_that_cannot_be_built_is_one_line_not_a_failed_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import flows.prefect_home as home

    target = tmp_path / "file" / "prefect.db"
    (tmp_path / "file").write_text("a file where the template's folder would go")
    monkeypatch.setattr(home, "template_path", lambda: target)
    home.main()  # returns: setup goes on
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("prefect database template: not built (")
    assert not target.exists()
