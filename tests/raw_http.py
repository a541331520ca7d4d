"""A raw TCP/HTTP peer for tests of what a hostile or broken webhook receiver does."""

from __future__ import annotations

import socket
import ssl
import threading


class RawServer:
    """A TCP server on 127.0.0.1 whose connections `answer(server, conn)` handles byte by
    byte (TLS first when given a server context): a webhook receiver that misbehaves in ways
    an HTTP framework will not."""

    def __init__(self, answer, context: ssl.SSLContext | None = None) -> None:
        self.answer, self.context = answer, context
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            if self.context:
                conn = self.context.wrap_socket(conn, server_side=True)
            self.answer(self, conn)
        except OSError:
            pass  # the client cut the connection: what the tests want
        finally:
            conn.close()

    def read_request(self, conn: socket.socket) -> tuple[dict[str, str], bytes] | None:
        """The request's headers (lower-case names) and body; None if the client left."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        while len(body) < int(headers.get("content-length", 0)):
            body += conn.recv(65536)
        self.requests.append(head)
        return headers, body

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
