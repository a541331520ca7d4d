"""The webhook POST against real local servers: pinned address, SNI, no redirects, bounds.

No DNS here: `CheckedURL`s are built the way the SSRF guard builds them, with a host name
that resolves nowhere and the address it was "checked" to. That the POST arrives at all
proves the connection went to the checked address and not to a second lookup.
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

from ltxv.urlsafety import CheckedURL
from ltxv.webhook_sender import post_pinned

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
    assert "connection to 127.0.0.1 failed" in sent.error


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
    assert sent.status_code is None and sent.retryable and "timed out" in sent.error


def test_retry_after_is_reported(recorder):
    recorder.status = 429
    recorder.extra_headers = {"Retry-After": "90"}
    sent, _ = post_to(recorder)
    assert sent.status_code == 429 and sent.retryable and sent.retry_after_seconds == 90


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
        assert "TLS failed" in failed.error or "certificate" in failed.error.lower()
    assert len(recorder.seen) == 1
