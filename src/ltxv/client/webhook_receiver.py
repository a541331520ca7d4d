"""A sample webhook receiver: verifies every delivery and keeps what arrived.

`ltxv webhook listen` runs it from a shell; tests and the demo run it in a thread. It is
also the shape a real receiver should have: verify the signature over the raw body
before trusting anything in it, answer 2xx quickly, and treat `webhook-id` as the key
that makes a repeated delivery harmless.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ltxv.core.webhooks import WebhookVerificationError, verify_webhook

MAX_BODY = 1024 * 1024


@dataclass
class Delivery:
    """One POST as it arrived, and what verification made of it."""

    headers: dict[str, str]
    body: bytes
    event: dict[str, Any] | None  # the verified event
    error: str | None  # why verification failed
    status: int  # what the receiver answered

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")


# Decides the answer to the n-th verified delivery (1-based): a status code, or a status
# code and extra response headers (Retry-After, say). 200 by default.
Responder = Callable[[int, "Delivery"], "int | tuple[int, dict[str, str]]"]


@dataclass
class WebhookReceiver:
    secret: str
    host: str = "127.0.0.1"
    port: int = 0
    path: str = "/webhook"
    respond: Responder | None = None
    on_delivery: Callable[[Delivery], None] | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def _bind(self) -> ThreadingHTTPServer:
        self._server = ThreadingHTTPServer((self.host, self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]  # the one picked, when port was 0
        return self._server

    def start(self) -> WebhookReceiver:
        """Serve on a background thread (tests, the demo)."""
        threading.Thread(target=self._bind().serve_forever, daemon=True).start()
        return self

    def serve_forever(self) -> None:
        """Run in the calling thread until interrupted (the CLI's `listen`)."""
        server = self._bind()
        try:
            server.serve_forever()
        finally:
            server.server_close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def events(self) -> list[dict[str, Any]]:
        """The verified events that were answered 2xx."""
        with self._lock:
            return [d.event for d in self.deliveries if d.event and 200 <= d.status < 300]

    def wait_for(self, count: int, timeout: float) -> list[Delivery]:
        """Block until `count` deliveries arrived (any outcome); all of them."""
        with self._lock:
            self._lock.wait_for(lambda: len(self.deliveries) >= count, timeout)
            return list(self.deliveries)

    def _record(self, delivery: Delivery) -> None:
        with self._lock:
            self.deliveries.append(delivery)
            self._lock.notify_all()
        if self.on_delivery:
            self.on_delivery(delivery)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path.split("?", 1)[0] != receiver.path:
                    self._answer(404, b"unknown path\n")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._answer(413, b"body too large\n")
                    return
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    event, error = verify_webhook(receiver.secret, headers, body), None
                except (WebhookVerificationError, ValueError) as exc:
                    event, error = None, str(exc) or type(exc).__name__
                delivery = Delivery(headers, body, event, error, 400 if error else 200)
                with receiver._lock:
                    number = len(receiver.deliveries) + 1
                extra: dict[str, str] = {}
                if not error and receiver.respond is not None:
                    answer = receiver.respond(number, delivery)
                    delivery.status, extra = answer if isinstance(answer, tuple) else (answer, {})
                message = f"signature invalid: {error}\n" if error else "ok\n"
                self._answer(delivery.status, message.encode(), extra)
                # Recorded once answered: whoever waits on it may stop the server next.
                receiver._record(delivery)

            def _answer(
                self, status: int, body: bytes, extra: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # quiet: deliveries are recorded
                pass

        return Handler
