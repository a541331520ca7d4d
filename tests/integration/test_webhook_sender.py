"""The webhook POST against real local servers: pinned address, SNI, no redirects, bounds.

No DNS here: `CheckedURL`s are built the way the SSRF guard builds them, with a host name
that resolves nowhere and the address it was "checked" to. That the POST arrives at all
proves the connection went to the checked address and not to a second lookup.

Hostile receivers are raw socket servers that write their answer byte by byte (`RawServer`):
one trickling its status line, its headers or its TLS handshake must be cut at the
attempt's deadline, one flooding headers at the header cap.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ltxv.core.urlsafety import CheckedURL
from ltxv.notify.webhook_sender import MAX_HEADER_BYTES, post_pinned

from ..raw_http import RawServer

BODY = b'{"type":"job.succeeded"}'


class Recorder(BaseHTTPRequestHandler):
    status = 200
    extra_headers: dict[str, str] = {}
    delay = 0.0
    seen: list[dict] = []

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        self.seen.append(
            {"path": self.path, "headers": dict(self.headers), "body": self.rfile.read(length)}
        )
        time.sleep(self.delay)
        self.send_response(self.status)
        for name, value in self.extra_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def serve(handler: type, context: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if context:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def recorder() -> Iterator[type[Recorder]]:
    handler = type("Handler", (Recorder,), {"seen": [], "status": 200, "extra_headers": {}})
    yield handler


def post_to(recorder: type[Recorder], timeout: float = 5):
    """One POST to a fresh server running `recorder`; the result and seconds it took."""
    server = serve(recorder)
    try:
        started = time.monotonic()
        url = checked("http", "hooks.invalid", server.server_address[1])
        sent = post_pinned(url, BODY, {}, timeout=timeout)
        return sent, time.monotonic() - started
    finally:
        server.shutdown()


def checked(scheme: str, host: str, port: int, addresses=("127.0.0.1",), path="/hook?x=1"):
    return CheckedURL(
        url=f"{scheme}://{host}:{port}{path}",
        scheme=scheme,
        host=host,
        port=port,
        path_and_query=path,
        addresses=tuple(addresses),
    )


def test_the_post_goes_to_the_checked_address_with_the_name_as_host(recorder):
    server = serve(recorder)
    try:
        port = server.server_address[1]
        sent = post_pinned(
            checked("http", "hooks.invalid", port), BODY, {"webhook-id": "evt_1"}, timeout=5
        )
    finally:
        server.shutdown()
    assert sent.delivered and sent.status_code == 200 and sent.error is None
    (request,) = recorder.seen
    assert request["headers"]["Host"] == f"hooks.invalid:{port}"
    assert request["path"] == "/hook?x=1"
    assert request["body"] == BODY
    assert request["headers"]["webhook-id"] == "evt_1"


def test_an_address_that_refuses_is_skipped_for_the_next_checked_one(recorder):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()
    server = serve(recorder)
    try:
        port = server.server_address[1]
        # Same port, two addresses: 127.0.0.2 has nothing listening on it.
        url = checked("http", "hooks.invalid", port, addresses=("127.0.0.2", "127.0.0.1"))
        assert post_pinned(url, BODY, {}, timeout=5).delivered
        nowhere = checked("http", "hooks.invalid", refused_port)
        sent = post_pinned(nowhere, BODY, {}, timeout=5)
    finally:
        server.shutdown()
    assert sent.status_code is None and sent.retryable
    # A coarse category only: which address refused, and how, is for the logs.
    assert sent.error == "could not connect" and "127.0.0.1" in sent.detail


def test_redirects_are_not_followed(recorder):
    recorder.status = 302
    recorder.extra_headers = {"Location": "http://169.254.169.254/computeMetadata/v1/"}
    sent, _ = post_to(recorder)
    assert sent.status_code == 302 and not sent.delivered and not sent.retryable
    assert len(recorder.seen) == 1


def test_a_slow_receiver_is_cut_off_at_the_timeout(recorder):
    recorder.delay = 3.0
    sent, took = post_to(recorder, timeout=0.5)
    assert took < 2.0
    assert sent.status_code is None and sent.retryable and sent.error == "timed out"


def test_retry_after_is_reported(recorder):
    recorder.status = 429
    recorder.extra_headers = {"Retry-After": "90"}
    sent, _ = post_to(recorder)
    assert sent.status_code == 429 and sent.retryable and sent.retry_after_seconds == 90


def test_a_retry_after_that_is_no_number_is_ignored_not_raised(recorder):
    recorder.extra_headers = {"Retry-After": "\u00b2"}  # "²": str.isdigit() says yes
    sent, _ = post_to(recorder)
    assert sent.delivered and sent.retry_after_seconds is None and sent.error is None


# --- https: the certificate is checked against the URL's name, not the address -------------


def _certificate_authority(tmp: Path, name: str) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA file and a server context whose certificate it signed for `name`."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ltxv test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


def test_https_to_the_pinned_address_verifies_the_certificate_for_the_name(recorder, tmp_path):
    ca_file, context = _certificate_authority(tmp_path, "hooks.example.com")
    server = serve(recorder, context)
    port = server.server_address[1]
    try:
        good = post_pinned(
            checked("https", "hooks.example.com", port), BODY, {}, timeout=5, ca_certs=str(ca_file)
        )
        wrong_name = post_pinned(
            checked("https", "other.example.com", port), BODY, {}, timeout=5, ca_certs=str(ca_file)
        )
        untrusted = post_pinned(checked("https", "hooks.example.com", port), BODY, {}, timeout=5)
    finally:
        server.shutdown()
    assert good.delivered
    assert recorder.seen[0]["headers"]["Host"] == f"hooks.example.com:{port}"
    for failed in (wrong_name, untrusted):
        assert failed.status_code is None and failed.retryable
        assert failed.error == "TLS handshake failed"
    assert "certificate" in untrusted.detail.lower()
    assert "other.example.com" in wrong_name.detail
    assert len(recorder.seen) == 1


# --- hostile receivers: one deadline per attempt, capped headers ------------------------------

OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def trickle(data: bytes, every: float = 0.5):
    """Answer with `data` one byte every `every` seconds (until the client goes away)."""

    def answer(server: RawServer, conn: socket.socket) -> None:
        server.read_request(conn)
        for i in range(len(data)):
            conn.sendall(data[i : i + 1])
            if server.stop.wait(every):
                return

    return answer


def at_once(data: bytes):
    def answer(server: RawServer, conn: socket.socket) -> None:
        server.read_request(conn)
        conn.sendall(data)
        server.stop.wait(10)  # keep the connection open: the client must stop by itself

    return answer


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[str, ssl.SSLContext]:
    ca_file, context = _certificate_authority(tmp_path_factory.mktemp("tls"), "hooks.example.com")
    return str(ca_file), context


@pytest.fixture(params=["http", "https"])
def scheme(request) -> str:
    return request.param


def raw_post(scheme: str, answer, tls, timeout: float) -> tuple:
    """One POST to a RawServer speaking `scheme`; (result, seconds it took, the server)."""
    ca_file, context = tls
    server = RawServer(answer, context if scheme == "https" else None)
    try:
        started = time.monotonic()
        sent = post_pinned(
            checked(scheme, "hooks.example.com", server.port), BODY, {}, timeout=timeout,
            ca_certs=ca_file,
        )  # fmt: skip
        return sent, time.monotonic() - started, server
    finally:
        server.close()


def test_a_normal_raw_receiver_is_delivered(scheme, tls):
    sent, _, server = raw_post(scheme, at_once(OK_ANSWER), tls, timeout=5)
    assert sent.delivered and sent.error is None
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(OK_ANSWER, id="status-line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * 30 + b"\r\n\r\n", id="headers"),
    ],
)
def test_a_receiver_trickling_its_answer_is_cut_at_the_deadline(scheme, tls, answer):
    # Every byte comes well within any per-read timeout; only a deadline stops this.
    # Whole, the answer would take 10 s or more; the attempt may take 1 s.
    sent, took, server = raw_post(scheme, trickle(answer), tls, timeout=1.0)
    assert 0.9 <= took < 2.5, took
    assert 0.9 <= sent.duration_seconds < 2.5
    assert sent.status_code is None and sent.error == "timed out" and sent.retryable
    assert len(server.requests) == 1


def test_a_tls_handshake_trickled_byte_by_byte_is_cut_at_the_deadline(tls):
    def slow_handshake(server: RawServer, conn: socket.socket) -> None:
        conn.recv(65536)  # the ClientHello
        # A handshake record announcing 16 KiB, then its body one byte at a time.
        for byte in b"\x16\x03\x03\x40\x00" + b"\x02" * 40:
            conn.sendall(bytes([byte]))
            if server.stop.wait(0.3):
                return

    sent, took, _ = raw_post("https", slow_handshake, tls, timeout=1.0)
    assert 0.9 <= took < 2.5, took
    assert sent.status_code is None and sent.error == "timed out"


def test_headers_past_the_cap_are_cut_at_once(scheme, tls):
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(40))
    flood = b"HTTP/1.1 200 OK\r\n" + padding + b"\r\n"
    assert len(flood) > 2 * MAX_HEADER_BYTES  # and each line well within http.client's limits
    sent, took, _ = raw_post(scheme, at_once(flood), tls, timeout=5)
    assert took < 2.0
    assert sent.status_code is None and sent.error == "response headers too large"
    assert not sent.delivered and sent.retryable


def test_headers_under_the_cap_are_fine(scheme, tls):
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(10))
    answer = b"HTTP/1.1 204 No Content\r\n" + padding + b"\r\n"
    sent, _, _ = raw_post(scheme, at_once(answer), tls, timeout=5)
    assert sent.status_code == 204 and sent.delivered


def test_a_receiver_that_closes_without_answering_is_connection_lost(scheme, tls):
    def hang_up(server: RawServer, conn: socket.socket) -> None:
        server.read_request(conn)

    sent, _, _ = raw_post(scheme, hang_up, tls, timeout=5)
    assert sent.status_code is None and sent.error in {"connection lost", "invalid HTTP response"}


def test_garbage_instead_of_http_is_an_invalid_response(scheme, tls):
    sent, _, _ = raw_post(scheme, at_once(b"SSH-2.0-OpenSSH_9.6\r\n"), tls, timeout=5)
    assert sent.status_code is None and sent.error == "invalid HTTP response"
