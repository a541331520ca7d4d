"""Tests for the webhook SSRF guard; all name resolution goes through a fake resolver."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket
import threading
import time

import pytest

from ltxv.urlsafety import (
    CheckedURL,
    LookupTimedOut,
    ResolveTimeout,
    UnsafeURL,
    caching,
    check_webhook_url,
    system_resolver,
)

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"

DNS: dict[str, list[str]] = {
    "hooks.example.com": [PUBLIC_V4, PUBLIC_V6],
    "dup.example.com": [PUBLIC_V4, PUBLIC_V4, "2606:2800:0220:0001:0248:1893:25c8:1946"],
    "mixed.example.com": [PUBLIC_V4, "10.0.0.5"],
    "mixed6.example.com": [PUBLIC_V6, "fd12:3456::1"],
    "private.example.com": ["192.168.1.10"],
    "local.example.com": ["127.0.0.1", "::1"],
    "rebind.example.com": ["169.254.169.254"],
    "empty.example.com": [],
    "garbage.example.com": ["not-an-ip"],
    "xn--bcher-kva.example": [PUBLIC_V4],  # bücher.example
}


def fake_resolver(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return DNS[host]


def check(url: str, **kwargs) -> CheckedURL:
    return check_webhook_url(url, resolver=kwargs.pop("resolver", fake_resolver), **kwargs)


def rejects(url: str, message: str, **kwargs) -> None:
    with pytest.raises(UnsafeURL) as info:
        check(url, **kwargs)
    assert message in str(info.value)


def resolving_to(address: str):
    return lambda host, port: [address]


# --- accepted -----------------------------------------------------------------------------


def test_public_https_name_is_accepted_with_all_addresses():
    checked = check("https://Hooks.Example.COM/cb/run?id=7&x=1#frag")
    assert checked == CheckedURL(
        url="https://Hooks.Example.COM/cb/run?id=7&x=1#frag",
        scheme="https",
        host="hooks.example.com",
        port=443,
        path_and_query="/cb/run?id=7&x=1",
        addresses=(PUBLIC_V4, PUBLIC_V6),
    )


@pytest.mark.parametrize(
    ("url", "host", "port", "path_and_query"),
    [
        ("HTTPS://hooks.example.com", "hooks.example.com", 443, "/"),
        ("https://hooks.example.com:8443/x", "hooks.example.com", 8443, "/x"),
        ("https://hooks.example.com.:8443/", "hooks.example.com", 8443, "/"),
        ("https://hooks.example.com:443/?q", "hooks.example.com", 443, "/?q"),
        ("https://bücher.example/hook", "xn--bcher-kva.example", 443, "/hook"),
        (f"https://{PUBLIC_V4}/hook", PUBLIC_V4, 443, "/hook"),
    ],
)
def test_accepted_urls(url, host, port, path_and_query):
    checked = check(url)
    assert (checked.host, checked.port, checked.path_and_query) == (host, port, path_and_query)
    assert checked.url == url
    assert checked.addresses


def test_resolved_addresses_are_deduplicated():
    assert check("https://dup.example.com/").addresses == (PUBLIC_V4, PUBLIC_V6)


def test_resolver_gets_ascii_host_and_port():
    calls = []

    def resolver(host, port):
        calls.append((host, port))
        return [PUBLIC_V4]

    check("https://BÜCHER.example:8443/", resolver=resolver)
    assert calls == [("xn--bcher-kva.example", 8443)]


# --- scheme and URL shape -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/",
        "ftp://hooks.example.com/",
        "file:///etc/passwd",
        "gopher://hooks.example.com/",
        "javascript:alert(1)",
        "hooks.example.com/path",
        "//hooks.example.com/path",
    ],
)
def test_non_https_rejected(url):
    rejects(url, "webhook_url must use https")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://user:pass@hooks.example.com/", "must not contain user credentials"),
        ("https://user@hooks.example.com/", "must not contain user credentials"),
        ("https://@hooks.example.com/", "must not contain user credentials"),
        ("https://hooks.example.com\\@evil.example/", "must not contain user credentials"),
        ("https:///path", "must include a host"),
        ("https://:443/path", "must include a host"),
        ("https://hooks.example.com:0/", "port 0 is out of range 1-65535"),
        ("https://hooks.example.com:65536/", "has an invalid port"),
        ("https://hooks.example.com:99999/", "has an invalid port"),
        ("https://hooks.example.com:-1/", "has an invalid port"),
        ("https://hooks.example.com:+443/", "has an invalid port"),
        ("https://hooks.example.com:http/", "has an invalid port"),
        ("https://hooks.example.com:443:80/", "has an invalid port"),
        ("https://hooks.example.com/a b", "whitespace or control characters"),
        ("https://hooks.example.com/\tx", "whitespace or control characters"),
        ("https://hooks.example.com\n.evil/", "whitespace or control characters"),
        (" https://hooks.example.com/", "whitespace or control characters"),
        ("https://hooks.example.com/\x00", "whitespace or control characters"),
        ("https://hooks.example.com/\x7f", "whitespace or control characters"),
        ("https://hooks.example.com/\u00a0", "whitespace or control characters"),
        ("https://hooks.example.com/\u200b", "whitespace or control characters"),
        ("", "must be a non-empty string"),
        ("https://hooks.example.com/" + "a" * 2048, "is longer than 2048 characters"),
        ("https://hooks.exa_mple.com!/", "is not a valid host name"),
        ("https://hooks.example.com\\.evil/", "is not a valid host name"),
        ("https://hooks..example.com/", "is not a valid internationalized domain name"),
        ("https://" + "a" * 64 + ".example/", "is not a valid internationalized domain name"),
        ("https://-bad.example/", "is not a valid host name"),
    ],
)
def test_malformed_urls_rejected(url, message):
    rejects(url, message)


def test_url_of_exactly_max_length_is_accepted():
    base = "https://hooks.example.com/"
    assert check(base + "a" * (2048 - len(base))).host == "hooks.example.com"


def test_non_string_rejected():
    with pytest.raises(UnsafeURL, match="must be a non-empty string"):
        check_webhook_url(None, resolver=fake_resolver)  # type: ignore[arg-type]


def test_field_name_is_used_in_messages():
    with pytest.raises(UnsafeURL, match=r"^callback\.url must use https$"):
        check_webhook_url("http://x.example/", field="callback.url", resolver=fake_resolver)


# --- ports: 443 and 8443 only (a webhook must not become a port scanner) ------------------


@pytest.mark.parametrize("port", [1, 22, 25, 80, 444, 3306, 6379, 8080, 9200, 65535])
def test_other_ports_are_refused_before_any_lookup(port):
    def resolver(host, port):
        raise AssertionError("a refused port must not cost a DNS query")

    rejects(
        f"https://hooks.example.com:{port}/x",
        f"webhook_url port {port} is not allowed; webhooks go to https on port 443 or 8443",
        resolver=resolver,
    )


def test_loopback_mode_keeps_any_port_for_loopback_only():
    assert check("http://127.0.0.1:9000/hook", allow_http_loopback=True).port == 9000
    assert check("https://localhost:9443/hook", allow_http_loopback=True).port == 9443
    assert check("http://local.example.com:1/", allow_http_loopback=True).port == 1
    rejects(
        "https://hooks.example.com:9000/hook",
        "port 9000 is not allowed",
        allow_http_loopback=True,
    )
    assert check("https://hooks.example.com:8443/", allow_http_loopback=True).port == 8443


# --- IP literals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",  # decimal 127.0.0.1
        "0x7f000001",  # hex
        "0x7f.1",  # hex, short form
        "0177.0.0.1",  # octal
        "0x7f.0.0.1",
        "127.1",  # short form
        "127.0.1",
        "10.1",
        "0xa9.0xfe.0xa9.0xfe",  # 169.254.169.254
        "2852039166",  # 169.254.169.254
        "0",
        "017700000001",
    ],
)
def test_odd_ipv4_spellings_rejected(host):
    rejects(f"https://{host}/", f"webhook_url host {host} is not a canonical IP address")


@pytest.mark.parametrize(
    "url",
    [
        "https://[::1]/",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/",
        "https://[::ffff:10.0.0.1]/",
        "https://[::ffff:7f00:1]:443/",
        "https://[fe80::1]/",
        "https://[fe80::1%25eth0]/",
    ],
)
def test_ipv6_literals_rejected(url):
    rejects(url, "must not use an IPv6 literal host")


@pytest.mark.parametrize(
    "url",
    ["https://fe80::1%25eth0/", "https://%31%32%37.0.0.1/", "https://hooks%2eexample.com/"],
)
def test_percent_in_host_rejected(url):
    rejects(url, "host must not contain '%'")


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("10.0.0.5", "a private address"),
        ("172.16.0.1", "a private address"),
        ("172.31.255.255", "a private address"),
        ("192.168.0.1", "a private address"),
        ("127.0.0.1", "a loopback address"),
        ("127.255.0.1", "a loopback address"),
        ("169.254.1.1", "a link-local address"),
        ("169.254.169.254", "the metadata server"),
        ("100.64.0.1", "a shared (CGNAT) address"),
        ("100.127.255.254", "a shared (CGNAT) address"),
        ("224.0.0.1", "a multicast address"),
        ("239.255.255.250", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),  # noqa: S104
        ("0.1.2.3", "a special-purpose address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a broadcast address"),
        ("192.0.2.1", "a documentation address"),
        ("198.51.100.7", "a documentation address"),
        ("203.0.113.9", "a documentation address"),
        ("198.18.0.1", "a special-purpose address"),  # benchmarking
        ("192.0.0.8", "a special-purpose address"),  # IETF protocol assignments
        ("192.0.0.170", "a special-purpose address"),  # NAT64 discovery
    ],
)
def test_non_public_ipv4_literals_rejected(host, problem):
    rejects(f"https://{host}/", f"webhook_url host {host} is {problem}")


def test_ipv4_literal_message_is_exact():
    with pytest.raises(UnsafeURL) as info:
        check("https://10.0.0.5/")
    assert str(info.value) == "webhook_url host 10.0.0.5 is a private address"


def test_ipv4_literal_is_not_resolved():
    def resolver(host, port):
        raise AssertionError("literal must not be resolved")

    assert check("https://8.8.8.8/", resolver=resolver).addresses == ("8.8.8.8",)


def test_fullwidth_digits_are_normalized_to_the_literal_they_spell():
    fullwidth = "https://\uff11\uff12\uff17.\uff10.\uff10.\uff11/"  # "127.0.0.1" in fullwidth
    rejects(fullwidth, "host 127.0.0.1 is a loopback address")


# --- resolved addresses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("10.0.0.5", "a private address"),
        ("172.20.1.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("127.0.0.1", "a loopback address"),
        ("169.254.169.254", "the metadata server"),
        ("169.254.0.1", "a link-local address"),
        ("100.64.1.1", "a shared (CGNAT) address"),
        ("224.0.0.251", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),  # noqa: S104
        ("255.255.255.255", "a broadcast address"),
        ("203.0.113.1", "a documentation address"),
        ("::1", "a loopback address"),
        ("::", "an unspecified address"),
        ("fe80::1", "a link-local address"),
        ("fe80::1%eth0", "a link-local address"),
        ("fd00:ec2::254", "the metadata server"),
        ("fc00::1", "a unique local address"),
        ("fd12:3456:789a::1", "a unique local address"),
        ("fec0::1", "a site-local address"),
        ("ff02::1", "a multicast address"),
        ("ff0e::1", "a multicast address"),
        ("2001:db8::1", "a documentation address"),
        ("3fff::1", "a documentation address"),
        ("::ffff:10.0.0.1", "an IPv4-mapped IPv6 address embedding 10.0.0.1, a private address"),
        (
            "::ffff:a9fe:a9fe",
            "an IPv4-mapped IPv6 address embedding 169.254.169.254, the metadata server",
        ),
        ("::ffff:127.0.0.1", "an IPv4-mapped IPv6 address embedding 127.0.0.1, a loopback address"),
        ("::ffff:8.8.8.8", "an IPv4-mapped IPv6 address"),  # mapped forms refused altogether
        ("::127.0.0.1", "a reserved address"),  # deprecated IPv4-compatible
        ("::10.0.0.1", "a reserved address"),
        ("2002:a00:1::1", "a 6to4 address embedding 10.0.0.1, a private address"),
        ("2002:a9fe:a9fe::", "a 6to4 address embedding 169.254.169.254, the metadata server"),
        ("2002:7f00:1::", "a 6to4 address embedding 127.0.0.1, a loopback address"),
        ("64:ff9b::a00:1", "a NAT64 address embedding 10.0.0.1, a private address"),
        ("64:ff9b::192.168.0.1", "a NAT64 address embedding 192.168.0.1, a private address"),
        ("64:ff9b::808:808", "a reserved address"),
        ("2001:0:a00:1::1", "a Teredo address embedding 10.0.0.1, a private address"),
        (
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "a Teredo address embedding 192.0.2.45, a documentation address",
        ),
        ("2001:0:808:808:8000:f7f7:f7f7:f7f7", "a non-public address"),  # Teredo, public v4s
        ("2001:100::1", "a non-public address"),  # 2001::/23 IETF protocol assignments
        ("100::1", "a reserved address"),  # discard-only
        ("5f00::1", "a reserved address"),  # SRv6 SIDs
    ],
)
def test_name_resolving_to_non_public_address_rejected(address, problem):
    with pytest.raises(UnsafeURL) as info:
        check("https://evil.example/", resolver=resolving_to(address))
    shown = ipaddress.ip_address(address)  # messages use the compressed canonical form
    assert str(info.value) == f"webhook_url host evil.example resolves to {shown}, {problem}"


def test_public_6to4_is_accepted():
    checked = check("https://six.example/", resolver=resolving_to("2002:808:808::1"))
    assert checked.addresses == ("2002:808:808::1",)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://mixed.example.com/", "resolves to 10.0.0.5, a private address"),
        ("https://mixed6.example.com/", "resolves to fd12:3456::1, a unique local address"),
        ("https://private.example.com/", "resolves to 192.168.1.10, a private address"),
        ("https://rebind.example.com/", "resolves to 169.254.169.254, the metadata server"),
        ("https://local.example.com/", "resolves to 127.0.0.1, a loopback address"),
    ],
)
def test_any_bad_address_rejects_the_name(url, message):
    rejects(url, message)


@pytest.mark.parametrize(
    "url",
    ["https://example.invalid/", "https://empty.example.com/", "https://nowhere.example/x"],
)
def test_unresolvable_names_rejected(url):
    host = url.split("/")[2]
    rejects(url, f"webhook_url host {host} does not resolve")


@pytest.mark.parametrize(
    "error", [socket.gaierror(socket.EAI_AGAIN, "again"), OSError("boom"), UnicodeError("x")]
)
def test_resolver_errors_mean_does_not_resolve(error):
    def resolver(host, port):
        raise error

    rejects(
        "https://hooks.example.com/", "host hooks.example.com does not resolve", resolver=resolver
    )


def test_a_resolver_timing_out_is_no_verdict_on_the_url():
    def resolver(host, port):
        raise ResolveTimeout("slow")

    with pytest.raises(LookupTimedOut, match=r"host hooks\.example\.com did not resolve in time"):
        check_webhook_url("https://hooks.example.com/", resolver=resolver)


def test_a_stuck_system_lookup_is_given_up_at_the_timeout(monkeypatch):
    release = threading.Event()

    def stuck_getaddrinfo(*args, **kwargs):
        release.wait(10)  # a resolver that never answers (until the test ends)
        raise socket.gaierror(socket.EAI_AGAIN, "too late")

    monkeypatch.setattr(socket, "getaddrinfo", stuck_getaddrinfo)
    try:
        started = time.monotonic()
        with pytest.raises(LookupTimedOut, match="did not resolve in time"):
            check_webhook_url(
                "https://hooks.example.com/",
                resolver=functools.partial(system_resolver, timeout=0.3),
            )
        assert time.monotonic() - started < 2.0
    finally:
        release.set()


def test_stuck_lookups_of_one_tenant_do_not_hold_up_anothers(monkeypatch):
    """Many names under a name server that never answers (one tenant's webhook URLs) must
    not make a good name wait behind them: no shared pool of lookups to fill."""
    release = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host.endswith(".stuck.example"):
            release.wait(10)
            raise socket.gaierror(socket.EAI_AGAIN, "too late")
        return real_getaddrinfo("127.0.0.1", *args, **kwargs)  # a name that answers at once

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    stuck = [
        threading.Thread(target=_swallow, args=(f"n{i}.stuck.example",), daemon=True)
        for i in range(32)
    ]
    try:
        for thread in stuck:
            thread.start()
        time.sleep(0.1)  # every stuck lookup has started
        started = time.monotonic()
        assert system_resolver("good.example", 443, timeout=2.0) == ["127.0.0.1"]
        assert time.monotonic() - started < 1.0
    finally:
        release.set()


def _swallow(host: str) -> None:
    with contextlib.suppress(ResolveTimeout, OSError):
        system_resolver(host, 443, timeout=5.0)


def test_caching_looks_each_host_up_once_failures_included():
    calls = []

    def resolver(host, port):
        calls.append(host)
        return fake_resolver(host, port)

    cached = caching(resolver)
    for _ in range(3):
        assert check("https://hooks.example.com/", resolver=cached).addresses
        rejects("https://nowhere.example/", "does not resolve", resolver=cached)
    assert sorted(calls) == ["hooks.example.com", "nowhere.example"]
    # A fresh cache (the next prompt file) asks again.
    check("https://hooks.example.com/", resolver=caching(resolver))
    assert calls.count("hooks.example.com") == 2


def test_resolver_returning_garbage_rejected():
    rejects("https://garbage.example.com/", "resolves to an invalid address 'not-an-ip'")


# --- metadata server -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "metadata",
        "metadata.",
        "METADATA",
        "metadata.google.internal",
        "metadata.google.internal.",
        "Metadata.Google.Internal",
        "metadata.goog",
        "METADATA.GOOG.",
    ],
)
def test_metadata_names_rejected_without_resolving(name):
    def resolver(host, port):
        raise AssertionError("metadata names must not be resolved")

    host = name.lower().rstrip(".")
    rejects(
        f"https://{name}/computeMetadata/v1/",
        f"webhook_url host {host} is the metadata server",
        resolver=resolver,
    )


def test_metadata_names_rejected_even_with_loopback_flag():
    rejects("http://metadata.google.internal/", "is the metadata server", allow_http_loopback=True)


# --- loopback and allow_http_loopback ------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080/hook",
        "http://LOCALHOST./hook",
        "http://api.localhost/hook",
        "https://localhost/hook",
        "http://127.0.0.1:9000/",
        "http://127.3.2.1/",
        "http://local.example.com/",
    ],
)
def test_http_loopback_allowed_only_with_flag(url):
    checked = check(url, allow_http_loopback=True)
    assert checked.addresses
    assert checked.scheme in {"http", "https"}
    with pytest.raises(UnsafeURL, match=r"must use https|a loopback address"):
        check(url)


def test_localhost_is_loopback_without_resolving():
    def resolver(host, port):
        raise AssertionError("localhost must not be resolved")

    checked = check("http://localhost:8080/x", allow_http_loopback=True, resolver=resolver)
    assert checked.addresses == ("127.0.0.1", "::1")
    assert checked.port == 8080
    rejects(
        "https://sub.localhost/",
        "host sub.localhost resolves to 127.0.0.1, a loopback address",
        resolver=resolver,
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://hooks.example.com/", "must use https (http is allowed only for loopback hosts)"),
        ("http://8.8.8.8/", "must use https (http is allowed only for loopback hosts)"),
        ("http://mixed.example.com/", "resolves to 10.0.0.5, a private address"),
        ("http://10.0.0.1/", "is a private address"),
        ("ftp://localhost/", "must use https"),
        ("http://[::1]/", "must not use an IPv6 literal host"),
    ],
)
def test_loopback_flag_does_not_allow_anything_else(url, message):
    rejects(url, message, allow_http_loopback=True)


def test_loopback_flag_allows_https_to_public_hosts():
    assert check("https://hooks.example.com/", allow_http_loopback=True).port == 443


def test_loopback_flag_does_not_allow_mapped_or_embedded_loopback():
    rejects(
        "http://x.example/",
        "an IPv4-mapped IPv6 address",
        allow_http_loopback=True,
        resolver=resolving_to("::ffff:127.0.0.1"),
    )
    rejects(
        "https://x.example/",
        "a 6to4 address embedding 127.0.0.1, a loopback address",
        allow_http_loopback=True,
        resolver=resolving_to("2002:7f00:1::"),
    )


# --- internationalized names and the system resolver ----------------------------------------


def test_invalid_idn_rejected():
    rejects("https://xn--\u00e9.example/", "is not a valid internationalized domain name")


def test_system_resolver_handles_numeric_hosts_without_dns():
    assert system_resolver("127.0.0.1", 443) == ["127.0.0.1"]
    assert system_resolver("::1", 443) == ["::1"]
