"""Stages 6 and 7: measure the champion on the candidate's test split, decide, register, promote.

Promotion is a small state machine (design section 7b), safe at every step:

1. reconcile what an earlier run of this model left half done (:mod:`tlops.reconcile`);
2. just before registering, re-read the champion alias; if another flow moved it since the
   candidate was judged, judge it again against the new champion;
3. register the version, tagged ``tlops.state=pending`` with its owner (host:pid);
4. re-read the alias once more (same re-judging), then tag the gate evidence;
5. write the ledger ``intent`` (alias, from, to, why);
6. move the alias;
7. confirm the ledger entry;
8. tag the version ``complete``. Then, best effort (a failure is a warning, the promotion
   stands): ``previous`` to the old champion, the description to the new card.

A failure before step 6 deletes the version (no alias call was issued). A failure from step 6
on restores the old alias, aborts the ledger entry and marks the version ``aborted``: a version
is never deleted after its alias call was issued (the next reconcile removes it once no alias
holds it). A killed process leaves a state that the next run's reconcile settles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from tlops import registry
from tlops.config import RunConfig, config_sha256, dump_config
from tlops.dataversion import DataVersion
from tlops.errors import ConfigError, ServiceError, TlopsError
from tlops.gate import UNKNOWN_CODE, Evidence, Verdict, decide
from tlops.inputs import load_images, read_split
from tlops.reconcile import reconcile_locked
from tlops.validation import ManifestInfo

#: Version tags that make up the lineage card, in the order it prints them.
CARD_SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("data.md5", "data.nfiles", "data.rev", "data.remote", "data.dirty", "data.manifest"),
    "backbone": ("backbone", "backbone.weights", "backbone.weights_kind",
                 "backbone.weights_sha256", "backbone.model_version", "backbone.lineage"),
    "code": ("git.commit", "git.dirty", "git.diff_sha256", "lock.sha256", "code.sha256"),
    "environment": ("device", "backend", "precision", "strategy", "version.tensorflow",
                    "version.keras", "version.cuda", "version.jax", "prefect.flow_run_id"),
    "results": ("kept_phase", "metric.test_accuracy", "metric.test_macro_f1",
                "metric.latency_ms_batch1", "metric.model_size_mb"),
    "gate": ("gate.decision", "gate.reason", "gate.champion_compared", "tlops.state"),
    "policy": ("policy.source", "policy.overrides", "policy.file", "policy.sha256"),
}  # fmt: skip


class PromotionResult(BaseModel):
    """What stage 7 did."""

    model_config = ConfigDict(frozen=True)

    verdict: Verdict
    model_name: str
    version: str | None = None
    previous_version: str | None = None
    rejudged: int = 0
    warnings: list[str] = []
    reconciled: list[str] = []

    def line(self) -> str:
        """One line for the summary (warnings after it, separated by '; ')."""
        if self.version:
            before = f" (previous: v{self.previous_version})" if self.previous_version else ""
            text = f"promoted: {self.model_name} v{self.version} is champion{before}"
        else:
            text = f"not promoted ({self.verdict.decision}): {self.verdict.reason}"
        return "; ".join([text, *(f"warning: {w}" for w in self.warnings)])


def change_fingerprint(cfg: RunConfig, data_md5: str, code: dict[str, str]) -> str:
    """Identity of what a retrain depends on, as ``<inputs>.<code>``: inputs = the config
    (without ``evaluate``) and the data md5; code = the sha256 of the project's source files
    (``code.sha256``, known without git) and the lock file.

    It is known before anything is trained, so a scheduled run can skip a retrain whose
    fingerprint is the champion's. When the source hash is unknown the code part is
    ``unknown``: such a run is never "unchanged", and the gate never promotes it over a
    champion with the same inputs (:func:`tlops.gate.same_as_champion`).
    """
    parts = cfg.model_dump(mode="json", exclude={"evaluate"})
    blob = json.dumps([parts, data_md5], sort_keys=True, default=str)
    inputs = hashlib.sha256(blob.encode()).hexdigest()[:32]
    state = [code.get(k, UNKNOWN_CODE) for k in ("code.sha256", "lock.sha256")]
    if UNKNOWN_CODE in state:
        return f"{inputs}.{UNKNOWN_CODE}"
    return f"{inputs}.{hashlib.sha256(json.dumps(state).encode()).hexdigest()[:32]}"


def unchanged_champion(cfg: RunConfig, data_md5: str, project: Path) -> registry.VersionInfo | None:
    """The champion when it was trained on this very data, config and code, else None."""
    from tlops.lineage import code_state

    fingerprint = change_fingerprint(cfg, data_md5, code_state(project))
    if fingerprint.endswith(f".{UNKNOWN_CODE}"):  # unknown code: never "nothing changed"
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
        images = load_images(test.paths, int(meta["image_size"]), formats=test.formats)
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
        "config": dump_config(cfg),  # shown on the card; cut (marked) when long
        "config.sha256": config_sha256(cfg),  # of the run's config.yaml artifact (reproduce)
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


class _Step:
    """Where a promotion stands, for undoing it (see :func:`_undo`)."""

    def __init__(self) -> None:
        self.entry: registry.LedgerEntry | None = None
        self.alias_issued = False


def _undo(
    name: str, alias: str, version: str, champion: registry.VersionInfo | None, step: _Step,
    cause: BaseException,
) -> None:  # fmt: skip
    """Undo a failed promotion, each part best effort (the original failure is what the user
    sees; what cannot be undone now, the next reconcile settles)."""
    why = f"promotion failed: {str(cause)[:300]}"
    if not step.alias_issued:
        with contextlib.suppress(Exception):
            if step.entry is not None:
                registry.write_ledger(name, step.entry.settle("aborted", why))
        try:
            registry.delete_version(name, version)
        except Exception:
            with contextlib.suppress(Exception):
                registry.tag_version(name, version, {registry.STATE_TAG: "aborted"})
        return
    with contextlib.suppress(Exception):
        registry.set_alias(name, alias, champion.version if champion else None)
    with contextlib.suppress(Exception):
        registry.tag_version(name, version, {registry.STATE_TAG: "aborted"})
    with contextlib.suppress(Exception):
        if step.entry is not None:
            registry.write_ledger(name, step.entry.settle("aborted", why + "; alias restored"))


def _after_promotion(
    cfg: RunConfig, version: str, champion: registry.VersionInfo | None, flow_run_id: str,
) -> list[str]:  # fmt: skip
    """``previous`` to the replaced champion and the description to the new card; failures
    are warnings (the promotion already stands; the next reconcile retries both)."""
    name, warnings = cfg.model_name, []
    if champion is not None:
        try:
            registry.fault("previous_alias")
            registry.move_alias(
                name, cfg.registry.previous_alias, champion.version,
                f"replaced as {cfg.registry.champion_alias} by v{version}", flow_run_id,
                champion.run_id,
            )  # fmt: skip
        except TlopsError as exc:
            warnings.append(f"@{cfg.registry.previous_alias} not moved ({exc})")
    try:
        registry.fault("description")
        registry.set_description(name, lineage_card(registry.resolve(f"models:/{name}/{version}")))
    except TlopsError as exc:
        warnings.append(f"description not updated ({exc})")
    return warnings


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
    """Register and promote a candidate whose gate passed (the steps of the module docstring)."""
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

    def rejected(v: Verdict, fixed: list[str]) -> PromotionResult:
        return PromotionResult(verdict=v, model_name=name, rejudged=rejudged, reconciled=fixed)

    with registry.promotion_lock(name):
        fixed = reconcile_locked(name, alias, cfg.registry.previous_alias, lineage_card).actions
        verdict, current = still_current(verdict)
        if not verdict.passed:
            return rejected(verdict, fixed)
        pending = {
            registry.STATE_TAG: "pending", registry.OWNER_TAG: registry.owner(),
            registry.STARTED_TAG: f"{time.time():.0f}",
        }  # fmt: skip
        info = registry.register(name, run_id, model_uri, {**tags_for(verdict), **pending}, "")
        step = _Step()
        try:
            registry.fault("after_register")
            verdict, current = still_current(verdict)
            if not verdict.passed:
                registry.delete_version(name, info.version)
                return rejected(verdict, fixed)
            gate_tags = {k: v for k, v in tags_for(verdict).items() if k.startswith("gate.")}
            registry.tag_version(name, info.version, gate_tags)
            registry.fault("after_gate_tags")
            step.entry = registry.intend_move(
                name, alias, info.version, current.version if current else None,
                f"gate passed: {verdict.reason}", flow_run_id, run_id,
            )  # fmt: skip
            registry.fault("after_intent")
            step.alias_issued = True
            registry.set_alias(name, alias, info.version)
            registry.fault("after_alias")
            registry.write_ledger(name, step.entry.settle("confirmed"))
            registry.fault("after_ledger")
            registry.tag_version(name, info.version, {registry.STATE_TAG: "complete"})
            registry.fault("after_complete")
        except BaseException as exc:
            _undo(name, alias, info.version, current, step, exc)
            raise
        warnings = _after_promotion(cfg, info.version, current, flow_run_id)
    return PromotionResult(
        verdict=verdict, model_name=name, version=info.version,
        previous_version=current.version if current else None, rejudged=rejudged,
        warnings=warnings, reconciled=fixed,
    )  # fmt: skip


REPRODUCED = ("test_accuracy", "test_macro_f1", "latency_ms_batch1", "model_size_mb")


def reproduction_config(info: registry.VersionInfo, tmp: Path) -> RunConfig:
    """A version's resolved config at its data revision, with the gate cleared.

    The config is the run's full ``config.yaml`` artifact (never the ``config`` tag, which is
    cut when long), and its sha256 must be the version's ``config.sha256`` tag: a missing or
    different one is refused rather than reproducing something else.
    """
    from tlops.config import load_config
    from tlops.tracking import download_run_file

    who = f"{info.name} v{info.version}"
    expected = info.tags.get("config.sha256")
    if not info.run_id or not expected or "data.rev" not in info.tags:
        raise ConfigError(
            f"{who}: no run, config.sha256 or data.rev tag: its exact config cannot be verified,"
            " refusing to reproduce"
        )
    path = download_run_file(info.run_id, "config.yaml", tmp)
    if path is None:
        raise ConfigError(
            f"{who}: run {info.run_id} has no config.yaml artifact: refusing to reproduce"
        )
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != expected:
        raise ConfigError(
            f"{who}: config.yaml of run {info.run_id} has sha256 {found[:16]}..., the version's"
            f" config.sha256 tag says {expected[:16]}...: refusing to reproduce"
        )
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
