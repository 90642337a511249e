"""A real HTTP server on loopback that receives alert webhooks, for tests.

It records every request (headers, raw body, parsed JSON) and checks its signature the way a
receiver in the wild would: HMAC-SHA256 of the raw body with the shared secret, compared in
constant time with ``X-RemoteGPU-Signature``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ReceivedWebhook:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    signature_valid: bool

    @property
    def payload(self) -> dict:
        return json.loads(self.body)

    @property
    def event(self) -> str:
        return self.headers.get("x-remotegpu-event", "")


class WebhookReceiver:
    """``with WebhookReceiver(secret, statuses=[503, 503]) as receiver:`` answers the first
    requests with ``statuses``, then 204; ``receiver.url``, ``receiver.received``."""

    def __init__(self, secret: str, statuses: list[int] | None = None, delay: float = 0.0):
        self.secret = secret.encode()
        self.statuses = list(statuses or [])
        self.delay = delay
        self.received: list[ReceivedWebhook] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                expected = "sha256=" + hmac.new(receiver.secret, body, hashlib.sha256).hexdigest()
                given = self.headers.get("X-RemoteGPU-Signature", "")
                with receiver._lock:
                    receiver.received.append(
                        ReceivedWebhook(
                            path=self.path,
                            headers={k.lower(): v for k, v in self.headers.items()},
                            body=body,
                            signature_valid=hmac.compare_digest(expected, given),
                        )
                    )
                    status = receiver.statuses.pop(0) if receiver.statuses else 204
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/alerts"

    def events(self) -> list[str]:
        with self._lock:
            return [request.event for request in self.received]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
