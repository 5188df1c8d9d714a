"""An OTLP/HTTP receiver for benchmarks: answers every export with 200 and discards it (no
decoding, so the receiver costs the machine little). Prints ``port N`` once it listens.

    python benchmarks/otlp_sink.py
"""

from __future__ import annotations

import http.server


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
