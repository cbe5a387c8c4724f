"""The /metrics server under slow clients: a few hundred connections on 127.0.0.1 that drip a byte a second.

A real MetricsServer serves a real registry. The slow clients must cost it no thread each, be closed
by its deadline for the whole request however slowly they drip, and leave at most an occasional
one-line warning in the log, never a traceback; scrapes made beside them are answered at once.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from job.metrics.server import CLIENT_TIMEOUT_SECONDS, MAX_ANSWERING, MAX_CONNECTIONS, MetricsServer

from .test_metrics import free_port

pytestmark = pytest.mark.fast  # no training, no fuzzing

SLOW_CLIENTS = 300  # more than MAX_CONNECTIONS: the cap is reached and kept
DRIP_SECONDS = 1.0  # one byte per slow client this often
SCRAPES = 3  # one per drip round, from the first on
SLACK_SECONDS = 2.0  # the server's poll and a busy 2-core machine


def _scrape(port: int) -> tuple[int, str, float]:
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.status, response.read().decode(), time.monotonic() - started


def test_slow_clients_are_closed_by_the_deadline_without_a_thread_each_and_scrapes_are_answered_beside_them(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="job")
    registry = CollectorRegistry()
    Counter("slow_clients_probe", "Counts nothing: it is what the scrape must see.", registry=registry).inc(7)
    port = free_port()
    threads_before = threading.active_count()
    server = MetricsServer(registry, "127.0.0.1", port)
    clients: dict[socket.socket, float] = {}  # open slow client: when it connected
    lifetimes: list[float] = []  # from connect to the server's close, of every slow client
    open_counts, threads, scrapes = [], [], []
    try:
        with selectors.DefaultSelector() as selector:

            def closed_by_server(client: socket.socket) -> None:
                lifetimes.append(time.monotonic() - clients.pop(client))
                selector.unregister(client)
                client.close()

            for _ in range(SLOW_CLIENTS):
                client = socket.create_connection(("127.0.0.1", port), timeout=5)
                client.sendall(b"GET /metr")  # a request line that never ends
                client.setblocking(False)
                clients[client] = time.monotonic()
                selector.register(client, selectors.EVENT_READ)
            end = time.monotonic() + CLIENT_TIMEOUT_SECONDS + 2 * SLACK_SECONDS
            next_drip = time.monotonic() + DRIP_SECONDS
            while clients and time.monotonic() < end:
                for key, _ in selector.select(max(0.0, next_drip - time.monotonic())):
                    try:
                        if key.fileobj.recv(1024) == b"":
                            closed_by_server(key.fileobj)
                    except BlockingIOError:
                        pass
                    except OSError:  # reset
                        closed_by_server(key.fileobj)
                if time.monotonic() < next_drip:
                    continue
                next_drip += DRIP_SECONDS
                open_counts.append(len(clients))
                threads.append(threading.active_count())
                for client in list(clients):
                    try:
                        client.send(b"i")
                    except OSError:  # closed meanwhile: its end of file is read next round
                        pass
                if len(scrapes) < SCRAPES:
                    scrapes.append(_scrape(port))
    finally:
        for client in clients:
            client.close()
        server.close()

    for status, body, _ in scrapes:
        assert status == 200 and "slow_clients_probe_total 7.0" in body
    assert len(scrapes) == SCRAPES and max(seconds for *_, seconds in scrapes) < SLACK_SECONDS, scrapes
    assert clients == {}, f"{len(clients)} slow clients still open after {CLIENT_TIMEOUT_SECONDS + 2 * SLACK_SECONDS:g}s"
    assert max(lifetimes) < CLIENT_TIMEOUT_SECONDS + SLACK_SECONDS  # the deadline is for the whole request, not per byte
    assert open_counts[0] <= MAX_CONNECTIONS, open_counts  # beyond the cap, the oldest are closed at once
    assert max(threads) <= threads_before + 1 + MAX_ANSWERING, threads  # a reading thread, and one per request answered

    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    warnings = [r for r in caplog.records if r.name == "job.metrics.server" and r.levelno >= logging.WARNING]
    assert 1 <= len(warnings) <= 3, [r.getMessage() for r in warnings]
    for record in warnings:
        assert record.exc_info is None and "\n" not in record.getMessage()
