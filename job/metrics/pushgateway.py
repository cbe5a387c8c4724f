"""One push of a registry to a Pushgateway that leaks no credential and cannot hang the run.

- The URL is checked before any work: malformed, or carrying a `user:password@`, a query or a
  fragment, it is a config error. Credentials in the URL would be recorded in the run's
  config.yaml and the chart's ConfigMap, and urllib never sends them anyway; basic auth comes
  from a username and a password file (a mounted Kubernetes Secret) instead.
- Every grouping value goes base64-encoded into the path (Pushgateway >= 0.9), so no job name or
  run id (`/`, `..`, `%`, `?`, spaces) can change which group is replaced.
- A push takes at most its timeout however slowly the server answers; the response body is never
  read, redirects are not followed, and failures come back as one printable line.
"""

from __future__ import annotations

import base64
import re
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from job.core.credentials import PUSHGATEWAY_PASSWORD_FILE_ENV, PUSHGATEWAY_USERNAME_ENV, BasicAuth, basic_auth_from_env
from job.core.errors import ConfigError
from job.core.redact import redact_url

USERNAME_ENV, PASSWORD_FILE_ENV = PUSHGATEWAY_USERNAME_ENV, PUSHGATEWAY_PASSWORD_FILE_ENV
MAX_REASON_CHARS = 200


class PushFailed(Exception):
    """The push did not succeed; the message is one printable line without credentials."""


@dataclass(frozen=True)
class Pushgateway:
    """Where and as whom to push; build it with `Pushgateway.from_settings`."""

    url: str
    auth: BasicAuth | None = None

    @classmethod
    def from_settings(cls, url: str, env: Mapping[str, str]) -> Pushgateway:
        """Check `url` (metrics.pushgateway_url) and read the credentials `env` names; ConfigError if either is unusable."""
        _check_url(url)
        return cls(url, basic_auth_from_env(USERNAME_ENV, PASSWORD_FILE_ENV, env))

    @property
    def shown(self) -> str:
        """The URL as logs may print it."""
        return redact_url(self.url)

    def push(self, job: str, grouping_key: Mapping[str, str], registry: CollectorRegistry, timeout: float) -> None:
        """Replace the group (`job`, `grouping_key`) with `registry`'s metrics; PushFailed after at most `timeout` seconds."""
        path = "".join(f"/{key}@base64/{_b64(value)}" for key, value in [("job", job), *sorted(grouping_key.items())])
        request = urllib.request.Request(
            self.url.rstrip("/") + "/metrics" + path,
            data=generate_latest(registry),
            method="PUT",
            headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4},
        )
        if self.auth is not None:
            request.add_unredirected_header("Authorization", self.auth.header())
        failures: list[Exception] = []
        done = threading.Event()

        def send() -> None:
            try:
                with _OPENER.open(request, timeout=timeout):  # closing without reading: the body's size does not matter
                    pass
            except Exception as e:  # reported to the caller as PushFailed: a push never changes the run's result
                failures.append(e)
            done.set()

        threading.Thread(target=send, name="pushgateway-push", daemon=True).start()
        if not done.wait(timeout):  # a server that trickles its answer cannot hold the run
            raise PushFailed(f"no complete answer within {timeout:g}s")
        if failures:
            raise PushFailed(_reason(failures[0]))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect fails the push: it must not carry the outcome, or the credentials, elsewhere."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _check_url(url: str) -> None:
    shown = redact_url(url)
    if not re.fullmatch(r"[!-~]+", url):
        raise ConfigError(f"metrics.pushgateway_url {shown}: only printable ASCII without spaces (percent-encode the rest)")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number or out of range
    except ValueError as e:
        raise ConfigError(f"metrics.pushgateway_url {shown}: not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError(f"metrics.pushgateway_url {shown}: expected http(s)://host[:port][/path]")
    if "@" in parts.netloc:
        raise ConfigError(
            f"metrics.pushgateway_url {shown}: credentials in the URL are refused (they would be recorded in config.yaml "
            f"and never sent); set {USERNAME_ENV} and {PASSWORD_FILE_ENV} (a file holding the password) instead"
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError(
            f"metrics.pushgateway_url {shown}: a query or fragment cannot be part of the base URL (the push path is "
            f"appended to it); for basic auth set {USERNAME_ENV} and {PASSWORD_FILE_ENV}"
        )


def _b64(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def _reason(error: Exception) -> str:
    """One printable line: the status of an HTTP error, the cause of a connection error, else the exception."""
    if isinstance(error, HTTPError):
        text = f"HTTP {error.code} {error.reason}"
    elif isinstance(error, URLError):
        text = str(error.reason)
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."
