"""Credentials never reach a log line, an error message or a recorded artifact.

Every URL the job prints or records (data source, Pushgateway) goes through `redact_url`
first: a `user:password@` and every query value (tokens hide under any parameter name)
become `***`. Parsing never fails: what cannot be parsed is not echoed at all.
"""

from __future__ import annotations

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
