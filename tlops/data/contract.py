"""The image data contract: a Great Expectations 1.x suite run on the manifest.

Two batches are validated in an ephemeral GX context: the manifest (one row per file, failing
rows named by path) and the class counts (one row per split and class). Each expectation
carries its rule name in ``meta`` so the verdict reads as rules, not as GX internals.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from tlops.config import CONVERTIBLE_MODES, SPLITS, ContractConfig
from tlops.data.near_duplicates import near_pairs
from tlops.safetext import md_cell, md_code, metric_key, one_line

#: How many offending files a one-line message names before "and N more".
NAMED_IN_MESSAGE = 5


@dataclass(frozen=True)
class ExpectationResult:
    """The verdict of one contract rule (one Great Expectations expectation)."""

    rule: str
    description: str
    success: bool
    observed: str
    offenders: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ContractResult:
    """The verdict of the whole contract, plus the raw GX results and the near-duplicate
    pairs found (``path``, ``other``, ``distance``; for the report's thumbnails)."""

    success: bool
    rules: list[ExpectationResult]
    gx_results: list[dict[str, Any]]
    near_pairs: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def failed(self) -> list[ExpectationResult]:
        """The rules that failed."""
        return [r for r in self.rules if not r.success]

    def message(self) -> str:
        """One line naming each failed rule and the first offending files."""
        if self.success:
            return f"data contract passed ({len(self.rules)} rules)"
        parts = []
        for rule in self.failed:
            shown = ", ".join(rule.offenders[:NAMED_IN_MESSAGE])
            more = len(rule.offenders) - NAMED_IN_MESSAGE
            shown += f" and {more} more" if more > 0 else ""
            parts.append(f"{rule.rule} ({rule.description}): {shown or rule.observed}")
        return one_line("data contract failed: " + "; ".join(parts))

    def to_json(self) -> str:
        """Verdict and GX results as JSON."""
        return json.dumps(
            {
                "success": self.success,
                "rules": [asdict(r) for r in self.rules],
                "great_expectations": self.gx_results,
            },
            indent=2,
            default=str,
        )


def add_leakage_column(manifest: pd.DataFrame) -> pd.DataFrame:
    """Add ``splits_with_same_image``: in how many known splits each file's sha256 appears.

    Also gives unread files a placeholder hash of their own, so they are not duplicates.
    """
    out = manifest.copy()
    known = out[out["split"].isin(SPLITS) & out["sha256"].notna()]
    per_sha = known.groupby("sha256")["split"].nunique()
    out["splits_with_same_image"] = out["sha256"].map(per_sha).fillna(0).astype(int)
    # files that were not read (outward symlinks) have no hash: never count them as duplicates
    unread = out["sha256"].isna()
    out.loc[unread, "sha256"] = "not read: " + out.loc[unread, "path"]
    return out


def add_near_duplicate_column(
    manifest: pd.DataFrame, config: ContractConfig
) -> tuple[pd.DataFrame, list[tuple[str, str, int]]]:
    """Add ``near_duplicate``: for the file of the later split of each near-duplicate pair
    (val or test), its closest partner and their distance ("" for every other file); and
    the pairs."""
    out = manifest.copy()
    out["near_duplicate"] = ""
    if config.near_duplicate_distance is None:
        return out, []
    pairs = near_pairs(manifest, config.near_duplicate_distance, SPLITS)
    closest = pairs.drop_duplicates("path")
    shown = dict(zip(closest["path"], closest["other"] + " (distance "
                     + closest["distance"].astype(str) + " bits)", strict=True))  # fmt: skip
    out["near_duplicate"] = out["path"].map(shown).fillna("")
    found = [(str(a), str(b), int(d)) for a, b, d in pairs[["path", "other", "distance"]].values]
    return out, found


def add_limit_columns(manifest: pd.DataFrame, config: ContractConfig) -> pd.DataFrame:
    """Add ``pixels`` (width x height) and make every file the contract can see no other reason
    for, and that was never decoded, undecodable (so it fails ``decodable``: never open).

    A file left undecoded by the scan is named by its own rule (``inside_folder``,
    ``file_name``, ``max_bytes``, ``max_pixels``) when that rule applies under ``config``; a
    manifest scanned with looser limits than ``config`` still fails, under ``decodable``.
    """
    out = manifest.copy()
    if "name_ok" not in out:
        out["name_ok"] = True
    out["pixels"] = (out["width"].astype("Int64") * out["height"].astype("Int64")).astype("Int64")
    named_elsewhere = (
        (out["inside_root"] == False)  # noqa: E712
        | (out["name_ok"] == False)  # noqa: E712
        | (out["bytes"].astype("Int64") > config.max_bytes).fillna(False)
        | (out["pixels"] > config.max_pixels).fillna(False)
    )
    never_decoded = out["decodable"].isna() & ~named_elsewhere.astype(bool)
    out["decodable"] = out["decodable"].astype(object)
    out.loc[never_decoded, "decodable"] = False
    return out


def colliding_classes(classes: Iterable[str]) -> dict[str, list[str]]:
    """Class names that another one collides with -> the names it collides with.

    Two names collide when they are equal after Unicode normalization (NFKC) and case folding
    (``Cat``/``cat``, ``café`` composed / decomposed, the ligature ``ﬁsh``/``fish``), or when
    their metric keys (:func:`tlops.safetext.metric_key`, one-to-one by construction) are.
    Names in any script are fine as long as they stay distinct (``猫``/``狗``, ``кот``/``пёс``).
    """
    groups: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for name in set(classes):
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
        groups["key", metric_key(name)].add(name)
        groups["folded", folded].add(name)
        groups["folded key", metric_key(folded)].add(name)
    partners: defaultdict[str, set[str]] = defaultdict(set)
    for names in groups.values():
        for name in names:
            partners[name] |= names - {name}
    return {name: sorted(others) for name, others in sorted(partners.items()) if others}


def add_distinct_name_column(counts: pd.DataFrame) -> pd.DataFrame:
    """Add ``distinct_name``: false for a class whose name collides with another's."""
    out = counts.copy()
    colliding = colliding_classes(out["label"].unique().tolist())
    out["distinct_name"] = ~out["label"].isin(list(colliding))
    return out


def add_required_column(counts: pd.DataFrame, config: ContractConfig) -> pd.DataFrame:
    """Add ``required``: the configured minimum images per class for each row's split."""
    out = counts.copy()
    out["required"] = out["split"].map(lambda s: config.min_images_per_class.get(s, 0))
    return out


def _manifest_rules(config: ContractConfig) -> list[tuple[str, str, Any]]:
    """(rule, description, expectation) on the manifest, one row per file."""
    import great_expectations.expectations as gxe

    modes = config.allowed_modes if config.mode_policy == "reject" else sorted(CONVERTIBLE_MODES)
    rules: list[tuple[str, str, Any]] = [
        ("file_name", "file and folder names are UTF-8 without control characters",
         gxe.ExpectColumnValuesToBeInSet(column="name_ok", value_set=[True])),
        ("inside_folder", "files stay inside the data folder (no outward symlinks)",
         gxe.ExpectColumnValuesToBeInSet(column="inside_root", value_set=[True])),
        ("max_bytes", f"files of at most {config.max_bytes} bytes",
         gxe.ExpectColumnValuesToBeBetween(column="bytes", max_value=config.max_bytes)),
        ("max_pixels", f"images of at most {config.max_pixels} pixels",
         gxe.ExpectColumnValuesToBeBetween(column="pixels", max_value=config.max_pixels)),
        ("decodable", "every file decodes as an image",
         gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True])),
        ("format", f"format in {list(config.formats)}",
         gxe.ExpectColumnValuesToBeInSet(column="format", value_set=list(config.formats))),
        ("min_width", f"width >= {config.min_width}",
         gxe.ExpectColumnValuesToBeBetween(column="width", min_value=config.min_width)),
        ("min_height", f"height >= {config.min_height}",
         gxe.ExpectColumnValuesToBeBetween(column="height", min_value=config.min_height)),
        ("channels", f"channels in {config.allowed_channels}",
         gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=config.allowed_channels)),
        ("color_mode", f"{config.mode_policy}: mode in {modes}",
         gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=modes)),
        ("split_folder", f"top folders are {list(SPLITS)} (or class folders only)",
         gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS))),
        ("class_folder", "every file sits in a class folder",
         gxe.ExpectColumnValuesToNotBeInSet(column="label", value_set=[""])),
        ("duplicate_in_split", "no identical images (sha256) within a split",
         gxe.ExpectCompoundColumnsToBeUnique(column_list=["split", "sha256"])),
        ("leakage", "no identical images (sha256) across splits",
         gxe.ExpectColumnValuesToBeBetween(column="splits_with_same_image", max_value=1)),
    ]  # fmt: skip
    if config.near_duplicate_distance is not None:
        rules.append(
            ("near_duplicate", "no near-identical images across splits (perceptual hashes at"
             f" most {config.near_duplicate_distance} bits apart)",
             gxe.ExpectColumnValuesToBeInSet(column="near_duplicate", value_set=[""]))
        )  # fmt: skip
    if config.classes is not None:
        rules.append(
            ("class_set", f"labels in {config.classes}",
             gxe.ExpectColumnValuesToBeInSet(column="label", value_set=config.classes))
        )  # fmt: skip
    return rules


def _count_rules(config: ContractConfig) -> list[tuple[str, str, Any]]:
    """(rule, description, expectation) on the class counts, one row per split and class."""
    import great_expectations.expectations as gxe

    ratio = config.max_imbalance
    rules: list[tuple[str, str, Any]] = [
        ("class_names", "class names stay distinct after sanitizing, Unicode normalization "
         "and case folding",
         gxe.ExpectColumnValuesToBeInSet(column="distinct_name", value_set=[True])),
        ("min_classes", f"at least {config.min_classes} classes",
         gxe.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=config.min_classes)),
        ("min_per_class", f"images per class and split >= {config.min_images_per_class}",
         gxe.ExpectColumnPairValuesAToBeGreaterThanB(
             column_A="count", column_B="required", or_equal=True)),
        ("label_balance", f"largest / smallest class within a split <= {ratio:g}",
         gxe.ExpectColumnValuesToBeBetween(column="balance", min_value=1.0 / ratio)),
    ]  # fmt: skip
    if config.classes is not None:
        rules.append(
            ("class_set", f"class folders are exactly {sorted(config.classes)}",
             gxe.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=config.classes))
        )  # fmt: skip
    return rules


def _offender(row: dict[str, Any], keys: list[str]) -> str:
    """A readable name for one unexpected row: its path (and why), or its split/class."""
    if "path" in row:
        if row.get("near_duplicate"):  # both files of the pair
            return f"{row['path']} ~ {row['near_duplicate']}"
        return f"{row['path']} ({row['error']})" if row.get("error") else str(row["path"])
    return "/".join(str(row.get(k, "")) for k in keys)


def _run_suite(
    context: Any,
    name: str,
    frame: pd.DataFrame,
    rules: list[tuple[str, str, Any]],
    index_columns: list[str],
) -> tuple[list[ExpectationResult], dict[str, Any]]:
    """Validate one dataframe with a named GX suite; return rule verdicts and the raw result."""
    import great_expectations as gx

    asset = context.data_sources.get("tlops").add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(f"{name}-all")
    suite = context.suites.add(gx.ExpectationSuite(name=f"tlops-{name}"))
    for rule, description, expectation in rules:
        expectation.meta = {"rule": rule, "description": description}
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch, suite=suite, name=f"tlops-{name}")
    )
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_columns},
    )
    verdicts = []
    for item in result.results:
        meta = item.expectation_config.meta or {}
        details = item.result or {}
        rows = details.get("unexpected_index_list") or []
        offenders = sorted({_offender(r, index_columns) for r in rows if isinstance(r, dict)})
        if "observed_value" in details:
            observed = str(details["observed_value"])
        else:
            observed = f"{details.get('unexpected_count', 0)} of {details.get('element_count', 0)}"
        if item.exception_info and item.exception_info.get("raised_exception"):
            observed = f"error: {item.exception_info.get('exception_message')}"
        verdicts.append(
            ExpectationResult(
                meta["rule"], meta["description"], bool(item.success), observed, offenders
            )
        )
    return verdicts, result.to_json_dict()


def run_contract(
    manifest: pd.DataFrame, counts: pd.DataFrame, config: ContractConfig
) -> ContractResult:
    """Run the contract on a manifest (with splits assigned) and its class counts."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.data_sources.add_pandas("tlops")
    files, pairs = add_near_duplicate_column(
        add_leakage_column(add_limit_columns(manifest, config)), config
    )
    file_rules, file_raw = _run_suite(
        context, "manifest", files, _manifest_rules(config), ["path", "error", "near_duplicate"]
    )
    count_rules, count_raw = _run_suite(
        context,
        "class-counts",
        add_required_column(add_distinct_name_column(counts), config),
        _count_rules(config),
        ["split", "label"],
    )
    rules = file_rules + count_rules
    return ContractResult(all(r.success for r in rules), rules, [file_raw, count_raw], pairs)


def render_markdown(result: ContractResult, title: str, facts: dict[str, str]) -> str:
    """A readable report: the verdict, every rule, and the offending files of failed rules."""
    verdict = "PASSED" if result.success else "FAILED"
    lines = [f"# {title}: {verdict}", ""]
    lines += [f"- **{one_line(k)}**: {one_line(v)}" for k, v in facts.items()]
    lines += ["", "| rule | expectation | observed | result |", "|---|---|---|---|"]
    for r in result.rules:
        mark = "pass" if r.success else "**FAIL**"
        lines.append(f"| {r.rule} | {md_cell(r.description)} | {md_cell(r.observed)} | {mark} |")
    for r in result.failed:
        lines += ["", f"## {r.rule}: {one_line(r.description)}", ""]
        lines += [f"- {md_code(name)}" for name in r.offenders[:200]]
        if len(r.offenders) > 200:
            lines.append(f"- ... and {len(r.offenders) - 200} more")
    return "\n".join(lines) + "\n"
