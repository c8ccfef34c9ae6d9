"""Names from the file system made safe to store and show.

A POSIX file name is any bytes but ``/`` and NUL: it may be invalid UTF-8 (Python hands the bad
bytes over as lone surrogates, which parquet, JSON and UTF-8 logs refuse), or hold newlines and
other control characters that split one-line messages and forge rows in Markdown reports.
:func:`name_problem` says what is wrong with a name, :func:`escape` turns any text into one
line of valid UTF-8 (reversibly: backslashes are escaped too), and :func:`md_cell` /
:func:`md_code` put text into Markdown without letting it end a table cell or a code span.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

#: Bidirectional controls: they reorder what a reader sees ("Trojan source").
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Unicode categories never allowed in a shown name: controls, lone surrogates, line breaks.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_BACKTICKS = re.compile(r"`+")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _undecodable(char: str) -> bool:
    """A byte that was not UTF-8, as ``os.fsdecode`` (surrogateescape) represents it."""
    return 0xDC80 <= ord(char) <= 0xDCFF


def _unsafe(char: str) -> bool:
    """A character that must not appear as is in a one-line message or a report."""
    return unicodedata.category(char) in _UNSAFE_CATEGORIES or char in _BIDI


def name_problem(name: str) -> str | None:
    """Why a file or folder name (as ``os.fsdecode`` gives it) is unsafe, or None when it is not."""
    if name.isascii() and name.isprintable():  # the common case, without a look at each char
        return None
    if any(_undecodable(c) for c in name):
        return "file name is not valid UTF-8"
    if any(_unsafe(c) for c in name):
        return "file name holds control characters (newline, tab, ...)"
    return None


def escape(text: str, *, backslashes: bool = True) -> str:
    """``text`` as one line of valid UTF-8: undecodable bytes as ``\\xNN``, controls escaped.

    With ``backslashes`` (the default) a backslash becomes ``\\\\``, so two different names never
    escape to the same text.
    """
    out: list[str] = []
    for char in text:
        code = ord(char)
        if char == "\\" and backslashes:
            out.append("\\\\")
        elif _undecodable(char):
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif _unsafe(char):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def one_line(text: object) -> str:
    """Any value as one line of valid UTF-8 for a message (backslashes kept as they are)."""
    return escape(str(text), backslashes=False)


def md_cell(text: object) -> str:
    """Text for a Markdown table cell: one line, and a ``|`` cannot end the cell."""
    return one_line(text).replace("|", "\\|")


def md_code(text: object) -> str:
    """Text as an inline Markdown code span that a backtick in it cannot close early."""
    shown = one_line(text)
    longest = max((len(run) for run in _BACKTICKS.findall(shown)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


_METRIC_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")  # characters MLflow refuses in a key


def metric_key(class_name: str) -> str:
    """A class name as it appears in metric keys, one-to-one: a name of only the characters
    MLflow allows in a metric name (ASCII letters, digits, ``_ - . /`` and space) stays as it
    is; any other name has each other character replaced by ``_`` and a short hash of the
    whole name appended, so distinct names never share a key (``猫`` and ``狗`` would both
    sanitize to ``_``).

    ``cat`` -> ``cat``, ``café`` -> ``caf__<8 hex>``, ``cat:1`` -> ``cat_1_<8 hex>``.
    """
    safe = _METRIC_NAME_UNSAFE.sub("_", class_name)
    if safe == class_name:
        return class_name
    digest = hashlib.sha256(class_name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe}_{digest}"


def class_metric(stat: str, class_name: str, prefix: str = "test_") -> str:
    """The one key of a per-class metric, e.g. ``class_metric("recall", "café")`` ->
    ``test_recall_caf_``.

    Used where the metrics are written (:meth:`Metrics.scalars`) and wherever they are read
    (the gate's per-class rules, the report), so writer and readers can never disagree.
    """
    return f"{prefix}{stat}_{metric_key(class_name)}"
