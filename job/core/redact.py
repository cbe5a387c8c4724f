"""Credentials never reach a log line, an error message or a recorded artifact.

Every URL the job prints or records (data source, Pushgateway) goes through `redact_url`
first: a `user:password@` and every query value (tokens hide under any parameter name)
become `***`. Parsing never fails: what cannot be parsed is not echoed at all. `redact_values` applies it to
every URL inside a structure about to be recorded (a config, a trial's overrides).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"


def redact_url(url: str) -> str:
    """`url` safe to print: userinfo and query values masked, scheme, host, port and path kept."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return f"<unparseable URL, {len(url)} characters>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{'[' + host + ']' if ':' in host else host}{f':{port}' if port is not None else ''}"
    query = urlencode([(key, MASK) for key, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    if parts.query and not query:
        query = MASK
    return urlunsplit((parts.scheme, netloc, parts.path, query, MASK if parts.fragment else ""))


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def redact_values(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, scalars) with every string that holds a URL redacted, keys included."""
    if isinstance(value, dict):
        return {redact_values(k): redact_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_values(v) for v in value]
    if isinstance(value, str) and _URL.search(value):
        return redact_url(value) if _URL.match(value) else _URL.split(value, 1)[0] + MASK
    return value
