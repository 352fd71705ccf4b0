"""A webhook receiver on 127.0.0.1 for alert tests: a real HTTP server in a thread that
records every POST, checks its signature the way docs/operations.md tells receivers to,
and can be down (its port reserved but nothing listening) or answer an error."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kernex_server.alert_delivery import verify


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    signed: bool  # the signature and timestamp checked out under the sink's secret

    @property
    def key(self) -> str:
        return self.headers["idempotency-key"]

    def json(self) -> Any:
        return json.loads(self.body)


class AlertSink:
    def __init__(self, secret: str, *, status: int = 200) -> None:
        self.secret = secret
        self.status = status
        self.deliveries: list[Delivery] = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/kernex"

    def receiver(self, name: str = "ops", **more: Any) -> dict[str, Any]:
        return {"name": name, "url": self.url, "secret": self.secret, **more}

    def start(self) -> AlertSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                signed = verify(sink.secret, headers, body, now=time.time())
                with sink._lock:
                    sink.deliveries.append(Delivery(headers, body, signed))
                self.send_response(sink.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def keys(self) -> list[str]:
        with self._lock:
            return [d.key for d in self.deliveries]

    def of_kind(self, kind: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.headers.get("kernex-event") == kind]
