"""Download an archive once into the cache, keeping it only when it verifies.

The cache entry is `cache_dir/<sha256 of URL and checksum>/<file name>`, so two URLs with the
same file name, or one URL checked against different checksums, never share content. A
download goes to a temporary file that the caller's `verify` must accept (checksum and a full
read of the archive) before it is renamed into place; a cached file that no longer verifies is
dropped and fetched again. Only http(s) is spoken, redirects included (at most
`MAX_REDIRECTS`); every read has a timeout and the whole download a deadline, enforced by
shutting the socket down, so a server that drips bytes cannot hold the job. URLs appear in
logs and messages only through `redact_url`. Credentials never come from the URL (the config
refuses them there) but from job/core/credentials.py, and go as HTTP Basic auth to the first host
only, never across a redirect.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import logging
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

from job.core.atomic import atomic_path
from job.core.credentials import BasicAuth
from job.core.errors import DataError
from job.core.redact import redact_url

log = logging.getLogger(__name__)

DOWNLOAD_DEADLINE_S = 30 * 60
READ_TIMEOUT_S = 60
MAX_REDIRECTS = 5
DEFAULT_FILE_NAME = "archive.tar.gz"
_CHUNK = 1 << 16
_SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

T = TypeVar("T")


def is_url(source: str) -> bool:
    """Whether `source` names a URL (any scheme) rather than a local path."""
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", source) is not None


def cached_download(
    url: str, checksum: str | None, cache_dir: Path, max_bytes: int, verify: Callable[[Path, str], T], auth: BasicAuth | None = None
) -> T:
    """`verify(path, shown_url)` of the cached copy of `url`, downloading it first if needed (as `auth`, when given)."""
    shown = redact_url(url)
    if not _is_http(url):
        raise DataError(f"data {shown}: only well-formed http:// and https:// URLs with a host are supported")
    target = cache_dir / hashlib.sha256(f"{url}\n{checksum or ''}".encode()).hexdigest() / _file_name(url)
    if target.is_file():
        try:
            result = verify(target, shown)
        except DataError as e:
            log.warning("cached copy %s no longer verifies, downloading again: %s", target, e)
            target.unlink(missing_ok=True)
        else:
            log.info("using cached %s for %s", target, shown)
            return result
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"data cache {cache_dir}: cannot create ({e.strerror})") from None
    log.info("downloading %s to %s", shown, target)
    try:
        with atomic_path(target) as tmp:
            _fetch(url, shown, tmp, max_bytes, auth)
            return verify(tmp, shown)
    finally:
        if not target.exists():  # failed or interrupted: leave no empty entry behind
            with contextlib.suppress(OSError):
                target.parent.rmdir()


def _is_http(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # bad IPv6 literal, port out of range
        return False


def _file_name(url: str) -> str:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return name if _SAFE_FILE_NAME.fullmatch(name) else DEFAULT_FILE_NAME


def _fetch(url: str, shown: str, out_path: Path, max_bytes: int, auth: BasicAuth | None) -> None:
    """Write the body of `url` to `out_path`: complete, at most `max_bytes`, within the deadline."""
    with _Deadline(DOWNLOAD_DEADLINE_S) as deadline:
        try:
            with _opener(deadline, shown).open(_request(url, auth), timeout=READ_TIMEOUT_S) as response, open(out_path, "wb") as out:
                announced = response.headers.get("Content-Length", "")
                if announced.isdigit() and int(announced) > max_bytes:
                    raise DataError(f"data {shown}: {announced} bytes announced, larger than data.max_archive_bytes={max_bytes}")
                total = 0
                while chunk := response.read1(_CHUNK):
                    total += len(chunk)
                    if total > max_bytes:
                        raise DataError(f"data {shown}: larger than data.max_archive_bytes={max_bytes}")
                    out.write(chunk)
        except urllib.error.HTTPError as e:
            raise DataError(f"data {shown}: download failed: HTTP {e.code} {_line(e.reason)}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            if deadline.expired:
                raise DataError(f"data {shown}: download took longer than {DOWNLOAD_DEADLINE_S} s") from None
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            raise DataError(f"data {shown}: download failed: {type(reason).__name__}: {_line(reason)}") from None
        if deadline.expired:
            raise DataError(f"data {shown}: download took longer than {DOWNLOAD_DEADLINE_S} s")
    if announced.isdigit() and total != int(announced):
        raise DataError(f"data {shown}: download truncated: {total} of {announced} bytes")


def _line(reason: object) -> str:
    """First line of an error reason, short: servers and sockets write what they like."""
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else "-"
    return text if len(text) <= 100 else text[:97] + "..."


def _request(url: str, auth: BasicAuth | None) -> urllib.request.Request:
    """A request for `url`; credentials go in a header that redirects drop."""
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_unredirected_header("Authorization", auth.header())
    return request


class _Deadline:
    """Shuts down every watched socket when the time is up, so no blocked read outlives it."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            for s in self._sockets:
                s.close()

    def watch(self, sock: socket.socket) -> None:
        """Keep a duplicate of `sock` (before TLS wraps it) to shut down at the deadline."""
        with self._lock:
            self._sockets.append(sock.dup())
            if self.expired:
                self._sockets[-1].shutdown(socket.SHUT_RDWR)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _watched(connection: type[http.client.HTTPConnection], deadline: _Deadline, host: str, **kwargs: object) -> http.client.HTTPConnection:
    """A connection whose TCP socket the deadline watches from the moment it connects.

    That is before a proxy's CONNECT tunnel and the TLS handshake (http.client runs both inside
    `connect`), so a proxy or server that drips its handshake cannot outlast the deadline either.
    """
    conn = connection(host, **kwargs)
    create = conn._create_connection

    def create_watched(*args: object, **kw: object) -> socket.socket:
        sock = create(*args, **kw)
        deadline.watch(sock)
        return sock

    conn._create_connection = create_watched  # type: ignore[method-assign]
    return conn


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_watched, http.client.HTTPConnection, self.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_watched, http.client.HTTPSConnection, self.deadline), req)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow at most MAX_REDIRECTS redirects, and only to http(s)."""

    max_repeats = max_redirections = MAX_REDIRECTS + 1  # urllib's own checks never come first

    def __init__(self, shown: str):
        super().__init__()
        self.shown = shown
        self.count = 0

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def]
        target = urljoin(req.full_url, headers.get("Location") or headers.get("URI") or "")
        if urlsplit(target).scheme.lower() not in ("http", "https"):
            raise DataError(f"data {self.shown}: redirect to {redact_url(target)} refused (only http and https)")
        self.count += 1
        if self.count > MAX_REDIRECTS:
            raise DataError(f"data {self.shown}: more than {MAX_REDIRECTS} redirects")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(deadline: _Deadline, shown: str) -> urllib.request.OpenerDirector:
    """http(s) only: no file:, ftp: or data: handlers at all, proxies from the environment kept."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        _HTTPHandler(deadline),
        _HTTPSHandler(deadline),
        _Redirects(shown),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener
