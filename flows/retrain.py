"""The retrain flow: what a deployment runs on a schedule (or by hand through Prefect).

It takes the config *file* (relative to the deployment's working directory, the repository),
not its values, so a scheduled run always trains what the repository says today: the YAML,
``data.dvc`` and the code it finds there. The train flow then decides whether anything changed
since the champion.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.train import TrainOutcome, Unchanged, train_flow
from tlops.errors import GateRejectedError
from tlops.jobs.policy import load_deployed_config

#: Prefect's scheduler tags the flow runs it creates with this.
AUTO_SCHEDULED = "auto-scheduled"


def run_trigger(requested: str | None) -> str:
    """``requested`` if given, else ``schedule`` for a run the scheduler made, else ``manual``."""
    if requested:
        return requested
    return "schedule" if AUTO_SCHEDULED in flow_run.get_tags() else "manual"


@flow(name="tlops-retrain")
def retrain_flow(
    config_path: str, overrides: list[str] | None = None, trigger: str | None = None
) -> TrainOutcome | Unchanged:
    """Load ``config_path`` (plus ``--set``-style ``overrides``) and run the train flow.

    Anyone who can reach the Prefect API can set these parameters, so ``overrides`` may not
    touch the gate / registry policy and ``config_path`` must stay in the project: either
    fails the flow run with a :class:`~tlops.errors.ConfigError` naming the key, before
    anything runs (:func:`tlops.jobs.policy.load_deployed_config`). A rejected candidate or failed
    stage fails this flow run, so the Prefect UI and its notifications show it; "nothing
    changed" and a promotion complete it.
    """
    config, policy = load_deployed_config(config_path, list(overrides or []))
    outcome = train_flow(config, trigger=run_trigger(trigger), policy=policy)
    if isinstance(outcome, TrainOutcome) and outcome.exit_code:
        raise GateRejectedError(f"{config.model_name}: {outcome.promotion.line()}")
    return outcome
