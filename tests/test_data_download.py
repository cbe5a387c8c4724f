"""URL sources against a real HTTP server on 127.0.0.1: what is cached, what is refused, what is printed."""

from __future__ import annotations

import base64
import hashlib
import http.server
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import job.data.download
from job.config.settings import load_config
from job.core.credentials import DATA_PASSWORD_FILE_ENV, DATA_USERNAME_ENV
from job.data.dataset import load_dataset
from job.core.errors import DataError

from .test_data_hostile import cli_error, refused

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

SECRET = "s3cr3t-pw"


def data_config(url: str, cache: Path, **keys: object):
    overrides = {"data.source": url, "data.cache_dir": str(cache), **{f"data.{k}": v for k, v in keys.items()}}
    return load_config(env={}, overrides=overrides).data


class Server:
    """Routes: /good/<name> the archive, /other/<name> garbage, /truncated, /loop, /to-file, /drip, /auth."""

    def __init__(self, archive: bytes):
        self.archive, self.hits, self.auth = archive, [], []
        self.garbage = b"\x1f\x8b" + bytes(200)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits.append(self.path)
                server.auth.append(self.headers.get("Authorization"))
                route = self.path.split("/")[1]
                if route not in ("loop", "to-file", "good", "auth", "other", "truncated", "drip"):
                    self.send_error(404)
                    return
                if route in ("loop", "to-file"):
                    self.send_response(302)
                    self.send_header("Location", "/loop" if route == "loop" else "file:///etc/passwd")
                    self.end_headers()
                    return
                body = {"good": server.archive, "auth": server.archive, "other": server.garbage, "truncated": server.archive, "drip": b"x" * 100}[route]
                if route == "auth" and self.headers.get("Authorization") != "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode():
                    self.send_error(401)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if route == "drip":
                    for byte in body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.2)
                else:
                    self.wfile.write(body[: len(body) // 2] if route == "truncated" else body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"


@pytest.fixture
def server(synthetic_archive: Path) -> Iterator[Server]:
    s = Server(synthetic_archive.read_bytes())
    threading.Thread(target=s.httpd.serve_forever, daemon=True).start()
    yield s
    s.httpd.shutdown()


def test_same_file_name_from_another_url_is_not_reused(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert len(load_dataset(data_config(f"{server.base}/good/cifar.tar.gz", cache)).test_labels) == 10_000
    assert "not a valid CIFAR-10 .tar.gz archive" in refused(load_dataset, data_config(f"{server.base}/other/cifar.tar.gz", cache))
    assert [p.name for p in cache.glob("*/*")] == ["cifar.tar.gz"]  # only the verified one


@pytest.mark.parametrize("route", ["truncated", "other"])
def test_truncated_or_garbage_download_is_never_cached(route: str, server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for _ in range(2):  # the second run downloads again instead of failing on a cached copy
        refused(load_dataset, data_config(f"{server.base}/{route}/cifar.tar.gz", cache))
    assert server.hits == [f"/{route}/cifar.tar.gz"] * 2
    assert list(cache.rglob("*")) == []


def test_corrupted_cache_entry_is_downloaded_again(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cfg = data_config(f"{server.base}/good/cifar.tar.gz", cache)
    load_dataset(cfg)
    (cached,) = cache.glob("*/cifar.tar.gz")
    cached.write_bytes(cached.read_bytes()[:1000])
    assert len(load_dataset(cfg).train_labels) == 40_000
    assert len(server.hits) == 2 and cached.read_bytes() == server.archive


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/loop", f"more than {job.data.download.MAX_REDIRECTS} redirects"),
        ("/to-file", "redirect to file:///etc/passwd refused (only http and https)"),
        ("/missing", "download failed: HTTP 404"),
    ],
)
def test_bad_responses_are_one_line(path: str, expected: str, server: Server, tmp_path: Path) -> None:
    assert expected in cli_error(f"{server.base}{path}", "--set", f"data.cache_dir={tmp_path}")


def test_slow_drip_hits_the_deadline(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job.data.download, "DOWNLOAD_DEADLINE_S", 1)
    start = time.monotonic()
    assert "download took longer than 1 s" in refused(load_dataset, data_config(f"{server.base}/drip/x.tar.gz", tmp_path))
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_proxy_that_drips_its_answer_hits_the_deadline(scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline holds from the TCP connect on: through a proxy's CONNECT tunnel (https) or its forwarded answer (http)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        with conn:
            for byte in b"HTTP/1.1 200 Connection established\r\nX-Padding: " + b"x" * 1000:
                if stop.wait(0.05):
                    return
                conn.sendall(bytes([byte]))

    threading.Thread(target=drip, daemon=True).start()
    monkeypatch.setattr(job.data.download, "DOWNLOAD_DEADLINE_S", 1)
    monkeypatch.setenv(f"{scheme}_proxy", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    start = time.monotonic()
    try:
        assert "download took longer than 1 s" in refused(load_dataset, data_config(f"{scheme}://cifar.example/x.tar.gz", tmp_path))
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - start < 5


def test_non_http_server_is_one_line(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = listener.accept()
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff binary")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        message = cli_error(f"http://127.0.0.1:{listener.getsockname()[1]}/x.tar.gz", "--set", f"data.cache_dir={tmp_path}")
    finally:
        listener.close()
    assert "download failed: BadStatusLine" in message


@pytest.mark.parametrize("url", ["http://[::1/x.tar.gz", "http://:99999999/x", "ftp://example.com/x.tar.gz", "file:///etc/passwd"])
def test_malformed_or_non_http_url_is_one_line(url: str, tmp_path: Path) -> None:
    cli_error(url, "--set", f"data.cache_dir={tmp_path}")


def test_credentials_from_the_environment_are_sent_once_and_never_printed(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "password").write_text(f"{SECRET}\n")
    monkeypatch.setenv(DATA_USERNAME_ENV, "user")
    monkeypatch.setenv(DATA_PASSWORD_FILE_ENV, str(tmp_path / "password"))
    good = load_dataset(data_config(f"{server.base}/auth/cifar.tar.gz", tmp_path / "c"))
    assert len(good.test_labels) == 10_000
    message = refused(load_dataset, data_config(f"{server.base}/missing", tmp_path / "d"))
    assert SECRET not in message and SECRET not in caplog.text
    assert server.auth[0] == "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "password" and SECRET.encode() in p.read_bytes()]


def test_credentials_never_follow_a_redirect(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "password").write_text(SECRET)
    monkeypatch.setenv(DATA_USERNAME_ENV, "user")
    monkeypatch.setenv(DATA_PASSWORD_FILE_ENV, str(tmp_path / "password"))
    refused(load_dataset, data_config(f"{server.base}/loop", tmp_path / "c"))
    assert server.auth[0] is not None and set(server.auth[1:]) == {None}


def test_checksum_is_part_of_the_cache_key(server: Server, tmp_path: Path) -> None:
    url = f"{server.base}/good/cifar.tar.gz"
    load_dataset(data_config(url, tmp_path))
    md5 = hashlib.md5(server.archive).hexdigest()
    load_dataset(data_config(url, tmp_path, checksum=f"md5:{md5}"))
    assert len(list(tmp_path.glob("*/cifar.tar.gz"))) == 2
    with pytest.raises(DataError, match="md5 checksum mismatch"):
        load_dataset(data_config(url, tmp_path, checksum="md5:" + "0" * 32))
    assert len(list(tmp_path.glob("*/cifar.tar.gz"))) == 2
