"""Stages 2 and 3: scan the images into a manifest, split, and run the GX data contract."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tlops.config import ContractConfig, SplitConfig
from tlops.data.version import DataVersion
from tlops.jobs.validate import (
    ContractVerdict,
    ManifestInfo,
    check_contract,
    version_facts,
    version_manifest,
)


@task(name="build-manifest", cache_policy=NO_CACHE)
def build_manifest_task(
    version: DataVersion, split: SplitConfig, out_dir: str, contract: ContractConfig | None = None,
    split_names: dict[str, str] | None = None,
) -> ManifestInfo:  # fmt: skip
    """Scan the dataset's images into a manifest, splitting by sha256 if it has no splits (a
    test split carved when it has train and val only); only the contract's formats and sizes
    are read."""
    info = version_manifest(version, split, Path(out_dir), contract, split_names)
    get_run_logger().info(
        "manifest: %d files, classes %s, splits %s (from %s)",
        info.nfiles, info.classes, info.per_split, info.split_source,
    )  # fmt: skip
    return info


@task(name="check-contract", cache_policy=NO_CACHE)
def check_contract_task(
    info: ManifestInfo, config: ContractConfig, version: DataVersion, out_dir: str
) -> ContractVerdict:
    """Run the data contract; publish its report as a Prefect artifact."""
    verdict = check_contract(
        info, config, Path(out_dir), version_facts(version), version.images_root
    )
    create_markdown_artifact(
        markdown=verdict.markdown,
        key="data-contract",
        description=verdict.message[:500],
    )
    log = get_run_logger()
    (log.info if verdict.success else log.error)(
        "%s (report: %s)", verdict.message, verdict.report_path
    )
    return verdict
