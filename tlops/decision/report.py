"""The run report for CI and the Prefect UI: candidate against champion, verdict, mistakes.

Plain Markdown built from what the gate already measured (both models on the same test
images, in the same order), so it costs nothing to write on every run.
"""

from __future__ import annotations

import json
from pathlib import Path

from tlops.decision.gate import Evidence, Verdict
from tlops.safetext import class_metric, md_cell, md_code

#: Where the train flow writes the report in its run folder (and logs it under ``gate/``).
REPORT_FILE = "report.md"
#: Overall metrics shown first, in this order, when present.
HEADLINE = (
    "test_accuracy", "test_macro_f1", "test_top_3_accuracy", "test_top_5_accuracy", "test_loss",
    "latency_ms_batch1", "model_size_mb",
)  # fmt: skip
#: At most this many newly misclassified images are listed.
MAX_LISTED = 25


def _num(value: float | None) -> str:
    """A metric for a table cell ('-' when missing)."""
    return "-" if value is None else f"{value:.4f}"


def _delta(new: float | None, old: float | None) -> str:
    """Signed difference, '-' when either side is missing."""
    return "-" if new is None or old is None else f"{new - old:+.4f}"


def metrics_table(candidate: Evidence, champion: Evidence | None) -> list[str]:
    """Headline metrics: candidate, champion and the change."""
    ref = champion.metrics if champion else {}
    label = f"champion v{champion.version}" if champion else "champion"
    lines = [f"| metric | candidate | {label} | change |", "|---|---|---|---|"]
    for name in HEADLINE:
        if name in candidate.metrics:
            new, old = candidate.metrics[name], ref.get(name)
            lines.append(f"| {name} | {_num(new)} | {_num(old)} | {_delta(new, old)} |")
    return lines


def per_class_table(candidate: Evidence, champion: Evidence | None) -> list[str]:
    """Recall and precision of every class, candidate against champion."""
    ref = champion.metrics if champion else {}
    lines = [
        "| class | recall | champion recall | change | precision | champion precision |",
        "|---|---|---|---|---|---|",
    ]
    for name in candidate.classes:
        recall_key, precision_key = class_metric("recall", name), class_metric("precision", name)
        rec, prec = candidate.metrics.get(recall_key), candidate.metrics.get(precision_key)
        old_rec, old_prec = ref.get(recall_key), ref.get(precision_key)
        lines.append(
            f"| {md_cell(name)} | {_num(rec)} | {_num(old_rec)} | {_delta(rec, old_rec)} |"
            f" {_num(prec)} | {_num(old_prec)} |"
        )
    return lines


def confusion_table(rows: list[dict[str, str]], classes: list[str]) -> list[str]:
    """The candidate's confusion matrix (rows: true class, columns: predicted)."""
    index = {c: i for i, c in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for row in rows:
        counts[index[row["true"]]][index[row["predicted"]]] += 1
    lines = ["| true \\ predicted | " + " | ".join(map(md_cell, classes)) + " |"]
    lines.append("|---" * (len(classes) + 1) + "|")
    for name, counted in zip(classes, counts, strict=True):
        cells = [f"**{n}**" if i == index[name] else str(n) for i, n in enumerate(counted)]
        lines.append(f"| {md_cell(name)} | " + " | ".join(cells) + " |")
    return lines


def newly_misclassified(
    rows: list[dict[str, str]], champion: Evidence | None
) -> list[dict[str, str]]:
    """Test images the champion got right and the candidate gets wrong (empty without one)."""
    if champion is None or len(champion.correct) != len(rows):
        return []
    return [
        row
        for row, was_right in zip(rows, champion.correct, strict=True)
        if was_right and row["true"] != row["predicted"]
    ]


def render(
    model_name: str, verdict: Verdict, candidate: Evidence, champion: Evidence | None,
    rows: list[dict[str, str]], run_id: str,
) -> str:  # fmt: skip
    """The whole report as Markdown.

    1. headline and the gate verdict (the failing rules named);
    2. metrics and per-class recall / precision against the champion;
    3. the candidate's confusion matrix;
    4. the images the champion classified right and the candidate now gets wrong.
    """
    against = f"champion v{champion.version}" if champion else "no champion yet"
    lines = [f"## tlops: {model_name} candidate (MLflow run `{run_id}`) vs {against}", ""]
    lines += [verdict.markdown(), ""]
    failed = verdict.failed_rules
    if failed:
        lines += [f"**failing rule:** {r.rule}: observed {r.observed}, needs {r.threshold}"
                  + (f" ({r.reason})" if r.reason else "") for r in failed]  # fmt: skip
        lines.append("")
    lines += ["### metrics", "", *metrics_table(candidate, champion), ""]
    lines += ["### per class", "", *per_class_table(candidate, champion), ""]
    if rows:
        lines += ["### confusion matrix (candidate)", "", *confusion_table(rows, candidate.classes)]
        lines.append("")
    if champion is not None:
        worse = newly_misclassified(rows, champion)
        lines.append(f"### newly misclassified: {len(worse)} (right by the champion)")
        if worse:
            lines += ["", "| image | true | predicted |", "|---|---|---|"]
            lines += [f"| {md_cell(md_code(r['path']))} | {md_cell(r['true'])} |"
                      f" {md_cell(r['predicted'])} |" for r in worse[:MAX_LISTED]]  # fmt: skip
            if len(worse) > MAX_LISTED:
                lines.append(f"\n... and {len(worse) - MAX_LISTED} more")
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    path: Path, model_name: str, verdict: Verdict, candidate: Evidence,
    champion: Evidence | None, predictions_path: str, run_id: str,
) -> Path:  # fmt: skip
    """Render the report from the candidate's predictions file and write it to ``path``."""
    rows = json.loads(Path(predictions_path).read_text(encoding="utf-8"))
    path.write_text(render(model_name, verdict, candidate, champion, rows, run_id), "utf-8")
    return path
