"""The validate flow: resolve data, build the manifest, run the data contract."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from tasks.data import resolve_data_task
from tasks.validate import build_manifest_task, check_contract_task
from tlops.config import RunConfig
from tlops.data.version import DataVersion
from tlops.errors import ContractFailedError
from tlops.jobs.validate import ValidationOutcome
from tlops.paths import run_dir


@flow(name="tlops-validate")
def validate_flow(config: RunConfig, data: DataVersion | None = None) -> ValidationOutcome:
    """Stages 1-3 of the train flow; raises :class:`ContractFailedError` on a failed contract.

    ``data``: the version already resolved by the caller (else resolved here).
    """
    out_dir = str(run_dir(str(flow_run.get_id() or "local")))
    version = data if data is not None else resolve_data_task(config.data)
    info = build_manifest_task(
        version, config.split, out_dir, config.contract, dict(config.data.split_names)
    )
    verdict = check_contract_task(info, config.contract, version, out_dir)
    if not verdict.success:
        raise ContractFailedError(f"{verdict.message} (report: {verdict.report_path})")
    return ValidationOutcome(data=version, manifest=info, verdict=verdict)
