"""Data is what its pointer says: a forged pointer, a tampered cache and outward symlinks are
refused or repaired (issue 10, items 6-8), in a real git + DVC repo."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import SMOKE, commit_data, dvc, init_repo, run, tlops_cli, write_images

from tlops.adapters.dvc import dir_md5, resolve_data
from tlops.config import DataConfig
from tlops.errors import ContractFailedError, DataError


@pytest.fixture(scope="module")
def _template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once: a repo whose data (cat, dog) is committed and pushed."""
    base = tmp_path_factory.mktemp("trust")
    repo = base / "repo"
    init_repo(repo, base / "remote")
    write_images(repo / "data", {"cat": 3, "dog": 3}, seed=5)
    commit_data(repo, "data")
    return repo


@pytest.fixture
def repo(_template: Path, tmp_path: Path) -> Path:
    """A private copy of the repo (its DVC remote is shared and never written)."""
    copy = tmp_path / "repo"
    shutil.copytree(_template, copy, symlinks=True)
    return copy


def _cache_data(tmp_path: Path) -> Path:
    """``$TLOPS_CACHE/data`` of this test (conftest points TLOPS_CACHE at tmp_path/_cache)."""
    return Path(os.environ["TLOPS_CACHE"]) / "data"


def _forge_pointer(repo: Path, **fields: object) -> None:
    """Rewrite fields of ``outs[0]`` in data.dvc and commit it."""
    pointer = yaml.safe_load((repo / "data.dvc").read_text(encoding="utf-8"))
    pointer["outs"][0].update(fields)
    (repo / "data.dvc").write_text(yaml.safe_dump(pointer), encoding="utf-8")
    run(["git", "commit", "-qam", "forged pointer"], repo)


# -- item 6: the md5 in a pointer is never a path -------------------------------------------


@pytest.mark.parametrize("kind", ["absolute", "dotdot"])
def test_md5_that_is_a_path_is_refused(repo: Path, tmp_path: Path, kind: str) -> None:
    elsewhere = tmp_path / "elsewhere"  # any folder of images the attacker wants used
    write_images(elsewhere, {"x": 2, "y": 2}, seed=9)
    _cache_data(tmp_path).mkdir(parents=True)
    md5 = (
        f"{elsewhere}.dir"
        if kind == "absolute"
        else f"{os.path.relpath(elsewhere, _cache_data(tmp_path))}.dir"
    )
    _forge_pointer(repo, md5=md5)
    with pytest.raises(
        DataError, match=r"data\.dvc at [0-9a-f]{40}: outs\[0\]\.md5 .* is not a DVC "
    ):
        resolve_data(DataConfig(repo=repo, rev="HEAD"))
    with pytest.raises(DataError, match=r"outs\[0\]\.md5"):  # the working tree too
        resolve_data(DataConfig(repo=repo, allow_dirty=True))


def test_pointer_path_outside_the_repo_is_refused(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_images(outside, {"x": 2, "y": 2}, seed=9)
    md5, nfiles, size = dir_md5(outside)  # a pointer that matches the outside folder exactly
    _forge_pointer(repo, md5=md5, path="../outside", nfiles=nfiles, size=size)
    with pytest.raises(DataError, match=r"outs\[0\]\.path '\.\./outside' must be a folder"):
        resolve_data(DataConfig(repo=repo))
    _forge_pointer(repo, path=str(outside))
    with pytest.raises(DataError, match=r"outs\[0\]\.path"):
        resolve_data(DataConfig(repo=repo))


# -- item 7: the cache is verified, not trusted by name -------------------------------------


def _tamper(folder: Path, keep_stamp: bool = False) -> Path:
    """Change one cached image (the same size; with ``keep_stamp`` also the same mtime)."""
    victim = sorted((folder / "train" / "cat").iterdir())[0]
    before = victim.stat()
    victim.chmod(0o644)
    victim.write_bytes(bytes(reversed(victim.read_bytes())))
    if keep_stamp:
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
        victim.chmod(stat.S_IMODE(before.st_mode))
    return victim


def test_modified_cache_file_is_detected_and_replaced(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = resolve_data(DataConfig(repo=repo, rev="HEAD"))
    folder = Path(first.path)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}
    assert all(mode & 0o222 == 0 for mode in modes), "the cache folder is read-only"

    victim = _tamper(folder)
    assert dir_md5(folder)[0] != first.md5
    with caplog.at_level(logging.WARNING, logger="tlops.adapters.dvc"):
        again = resolve_data(DataConfig(repo=repo, rev="HEAD"))
    assert again.path == first.path
    assert dir_md5(Path(again.path))[0] == first.md5  # the tampered copy was replaced
    assert "file changed (size or mtime): train/cat/" in caplog.text
    assert "discarded, materializing it again" in caplog.text
    assert (
        victim.read_bytes()
        == next((repo / "data" / "train" / "cat").glob(victim.name)).read_bytes()
    )

    # a file added to the cache is found the same way, through the revision path too
    resolve_data(DataConfig(repo=repo, rev="HEAD"))
    extra = folder / "train" / "cat" / "planted.png"
    (folder / "train" / "cat").chmod(0o755)
    shutil.copy(victim, extra)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tlops.adapters.dvc"):
        resolve_data(DataConfig(repo=repo, rev="HEAD"))
    assert "file added: train/cat/planted.png" in caplog.text
    assert not extra.exists()


def test_full_verify_finds_what_the_cheap_check_cannot(
    repo: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = resolve_data(DataConfig(repo=repo, rev="HEAD"))
    _tamper(Path(first.path), keep_stamp=True)  # same size, same mtime: only the md5 tells
    assert (
        resolve_data(DataConfig(repo=repo, rev="HEAD")).md5 == first.md5
    )  # cheap check: unchanged
    monkeypatch.setenv("TLOPS_VERIFY_DATA", "1")  # what `--verify` sets
    with caplog.at_level(logging.WARNING, logger="tlops.adapters.dvc"):
        verified = resolve_data(DataConfig(repo=repo, rev="HEAD"))
    assert dir_md5(Path(verified.path))[0] == first.md5  # replaced by a good copy
    assert "its md5 is " in caplog.text and "discarded" in caplog.text


def test_cache_without_a_marker_is_verified_before_use(repo: Path, tmp_path: Path) -> None:
    """A folder an older tlops left (no marker), or a kill between rename and marker."""
    first = resolve_data(DataConfig(repo=repo, rev="HEAD"))
    folder = Path(first.path)
    marker = folder.with_name(folder.name + ".verified.json")
    marker.unlink(missing_ok=True)
    _tamper(folder, keep_stamp=True)
    again = resolve_data(DataConfig(repo=repo, rev="HEAD"))
    assert dir_md5(Path(again.path))[0] == first.md5
    assert json.loads(marker.read_text())["md5"] == first.md5  # verified, then marked


# -- item 8: links are checked in the source, before anything is copied --------------------


def link_outward(repo: Path, tmp_path: Path) -> Path:
    """Replace the first dog image by a link to an identical copy outside the data folder (the
    tree still matches its pointer); returns the link."""
    victim = sorted((repo / "data" / "train" / "dog").iterdir())[0]
    outside = tmp_path / "outside.png"
    shutil.copy(victim, outside)
    victim.unlink()
    victim.symlink_to(outside)
    return victim


def test_outward_and_broken_links_fail_the_contract_before_copying(
    repo: Path, tmp_path: Path
) -> None:
    # DVC's own links (cache.type: symlink) point into the DVC cache: accepted, and read in
    # place through them (no copy of the data), the second scan from the row cache
    from tlops.config import SplitConfig
    from tlops.jobs.validate import version_manifest

    dvc("config", "cache.type", "symlink", cwd=repo)
    dvc("checkout", "-q", "--relink", cwd=repo)
    linked = sorted((repo / "data" / "train" / "cat").iterdir())
    assert all(p.is_symlink() for p in linked)
    version = resolve_data(DataConfig(repo=repo))
    assert version.in_place and version.path == str(repo / "data")
    assert version.link_roots == (str((repo / ".dvc" / "cache").resolve()),)
    assert not _cache_data(tmp_path).exists() or not any(_cache_data(tmp_path).iterdir())
    assert dir_md5(Path(version.path))[0] == version.md5
    first = pd.read_parquet(
        version_manifest(version, SplitConfig(), tmp_path / "m1", None).manifest_path
    )
    assert first["symlink"].all() and first["inside_root"].all() and first["decodable"].all()
    again = pd.read_parquet(
        version_manifest(version, SplitConfig(), tmp_path / "m2", None).manifest_path
    )
    pd.testing.assert_frame_equal(first, again)
    dvc("config", "cache.type", "copy", cwd=repo)
    dvc("checkout", "-q", "--relink", cwd=repo)

    # a file replaced by a link to an identical copy outside: the tree still matches its pointer
    victim = link_outward(repo, tmp_path)
    assert dir_md5(repo / "data")[0] == version.md5
    with pytest.raises(ContractFailedError) as caught:
        resolve_data(DataConfig(repo=repo))
    message = str(caught.value)
    assert f"train/dog/{victim.name} (points outside the data folder)" in message
    assert "\n" not in message
    assert not list(_cache_data(tmp_path).glob(".partial-*"))

    # a broken link (DVC's hash skips it) and a folder link to its own parent
    (repo / "data" / "val" / "cat" / "gone.png").symlink_to(tmp_path / "missing.png")
    (repo / "data" / "test" / "cat" / "loop").symlink_to("..")
    with pytest.raises(ContractFailedError) as caught:
        resolve_data(DataConfig(repo=repo, allow_dirty=True))
    message = str(caught.value)
    assert "val/cat/gone.png (broken link)" in message
    assert "test/cat/loop (link loop" in message


def test_a_committed_cache_dir_does_not_open_the_door_to_outward_links(
    repo: Path, tmp_path: Path
) -> None:
    """A review found that links into the DVC cache folder were accepted whatever they pointed
    at, and the cache folder comes from the committed .dvc/config (``cache.dir: /`` would let
    every outward link in). Only links to DVC cache objects are DVC's own."""
    version = resolve_data(DataConfig(repo=repo))
    dvc("config", "cache.dir", "/", cwd=repo)
    link_outward(repo, tmp_path)
    assert dir_md5(repo / "data")[0] == version.md5  # the tree still matches its pointer
    with pytest.raises(ContractFailedError, match="points outside the data folder"):
        resolve_data(DataConfig(repo=repo))


# -- through the real CLI and Prefect flow ---------------------------------------------------


@pytest.fixture
def cli(prefect_api: str):  # type: ignore[no-untyped-def]
    """Run ``tlops validate`` on ``repo`` in a subprocess; returns (exit code, output)."""

    def invoke(repo: Path, *args: str) -> tuple[int, str]:
        done = tlops_cli(["validate", SMOKE, "--set", f"data.repo={repo}", *args], prefect_api)
        return done.returncode, done.stdout + done.stderr

    return invoke


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


def test_validate_refuses_an_outward_link_exit_3(repo: Path, tmp_path: Path, cli) -> None:
    victim = sorted((repo / "data" / "test" / "cat").iterdir())[0]
    outside = tmp_path / "outside.png"  # identical bytes: the tree still matches its pointer
    shutil.copy(victim, outside)
    victim.unlink()
    victim.symlink_to(outside)
    code, output = cli(repo)
    assert code == 3, output
    (line,) = _error_lines(output)
    assert "inside_folder" in line
    assert f"test/cat/{victim.name} (points outside the data folder)" in line


def test_validate_refuses_a_forged_md5_exit_3(repo: Path, tmp_path: Path, cli) -> None:
    elsewhere = tmp_path / "elsewhere"  # a perfectly valid dataset, not the one committed
    shutil.copytree(repo / "data", elsewhere)
    _forge_pointer(repo, md5=f"{elsewhere}.dir")
    code, output = cli(repo, "--data-rev", "HEAD")
    assert code == 3, output
    (line,) = _error_lines(output)
    assert "data.dvc at " in line and f"outs[0].md5 '{elsewhere}.dir' is not a DVC" in line


def test_validate_verify_replaces_a_tampered_cache(repo: Path, cli) -> None:
    # a revision is materialized into $TLOPS_CACHE (the same as the CLI's); a working tree
    # that matches its pointer is read in place (tests/flows/test_dataversion.py)
    first = resolve_data(DataConfig(repo=repo, rev="HEAD"))
    _tamper(Path(first.path), keep_stamp=True)
    code, output = cli(repo, "--data-rev", "HEAD", "--verify")
    assert code == 0, output
    assert "discarded, materializing it again" in output and "its md5 is" in output
    assert dir_md5(Path(first.path))[0] == first.md5
