"""The CI / Prefect report: candidate vs champion, verdict, confusion matrix, new mistakes."""

from __future__ import annotations

from pathlib import Path

from tlops.config import GateConfig
from tlops.decision.gate import Evidence, decide
from tlops.decision.report import newly_misclassified, render, write_report
from tlops.safetext import class_metric

CLASSES = ["cat", "dog"]
ROWS = [
    {"path": "test/cat/a.png", "true": "cat", "predicted": "cat"},
    {"path": "test/cat/b.png", "true": "cat", "predicted": "dog"},
    {"path": "test/dog/c.png", "true": "dog", "predicted": "dog"},
    {"path": "test/dog/d.png", "true": "dog", "predicted": "cat"},
]


def evidence(acc: float, correct: list[bool], version: str | None = None) -> Evidence:
    per_class = {f"test_{m}_{c}": 0.5 for m in ("recall", "precision") for c in CLASSES}
    metrics = {"test_accuracy": acc, "test_macro_f1": acc, **per_class}
    return Evidence(metrics=metrics, correct=correct, classes=CLASSES, version=version)


def test_report_against_a_champion_names_the_failing_rule_and_new_mistakes() -> None:
    candidate = evidence(0.5, [r["true"] == r["predicted"] for r in ROWS])
    champion = evidence(0.75, [True, True, True, False], version="3")
    gate = GateConfig.model_validate({"changes": [{"metric": "test_accuracy", "min_delta": 0}]})
    verdict = decide(gate, candidate, champion)
    text = render("pets", verdict, candidate, champion, ROWS, "run123")
    assert "## tlops: pets candidate (MLflow run `run123`) vs champion v3" in text
    assert "**gate: reject**" in text
    assert "**failing rule:** test_accuracy vs champion" in text
    assert "| test_accuracy | 0.5000 | 0.7500 | -0.2500 |" in text
    assert "| cat | 0.5000 | 0.5000 | +0.0000 | 0.5000 | 0.5000 |" in text
    # confusion matrix: rows are the true class, the diagonal in bold
    assert "| cat | **1** | 1 |" in text and "| dog | 1 | **1** |" in text
    # b.png was right for the champion and is wrong now; d.png was already wrong
    assert "### newly misclassified: 1 (right by the champion)" in text
    assert "| `test/cat/b.png` | cat | dog |" in text and "d.png" not in text


def test_report_without_champion_skips_comparisons(tmp_path: Path) -> None:
    import json

    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(ROWS))
    candidate = evidence(0.5, [r["true"] == r["predicted"] for r in ROWS])
    gate = GateConfig.model_validate({"values": [{"metric": "test_accuracy", "min": 0.4}]})
    verdict = decide(gate, candidate, None)
    path = write_report(tmp_path / "r.md", "pets", verdict, candidate, None, str(predictions), "r1")
    text = path.read_text()
    assert "vs no champion yet" in text and "**gate: promote**" in text
    assert "| test_accuracy | 0.5000 | - | - |" in text
    assert "newly misclassified" not in text
    assert newly_misclassified(ROWS, None) == []


def test_pipes_and_newlines_in_names_cannot_forge_table_rows() -> None:
    """Class names and paths are cell text: a ``|`` is escaped, a newline never ends a row."""
    classes = ["c|d", "x"]
    rows = [
        {"path": "test/c|d/a.png", "true": "c|d", "predicted": "c|d"},
        {"path": "test/c|d/b\n| forged | row |.png", "true": "c|d", "predicted": "x"},
        {"path": "test/x/`c`.png", "true": "x", "predicted": "x"},
    ]
    per_class = {class_metric(m, c): 0.5 for m in ("recall", "precision") for c in classes}
    metrics = {"test_accuracy": 0.6, **per_class}
    candidate = Evidence(metrics=metrics, correct=[True, False, True], classes=classes)
    champion = Evidence(metrics=metrics, correct=[True, True, True], classes=classes, version="1")
    verdict = decide(GateConfig(), candidate, champion)
    text = render("pets", verdict, candidate, champion, rows, "r1")
    assert "\n| forged" not in text
    sections = text.split("### ")
    expected = {"per class": 7, "confusion matrix": 4, "newly misclassified": 4}
    for section in sections:
        for title, pipes in expected.items():
            if section.startswith(title):
                table = [line for line in section.splitlines() if line.startswith("|")]
                assert table and all(
                    line.replace("\\|", "").count("|") == pipes for line in table
                ), table
    assert "| c\\|d | 0.5000 |" in text
