"""The train flow: validate (subflow), train, evaluate, track in MLflow, gate, register."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict

from flows.startup import training_ahead
from flows.validate import validate_flow
from tasks.data import recheck_data_task, resolve_data_task
from tasks.gate import gate_task, unchanged_task
from tasks.register import reconcile_task, register_task
from tasks.train import (
    evaluate_task,
    export_task,
    fail_tracking_task,
    record_task,
    start_tracking_task,
    train_task,
)
from tlops.adapters.tracking import shown_tracking_uri
from tlops.config import RunConfig
from tlops.decision.gate import Verdict
from tlops.jobs.context import RunContext
from tlops.jobs.export import ExportOutcome
from tlops.jobs.policy import PolicyOrigin
from tlops.jobs.register import PromotionResult
from tlops.jobs.train import EvalSummary, TrainSummary
from tlops.jobs.validate import ValidationOutcome
from tlops.paths import run_dir


class TrainOutcome(BaseModel):
    """What the train flow returns."""

    model_config = ConfigDict(frozen=True)

    validation: ValidationOutcome
    run_id: str
    model_uri: str
    trained: TrainSummary
    evaluated: EvalSummary
    exports: ExportOutcome = ExportOutcome()
    verdict: Verdict
    promotion: PromotionResult
    tracking_uri: str
    report_path: str
    reconciled: list[str] = []

    @property
    def exit_code(self) -> int:
        """4 when the gate rejected the candidate (design section 7), else 0."""
        return 4 if self.verdict.decision == "reject" else 0

    def summary(self) -> str:
        """A short Markdown summary for the console and CI."""
        t, m = self.trained, self.evaluated.metrics
        phases = ", ".join(
            f"{name} {best:.4f} ({t.phase_epochs[name]} epochs)"
            for name, best in t.phase_best.items()
            if best is not None
        )
        return "\n".join(
            [
                "### tlops train: done",
                f"- best validation per phase: {phases}; kept **{t.kept_phase}**",
                f"- test: accuracy {m['test_accuracy']:.4f}, macro F1 {m['test_macro_f1']:.4f},"
                f" latency {m['latency_ms_batch1']:.2f} ms/image (batch 1)",
                f"- data: md5 `{self.validation.data.md5}` rev `{self.validation.data.rev[:12]}`,"
                f" splits from {self.validation.manifest.split_source}",
                *([f"- {t.kept_margin}"] if t.kept_margin else []),
                f"- device: {t.device}; feature cache: {t.feature_cache}",
                *(f"- phase {name}: {path}" for name, path in t.phase_paths.items()),
                *(f"- note: {note}" for note in t.notes),
                *([f"- {t.label_review} (data/label_suspects/)"] if t.label_review else []),
                *(f"- export {line}" for line in self.exports.lines()),
                f"- MLflow run `{self.run_id}` at {self.tracking_uri}; model {self.model_uri}",
                f"- **{self.promotion.line()}**",
                *(f"- reconciled first: {a}" for a in self.reconciled + self.promotion.reconciled),
                "- look at it: `make ui` (the default store), then the experiment of this config's"
                " name: curves, confusion matrix, misclassified images under Artifacts",
                "",
                self.verdict.markdown(),
            ]
        )


class Unchanged(BaseModel):
    """What the train flow returns when nothing changed since the champion (no retraining)."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    champion_version: str
    data_md5: str
    exit_code: int = 0
    reconciled: list[str] = []

    def summary(self) -> str:
        """One Markdown paragraph for the console and CI."""
        return (
            f"### tlops train: nothing changed\n- {self.model_name}: same data (md5"
            f" `{self.data_md5}`), config and code as champion v{self.champion_version}:"
            " not retrained, nothing registered"
        ) + "".join(f"\n- reconciled first: {a}" for a in self.reconciled)


@flow(name="tlops-train")
def train_flow(
    config: RunConfig, trigger: str = "manual", force: bool = False,
    policy: PolicyOrigin | None = None,
) -> TrainOutcome | Unchanged:  # fmt: skip
    """Resolve and validate the data, train, evaluate, log everything to one MLflow run, gate
    and register.

    When the data md5, config and code match the champion's lineage the flow stops after
    resolving the data ("nothing changed"), unless ``force``. ``trigger`` (schedule, ci or
    manual) and where the gate / registry policy came from (``policy``, see
    :mod:`tlops.jobs.policy`; None: unknown) are tagged on the MLflow run, and so on its version.
    """
    flow_run_id = str(flow_run.get_id() or "local")
    run_dir(flow_run_id)  # the run's folder exists from the start
    reconciled = reconcile_task(config)
    resolved = None
    if not force:
        resolved = resolve_data_task(config.data)
        champion = unchanged_task(config, resolved)
        if champion is not None:
            return Unchanged(
                model_name=config.model_name, champion_version=champion.version,
                data_md5=resolved.md5, reconciled=reconciled,
            )  # fmt: skip
    training_ahead()  # the background imports go on to TensorFlow (flows/startup.py)
    validation = validate_flow(config, resolved)
    ctx = RunContext.of(config, validation, flow_run_id, policy, trigger)
    ctx = ctx.with_run(start_tracking_task(ctx))
    try:
        trained = train_task(ctx)
        evaluated = evaluate_task(ctx, trained)
        model_uri = record_task(ctx, trained, evaluated)
        exports = export_task(ctx, trained)
    except BaseException:
        fail_tracking_task(ctx.run_id)
        raise
    gate = gate_task(ctx, trained, evaluated, exports)
    recheck_data_task(config.data, validation.data)  # read in place: still the same data?
    promotion = register_task(ctx, gate, model_uri)
    return TrainOutcome(
        validation=validation,
        run_id=ctx.run_id,
        model_uri=model_uri,
        trained=trained,
        evaluated=evaluated,
        exports=exports,
        verdict=promotion.verdict,
        promotion=promotion,
        tracking_uri=shown_tracking_uri(),
        report_path=gate.report_path,
        reconciled=reconciled,
    )
