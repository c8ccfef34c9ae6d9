"""Credentials out of what is shown or stored: URLs with passwords, tokens, signed queries.

A tracking URI or DVC remote URL may carry ``user:token@`` or a signed query string
(``X-Amz-Signature=...``, ``sig=...``, ``token=...``). What tlops prints, logs, writes to
reports or stores as tags goes through :func:`redact_url` / :func:`redact_text`; the URI used
to connect is never redacted.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "***"

#: Query parameter names that are secrets themselves (compared lower-cased).
SECRET_PARAMS = frozenset(
    {"sig", "signature", "token", "key", "apikey", "api_key", "code", "password", "pass", "pwd",
     "secret", "credential", "credentials", "auth", "authorization", "session"}
)  # fmt: skip
#: Parts of a parameter name that make it a secret (``X-Amz-Security-Token``, ...).
SECRET_PARTS = ("signature", "token", "credential", "password", "secret", "apikey", "api_key")

#: A URL in free text; trailing punctuation (``.``, ``,``, ``:``) is not part of it.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`|)\]]*[^\s'\"<>`|)\].,;:!?]")
_PARAM = re.compile(r"([?&])([A-Za-z][A-Za-z0-9_.-]*)=([^&#\s'\"<>`|)\]]*[^&#\s'\"<>`|)\].,;:!?])")


def _secret_param(name: str) -> bool:
    """Whether a query parameter's value must not be shown."""
    lowered = name.lower()
    return lowered in SECRET_PARAMS or any(part in lowered for part in SECRET_PARTS)


def redact_url(url: str) -> str:
    """``url`` without credentials: ``user:***@``, ``***@`` for a bare token, secret query
    values as ``***``. Anything that is not a URL (a path, ``sqlite:///...``) is unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password and user else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret_param(k) for k, _ in pairs):
            query = "&".join(
                f"{quote(k, safe='-_.~')}={MASK if _secret_param(k) else quote(v, safe='-_.~/:')}"
                for k, v in pairs
            )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _query_param(match: re.Match[str]) -> str:
    """A ``?name=value`` / ``&name=value`` pair of free text, its value masked if secret."""
    lead, name, value = match.groups()
    return f"{lead}{name}={MASK if _secret_param(name) else value}"


def redact_text(text: str) -> str:
    """Every URL inside ``text`` (an error message, a log line) passed through
    :func:`redact_url`, and secret query parameters outside whole URLs (a client library's
    message quoting only a path and query) masked."""
    return _PARAM.sub(_query_param, _URL.sub(lambda match: redact_url(match.group(0)), text))
