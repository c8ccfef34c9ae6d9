"""Stages 2 and 3 of the train flow as two domain steps that read and write files.

``build_manifest`` scans a dataset, assigns splits when it has no split folders (and carves a
test split when it has train and val folders only), and writes the
manifest and class counts; ``check_contract`` runs the GX contract on them and writes the
report. Both return small pydantic values, which is what Prefect tasks pass around.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict

from tlops.config import ContractConfig, SplitConfig
from tlops.data.contract import ContractResult, render_markdown, run_contract
from tlops.data.manifest import Layout, Limits, class_counts, manifest_digest, scan
from tlops.data.near_duplicates import SHEET_PAIRS, pair_sheet
from tlops.data.split import assign_splits, carve_test
from tlops.data.version import DataVersion
from tlops.paths import default_cache_root
from tlops.safetext import one_line


class ManifestInfo(BaseModel):
    """Where the manifest was written and what it holds."""

    model_config = ConfigDict(frozen=True)

    manifest_path: str
    manifest_csv: str
    counts_path: str
    nfiles: int
    digest: str
    split_source: str  # "folders", "sha256" or "folders; test carved from val by sha256"
    classes: list[str]
    per_split: dict[str, int]


class ContractVerdict(BaseModel):
    """The contract's verdict and where its reports are."""

    model_config = ConfigDict(frozen=True)

    success: bool
    message: str
    failed_rules: list[str]
    report_path: str
    json_path: str
    markdown: str


def build_manifest(
    images_root: Path,
    split: SplitConfig,
    out_dir: Path,
    contract: ContractConfig | None = None,
    split_names: Mapping[str, str] | None = None,
    tracked: Mapping[str, str] | None = None,
    row_cache: Path | None = None,
    link_roots: tuple[str, ...] = (),
) -> ManifestInfo:
    """Scan ``images_root`` into ``out_dir/manifest.{parquet,csv}`` and ``class_counts.parquet``.

    ``contract``: whose formats and size limits bound what is read (default: its defaults);
    ``split_names``: folder names read as splits (``data.split_names``; default: validation
    and valid are val); ``tracked``: the data's files by relative path -> md5 (its DVC
    listing: files ``.dvcignore`` leaves out are not scanned); ``row_cache``: where rows of
    files scanned before are kept by md5 (their bytes are not read again); ``link_roots``:
    folders outside ``images_root`` its symlinks may point into (DVC's cache).

    1. scan the files in parallel;
    2. assign splits by sha256 when the folder has none of its own; carve a test split out of
       val (or train) when it has train and val but no test (:func:`carve_test`);
    3. count images per split and class (empty class folders count as zero).
    """
    limits = replace(Limits.of(contract or ContractConfig()), link_roots=link_roots)
    manifest, layout = scan(
        images_root, limits=limits, split_names=split_names, tracked=tracked,
        row_cache=row_cache,
    )  # fmt: skip
    split_source = "folders" if layout.split_folders else "sha256"
    if not layout.split_folders:
        manifest = assign_splits(manifest, split)
    elif needs_test(manifest, layout):
        manifest, carved_from = carve_test(manifest, split)
        split_source = f"folders; test carved from {carved_from} by sha256"
    counts = class_counts(manifest, layout)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "manifest_path": out_dir / "manifest.parquet",
        "manifest_csv": out_dir / "manifest.csv",
        "counts_path": out_dir / "class_counts.parquet",
    }
    manifest.to_parquet(paths["manifest_path"], index=False)
    manifest.to_csv(paths["manifest_csv"], index=False)
    counts.to_parquet(paths["counts_path"], index=False)
    return ManifestInfo(
        **{k: str(v) for k, v in paths.items()},
        nfiles=len(manifest),
        digest=manifest_digest(manifest),
        split_source=split_source,
        classes=sorted(counts["label"].unique().tolist()),
        per_split={str(k): int(v) for k, v in manifest["split"].value_counts().items()},
    )


def version_manifest(
    version: DataVersion, split: SplitConfig, out_dir: Path, contract: ContractConfig | None,
    split_names: Mapping[str, str] | None = None,
) -> ManifestInfo:  # fmt: skip
    """:func:`build_manifest` of a resolved version: its tracked files only (its DVC listing),
    with the rows of files scanned before taken from the cache by md5; its links may point
    into DVC's cache when it is read in place."""
    return build_manifest(
        version.images_root, split, out_dir, contract, split_names, version.tracked_files(),
        default_cache_root() / "manifest", version.link_roots,
    )  # fmt: skip


def needs_test(manifest: pd.DataFrame, layout: Layout) -> bool:
    """Split folders with labelled train and val images, and no test folder at all (an empty
    one is the data's own: the contract reports it)."""
    present = set(manifest[manifest["label"] != ""]["split"])
    return {"train", "val"} <= present and "test" not in layout.classes


def check_contract(
    info: ManifestInfo, config: ContractConfig, out_dir: Path, facts: dict[str, str],
    images_root: Path | None = None,
) -> ContractVerdict:  # fmt: skip
    """Run the GX contract on a written manifest; write ``contract.md`` and ``contract.json``,
    and, when near duplicates were found and ``images_root`` is given, ``near_duplicates.png``
    (the pairs side by side), which the report shows."""
    manifest = pd.read_parquet(info.manifest_path)
    counts = pd.read_parquet(info.counts_path)
    result: ContractResult = run_contract(manifest, counts, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "contract.md"
    as_json = out_dir / "contract.json"
    facts = {**facts, "files": str(info.nfiles), "classes": ", ".join(info.classes)}
    markdown = render_markdown(result, "Image data contract", facts)
    sheet = out_dir / "near_duplicates.png"
    if images_root is not None and pair_sheet(images_root, result.near_pairs, sheet):
        shown = min(len(result.near_pairs), SHEET_PAIRS)
        markdown += (
            f"\n## near duplicates: {len(result.near_pairs)} pairs (first {shown} below)\n\n"
            f"![near-duplicate pairs, later split first]({sheet.name})\n"
        )
    report.write_text(markdown, encoding="utf-8")
    as_json.write_text(result.to_json(), encoding="utf-8")
    return ContractVerdict(
        success=result.success,
        message=result.message(),
        failed_rules=[r.rule for r in result.failed],
        report_path=str(report),
        json_path=str(as_json),
        markdown=markdown,
    )


def version_facts(version: DataVersion) -> dict[str, str]:
    """What the contract report says about the data version: md5, git rev, dirty flag."""
    return {"data md5": version.md5, "git rev": version.rev, "dirty": str(version.dirty)}


class ValidationOutcome(BaseModel):
    """What the validate flow returns: the data version, the manifest and the verdict."""

    model_config = ConfigDict(frozen=True)

    data: DataVersion
    manifest: ManifestInfo
    verdict: ContractVerdict

    def summary(self) -> str:
        """A short Markdown summary for the console and CI."""
        d, m = self.data, self.manifest
        status = "passed" if self.verdict.success else "FAILED"
        return "\n".join(
            one_line(line)  # a name from the data can never start a line of its own
            for line in [
                f"### tlops validate: data contract {status}",
                f"- data: `{d.dvc_file}` md5 `{d.md5}` rev `{d.rev[:12]}`"
                + (" **dirty**" if d.dirty else ""),
                f"- files: {m.nfiles} ({', '.join(f'{k} {v}' for k, v in m.per_split.items())}),"
                f" splits from {m.split_source}, classes: {', '.join(m.classes)}",
                f"- remote: {d.remote_url or 'none'}",
                f"- report: {self.verdict.report_path}",
            ]
        )
