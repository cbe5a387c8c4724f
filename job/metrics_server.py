"""/metrics over HTTP while a command runs, and the wait, once it has ended, for the final values to be scraped.

Dependency rule: prometheus_client and job.errors only; what it serves is the registry it is
given (job.metrics declares it), and job.metrics_session decides when to start, linger and stop.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from job.errors import ConfigError, Preempted

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_SECONDS = 10.0  # each read from or write to a /metrics client


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
            server_class = type("_Server", (ThreadingWSGIServer,), {"address_family": family})
            self._httpd = make_server(address, port, app, server_class, handler_class=_QuietHandler)
        except OSError as e:
            raise ConfigError(f"metrics.address/metrics.port {address}:{port}: cannot serve /metrics ({e.strerror or e})") from None
        threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True).start()
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
        self._httpd.shutdown()
        self._httpd.server_close()


def _then(body: Iterable[bytes], done: Callable[[], None]) -> Iterator[bytes]:
    """`body`, then `done()` once the server has written all of it (WSGI asks for the next chunk)."""
    yield from body
    done()


class _QuietHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_SECONDS  # a client that connects and stalls holds a server thread this long at most

    def log_message(self, format: str, *args: Any) -> None:  # no access log in the job's output
        pass
