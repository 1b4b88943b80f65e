"""uvicorn in a background thread, for the tests and the benchmark of the HTTP endpoint.

The command itself runs uvicorn in the main thread (signals, graceful exit); this is
for code that needs the endpoint beside it in one process, started and stopped on
conditions (uvicorn's ``started`` flag, the thread ending), not on sleeps.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn
from starlette.applications import Starlette

from pipeline.errors import PipelineError


class BackgroundServer:
    def __init__(self, app: Starlette, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                access_log=False, server_header=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self.server.run, name="ingest-http-server",
                                        daemon=True)

    def start(self, timeout_s: float = 10.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() >= deadline:
                raise PipelineError(f"HTTP server on {self.url} did not start in {timeout_s}s")
            self._thread.join(0.02)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
