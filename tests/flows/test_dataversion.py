"""Resolving DVC dataset versions in a real git + DVC repo with a local remote."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import commit_data, copy_repo, init_repo, run, write_images

from tlops.adapters.dvc import dir_md5, resolve_data
from tlops.config import DataConfig
from tlops.errors import ConfigError, DataError, ServiceError


def _pointer_md5(repo: Path, rev: str | None = None) -> str:
    text = (
        run(["git", "show", f"{rev}:data.dvc"], repo)
        if rev
        else (repo / "data.dvc").read_text(encoding="utf-8")
    )
    return str(yaml.safe_load(text)["outs"][0]["md5"])


@pytest.fixture(scope="module")
def _template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Built once: a repo whose data has v1 (tagged) and v2 (HEAD), both pushed."""
    base = tmp_path_factory.mktemp("two-versions")
    repo, remote = base / "repo", base / "remote"
    init_repo(repo, remote)
    write_images(repo / "data", {"cat": 3, "dog": 3}, seed=1)
    commit_data(repo, "data v1", tag="v1")
    write_images(repo / "data", {"cat": 1, "bird": 3}, seed=2)  # adds files: v2
    commit_data(repo, "data v2")
    return repo, remote


@pytest.fixture
def two_versions(_template: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the two-version repo and its remote (tests may break them)."""
    repo, remote = copy_repo(*_template, tmp_path)
    return repo, remote


def test_dir_md5_is_dvc_md5(two_versions: tuple[Path, Path]) -> None:
    repo, _ = two_versions
    md5, nfiles, size = dir_md5(repo / "data")
    pointer = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    assert (md5, nfiles, size) == (pointer["md5"], pointer["nfiles"], pointer["size"])


def test_resolve_older_version_by_rev_from_remote(two_versions: tuple[Path, Path]) -> None:
    repo, remote = two_versions
    shutil.rmtree(repo / ".dvc" / "cache")  # force the fetch to go to the remote
    v1_md5, v2_md5 = _pointer_md5(repo, "v1"), _pointer_md5(repo)
    assert v1_md5 != v2_md5

    old = resolve_data(DataConfig(repo=repo, rev="v1"))
    assert old.md5 == v1_md5
    assert old.rev == run(["git", "rev-parse", "v1"], repo).strip()
    assert old.remote_url == str(remote)
    assert not old.dirty
    assert Path(old.path).name == v1_md5.removesuffix(".dir")
    assert dir_md5(Path(old.path))[0] == v1_md5
    assert sorted(p.name for p in (Path(old.path) / "train").iterdir()) == ["cat", "dog"]
    assert old.nfiles == 10

    # the working tree (v2) resolves beside it, from the same cache root
    new = resolve_data(DataConfig(repo=repo))
    assert new.md5 == v2_md5
    assert new.rev == run(["git", "rev-parse", "HEAD"], repo).strip()
    assert (Path(new.path) / "train" / "bird").is_dir()
    assert Path(old.path).is_dir()  # the old version is still there


def test_dirty_worktree_is_refused_unless_allowed(two_versions: tuple[Path, Path]) -> None:
    repo, _ = two_versions
    victim = next((repo / "data" / "train" / "cat").iterdir())
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"does not match data\.dvc"):
        resolve_data(DataConfig(repo=repo))
    dirty = resolve_data(DataConfig(repo=repo, allow_dirty=True))
    assert dirty.dirty
    assert dirty.md5 == dir_md5(repo / "data")[0] != _pointer_md5(repo)


def test_unknown_rev_is_a_usage_error(two_versions: tuple[Path, Path]) -> None:
    repo, _ = two_versions
    with pytest.raises(ConfigError, match="unknown git revision 'v9'"):
        resolve_data(DataConfig(repo=repo, rev="v9"))


def test_missing_pointer_and_missing_data(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo, tmp_path / "remote")
    with pytest.raises(DataError, match=r"data\.dvc: DVC pointer not found"):
        resolve_data(DataConfig(repo=repo))
    write_images(repo / "data", {"a": 2, "b": 2}, seed=3)
    commit_data(repo, "data")
    shutil.rmtree(repo / "data")
    with pytest.raises(DataError, match="data folder missing"):
        resolve_data(DataConfig(repo=repo))
    with pytest.raises(DataError, match="does not exist at that revision"):
        resolve_data(DataConfig(repo=repo, rev="HEAD~1"))


def test_lost_remote_is_a_service_error(two_versions: tuple[Path, Path]) -> None:
    repo, remote = two_versions
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(remote)
    with pytest.raises(ServiceError, match="could not fetch data"):
        resolve_data(DataConfig(repo=repo, rev="v1"))


def test_subdir_must_exist(two_versions: tuple[Path, Path]) -> None:
    repo, _ = two_versions
    assert resolve_data(DataConfig(repo=repo, subdir="train")).images_root.name == "train"
    with pytest.raises(ConfigError, match=r"data\.subdir"):
        resolve_data(DataConfig(repo=repo, subdir="nope"))


# -- issue 14, part 3: read in place, hashed by DVC (its state, its .dvcignore) -------------


def test_a_matching_working_tree_is_read_where_it_is_never_copied(
    two_versions: tuple[Path, Path], tmp_path: Path
) -> None:
    repo, _ = two_versions
    version = resolve_data(DataConfig(repo=repo), cache_root=tmp_path / "cache")
    assert version.in_place and Path(version.path) == (repo / "data").resolve()
    assert version.md5 == _pointer_md5(repo)
    assert not (tmp_path / "cache" / "data").exists()  # no second copy of the data
    files = version.tracked_files()
    assert files is not None and len(files) == version.nfiles
    assert all(len(md5) == 32 for md5 in files.values())
    # an older revision still comes from DVC's cache into the md5-keyed cache, read-only
    older = resolve_data(DataConfig(repo=repo, rev="v1"), cache_root=tmp_path / "cache")
    assert not older.in_place and Path(older.path).parent == tmp_path / "cache" / "data"


def test_dvcignore_is_respected_exactly_as_dvc_does(
    two_versions: tuple[Path, Path], tmp_path: Path
) -> None:
    """An ignored file in the tree made it 'not match' its pointer, and would have been
    scanned into the manifest."""
    from tlops.config import SplitConfig
    from tlops.jobs.validate import version_manifest

    repo, _ = two_versions
    (repo / ".dvcignore").write_text("*.tmp\nscratch/\n", encoding="utf-8")
    (repo / "data" / "train" / "cat" / "notes.tmp").write_text("not an image", encoding="utf-8")
    (repo / "data" / "scratch").mkdir()
    shutil.copy(next((repo / "data" / "train" / "cat").glob("*.png")), repo / "data" / "scratch")
    version = resolve_data(DataConfig(repo=repo), cache_root=tmp_path / "cache")
    assert version.md5 == _pointer_md5(repo) and not version.dirty
    info = version_manifest(version, SplitConfig(), tmp_path / "m", None)
    import pandas as pd

    paths = pd.read_parquet(info.manifest_path)["path"].tolist()
    assert len(paths) == version.nfiles
    assert not [p for p in paths if p.endswith(".tmp") or p.startswith("scratch")]


def test_an_unchanged_tree_is_not_read_again_and_verify_reads_it(
    two_versions: tuple[Path, Path], tmp_path: Path
) -> None:
    """DVC's state (inode, mtime, size) answers for unchanged files: a file whose bytes were
    changed behind its back, keeping size and mtime, is not read again (the proof that no
    byte is read) until --verify asks for every byte."""
    import os

    from tlops.config import SplitConfig
    from tlops.jobs.validate import version_manifest

    repo, _ = two_versions
    cache = tmp_path / "cache"
    first = resolve_data(DataConfig(repo=repo), cache_root=cache)
    manifest = version_manifest(first, SplitConfig(), tmp_path / "m1", None)
    victim = next((repo / "data" / "train" / "cat").glob("*.png"))
    stamp = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    again = resolve_data(DataConfig(repo=repo), cache_root=cache)
    assert again.md5 == first.md5  # from DVC's state: the bytes were not read
    rows = version_manifest(again, SplitConfig(), tmp_path / "m2", None)
    assert rows.digest == manifest.digest  # every row from the row cache: no image was read
    with pytest.raises(DataError, match=r"does not match data\.dvc"):
        resolve_data(DataConfig(repo=repo), cache_root=cache, verify=True)


def test_a_tree_read_in_place_that_changes_during_the_run_is_refused(
    two_versions: tuple[Path, Path], tmp_path: Path
) -> None:
    from tlops.adapters.dvc import check_unchanged

    repo, _ = two_versions
    config = DataConfig(repo=repo)
    version = resolve_data(config, cache_root=tmp_path / "cache")
    check_unchanged(config, version)  # unchanged: nothing to say
    (repo / "data" / "train" / "cat" / "late.png").write_bytes(
        next((repo / "data" / "train" / "dog").glob("*.png")).read_bytes()
    )
    with pytest.raises(DataError, match="changed during the run"):
        check_unchanged(config, version)


def test_dvcs_answer_for_an_unchanged_tree_is_kept_and_any_change_asks_dvc_again(
    two_versions: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stat memo of a tree (tlops.adapters.dvc.worktree_hash): DVC's walk is skipped only
    for a tree whose every file has the stat it had, under the same pointer, config and
    ignore files; --verify never uses it."""
    from tlops.adapters import dvc as adapter

    repo, _ = two_versions
    cache, config = tmp_path / "cache", DataConfig(repo=repo)
    first = resolve_data(config, cache_root=cache)
    assert len(list((cache / "worktrees").glob("*.json"))) == 1
    asked: list[object] = []
    real = adapter._dvc_hash

    def counted(*args: object) -> adapter.TreeHash:
        asked.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(adapter, "_dvc_hash", counted)
    assert resolve_data(config, cache_root=cache).md5 == first.md5
    assert not asked  # unchanged: from the memo
    victim = next((repo / "data" / "train" / "cat").glob("*.png"))
    original = victim.read_bytes()
    victim.write_bytes(next((repo / "data" / "train" / "dog").glob("*.png")).read_bytes())
    with pytest.raises(DataError, match=r"does not match data\.dvc"):
        resolve_data(config, cache_root=cache)
    assert len(asked) == 1  # changed: DVC hashed it
    victim.write_bytes(original)  # the same bytes again, a newer mtime: DVC says it matches
    assert resolve_data(config, cache_root=cache).md5 == first.md5 and len(asked) == 2
    (repo / ".dvcignore").write_text("*.tmp\n", encoding="utf-8")  # another ignore rule
    assert resolve_data(config, cache_root=cache).md5 == first.md5 and len(asked) == 3
    resolve_data(config, cache_root=cache, verify=True)
    assert len(asked) == 4  # --verify reads every byte, never the memo
