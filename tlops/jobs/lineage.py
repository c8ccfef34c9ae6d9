"""The lineage card of a model version (design section 4): what ``tlops lineage`` prints and
what a promoted version's description shows."""

from __future__ import annotations

from tlops.adapters import registry
from tlops.errors import TlopsError

#: Version tags of the exports (``export.onnx.uri``, ``export.onnx.parity``...), listed together.
EXPORT_PREFIX = "export."
#: Version tags that make up the lineage card, in the order it prints them.
CARD_SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("data.md5", "data.nfiles", "data.rev", "data.remote", "data.dirty", "data.manifest",
             "data.split"),
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
    exports = sorted(k for k in tags if k.startswith(EXPORT_PREFIX))
    if exports:
        lines += ["", "### exports"] + [f"- {k}: `{tags[k]}`" for k in exports]
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
