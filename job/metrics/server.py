"""/metrics over HTTP while a command runs, and the wait, once it has ended, for the final values to be scraped.

Dependency rule: prometheus_client, the standard library and job.core.errors only; what it serves is the
registry it is given (job.metrics.series declares it), and job.metrics.session decides when to start, linger
and stop.

Slow clients cost a socket, not a thread: one thread reads every request until its headers are
complete, within a deadline however slowly the bytes drip, and only a complete request gets a thread
to answer it. Misbehaving clients make at most an occasional one-line warning, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from job.core.errors import ConfigError, Preempted

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_SECONDS = 5.0  # a client's whole request (line and headers, however slowly sent), and each write of the answer
MAX_CONNECTIONS = 128  # clients still sending their request; one more closes the oldest, so a flood cannot shut out a scrape
MAX_ANSWERING = 4  # complete requests answered at once, a thread each; more get a 503 at once
MAX_REQUEST_BYTES = 16384  # request line and headers; a scrape sends a few hundred bytes
WARN_EVERY_SECONDS = 60.0  # at most one warning about clients this often; the next one counts those left out
POLL_SECONDS = 0.5  # how soon the reading thread notices close()

_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class MetricsServer:
    """/metrics on a daemon thread; can wait until a response sent after the run's end has been written."""

    def __init__(self, registry: CollectorRegistry, address: str, port: int) -> None:
        self._ended = threading.Event()
        self._final_served = threading.Event()
        exposition = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            final = self._ended.is_set()
            body = exposition(environ, start_response)
            return _then(body, self._final_served.set) if final else body

        try:
            family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
            # a listen backlog as deep as the clients it keeps: a burst of connections is not dropped by the kernel
            server_class = type("_Server", (WSGIServer,), {"address_family": family, "request_queue_size": MAX_CONNECTIONS})
            self._httpd = make_server(address, port, app, server_class)
        except OSError as e:
            raise ConfigError(f"metrics.address/metrics.port {address}:{port}: cannot serve /metrics ({e.strerror or e})") from None
        self._httpd.socket.setblocking(False)
        self._warn = _Warnings()
        self._answering = threading.BoundedSemaphore(MAX_ANSWERING)
        self._waiting: dict[socket.socket, float] = {}  # clients still sending their request: deadline, in order of arrival
        self._selector = selectors.DefaultSelector()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)
        self._thread.start()
        log.info("serving metrics on http://%s:%d/metrics", address, port)

    def linger(self, seconds: float) -> None:
        """Keep serving until the final values have been scraped once, at most `seconds`; Ctrl-C or SIGTERM cut it short."""
        if seconds <= 0:
            return
        self._ended.set()
        try:
            log.info("keeping /metrics up until the final values are scraped, at most %gs", seconds)
            if not self._final_served.wait(seconds):
                log.info("no scrape of the final values within %gs", seconds)
        except (KeyboardInterrupt, Preempted):  # the work is done and pushed: only the wait is cut short
            log.info("stopped waiting for the final scrape")

    def close(self) -> None:
        self._closing.set()
        self._thread.join()
        self._httpd.server_close()

    def _serve(self) -> None:
        """Accept clients and read their requests, all on this one thread, until close()."""
        self._selector.register(self._httpd.socket, selectors.EVENT_READ)
        try:
            while not self._closing.is_set():
                for key, _ in self._selector.select(POLL_SECONDS):
                    if key.fileobj is self._httpd.socket:
                        self._accept()
                    else:
                        self._read(key.fileobj, *key.data)
                now = time.monotonic()
                while self._waiting:  # in order of arrival, so of deadline
                    client, deadline = next(iter(self._waiting.items()))
                    if deadline > now:
                        break
                    self._drop(client, f"no complete request within {CLIENT_TIMEOUT_SECONDS:g}s")
        finally:
            for client in list(self._waiting):
                self._drop(client)
            self._selector.close()

    def _accept(self) -> None:
        try:
            client, address = self._httpd.socket.accept()
        except BlockingIOError:  # the client gave up in between
            return
        except OSError as e:  # out of file descriptors, say: the waiting clients time out meanwhile
            self._warn(f"cannot accept a client ({e})")
            self._closing.wait(POLL_SECONDS)
            return
        if len(self._waiting) >= MAX_CONNECTIONS:
            self._drop(next(iter(self._waiting)), f"more than {MAX_CONNECTIONS} clients without a complete request, the oldest closed")
        client.setblocking(False)
        self._waiting[client] = time.monotonic() + CLIENT_TIMEOUT_SECONDS
        self._selector.register(client, selectors.EVENT_READ, (address, bytearray()))

    def _read(self, client: socket.socket, address: Any, head: bytearray) -> None:
        """Take what the client has sent; answer once the headers are complete."""
        if client not in self._waiting:  # closed as the oldest by an accept earlier in the same round
            return
        try:
            chunk = client.recv(MAX_REQUEST_BYTES)
        except BlockingIOError:
            return
        except OSError:  # reset: there is no one to answer
            chunk = b""
        head += chunk
        if not chunk:  # gone before a whole request, a port check say: not worth a warning
            self._drop(client)
        elif len(head) > MAX_REQUEST_BYTES:
            self._drop(client, f"a request over {MAX_REQUEST_BYTES} bytes")
        elif b"\n\r\n" in head or b"\n\n" in head:
            self._forget(client)
            self._answer(client, address, bytes(head))

    def _answer(self, client: socket.socket, address: Any, head: bytes) -> None:
        """A thread for a complete request, so that writing to a slow reader never holds up the reading thread."""
        if not self._answering.acquire(blocking=False):
            with contextlib.suppress(OSError):
                client.send(_BUSY)
            client.close()
            self._warn(f"more than {MAX_ANSWERING} requests at once, answered 503")
            return

        def answer() -> None:
            try:
                _Handler(head, self._warn, client, address, self._httpd)
            except Exception as e:  # the client's trouble, or the app's: a warning line, not a traceback on stderr
                self._warn(f"answering a client failed ({e!r})")
            finally:
                self._answering.release()
                self._httpd.shutdown_request(client)

        threading.Thread(target=answer, name="metrics-http-answer", daemon=True).start()

    def _forget(self, client: socket.socket) -> None:
        self._selector.unregister(client)
        del self._waiting[client]

    def _drop(self, client: socket.socket, why: str | None = None) -> None:
        self._forget(client)
        client.close()
        if why:
            self._warn(f"closed a client: {why}")


class _Warnings:
    """One warning line per WARN_EVERY_SECONDS at most: hundreds of bad clients must not fill the job's log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0.0
        self._left_out = 0

    def __call__(self, what: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._left_out += 1
                return
            self._next = now + WARN_EVERY_SECONDS
            left_out, self._left_out = self._left_out, 0
        more = f" ({left_out} more since the last warning)" if left_out else ""
        log.warning("/metrics: %s%s", what, more)


def _then(body: Iterable[bytes], done: Callable[[], None]) -> Iterator[bytes]:
    """`body`, then `done()` once the server has written all of it (WSGI asks for the next chunk)."""
    yield from body
    done()


class _Handler(WSGIRequestHandler):
    """Answers one request whose line and headers the reading thread has already received in full."""

    timeout = CLIENT_TIMEOUT_SECONDS  # each write: a client that stops reading holds its thread this long at most

    def __init__(self, head: bytes, warn: Callable[[str], None], *args: Any) -> None:
        self._head, self.warn = head, warn
        super().__init__(*args)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = io.BytesIO(self._head)  # nothing left to wait for on the socket

    def handle(self) -> None:
        self.raw_requestline = self.rfile.readline()
        if self.parse_request():  # else it has answered the error already
            handler = _ServerHandler(self.rfile, self.wfile, self.get_stderr(), self.get_environ())
            handler.request_handler = self
            handler.run(self.server.get_app())

    def log_message(self, format: str, *args: Any) -> None:  # no access log in the job's output
        pass


class _ServerHandler(ServerHandler):
    def log_exception(self, exc_info: Any) -> None:  # one line through the rate limit, instead of a traceback on stderr
        self.request_handler.warn(f"the exposition failed ({exc_info[1]!r})")
