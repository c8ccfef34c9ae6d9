"""The image data contract: a clean dataset passes, each kind of bad input fails its own rule.

Every test builds a tiny split-folder dataset (``root/{train,val,test}/{a,b}/*.png``, distinct
random 20x20 images, enough per class for the default minimums), breaks it in one way, then
runs the two entry points ``build_manifest`` and ``check_contract`` and checks the verdict: the
exact rules that failed, and that the offending file (or split/class) is named in the one-line
message and in the Markdown report.

JPEG corruption: overwriting the entropy-coded data of a JPEG (zeros or random bytes, markers
and EOI kept) decodes *silently* in Pillow (libjpeg only warns and yields garbage pixels), so no
contract can see it. What reliably fails is cutting the file inside the entropy-coded data, after
the SOS header, before the EOI marker: Pillow raises "image file is truncated".
"""

from __future__ import annotations

import io
import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tlops.config import ContractConfig, SplitConfig
from tlops.data.manifest import _decode
from tlops.jobs.validate import ContractVerdict, ManifestInfo, build_manifest, check_contract
from tlops.safetext import metric_key

SIZE = 20
#: Images per class and split of the generated dataset: the default contract minimums.
PER_SPLIT = {"train": 5, "val": 1, "test": 1}
_SEEDS = itertools.count(1)


# --- generated images ------------------------------------------------------------------------


def image_bytes(mode: str = "RGB", fmt: str = "PNG", size: tuple[int, int] = (SIZE, SIZE)) -> bytes:
    """A random image in ``mode`` encoded as ``fmt``; every call gives a different image."""
    rng = np.random.default_rng(next(_SEEDS))
    width, height = size
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode == "RGBA":
        alpha = rng.integers(0, 256, (height, width, 1), dtype=np.uint8)
        img = Image.fromarray(np.concatenate([rgb, alpha], axis=2))
    else:
        img = Image.fromarray(rgb).convert(mode)
    assert img.mode == mode
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path``, creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_dataset(
    root: Path, classes: tuple[str, ...] = ("a", "b"), per_split: dict[str, int] | None = None
) -> Path:
    """A valid split-folder dataset ``root/<split>/<class>/img<i>.png`` of distinct images."""
    for split, n in (per_split or PER_SPLIT).items():
        for label in classes:
            for i in range(n):
                write(root / split / label / f"img{i}.png", image_bytes())
    return root


def corrupt_jpeg() -> bytes:
    """A JPEG cut inside its entropy-coded data: header and SOS intact, no EOI."""
    jpg = image_bytes(fmt="JPEG", size=(64, 64))
    sos = jpg.index(b"\xff\xda")
    scan_start = sos + 2 + int.from_bytes(jpg[sos + 2 : sos + 4], "big")
    return jpg[: scan_start + (len(jpg) - scan_start) // 2]


# --- running the contract --------------------------------------------------------------------


def run_contract(root: Path, out: Path, **contract: Any) -> tuple[ManifestInfo, ContractVerdict]:
    """build_manifest + check_contract with the default split config."""
    info = build_manifest(root, SplitConfig(), out)
    verdict = check_contract(info, ContractConfig(**contract), out, facts={"dataset": root.name})
    return info, verdict


def assert_reports_written(verdict: ContractVerdict) -> dict[str, Any]:
    """contract.md holds the markdown, contract.json the verdict; return the JSON."""
    report, as_json = Path(verdict.report_path), Path(verdict.json_path)
    assert report.name == "contract.md" and as_json.name == "contract.json"
    assert report.read_text(encoding="utf-8") == verdict.markdown
    data: dict[str, Any] = json.loads(as_json.read_text(encoding="utf-8"))
    assert data["success"] is verdict.success
    failed_in_json = {r["rule"] for r in data["rules"] if not r["success"]}
    assert failed_in_json == set(verdict.failed_rules)
    return data


def assert_passes(verdict: ContractVerdict) -> None:
    """The contract passed, with no failed rule, and says so in both reports."""
    assert verdict.success, verdict.message
    assert verdict.failed_rules == []
    assert verdict.message.startswith("data contract passed")
    assert verdict.markdown.startswith("# Image data contract: PASSED")
    assert_reports_written(verdict)


def assert_fails(verdict: ContractVerdict, rules: set[str], named: list[str]) -> dict[str, Any]:
    """Exactly ``rules`` failed; each of ``named`` is in the message and in the report."""
    assert not verdict.success
    assert set(verdict.failed_rules) == rules, verdict.message
    assert verdict.message.startswith("data contract failed")
    assert verdict.markdown.startswith("# Image data contract: FAILED")
    for rule in rules:
        assert f"{rule} (" in verdict.message
        assert f"## {rule}:" in verdict.markdown
    for name in named:
        assert name in verdict.message, (name, verdict.message)
        assert name in verdict.markdown, (name, verdict.markdown)
    return assert_reports_written(verdict)


def offenders(report: dict[str, Any], rule: str) -> list[str]:
    """Offending names of one failed rule from contract.json (path without the error)."""
    (result,) = [r for r in report["rules"] if r["rule"] == rule and not r["success"]]
    return [o.split(" (", 1)[0] for o in result["offenders"]]


# --- a clean dataset -------------------------------------------------------------------------


def test_clean_dataset_passes(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    info, verdict = run_contract(root, tmp_path / "out")
    assert_passes(verdict)
    assert info.split_source == "folders"
    assert info.classes == ["a", "b"]
    assert info.nfiles == 14
    assert info.per_split == {"train": 10, "val": 2, "test": 2}
    assert "| decodable |" in verdict.markdown and "**FAIL**" not in verdict.markdown


# --- files that do not decode ----------------------------------------------------------------


def test_the_jpeg_corruption_really_fails_in_pillow() -> None:
    data = corrupt_jpeg()
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG"  # still identified as a JPEG ...
        with pytest.raises(OSError, match="truncated"):
            img.load()  # ... but not decodable
    # overwriting the scan data instead is decoded without complaint: not a usable corruption
    jpg = image_bytes(fmt="JPEG", size=(64, 64))
    sos = jpg.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(jpg[sos + 2 : sos + 4], "big")
    middle = (start + len(jpg) - 2) // 2
    zeroed = jpg[:middle] + bytes(len(jpg) - 2 - middle) + jpg[-2:]
    assert _decode(zeroed)["decodable"] is True


@pytest.mark.parametrize(
    ("name", "data", "error"),
    [
        pytest.param("bad.jpg", corrupt_jpeg(), "image file is truncated", id="corrupt-jpeg"),
        pytest.param("cut.png", image_bytes()[:600], "cannot decode", id="truncated-png"),
        pytest.param("empty.png", b"", "empty file (0 bytes)", id="zero-bytes"),
        pytest.param(
            "notes.jpg", b"this is a text file\n", "not an image Pillow can identify", id="text"
        ),
    ],
)
def test_undecodable_file_fails_decodable(
    tmp_path: Path, name: str, data: bytes, error: str
) -> None:
    root = make_dataset(tmp_path / "data")
    write(root / "train" / "a" / name, data)
    _, verdict = run_contract(root, tmp_path / "out")
    report = assert_fails(verdict, {"decodable"}, [f"train/a/{name}", error])
    assert offenders(report, "decodable") == [f"train/a/{name}"]


# --- color modes and channels ----------------------------------------------------------------

#: Odd-mode images, each placed in the otherwise RGB dataset: mode -> (file name, format, channels)
ODD_MODES = {
    "L": ("gray.png", "PNG", 1),
    "RGBA": ("alpha.png", "PNG", 4),
    "P": ("palette.png", "PNG", 1),
    "I;16": ("deep.png", "PNG", 1),
    "CMYK": ("cmyk.jpg", "JPEG", 4),
}

#: Three configs, one dataset holding all odd modes: the verdicts are computed once per module.
MODE_CONFIGS: dict[str, dict[str, Any]] = {
    "convert": {},
    "reject": {"mode_policy": "reject", "allowed_modes": ["RGB"]},
    "channels": {"allowed_channels": [1, 3]},
}


@pytest.fixture(scope="module")
def mode_verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ContractVerdict]:
    """The verdicts of the three mode configs on one dataset with all the odd-mode images."""
    base = tmp_path_factory.mktemp("modes")
    root = make_dataset(base / "data")
    for mode, (name, fmt, _) in ODD_MODES.items():
        write(root / "train" / "a" / name, image_bytes(mode, fmt))
    info = build_manifest(root, SplitConfig(), base / "out")
    manifest = pd.read_parquet(info.manifest_path).set_index("path")
    for mode, (name, fmt, channels) in ODD_MODES.items():
        row = manifest.loc[f"train/a/{name}"]
        assert (row["mode"], row["format"], row["channels"]) == (mode, fmt, channels)
    return {
        key: check_contract(info, ContractConfig(**cfg), base / key, facts={})
        for key, cfg in MODE_CONFIGS.items()
    }


def test_odd_modes_pass_when_converted(mode_verdicts: dict[str, ContractVerdict]) -> None:
    assert_passes(mode_verdicts["convert"])


@pytest.mark.parametrize("mode", list(ODD_MODES))
def test_odd_mode_fails_color_mode_when_rejected(
    mode_verdicts: dict[str, ContractVerdict], mode: str
) -> None:
    name = f"train/a/{ODD_MODES[mode][0]}"
    report = assert_fails(mode_verdicts["reject"], {"color_mode"}, [name])
    # exactly the odd-mode files, none of the RGB ones
    expected = sorted(f"train/a/{n}" for n, _, _ in ODD_MODES.values())
    assert offenders(report, "color_mode") == expected


@pytest.mark.parametrize("mode", list(ODD_MODES))
def test_odd_mode_against_allowed_channels(
    mode_verdicts: dict[str, ContractVerdict], mode: str
) -> None:
    """With channels [1, 3] only the four-channel RGBA and CMYK images fail ``channels``."""
    name, _, channels = ODD_MODES[mode]
    verdict = mode_verdicts["channels"]
    report = assert_fails(verdict, {"channels"}, ["train/a/alpha.png", "train/a/cmyk.jpg"])
    assert (f"train/a/{name}" in offenders(report, "channels")) == (channels == 4)


# --- size, classes, splits -------------------------------------------------------------------


def test_too_small_image_fails_min_width_and_height(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    write(root / "val" / "b" / "tiny.png", image_bytes(size=(8, 8)))
    _, verdict = run_contract(root, tmp_path / "out", min_width=16, min_height=16)
    report = assert_fails(verdict, {"min_width", "min_height"}, ["val/b/tiny.png"])
    assert offenders(report, "min_width") == offenders(report, "min_height") == ["val/b/tiny.png"]


def test_empty_class_folder_fails_min_per_class(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    (root / "train" / "c").mkdir()
    info, verdict = run_contract(root, tmp_path / "out")
    assert info.classes == ["a", "b", "c"]
    counts = pd.read_parquet(info.counts_path)
    assert counts[counts["label"] == "c"]["count"].tolist() == [0, 0, 0]
    # zero images is also an unbounded imbalance, so label_balance fails with it
    report = assert_fails(verdict, {"min_per_class", "label_balance"}, ["train/c"])
    assert offenders(report, "min_per_class") == ["test/c", "train/c", "val/c"]


def test_split_with_only_empty_class_folders_fails_min_per_class(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", per_split={"train": 5, "test": 1})
    for label in ("a", "b"):
        (root / "val" / label).mkdir(parents=True)
    _, verdict = run_contract(root, tmp_path / "out")
    report = assert_fails(verdict, {"min_per_class", "label_balance"}, ["val/a", "val/b"])
    assert offenders(report, "min_per_class") == ["val/a", "val/b"]


def test_one_class_fails_min_classes(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", classes=("a",))
    _, verdict = run_contract(root, tmp_path / "out")
    assert_fails(verdict, {"min_classes"}, ["at least 2 classes"])


def test_unknown_split_folder_fails_split_folder(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    write(root / "training" / "a" / "x.png", image_bytes())
    _, verdict = run_contract(root, tmp_path / "out")
    report = assert_fails(verdict, {"split_folder"}, ["training/a/x.png"])
    assert offenders(report, "split_folder") == ["training/a/x.png"]


def test_file_outside_a_class_folder_fails_class_folder(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    write(root / "train" / "stray.png", image_bytes())
    _, verdict = run_contract(root, tmp_path / "out")
    report = assert_fails(verdict, {"class_folder"}, ["train/stray.png"])
    assert offenders(report, "class_folder") == ["train/stray.png"]


def test_configured_class_missing_fails_class_set(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    _, verdict = run_contract(root, tmp_path / "out", classes=["a", "b", "c"])
    assert_fails(verdict, {"class_set"}, ["['a', 'b', 'c']"])


def test_imbalance_fails_label_balance(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    for i in range(5, 11):  # train/a: 11 images, train/b: 5
        write(root / "train" / "a" / f"img{i}.png", image_bytes())
    _, verdict = run_contract(root, tmp_path / "out", max_imbalance=2.0)
    report = assert_fails(verdict, {"label_balance"}, ["train/b"])
    assert offenders(report, "label_balance") == ["train/b"]


# --- duplicates ------------------------------------------------------------------------------


def test_same_image_in_train_and_test_fails_leakage(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    write(root / "test" / "a" / "copy.png", (root / "train" / "a" / "img0.png").read_bytes())
    _, verdict = run_contract(root, tmp_path / "out")
    report = assert_fails(verdict, {"leakage"}, ["train/a/img0.png", "test/a/copy.png"])
    assert offenders(report, "leakage") == ["test/a/copy.png", "train/a/img0.png"]


def test_same_image_twice_in_train_fails_duplicate_in_split(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    write(root / "train" / "b" / "copy.png", (root / "train" / "a" / "img1.png").read_bytes())
    _, verdict = run_contract(root, tmp_path / "out")
    named = ["train/a/img1.png", "train/b/copy.png"]
    report = assert_fails(verdict, {"duplicate_in_split"}, named)
    assert offenders(report, "duplicate_in_split") == named


# --- paths -----------------------------------------------------------------------------------


def test_symlink_leaving_the_folder_fails_inside_folder(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    target = write(tmp_path / "elsewhere" / "secret.png", image_bytes())
    (root / "train" / "a" / "link.png").symlink_to(target)
    info, verdict = run_contract(root, tmp_path / "out")
    report = assert_fails(verdict, {"inside_folder"}, ["train/a/link.png"])
    assert offenders(report, "inside_folder") == ["train/a/link.png"]
    row = pd.read_parquet(info.manifest_path).set_index("path").loc["train/a/link.png"]
    assert bool(row["symlink"]) and not bool(row["inside_root"])
    # never read: no hash, no size, no decode
    assert pd.isna(row["sha256"]) and pd.isna(row["bytes"]) and pd.isna(row["format"])
    assert "outside the data folder" in row["error"]


def test_names_with_spaces_and_non_ascii_pass_and_keep_their_names(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    names = ["train/a/mon chat é 猫.png", "val/b/naïve  two spaces.png", "test/a/Ünïcödé 🐱.png"]
    for name in names:
        write(root / name, image_bytes())
    info, verdict = run_contract(root, tmp_path / "out")
    assert_passes(verdict)
    from_parquet = set(pd.read_parquet(info.manifest_path)["path"])
    from_csv = set(pd.read_csv(info.manifest_csv, encoding="utf-8")["path"])
    for name in names:
        assert name in from_parquet
        assert name in from_csv


# --- a dataset without split folders ---------------------------------------------------------


def make_flat_dataset(root: Path, per_class: int = 20) -> Path:
    """``root/<class>/img<i>.png`` for classes a and b: splits come from the sha256."""
    for label in ("a", "b"):
        for i in range(per_class):
            write(root / label / f"img{i:02d}.png", image_bytes())
    return root


def test_flat_layout_splits_are_deterministic_and_stratified(tmp_path: Path) -> None:
    root = make_flat_dataset(tmp_path / "data")
    first = build_manifest(root, SplitConfig(), tmp_path / "out1")
    second = build_manifest(root, SplitConfig(), tmp_path / "out2")
    assert first.split_source == second.split_source == "sha256"
    assert first.digest == second.digest
    assert Path(first.manifest_csv).read_bytes() == Path(second.manifest_csv).read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(first.manifest_path), pd.read_parquet(second.manifest_path)
    )
    manifest = pd.read_parquet(first.manifest_path)
    per_class = manifest.groupby(["label", "split"]).size().unstack(fill_value=0)
    assert per_class.to_dict("index") == {
        "a": {"train": 14, "val": 3, "test": 3},
        "b": {"train": 14, "val": 3, "test": 3},
    }
    verdict = check_contract(first, ContractConfig(), tmp_path / "out1", facts={})
    assert_passes(verdict)


def test_flat_layout_keeps_duplicates_in_one_split(tmp_path: Path) -> None:
    root = make_flat_dataset(tmp_path / "data")
    copies = {  # copy -> original, within a class and across classes
        "a/copy.png": "a/img03.png",
        "b/from_a.png": "a/img07.png",
        "b/again.png": "b/img11.png",
    }
    for copy, original in copies.items():
        write(root / copy, (root / original).read_bytes())
    info, verdict = run_contract(root, tmp_path / "out")
    assert info.split_source == "sha256"
    split = pd.read_parquet(info.manifest_path).set_index("path")["split"]
    for copy, original in copies.items():
        assert split[copy] == split[original] != ""
    # no leakage: each duplicate pair shares a split; the contract still names the pairs
    assert "leakage" not in verdict.failed_rules
    report = assert_fails(verdict, {"duplicate_in_split"}, list(copies))
    assert offenders(report, "duplicate_in_split") == sorted([*copies, *copies.values()])


# --- issue 10: names, size limits, decompression bombs, colliding class names ----------------


def run_limited(root: Path, out: Path, **contract: Any) -> tuple[ManifestInfo, ContractVerdict]:
    """build_manifest bounded by the contract (as the validate flow does) + check_contract."""
    config = ContractConfig(**contract)
    info = build_manifest(root, SplitConfig(), out, config)
    return info, check_contract(info, config, out, facts={"dataset": root.name})


def table_rows(markdown: str) -> list[str]:
    """The lines of the rule table: each must have exactly its five cell borders."""
    return [line for line in markdown.splitlines() if line.startswith("| ")]


def unescaped_pipes(line: str) -> int:
    """How many ``|`` in a Markdown line end a cell (not written as ``\\|``)."""
    return line.replace("\\|", "").count("|")


def test_non_utf8_file_name_fails_file_name_naming_it_escaped(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    write(root / "train" / "a" / os.fsdecode(b"bad\xff.png"), image_bytes())  # raw bytes name
    _, verdict = run_contract(root, tmp_path / "out")
    report = assert_fails(verdict, {"file_name"}, ["train/a/bad\\xff.png", "not valid UTF-8"])
    assert offenders(report, "file_name") == ["train/a/bad\\xff.png"]
    assert "\n" not in verdict.message
    verdict.message.encode("utf-8")  # valid UTF-8 everywhere: message, report, JSON
    Path(verdict.json_path).read_text(encoding="utf-8")


def test_newline_and_pipe_in_a_name_cannot_forge_report_rows(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    forged = "x\n| decodable | every file decodes | 0 of 1 | pass |\n.png"
    write(root / "val" / "b" / forged, image_bytes())
    _, verdict = run_contract(root, tmp_path / "out")
    escaped = "val/b/x\\n| decodable | every file decodes | 0 of 1 | pass |\\n.png"
    assert_fails(verdict, {"file_name"}, [escaped, "control characters"])
    assert "\n" not in verdict.message
    rows = table_rows(verdict.markdown)
    assert len(rows) == 2 + 18  # header, separator, one row per rule: nothing forged
    assert all(unescaped_pipes(row) == 5 for row in rows), rows


def test_symlink_loop_fails_decodable_naming_the_links(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    (root / "train" / "a" / "loop1.png").symlink_to("loop2.png")
    (root / "train" / "a" / "loop2.png").symlink_to("loop1.png")
    _, verdict = run_contract(root, tmp_path / "out")
    report = assert_fails(verdict, {"decodable"}, ["train/a/loop1.png", "symlink loop"])
    assert offenders(report, "decodable") == ["train/a/loop1.png", "train/a/loop2.png"]


def test_file_over_max_bytes_fails_max_bytes(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    big = image_bytes(size=(64, 64))
    write(root / "test" / "b" / "big.png", big)
    info, verdict = run_limited(root, tmp_path / "out", max_bytes=len(big) - 1)
    report = assert_fails(verdict, {"max_bytes"}, ["test/b/big.png", "over max_bytes"])
    assert offenders(report, "max_bytes") == ["test/b/big.png"]
    row = pd.read_parquet(info.manifest_path).set_index("path").loc["test/b/big.png"]
    assert pd.isna(row["sha256"])  # never read


def test_image_over_max_pixels_fails_max_pixels(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    write(root / "train" / "b" / "wide.png", image_bytes(size=(80, 20)))  # 1600 pixels
    _, verdict = run_limited(root, tmp_path / "out", max_pixels=1000)
    report = assert_fails(verdict, {"max_pixels"}, ["train/b/wide.png", "too many pixels"])
    assert offenders(report, "max_pixels") == ["train/b/wide.png"]


def test_manifest_scanned_with_looser_limits_still_fails_closed(tmp_path: Path) -> None:
    """Files the scan left unread for a limit the contract does not have: never a pass."""
    root = make_dataset(tmp_path / "data")
    big = image_bytes(size=(64, 64))
    write(root / "train" / "a" / "big.png", big)
    info = build_manifest(root, SplitConfig(), tmp_path / "out", ContractConfig(max_bytes=1000))
    verdict = check_contract(info, ContractConfig(), tmp_path / "out", facts={})
    assert_fails(verdict, {"decodable"}, ["train/a/big.png"])


def test_bomb_under_twice_pillows_limit_fails_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow decodes an image of 1x to 2x its pixel limit with a mere warning."""
    root = make_dataset(tmp_path / "data")
    write(root / "train" / "a" / "bomb.png", image_bytes(size=(40, 40)))  # 1600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 20x20 images stay under it
    _, verdict = run_contract(root, tmp_path / "out")
    report = assert_fails(verdict, {"decodable"}, ["train/a/bomb.png", "too many pixels"])
    assert offenders(report, "decodable") == ["train/a/bomb.png"]


def test_format_outside_the_contract_is_never_decoded(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    write(root / "train" / "a" / "doc.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 20\n")
    info, verdict = run_limited(root, tmp_path / "out", formats=["PNG"])
    assert_fails(verdict, {"decodable"}, ["train/a/doc.eps", "allowed formats: PNG"])
    row = pd.read_parquet(info.manifest_path).set_index("path").loc["train/a/doc.eps"]
    assert pd.isna(row["format"])  # Pillow's EPS plugin never saw it


NFC, NFD = "caf\u00e9", "cafe\u0301"


@pytest.mark.parametrize(
    "pair",
    [("Cat", "cat"), (NFC, NFD), ("\ufb01sh", "fish"), ("DOG", "dog")],
    ids=["case", "nfc-nfd", "nfkc-ligature", "upper"],
)
def test_colliding_class_names_fail_class_names(tmp_path: Path, pair: tuple[str, str]) -> None:
    root = make_dataset(tmp_path / "data", classes=pair)
    _, verdict = run_contract(root, tmp_path / "out")
    report = assert_fails(verdict, {"class_names"}, [f"train/{pair[0]}", f"train/{pair[1]}"])
    assert set(offenders(report, "class_names")) == {f"{s}/{c}" for s in PER_SPLIT for c in pair}


@pytest.mark.parametrize(
    "pair",
    [(NFC, "th\u00e9"), ("\u732b", "\u72d7"), ("\u043a\u043e\u0442", "\u043f\u0451\u0441"),
     ("cat:1", "cat_1")],
    ids=["latin-accents", "cjk", "cyrillic", "punctuation"],
)  # fmt: skip
def test_distinct_class_names_in_any_script_pass(tmp_path: Path, pair: tuple[str, str]) -> None:
    """Distinct names never share a metric key, whatever their script (a review found that
    non-Latin names all sanitized to underscores and failed the contract)."""
    root = make_dataset(tmp_path / "data", classes=pair)
    _, verdict = run_contract(root, tmp_path / "out")
    assert_passes(verdict)
    keys = {metric_key(name) for name in pair}
    assert len(keys) == 2
