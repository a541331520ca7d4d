"""One webhook POST to an address the SSRF guard checked, and what became of it.

The connection goes to the checked IP address itself (never to a second DNS answer), with
the URL's host name sent as TLS SNI, checked against the certificate, and sent as `Host`.
Redirects are not followed: a 3xx is a failed delivery. Everything is bounded: the connect
and read timeouts, and the response body, of which nothing is kept.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import urllib3
from urllib3.exceptions import HTTPError

from .urlsafety import DEFAULT_PORTS, CheckedURL

CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class SendResult:
    status_code: int | None
    error: str | None
    duration_seconds: float
    retry_after_seconds: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        """Timeouts, connection errors, 429 and 5xx; 410, other 4xx and 3xx are final."""
        if self.status_code is None:
            return True
        return self.status_code == 429 or self.status_code >= 500


def post_pinned(
    checked: CheckedURL,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    ca_certs: str | None = None,
) -> SendResult:
    """POST `body` to `checked`, trying its checked addresses in order until one connects."""
    started = time.monotonic()
    host_header = checked.host
    if checked.port != DEFAULT_PORTS[checked.scheme]:
        host_header = f"{checked.host}:{checked.port}"
    request_headers = {**headers, "Host": host_header}
    error = "no address to connect to"
    for address in checked.addresses:
        pool = _pool(checked, address, timeout, ca_certs)
        try:
            response = pool.urlopen(
                "POST",
                checked.path_and_query,
                body=body,
                headers=request_headers,
                redirect=False,
                retries=False,
                assert_same_host=False,
                preload_content=False,  # the body is never read: nothing of it is kept
            )
            response.close()
        except urllib3.exceptions.NewConnectionError as exc:
            error = f"connection to {address} failed: {_reason(exc)}"
            continue  # the next checked address may answer
        except HTTPError as exc:
            error = _describe(exc, address)
            break
        finally:
            pool.close()
        retry_after = _retry_after(response.headers.get("Retry-After"))
        return SendResult(response.status, None, _since(started), retry_after)
    return SendResult(None, error, _since(started))


def _pool(
    checked: CheckedURL, address: str, timeout: float, ca_certs: str | None
) -> urllib3.HTTPConnectionPool:
    timeouts = urllib3.Timeout(connect=min(CONNECT_TIMEOUT, timeout), read=timeout)
    if checked.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            address,
            checked.port,
            timeout=timeouts,
            maxsize=1,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_certs,
            server_hostname=checked.host,
            assert_hostname=checked.host,
        )
    return urllib3.HTTPConnectionPool(address, checked.port, timeout=timeouts, maxsize=1)


def _retry_after(raw: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not raw:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _describe(exc: HTTPError, address: str) -> str:
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return f"timed out talking to {address}"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return f"TLS failed with {address}: {_reason(exc)}"
    return f"{type(exc).__name__} with {address}: {_reason(exc)}"


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason)[:300]


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
