"""One webhook POST to an address the SSRF guard checked, and what became of it.

The connection goes to the checked IP address itself (never to a second DNS answer), with
the URL's host name sent as TLS SNI, checked against the certificate, and sent as `Host`.
Redirects are not followed: a 3xx is a failed delivery.

Everything is bounded, because the receiver is the client's (or an attacker's) server:

- **One wall-clock deadline per attempt.** Socket timeouts bound each read, not the
  exchange: a receiver trickling one byte every few seconds never trips them. A watchdog
  thread shuts the socket down when the attempt's time is up, whatever phase it is in
  (TCP connect, TLS handshake, sending, waiting for the status line, reading headers).
- **Response headers are capped** (`MAX_HEADER_BYTES`, status line included); the body is
  never read.
- **Nothing raises.** Every outcome is a `SendResult`, so that the caller always records
  the attempt. Its `error` is a coarse category (`ERRORS`): what the client may see on its
  job. The detail (addresses, OS and TLS messages) goes to the logs only, so the record is
  no oracle for probing what listens where.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import logging
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util.ssl_match_hostname import CertificateError

from ltxv.core.urlsafety import DEFAULT_PORTS, CheckedURL

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
MAX_HEADER_BYTES = 16 * 1024
# How often the watchdog cuts again once the deadline has passed: the sender may have
# created the next socket (a TLS handshake after the TCP connect) since the last cut.
RECUT_SECONDS = 0.05

COULD_NOT_CONNECT = "could not connect"
TIMED_OUT = "timed out"
TLS_FAILED = "TLS handshake failed"
CONNECTION_LOST = "connection lost"
INVALID_RESPONSE = "invalid HTTP response"
HEADERS_TOO_LARGE = "response headers too large"
NO_ADDRESS = "no address to connect to"
INTERNAL_ERROR = "internal error"
ERRORS = frozenset(
    {
        COULD_NOT_CONNECT,
        TIMED_OUT,
        TLS_FAILED,
        CONNECTION_LOST,
        INVALID_RESPONSE,
        HEADERS_TOO_LARGE,
        NO_ADDRESS,
        INTERNAL_ERROR,
    }
)
_DELTA_SECONDS = re.compile(r"[0-9]{1,9}")  # ASCII only: str.isdigit() also takes "²"


@dataclass(frozen=True)
class SendResult:
    status_code: int | None
    error: str | None  # a category from ERRORS (or the SSRF guard's refusal), never detail
    duration_seconds: float
    retry_after_seconds: float | None = None
    detail: str | None = None  # for the logs only: never stored on the job

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        """Timeouts, connection errors, 429 and 5xx; 410, other 4xx and 3xx are final."""
        if self.status_code is None:
            return True
        return self.status_code == 429 or self.status_code >= 500


class HeadersTooLarge(http.client.HTTPException):
    pass


class _CappedReader:
    """The response's file, counting what the status line and headers take."""

    def __init__(self, raw: Any, cap: int) -> None:
        self._raw = raw
        self._left = cap

    def readline(self, limit: int = -1) -> bytes:
        # Never ask for more than one byte past the cap: a flood stops here, unread.
        want = self._left + 1 if limit is None or limit < 0 else min(limit, self._left + 1)
        line = self._raw.readline(want)
        self._left -= len(line)
        if self._left < 0:
            raise HeadersTooLarge(f"status line and headers exceed {MAX_HEADER_BYTES} bytes")
        return line

    def __getattr__(self, name: str) -> Any:  # close(), read() of a body nobody reads, ...
        return getattr(self._raw, name)


class _CappedResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        # http.client reads `fp` as any file-like object; typeshed declares a BufferedReader.
        self.fp = _CappedReader(self.fp, MAX_HEADER_BYTES)  # type: ignore[assignment]


class _Watchdog:
    """Shuts down the current connection's socket once the deadline has passed."""

    def __init__(self, seconds: float) -> None:
        self.connection: HTTPConnection | None = None
        self.expired = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(seconds,), name="webhook-deadline", daemon=True
        )

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self, seconds: float) -> None:
        if self._done.wait(seconds):
            return
        self.expired.set()
        while True:
            _cut(getattr(self.connection, "sock", None))
            if self._done.wait(RECUT_SECONDS):
                return


def _cut(sock: socket.socket | None) -> None:
    if sock is None:
        return
    # socket.socket's own shutdown, also for an SSLSocket (whose override would drop its
    # TLS state under the reading thread): the blocked read returns at once. OSError: the
    # socket is closed already.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def post_pinned(
    checked: CheckedURL,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    ca_certs: str | None = None,
) -> SendResult:
    """POST `body` to `checked`, trying its checked addresses in order until one connects,
    all within `timeout` seconds of wall-clock time."""
    started = time.monotonic()
    try:
        return _post(checked, body, headers, started, timeout, ca_certs)
    except Exception as exc:  # a bug of ours must not lose the attempt: it is recorded
        log.exception("webhook send failed unexpectedly", extra={"host": checked.host})
        return SendResult(None, INTERNAL_ERROR, _since(started), detail=describe_error(exc))


def _post(
    checked: CheckedURL,
    body: bytes,
    headers: dict[str, str],
    started: float,
    timeout: float,
    ca_certs: str | None,
) -> SendResult:
    deadline = started + timeout
    host_header = checked.host
    if checked.port != DEFAULT_PORTS[checked.scheme]:
        host_header = f"{checked.host}:{checked.port}"
    request_headers = {**headers, "Host": host_header}
    error, detail = NO_ADDRESS, None
    with _Watchdog(timeout) as watchdog:
        for address in checked.addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = TIMED_OUT
                break
            conn = _connection(checked, address, min(CONNECT_TIMEOUT, remaining), ca_certs)
            watchdog.connection = conn
            try:
                conn.connect()
                conn.timeout = max(0.001, deadline - time.monotonic())  # each read, too
                conn.request(
                    "POST",
                    checked.path_and_query,
                    body=body,
                    headers=request_headers,
                    preload_content=False,  # the body is never read: nothing of it is kept
                )
                response = conn.getresponse()
                status, retry_after = response.status, response.headers.get("Retry-After")
                response.close()
            except Exception as exc:
                error, detail = _category(exc, watchdog.expired.is_set()), describe_error(exc)
                log.info(
                    "webhook attempt failed",
                    extra={"address": address, "category": error, "detail": detail},
                )
                if error == COULD_NOT_CONNECT or (
                    error == TIMED_OUT and isinstance(exc, urllib3.exceptions.ConnectTimeoutError)
                ):
                    continue  # the next checked address may answer
                break
            finally:
                conn.close()
            return SendResult(status, None, _since(started), _retry_after(retry_after))
    return SendResult(None, error, _since(started), detail=detail)


def _connection(
    checked: CheckedURL, address: str, connect_timeout: float, ca_certs: str | None
) -> HTTPConnection:
    if checked.scheme == "https":
        conn: HTTPConnection = HTTPSConnection(
            address,
            checked.port,
            timeout=connect_timeout,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_certs,
            server_hostname=checked.host,
            assert_hostname=checked.host,
        )
    else:
        conn = HTTPConnection(address, checked.port, timeout=connect_timeout)
    conn.response_class = _CappedResponse
    return conn


def _category(exc: BaseException, expired: bool) -> str:
    """The coarse name of what went wrong; the order matters (subclasses first)."""
    if expired:
        return TIMED_OUT  # the watchdog cut the socket: whatever broke, time ran out
    if isinstance(exc, HeadersTooLarge):
        return HEADERS_TOO_LARGE
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return COULD_NOT_CONNECT  # refused, unreachable (a subclass of ConnectTimeoutError)
    if isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError):
        return TIMED_OUT
    if isinstance(exc, ssl.SSLError | urllib3.exceptions.SSLError | CertificateError):
        return TLS_FAILED
    if isinstance(exc, ConnectionError | http.client.RemoteDisconnected):
        return CONNECTION_LOST
    if isinstance(exc, http.client.HTTPException | urllib3.exceptions.HTTPError):
        return INVALID_RESPONSE
    if isinstance(exc, OSError):
        return CONNECTION_LOST
    return INTERNAL_ERROR


def _retry_after(raw: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or
    not one of those. Never raises: the answer it comes with must be recorded."""
    if not raw:
        return None
    raw = raw.strip()
    if _DELTA_SECONDS.fullmatch(raw):
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def describe_error(exc: BaseException) -> str:
    """An exception as one short line for a delivery record (no traceback, 300 chars)."""
    reason = getattr(exc, "reason", None) or exc
    return f"{type(exc).__name__}: {reason}"[:300]


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
