"""What a retrain depends on, part by part: which of data, config, code and lock file changed
between two runs (or versions), from their tags.

The no-op fingerprint (``tlops.fingerprint``, :func:`tlops.jobs.gate.change_fingerprint`) says
*whether* anything changed; its parts, recorded beside it as ``fingerprint.<part>`` tags (short
hashes), say *what*. Versions recorded before the parts existed still tell three of them from
their lineage tags (``data.md5``, ``code.sha256``, ``lock.sha256``); their config part is
unknown.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

#: The parts of the fingerprint, in the order they are named.
PARTS = ("data", "config", "code", "lock")
#: Tag prefix of a part: ``fingerprint.data`` and so on.
PART_PREFIX = "fingerprint."
#: How many hex digits of a hash a part tag keeps.
SHORT = 12
#: Lineage tags of older versions that hold the same hash as a part (there is none for config:
#: ``config.sha256`` hashes the whole config, the fingerprint's config part leaves out
#: ``evaluate``).
FALLBACK_TAGS = {"data": "data.md5", "code": "code.sha256", "lock": "lock.sha256"}
#: Values that say nothing (a part that cannot be compared); ``none`` (no lock file) is a value.
NOT_A_HASH = frozenset({"", "unknown"})


def short(value: str) -> str:
    """A hash as a part tag keeps it (its first :data:`SHORT` characters); ``unknown`` stays."""
    return value if value in NOT_A_HASH else value[:SHORT]


def part_tags(parts: Mapping[str, str]) -> dict[str, str]:
    """``{"data": h, ...}`` as the tags ``{"fingerprint.data": h, ...}`` (short hashes)."""
    return {f"{PART_PREFIX}{name}": short(parts[name]) for name in PARTS if name in parts}


def parts_of(tags: Mapping[str, str]) -> dict[str, str]:
    """The fingerprint parts recorded in a run's or version's tags: the ``fingerprint.*`` tags,
    else (older records) the lineage tags of :data:`FALLBACK_TAGS`; a part with no known hash
    is left out."""
    found = {}
    for name in PARTS:
        value = tags.get(f"{PART_PREFIX}{name}") or tags.get(FALLBACK_TAGS.get(name, ""), "")
        if value not in NOT_A_HASH:
            found[name] = short(value)
    return found


class PartsChange(BaseModel):
    """Which parts differ between a retrain and the champion it is compared with, and which
    cannot be told (not recorded on one side)."""

    model_config = ConfigDict(frozen=True)

    changed: list[str]
    unknown: list[str] = []

    def describe(self, noop: bool = False) -> str:
        """``data, config``, ``nothing: a no-op``, ``nothing`` (a retrain that was forced), with
        ``; not recorded: config`` for the parts that cannot be compared."""
        if self.changed:
            text = ", ".join(self.changed)
        else:
            text = "nothing: a no-op" if noop else "nothing"
        return text + (f"; not recorded: {', '.join(self.unknown)}" if self.unknown else "")


def compare_parts(retrain: Mapping[str, str], champion: Mapping[str, str]) -> PartsChange:
    """Which fingerprint parts (:func:`parts_of`) differ between the tags of a retrain and of
    the champion, in :data:`PARTS` order; a part missing on either side is unknown."""
    mine, theirs = parts_of(retrain), parts_of(champion)
    changed = [p for p in PARTS if p in mine and p in theirs and mine[p] != theirs[p]]
    unknown = [p for p in PARTS if p not in mine or p not in theirs]
    return PartsChange(changed=changed, unknown=unknown)
