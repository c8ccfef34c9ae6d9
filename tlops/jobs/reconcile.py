"""Settle promotions that a crash or a failure left half done (design section 7b).

A promotion is a small state machine (see :func:`tlops.jobs.register.promote`): register the
version as ``pending`` -> tag the gate evidence -> ledger ``intent`` -> move the alias -> ledger
``confirmed`` -> version ``complete``. A process killed between two steps leaves one of a few
shapes behind, and :func:`reconcile` turns each into one consistent state, under the model's
promotion lock, first thing in every run of that model (and in ``tlops status``):

1. an unsettled ledger intent whose alias points at its version: the move happened, and the
   version's gate evidence was tagged before the intent, so the promotion is rolled forward
   (intent confirmed, version complete, ``previous`` alias moved);
   and a pending version of a stopped run that holds an alias whose last confirmed move went
   to it (killed just before its ``complete`` tag) is completed the same way;
2. an unsettled intent whose alias does not point at its version: the move never happened (or
   was undone); the intent is aborted;
3. a ``pending`` version without a standing intent, whose process is gone: aborted;
4. an alias held by a version that is not complete: restored to the version of the last
   confirmed move to a complete version (or removed when there is none);
5. an ``aborted`` version that holds no alias, and a version an older tlops registered but never
   promoted (no alias, no ledger entry): deleted, so every version is complete or gone;
6. the ``previous`` alias and the model's description follow the champion's last promotion.

A pending version of a process that still runs on this machine is left alone; one registered
on another machine is settled only after ``$TLOPS_RECONCILE_GRACE_S`` seconds (default 3600).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from tlops.adapters import registry
from tlops.adapters.registry import LedgerEntry, VersionInfo
from tlops.errors import TlopsError

GRACE_ENV = "TLOPS_RECONCILE_GRACE_S"

Describe = Callable[[VersionInfo], str]


class Reconciled(BaseModel):
    """What :func:`reconcile` found and did, one line per action."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    actions: list[str]

    def lines(self) -> list[str]:
        """``reconciled NAME: ...`` lines (none when everything was consistent)."""
        return [f"reconciled {self.model_name}: {a}" for a in self.actions]


def _grace_s() -> float:
    """How old a pending version of another machine must be before it is settled."""
    try:
        return float(os.environ.get(GRACE_ENV, "3600"))
    except ValueError:
        return 3600.0


def _abandoned(info: VersionInfo) -> bool:
    """Whether the process that registered a pending version is gone (or too long silent)."""
    alive = registry.owner_alive(info.tags.get(registry.OWNER_TAG, ""))
    if alive is not None:
        return not alive
    if info.created_ms:  # the server's clock, not the (maybe skewed) promoting client's
        started = info.created_ms / 1000
    else:
        try:
            started = float(info.tags.get(registry.STARTED_TAG, "0"))
        except ValueError:
            started = 0.0
    return time.time() - started > _grace_s()


def _settle_intents(
    name: str, entries: list[LedgerEntry], by_version: dict[str, VersionInfo],
    previous_alias: str, actions: list[str],
) -> None:  # fmt: skip
    """Steps 1-2: confirm the intents whose alias moved, abort the others."""
    for entry in entries:
        if entry.state != "intent":
            continue
        holder = registry.version_by_alias(name, entry.alias)
        info = by_version.get(entry.to_version)
        owner_gone = info is None or _abandoned(info)
        aborted = info is not None and registry.state_of(info) == "aborted"
        if holder is not None and holder.version == entry.to_version and info and not aborted:
            if not owner_gone and registry.state_of(info) == "pending":
                continue  # its process is still promoting it
            registry.write_ledger(name, entry.settle("confirmed", "confirmed by reconcile"))
            if registry.state_of(info) != "complete":
                registry.tag_version(name, info.version, {registry.STATE_TAG: "complete"})
                by_version[info.version] = info.model_copy(
                    update={"tags": {**info.tags, registry.STATE_TAG: "complete"}}
                )
            actions.append(
                f"@{entry.alias} had moved to v{entry.to_version} without its ledger"
                " confirmation: promotion completed"
            )
            before = entry.from_version
            if before and before in by_version and previous_alias and entry.alias != previous_alias:
                registry.move_alias(
                    name, previous_alias, before,
                    f"replaced by v{entry.to_version} (reconciled)", entry.flow_run_id, None,
                )  # fmt: skip
        elif owner_gone or aborted:
            registry.write_ledger(name, entry.settle("aborted", "not completed (reconcile)"))
            actions.append(
                f"@{entry.alias} -> v{entry.to_version}: intent aborted (never completed)"
            )


def _complete_confirmed(
    name: str, entries: list[LedgerEntry], by_version: dict[str, VersionInfo],
    previous_alias: str, actions: list[str],
) -> None:  # fmt: skip
    """Step 1 (its last step lost): a pending version of a stopped run that holds an alias whose
    last confirmed move went to it is completed."""
    for version, info in list(by_version.items()):
        if registry.state_of(info) != "pending" or not info.aliases or not _abandoned(info):
            continue
        for alias in info.aliases:
            moves = [e for e in entries if e.alias == alias and e.state == "confirmed"]
            if not moves or moves[-1].to_version != version:
                continue
            registry.tag_version(name, version, {registry.STATE_TAG: "complete"})
            by_version[version] = info.model_copy(
                update={"tags": {**info.tags, registry.STATE_TAG: "complete"}}
            )
            actions.append(f"v{version} held @{alias} by a confirmed move: promotion completed")
            before = moves[-1].from_version
            if before and before in by_version and previous_alias and alias != previous_alias:
                registry.move_alias(
                    name, previous_alias, before, f"replaced by v{version} (reconciled)",
                    moves[-1].flow_run_id, None,
                )  # fmt: skip
            break


def _abort_pending(
    name: str, entries: list[LedgerEntry], by_version: dict[str, VersionInfo],
    actions: list[str],
) -> None:  # fmt: skip
    """Step 3: pending versions with no open intent whose process is gone are aborted."""
    standing = {e.to_version for e in entries if e.state == "intent"}
    for version, info in list(by_version.items()):
        if registry.state_of(info) != "pending" or version in standing or not _abandoned(info):
            continue
        registry.tag_version(name, version, {registry.STATE_TAG: "aborted"})
        by_version[version] = info.model_copy(
            update={"tags": {**info.tags, registry.STATE_TAG: "aborted"}}
        )
        actions.append(f"v{version} was left pending by a stopped run: aborted")


def _restore_aliases(
    name: str, entries: list[LedgerEntry], by_version: dict[str, VersionInfo],
    actions: list[str],
) -> None:  # fmt: skip
    """Step 4: an alias on a version that is not complete goes back to its last good holder."""
    for info in list(by_version.values()):
        state = registry.state_of(info)
        if state is None or state == "complete" or not info.aliases:
            continue
        for alias in info.aliases:
            good = [
                e.to_version for e in entries
                if e.alias == alias and e.state == "confirmed" and e.to_version != info.version
                and e.to_version in by_version
                and registry.state_of(by_version[e.to_version]) in (None, "complete")
            ]  # fmt: skip
            target = good[-1] if good else None
            if state == "pending" and not _abandoned(info):
                break  # its process is still promoting it
            registry.set_alias(name, alias, target)
            where = f"v{target}" if target else "nowhere (no complete version held it)"
            actions.append(f"@{alias} was on v{info.version} ({state}): restored to {where}")
        else:
            by_version[info.version] = info.model_copy(update={"aliases": []})


def _still_deletable(name: str, version: str, state: str | None) -> bool:
    """Re-read just before deleting (MLflow's delete also drops any alias on the version): the
    version holds no alias, its state is unchanged and no entry other than an aborted one
    moves an alias to it."""
    fresh = {v.version: v for v in registry.versions(name)}.get(version)
    if fresh is None or fresh.aliases or registry.state_of(fresh) != state:
        return False
    return all(e.state == "aborted" for e in registry.ledger(name) if e.to_version == version)


def _delete_leftovers(
    name: str, entries: list[LedgerEntry], by_version: dict[str, VersionInfo],
    actions: list[str],
) -> None:  # fmt: skip
    """Step 5: aborted versions and never-promoted versions of older tlops are removed."""
    moved_to = {e.to_version for e in entries}
    for version, info in list(by_version.items()):
        if info.aliases:
            continue
        state = registry.state_of(info)
        legacy_orphan = (
            state is None and "tlops.fingerprint" in info.tags and version not in moved_to
        )
        if (state == "aborted" or legacy_orphan) and _still_deletable(name, version, state):
            registry.delete_version(name, version)
            del by_version[version]
            why = "aborted" if state == "aborted" else "registered but never promoted"
            actions.append(f"v{version} removed ({why})")


def _follow_champion(
    name: str, champion_alias: str, previous_alias: str, describe: Describe | None,
    actions: list[str],
) -> None:  # fmt: skip
    """Step 6: ``previous`` at the champion's predecessor; the description is its card."""
    champion = registry.version_by_alias(name, champion_alias)
    if champion is None:
        return
    moves = [
        e for e in registry.ledger(name)
        if e.alias == champion_alias and e.state == "confirmed" and e.to_version == champion.version
    ]  # fmt: skip
    before = moves[-1].from_version if moves else None
    if before and previous_alias:
        held = registry.version_by_alias(name, previous_alias)
        exists = any(v.version == before for v in registry.versions(name))
        if exists and (held is None or held.version != before):
            registry.move_alias(
                name, previous_alias, before, f"replaced as {champion_alias} by"
                f" v{champion.version} (reconciled)", moves[-1].flow_run_id, None,
            )  # fmt: skip
            actions.append(f"@{previous_alias} set to v{before}")
    if describe is not None:
        text = registry.description(name)
        if text is None:
            return
        if not text.startswith(f"## {name} v{champion.version}\n"):
            registry.set_description(name, describe(champion))
            actions.append(f"description set to the lineage card of v{champion.version}")


def reconcile_locked(
    name: str, champion_alias: str = "champion", previous_alias: str = "previous",
    describe: Describe | None = None,
) -> Reconciled:  # fmt: skip
    """Bring ``name``'s versions, aliases and ledger to one consistent state (lock held)."""
    by_version = {v.version: v for v in registry.versions(name)}
    actions: list[str] = []
    if not by_version:
        return Reconciled(model_name=name, actions=actions)
    entries = registry.ledger(name)
    _settle_intents(name, entries, by_version, previous_alias, actions)
    entries = registry.ledger(name)
    _complete_confirmed(name, entries, by_version, previous_alias, actions)
    _abort_pending(name, entries, by_version, actions)
    _restore_aliases(name, entries, by_version, actions)
    _delete_leftovers(name, entries, by_version, actions)
    _follow_champion(name, champion_alias, previous_alias, describe, actions)
    return Reconciled(model_name=name, actions=actions)


def reconcile(
    name: str, champion_alias: str = "champion", previous_alias: str = "previous",
    describe: Describe | None = None,
) -> Reconciled:  # fmt: skip
    """:func:`reconcile_locked` under the model's promotion lock."""
    with registry.promotion_lock(name):
        return reconcile_locked(name, champion_alias, previous_alias, describe)


def try_reconcile(name: str, champion_alias: str, previous_alias: str,
                  describe: Describe | None = None) -> Reconciled:  # fmt: skip
    """:func:`reconcile`, with a failure reported as an action instead of raised (status)."""
    try:
        return reconcile(name, champion_alias, previous_alias, describe)
    except TlopsError as exc:
        return Reconciled(model_name=name, actions=[f"could not reconcile: {exc}"])
