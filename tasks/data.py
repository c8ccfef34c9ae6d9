"""Stage 1: resolve the DVC-versioned dataset."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tlops.adapters.dvc import check_unchanged, resolve_data
from tlops.config import DataConfig
from tlops.data.version import DataVersion


@task(name="resolve-data", cache_policy=NO_CACHE)
def resolve_data_task(config: DataConfig) -> DataVersion:
    """Materialize the dataset of ``config`` at its revision and return its version."""
    version = resolve_data(config, note=get_run_logger().warning)
    dirty = " (DIRTY: data differs from its pointer)" if version.dirty else ""
    get_run_logger().info(
        "data %s md5=%s nfiles=%d rev=%s at %s%s",
        version.dvc_file, version.md5, version.nfiles, version.rev[:12], version.path, dirty,
    )  # fmt: skip
    return version


@task(name="recheck-data", cache_policy=NO_CACHE)
def recheck_data_task(config: DataConfig, version: DataVersion) -> None:
    """Before anything is registered: the data read in place is still the resolved version."""
    check_unchanged(config, version)
