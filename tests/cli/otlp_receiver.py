"""An OTLP/HTTP receiver on loopback for the tests: decodes what is posted to /v1/traces and
/v1/metrics with opentelemetry-proto and keeps it."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# The test extras install opentelemetry-proto (pyproject.toml): a missing one fails here.
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_service
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_service


@dataclass
class Received:
    spans: list[Any] = field(default_factory=list)  # opentelemetry.proto.trace.v1.Span
    resources: list[Any] = field(default_factory=list)
    metrics: list[Any] = field(default_factory=list)  # ExportMetricsServiceRequest
    lock: threading.Lock = field(default_factory=threading.Lock)
    got_spans: threading.Event = field(default_factory=threading.Event)  # set at the first


class _Handler(http.server.BaseHTTPRequestHandler):
    received: Received

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        got = self.server.received  # type: ignore[attr-defined]
        if self.path == "/v1/traces":
            req = trace_service.ExportTraceServiceRequest()
            req.ParseFromString(body)
            with got.lock:
                for rs in req.resource_spans:
                    got.resources.append(rs.resource)
                    for ss in rs.scope_spans:
                        got.spans.extend(ss.spans)
            got.got_spans.set()
            answer = trace_service.ExportTraceServiceResponse()
        elif self.path == "/v1/metrics":
            mreq = metrics_service.ExportMetricsServiceRequest()
            mreq.ParseFromString(body)
            with got.lock:
                got.metrics.append(mreq)
            answer = metrics_service.ExportMetricsServiceResponse()
        else:
            self.send_error(404)
            return
        data = answer.SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def receiver() -> Iterator[tuple[str, Received]]:
    """A receiver serving on a free loopback port: (its endpoint URL, what it got)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.received = Received()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.received  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def attrs(span_or_point: Any) -> dict[str, object]:
    """The attributes of a decoded span or data point as plain values."""
    out: dict[str, object] = {}
    for kv in span_or_point.attributes:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out
