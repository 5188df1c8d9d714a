"""A small HTTP server for ``GET /metrics``, on a thread of its own; stdlib only.

``MetricsServer(page)`` binds at once (so a taken port is an error before the program runs),
``start()`` serves on a daemon thread named ``pyprobes-metrics``, and ``stop()`` ends it: the
listening socket is closed and the thread joined. One request is served at a time (Prometheus
scrapes every few seconds; a page is rendered in microseconds to milliseconds), each with a
socket timeout, so a client that stalls cannot hold the server, nor ``stop()``, for long.

The thread runs ``page()`` inside ``thread_context()``: the caller passes the engine's
``own_thread`` so that no probe fires on the server thread (this layer knows nothing of the
engine). The loop waits on the socket and a wake-up pipe, not on a poll timer: an idle server
never runs, and ``stop()`` returns as soon as a request in progress is answered.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, HTTPServer

from pyprobes.output.prometheus import CONTENT_TYPE

THREAD_NAME = "pyprobes-metrics"
#: Seconds a client may take to send its request or read the answer.
CLIENT_TIMEOUT = 5.0
PATH = "/metrics"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "pyprobes"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.client_timeout)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == PATH:
            try:
                data = self.server.page().encode("utf-8")
            except Exception as exc:  # a bug of ours must not end the server
                self._send(500, "text/plain; charset=utf-8", f"{exc!r}\n".encode(), body)
                return
            self._send(200, CONTENT_TYPE, data, body)
        elif path == "/":
            text = b'pyprobes: the metrics are at <a href="/metrics">/metrics</a>\n'
            self._send(200, "text/html; charset=utf-8", text, body)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics\n", body)

    def _send(self, status: int, ctype: str, data: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: stderr is the program's."""


class _Server(HTTPServer):
    page: Callable[[], str]
    client_timeout: float = CLIENT_TIMEOUT

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that went away mid-request: nothing to report."""


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves ``page()`` at ``/metrics`` on ``host:port`` (port 0: a free one, see
    ``address``). Raises OSError from the constructor when it cannot bind."""

    def __init__(
        self,
        page: Callable[[], str],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        thread_context: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
        client_timeout: float = CLIENT_TIMEOUT,
    ) -> None:
        cls = _Server6 if ":" in host else _Server
        self._server = cls((host, port), _Handler, bind_and_activate=True)
        self._server.page = page
        self._server.client_timeout = client_timeout
        self._server.timeout = 0  # handle_request() after select() said a client is there
        self._thread_context = thread_context
        self._wake_r, self._wake_w = os.pipe()
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port."""
        addr = self._server.server_address
        return str(addr[0]), int(addr[1])

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metrics``."""
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}{PATH}"

    @property
    def thread(self) -> threading.Thread | None:
        """The serving thread, once started."""
        return self._thread

    def start(self) -> None:
        """Serve on a daemon thread until stop()."""
        with self._lock:
            if self._thread is not None or self._stopped:
                return
            self._thread = threading.Thread(target=self._serve, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        with self._thread_context():
            sock = self._server.fileno()
            while True:
                try:
                    ready, _, _ = select.select([sock, self._wake_r], [], [])
                except InterruptedError:
                    continue
                if self._wake_r in ready:
                    return
                try:
                    self._server.handle_request()
                except Exception:
                    pass  # never let one request end the server

    def stop(self) -> None:
        """Stop serving, close the socket, join the thread (idempotent; any thread but the
        server's own). In a forked child it only closes the child's copies of the sockets:
        the wake-up pipe is shared, and the parent's server goes on."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread = self._thread
        if os.getpid() == self._pid:
            os.write(self._wake_w, b"x")
            if thread is not None and thread is not threading.current_thread():
                thread.join()
        self._server.server_close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
