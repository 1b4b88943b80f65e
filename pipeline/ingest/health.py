"""A tiny HTTP probe: ``/health`` (the process runs) and ``/ready`` (connected and
Kafka acknowledging). Standard library only: a probe must not need a web framework
that could itself be what fails."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)


def serve_health(port: int, ready: Callable[[], tuple[bool, str]],
                 host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104 - a probe
    """Serve the probe on ``port`` in a daemon thread; ``ready()`` -> (ok, why)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/health":
                code, body = 200, "ok"
            elif self.path == "/ready":
                ok, why = ready()
                code, body = (200 if ok else 503), why
            else:
                code, body = 404, "not found: try /health or /ready"
            data = (body + "\n").encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("health probe: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
