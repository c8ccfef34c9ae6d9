"""Stages 6 and 7: measure the champion on the candidate's test split, decide, register, promote.

The order of :func:`promote` is what keeps the registry consistent:

1. just before registering, re-read the champion alias; if another flow moved it since the
   candidate was judged, judge it again against the new champion;
2. register the version with its lineage as tags and description;
3. re-read the alias once more just before moving it (same re-judging); a failure anywhere
   between registering and moving the alias deletes the version: no version without a passed
   gate, no alias without a version;
4. move ``champion`` to the new version, then ``previous`` to the old champion, each move
   appended to the ledger (once ``champion`` moved, the promotion stands).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from tlops import registry
from tlops.config import RunConfig, dump_config
from tlops.dataversion import DataVersion
from tlops.errors import ConfigError, ServiceError, TlopsError
from tlops.gate import Evidence, Verdict, decide
from tlops.inputs import load_images, read_split
from tlops.validation import ManifestInfo

#: Version tags that make up the lineage card, in the order it prints them.
CARD_SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("data.md5", "data.nfiles", "data.rev", "data.remote", "data.dirty", "data.manifest"),
    "backbone": ("backbone", "backbone.weights", "backbone.weights_kind",
                 "backbone.weights_sha256", "backbone.model_version", "backbone.lineage"),
    "code": ("git.commit", "git.dirty", "git.diff_sha256", "lock.sha256"),
    "environment": ("device", "backend", "precision", "strategy", "version.tensorflow",
                    "version.keras", "version.cuda", "version.jax", "prefect.flow_run_id"),
    "results": ("kept_phase", "metric.test_accuracy", "metric.test_macro_f1",
                "metric.latency_ms_batch1", "metric.model_size_mb"),
    "gate": ("gate.decision", "gate.reason", "gate.champion_compared"),
}  # fmt: skip


class PromotionResult(BaseModel):
    """What stage 7 did."""

    model_config = ConfigDict(frozen=True)

    verdict: Verdict
    model_name: str
    version: str | None = None
    previous_version: str | None = None
    rejudged: int = 0

    def line(self) -> str:
        """One line for the summary."""
        if self.version:
            before = f" (previous: v{self.previous_version})" if self.previous_version else ""
            return f"promoted: {self.model_name} v{self.version} is champion{before}"
        return f"not promoted ({self.verdict.decision}): {self.verdict.reason}"


def change_fingerprint(cfg: RunConfig, data_md5: str, code: dict[str, str]) -> str:
    """Identity of what a retrain depends on: config (without ``evaluate``), data md5, code
    (git commit and uncommitted diff) and the lock file.

    It is known before anything is trained, so a scheduled run can skip a retrain whose
    fingerprint is the champion's. '' when the code state is unknown (no git): such a run is
    never "unchanged".
    """
    keys = ("git.commit", "git.diff_sha256", "lock.sha256")
    state = [code.get(k, "unknown") for k in keys]
    if "unknown" in state:
        return ""
    parts = cfg.model_dump(mode="json", exclude={"evaluate"})
    blob = json.dumps([parts, data_md5, *state], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def unchanged_champion(cfg: RunConfig, data_md5: str, project: Path) -> registry.VersionInfo | None:
    """The champion when it was trained on this very data, config and code, else None."""
    from tlops.lineage import code_state

    fingerprint = change_fingerprint(cfg, data_md5, code_state(project))
    if not fingerprint:
        return None
    champion = registry.version_by_alias(cfg.model_name, cfg.registry.champion_alias)
    if champion and champion.tags.get("tlops.fingerprint") == fingerprint:
        return champion
    return None


def candidate_evidence(
    metrics: dict[str, float], predictions_path: str, classes: list[str], fingerprint: str
) -> Evidence:
    """The candidate's evidence from its evaluation."""
    rows = json.loads(Path(predictions_path).read_text(encoding="utf-8"))
    correct = [row["true"] == row["predicted"] for row in rows]
    return Evidence(metrics=metrics, correct=correct, classes=classes, fingerprint=fingerprint)


def candidate_from_run(
    cfg: RunConfig, data: DataVersion, classes: list[str], metrics: dict[str, float],
    predictions_path: str, run_tags: dict[str, str],
) -> Evidence:  # fmt: skip
    """The candidate's evidence, its fingerprint from the config, data and the run's code."""
    fingerprint = change_fingerprint(cfg, data.md5, run_tags)
    return candidate_evidence(metrics, predictions_path, classes, fingerprint)


def measure_version(
    info: registry.VersionInfo, cfg: RunConfig, data: DataVersion, manifest: ManifestInfo
) -> Evidence:
    """Re-evaluate a registered version on the candidate's test split (same images, in order).

    Label sets that differ give evidence with no metrics: the change rules then refuse it.
    """
    import keras

    from tlops import evaluation as ev
    from tlops.model import probabilities
    from tlops.steps import _latency

    test = read_split(manifest.manifest_path, data.images_root, "test")
    fingerprint = info.tags.get("tlops.fingerprint", "")
    with tempfile.TemporaryDirectory() as tmp:
        keras_file, meta = registry.model_files(registry.download_classifier(info, Path(tmp)))
        classes = [str(c) for c in meta["classes"]]
        if classes != test.classes:
            return Evidence(metrics={}, correct=[], classes=classes, fingerprint=fingerprint,
                            version=info.version)  # fmt: skip
        model = keras.models.load_model(keras_file, safe_mode=True)
        images = load_images(test.paths, int(meta["image_size"]))
        probs = probabilities(np.asarray(model.predict(images, verbose=0)), bool(meta["binary"]))
        scalars = ev.compute_metrics(test.labels, probs, classes, cfg.evaluate.top_k).scalars()
        scalars.update(_latency(model, images, cfg.train.batch_size, cfg.evaluate.latency_repeats))
        scalars["model_size_mb"] = keras_file.stat().st_size / 1e6
    correct = (probs.argmax(axis=1) == test.labels).tolist()
    return Evidence(
        metrics=scalars, correct=correct, classes=classes, fingerprint=fingerprint,
        version=info.version,
    )  # fmt: skip


Judge = Callable[[registry.VersionInfo | None], Verdict]


def judge_against(
    cfg: RunConfig, data: DataVersion, manifest: ManifestInfo, candidate: Evidence
) -> Judge:
    """A function that decides the candidate against a given champion (or none)."""

    def judge(champion: registry.VersionInfo | None) -> Verdict:
        evidence = measure_version(champion, cfg, data, manifest) if champion else None
        return decide(cfg.gate, candidate, evidence)

    return judge


def lineage_tags(
    run_tags: dict[str, str], cfg: RunConfig, metrics: dict[str, float], verdict: Verdict,
    fingerprint: str,
) -> dict[str, str]:  # fmt: skip
    """The lineage record of design section 4, as version tags."""
    keep = {k: v for k, v in run_tags.items() if not k.startswith("mlflow.")}
    chosen = ("test_accuracy", "test_macro_f1", "latency_ms_batch1", "model_size_mb")
    return {
        **keep,
        **{f"metric.{k}": f"{metrics[k]:.6g}" for k in chosen if k in metrics},
        "gate.decision": verdict.decision,
        "gate.reason": verdict.reason,
        "gate.champion_compared": verdict.champion_version or "none",
        "gate.verdict": verdict.model_dump_json(),
        "config": dump_config(cfg),
        "tlops.fingerprint": fingerprint,
    }


def lineage_card(info: registry.VersionInfo, depth: int = 0) -> str:
    """The lineage card of a version, as Markdown (also its description).

    A backbone registered by ``pretrain`` brings its own card, so the chain reaches the
    backbone's data.
    """
    tags = info.tags
    lines = [f"## {info.name} v{info.version}", ""]
    if info.run_id:
        lines.append(f"- MLflow run: `{info.run_id}`")
    if info.aliases:
        lines.append(f"- aliases: {', '.join(info.aliases)}")
    for section, keys in CARD_SECTIONS.items():
        present = [(k, tags[k]) for k in keys if k in tags]
        if present:
            lines += ["", f"### {section}"] + [f"- {k}: `{v}`" for k, v in present]
    if "config" in tags:
        lines += ["", "### config", "```yaml", tags["config"].rstrip(), "```"]
    source = tags.get("backbone.model_version", "")
    if source.startswith("models:/") and depth < 3:
        lines += ["", f"### backbone lineage ({source})", ""]
        try:
            lines.append(lineage_card(registry.resolve(source), depth + 1))
        except TlopsError as exc:
            lines.append(f"(not available: {exc})")
    return "\n".join(lines)


def promote(
    cfg: RunConfig,
    run_id: str,
    model_uri: str,
    verdict: Verdict,
    judge: Judge,
    tags_for: Callable[[Verdict], dict[str, str]],
    flow_run_id: str,
    max_rejudge: int = 3,
) -> PromotionResult:
    """Register and promote a candidate whose gate passed (see the module docstring)."""
    name, alias = cfg.model_name, cfg.registry.champion_alias
    rejudged = 0

    def still_current(v: Verdict) -> tuple[Verdict, registry.VersionInfo | None]:
        nonlocal rejudged
        current = registry.version_by_alias(name, alias)
        while (current.version if current else None) != v.champion_version:
            if rejudged >= max_rejudge:
                raise ServiceError(f"{name}@{alias} keeps moving: gave up after {rejudged} checks")
            rejudged += 1
            v = judge(current)
            current = registry.version_by_alias(name, alias)
        return v, current

    with registry.promotion_lock(name):
        verdict, current = still_current(verdict)
        if not verdict.passed:
            return PromotionResult(verdict=verdict, model_name=name, rejudged=rejudged)
        info = registry.register(name, run_id, model_uri, tags_for(verdict), "")
        try:
            registry.fault("after_register")
            verdict, current = still_current(verdict)
            if not verdict.passed:
                registry.delete_version(name, info.version)
                return PromotionResult(verdict=verdict, model_name=name, rejudged=rejudged)
            gate_tags = {k: v for k, v in tags_for(verdict).items() if k.startswith("gate.")}
            registry.tag_version(name, info.version, gate_tags)
            registry.fault("before_alias")
            why = f"gate passed: {verdict.reason}"
            registry.move_alias(name, alias, info.version, why, flow_run_id, run_id)
        except BaseException:
            with contextlib.suppress(Exception):  # the original failure is what the user must see
                registry.delete_version(name, info.version)
            raise
        if current is not None:
            registry.move_alias(
                name, cfg.registry.previous_alias, current.version,
                f"replaced as {alias} by v{info.version}", flow_run_id, current.run_id,
            )  # fmt: skip
    promoted = registry.resolve(f"models:/{name}/{info.version}")
    registry.set_description(name, lineage_card(promoted))
    return PromotionResult(
        verdict=verdict, model_name=name, version=info.version,
        previous_version=current.version if current else None, rejudged=rejudged,
    )  # fmt: skip


REPRODUCED = ("test_accuracy", "test_macro_f1", "latency_ms_batch1", "model_size_mb")


def reproduction_config(info: registry.VersionInfo, tmp: Path) -> RunConfig:
    """A version's resolved config at its data revision, with the gate cleared."""
    from tlops.config import load_config

    if "config" not in info.tags or "data.rev" not in info.tags:
        raise ConfigError(f"{info.name} v{info.version}: no config / data.rev tags to reproduce")
    path = tmp / "config.yaml"
    path.write_text(info.tags["config"], encoding="utf-8")
    overrides = [
        f"data.rev={json.dumps(info.tags['data.rev'])}", "data.allow_dirty=false",
        "gate.values=[]", "gate.changes=[]", "gate.mcnemar_p=null", "gate.max_recall_drop=null",
    ]  # fmt: skip
    return load_config(path, overrides)


def reproduction_report(info: registry.VersionInfo, metrics: dict[str, float], run_id: str) -> str:
    """Markdown: the original version's metrics next to the rerun's."""
    lines = [
        f"### tlops reproduce: {info.name} v{info.version} (rerun: MLflow run `{run_id}`)",
        "",
        "| metric | original | rerun | difference |",
        "|---|---|---|---|",
    ]
    for name in REPRODUCED:
        old = info.tags.get(f"metric.{name}")
        new = metrics.get(name)
        if old is None or new is None:
            continue
        lines.append(f"| {name} | {float(old):.4f} | {new:.4f} | {new - float(old):+.4f} |")
    if info.tags.get("data.dirty") == "true" or info.tags.get("git.dirty") == "true":
        lines.append("\nnote: the original ran on a dirty tree; the rerun uses committed state")
    return "\n".join(lines)
