"""The run context: the values every stage of one training run shares, as one small value.

The train flow builds it once, after validating the data, and hands it to each task instead of
the same values positionally: the config, the data version and its manifest, the data
contract's report, the run's output folder, the Prefect flow run, what triggered it and where
its policy came from, and (once the MLflow run is open, :meth:`RunContext.with_run`) the
MLflow run id. A sweep gives each trial its own (:meth:`RunContext.for_trial`). It holds only
strings and small pydantic values, so Prefect can pass it to a task (and pickle it to a Dask
worker); tasks use ``cache_policy=NO_CACHE``, so it is never hashed as a cache key.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from tlops.config import RunConfig
from tlops.data.version import DataVersion
from tlops.jobs.policy import PolicyOrigin
from tlops.jobs.validate import ManifestInfo, ValidationOutcome
from tlops.paths import run_dir


class RunContext(BaseModel):
    """What the stages of one training run (or one sweep trial) share."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: RunConfig
    data: DataVersion
    manifest: ManifestInfo
    contract_report: str  # the data contract's report, logged with the run
    out_dir: str  # the run's files: model, plots, reports
    flow_run_id: str  # the Prefect flow run ("local" outside Prefect)
    policy: PolicyOrigin | None = None  # where the gate / registry policy came from
    trigger: str = "manual"  # schedule, ci or manual (the run's tlops.trigger tag)
    run_id: str = ""  # the MLflow run, once opened

    @classmethod
    def of(
        cls, config: RunConfig, validation: ValidationOutcome, flow_run_id: str,
        policy: PolicyOrigin | None = None, trigger: str = "manual",
    ) -> RunContext:  # fmt: skip
        """The context of a run of ``config`` on the data ``validation`` checked, writing into
        the flow run's folder (:func:`tlops.paths.run_dir`)."""
        return cls(
            config=config, data=validation.data, manifest=validation.manifest,
            contract_report=validation.verdict.report_path,
            out_dir=str(run_dir(flow_run_id)), flow_run_id=flow_run_id, policy=policy,
            trigger=trigger,
        )  # fmt: skip

    @property
    def out(self) -> Path:
        """The output folder as a path."""
        return Path(self.out_dir)

    def with_run(self, run_id: str) -> RunContext:
        """This context once its MLflow run is open."""
        return self.model_copy(update={"run_id": run_id})

    def for_trial(self, config: RunConfig, out_dir: str) -> RunContext:
        """The context of a sweep trial: same data and flow run, its own config and folder."""
        return self.model_copy(update={"config": config, "out_dir": out_dir, "run_id": ""})
