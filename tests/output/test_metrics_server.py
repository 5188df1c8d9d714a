"""The /metrics HTTP server: serves on its own thread, answers, and stops for good."""

from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pyprobes.output.metrics_server import THREAD_NAME, MetricsServer
from pyprobes.output.prometheus import CONTENT_TYPE


def _get(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_serves_the_page_on_its_own_thread_and_stops_clean() -> None:
    entered: list[str] = []
    pages = 0

    @contextmanager
    def on_thread() -> Iterator[None]:
        entered.append(threading.current_thread().name)
        yield

    def page() -> str:
        nonlocal pages
        pages += 1
        return f"x_total {pages}\n"

    before = set(threading.enumerate())
    server = MetricsServer(page, "127.0.0.1", 0, thread_context=on_thread)
    host, port = server.address
    assert host == "127.0.0.1" and port > 0
    assert server.url == f"http://127.0.0.1:{port}/metrics"
    server.start()
    assert server.thread is not None and server.thread.name == THREAD_NAME
    assert server.thread.daemon
    assert _get(server.url) == (200, CONTENT_TYPE, b"x_total 1\n")
    assert _get(server.url) == (200, CONTENT_TYPE, b"x_total 2\n")  # rendered per scrape
    assert _get(server.url, "HEAD")[:2] == (200, CONTENT_TYPE)
    assert _get(f"http://127.0.0.1:{port}/metrics?x=1")[0] == 200
    assert _get(f"http://127.0.0.1:{port}/")[0] == 200
    assert _get(f"http://127.0.0.1:{port}/nope")[0] == 404
    assert entered == [THREAD_NAME]  # the whole server loop runs inside the context
    thread = server.thread
    server.stop()
    server.stop()  # idempotent
    assert not thread.is_alive()
    assert set(threading.enumerate()) == before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_failing_page_is_a_500_and_the_server_goes_on() -> None:
    calls = 0

    def page() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return "ok 1\n"

    with MetricsServer(page) as server:
        status, _, body = _get(server.url)
        assert status == 500 and b"boom" in body
        assert _get(server.url)[0] == 200


def test_clients_that_go_away_or_stall_do_not_stop_the_server() -> None:
    with MetricsServer(lambda: "ok 1\n", client_timeout=0.5) as server:
        for _ in range(3):
            socket.create_connection(server.address, timeout=5).close()
        with socket.create_connection(server.address, timeout=5) as stalled:
            stalled.sendall(b"GET /met")  # and never the rest: let go after client_timeout
            assert _get(server.url) == (200, CONTENT_TYPE, b"ok 1\n")
            assert stalled.recv(100) == b""  # closed by the server, unanswered
        assert _get(server.url)[0] == 200


def test_a_taken_port_is_an_oserror_at_once() -> None:
    with MetricsServer(lambda: "") as first:
        with pytest.raises(OSError):
            MetricsServer(lambda: "", "127.0.0.1", first.address[1])


def test_stop_without_start() -> None:
    server = MetricsServer(lambda: "")
    port = server.address[1]
    server.stop()
    assert server.thread is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6: the ::1 test needs it")
    try:
        server = MetricsServer(lambda: "v6 1\n", "::1", 0)
    except OSError as exc:
        pytest.fail(f"cannot bind ::1 here ({exc}): IPv6 loopback is needed for this test")
    with server:
        assert server.url.startswith("http://[::1]:")
        assert _get(server.url)[2] == b"v6 1\n"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with the server's thread
def test_a_forked_child_that_stops_leaves_the_parent_serving() -> None:
    with MetricsServer(lambda: "up 1\n") as server:
        pid = os.fork()
        if pid == 0:  # the child: as a program that forks and ends through pyprobes' report
            code = 1
            try:
                server.stop()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _get(server.url) == (200, CONTENT_TYPE, b"up 1\n")
        assert server.thread is not None and server.thread.is_alive()
