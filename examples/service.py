"""A small HTTP service to probe: ``GET /item/NAME`` looks NAME up, slowly now and then.

python examples/service.py [PORT]        # default 8000, on 127.0.0.1
"""

from __future__ import annotations

import random
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def lookup(name: str) -> int:
    time.sleep(random.choice((0.001, 0.002, 0.002, 0.004, 0.03)))  # a cache, a slow backend
    return len(name)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{lookup(self.path.rsplit('/', 1)[-1])}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    with ThreadingHTTPServer(("127.0.0.1", port), Handler) as server:
        server.serve_forever()
