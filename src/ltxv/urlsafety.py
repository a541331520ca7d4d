"""SSRF guard for user-supplied webhook URLs.

The webhook sender runs inside GCP, next to the metadata server (which hands out access
tokens to anyone who can reach it) and inside a VPC with private services. A webhook URL is
therefore attacker-controlled input that asks *us* to open a connection, and every check
below closes one way of pointing that connection somewhere internal:

- **https only.** Webhook payloads and signatures must not travel in clear text. Plain
  http is allowed only for local development, behind ``allow_http_loopback``, and only when
  every address is loopback (``_require_https``, ``_loopback_only_exceptions``).
- **No userinfo, no whitespace or control characters, bounded length, valid port.**
  ``https://good.example@evil.example/`` and embedded tabs or newlines are parsed differently
  by different URL libraries; refusing them removes parser-confusion tricks
  (``_split_plain_url``, ``_plain_host``, ``_valid_port``).
- **No odd IP spellings.** C resolvers (``inet_aton``) accept ``2130706433``,
  ``0x7f.1``, ``0177.0.0.1`` and ``127.1`` as 127.0.0.1, while ``ipaddress`` does not, so a
  checker and a connector could disagree about the target. Only canonical dotted quads
  are accepted as literals. IPv6 literals (``[...]``) and zone ids are refused outright:
  a webhook endpoint should have a DNS name, and bracket/zone syntax is another source of
  parser disagreement (``_plain_host``, ``_normalize_host``, ``_parse_ipv4_literal``).
- **Metadata server by name and by address.** ``metadata.google.internal`` and friends
  resolve to 169.254.169.254 inside GCP; both the names and the link-local addresses are
  refused, whatever the resolver says (``_refuse_metadata_name``, ``_classify``).
- **Every resolved address must be public unicast.** A name can have several A/AAAA
  records; if any of them is internal, the connection might go there, so one bad address
  rejects the URL. ``ipaddress.is_global`` misses some ranges (multicast, site-local,
  6to4), and IPv6 forms that embed an IPv4 address (mapped, 6to4, Teredo, NAT64) could
  smuggle a private IPv4 target, so those are checked explicitly (``_require_public``).
- **Only the ports webhooks use: 443 and 8443.** Any other port would let a client aim
  the sender at whatever else listens on a public host (mail, databases, admin panels) and
  learn from the recorded outcome whether it is open: a port scanner run by us. The local
  http-loopback mode keeps any port, for loopback addresses only (``_require_webhook_port``,
  ``_loopback_only_exceptions``).
- **Resolve within a time limit.** A lookup runs on a thread of its own and is given up
  after a few seconds (``RESOLVE_TIMEOUT_SECONDS``): a stuck resolver must not hold a
  request, a prompt-file line or a delivery. :func:`caching` memoises lookups for the
  duration of one batch (a prompt file), so a thousand lines naming one slow host cost one
  lookup (``_resolve``).
- **Pin the connection.** Checking a name and then letting the HTTP client resolve it
  again allows DNS rebinding. :class:`CheckedURL` carries the checked addresses, and the
  sender (``webhook_sender.post_pinned``) connects to those addresses only, in order until
  one accepts the connection, sending the original name as TLS SNI (checked against the
  certificate) and as the ``Host`` header.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"https": 443, "http": 80}
ALLOWED_HTTPS_PORTS = frozenset({443, 8443})
RESOLVE_TIMEOUT_SECONDS = 5.0
METADATA_NAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog"})
METADATA_ADDRESSES = frozenset(map(ipaddress.ip_address, ["169.254.169.254", "fd00:ec2::254"]))
LOOPBACK_NAME_ADDRESSES = ("127.0.0.1", "::1")

_net = ipaddress.ip_network
# Ranges checked by name so the error can say which category an address is in; anything
# else that ipaddress does not consider global is refused as "non-public".
_NAMED_RANGES: tuple[tuple[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]], ...] = (
    ("a broadcast address", (_net("255.255.255.255/32"),)),
    ("a private address", (_net("10.0.0.0/8"), _net("172.16.0.0/12"), _net("192.168.0.0/16"))),
    ("a shared (CGNAT) address", (_net("100.64.0.0/10"),)),
    (
        "a documentation address",
        (
            _net("192.0.2.0/24"),
            _net("198.51.100.0/24"),
            _net("203.0.113.0/24"),
            _net("2001:db8::/32"),
            _net("3fff::/20"),
        ),
    ),
    ("a unique local address", (_net("fc00::/7"),)),
    (  # "this network", IETF protocol assignments, benchmarking
        "a special-purpose address",
        (_net("0.0.0.0/8"), _net("192.0.0.0/24"), _net("198.18.0.0/15")),
    ),
)
_NAT64 = _net("64:ff9b::/96")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


class UnsafeURL(ValueError):
    """The URL must not be used as a webhook target; the message says why."""


class Unresolvable(UnsafeURL):
    """The host did not resolve (in time): maybe only for now, unlike the other refusals."""


class LookupTimedOut(Unresolvable):
    """The name server did not answer in time: no verdict on the URL at all. Intake answers
    503 (retry), notify tries the delivery again later, a prompt-file line is rejected."""


class ResolveTimeout(TimeoutError):
    """The name did not resolve within the time limit (the lookup may still be running)."""


Fail = Callable[[str], UnsafeURL]  # makes the refusal of a problem, naming the field


@dataclass(frozen=True)
class CheckedURL:
    url: str  # the original URL
    scheme: str
    host: str  # lower-case ASCII (IDNA-encoded) host name or IPv4 literal, no trailing dot
    port: int
    path_and_query: str
    addresses: tuple[str, ...]  # every resolved address, all checked


def system_resolver(host: str, port: int, *, timeout: float = RESOLVE_TIMEOUT_SECONDS) -> list[str]:
    """Resolve ``host`` for TCP over IPv4 and IPv6; addresses deduplicated, in resolver order.

    Raises :class:`ResolveTimeout` after ``timeout`` seconds, ``socket.gaierror`` for a name
    that does not resolve. getaddrinfo has no timeout of its own, so each lookup runs on a
    thread of its own and the caller waits a bounded time. Not a shared pool: names under a
    name server that never answers would fill it, and every other tenant's lookup would
    queue behind them and time out. A stuck lookup keeps its thread until the system
    resolver gives up (seconds), so their number is bounded by the requests in flight.
    """
    answer: dict[str, object] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            answer["infos"] = socket.getaddrinfo(
                host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, socket.IPPROTO_TCP
            )
        except BaseException as exc:  # handed to the caller below
            answer["error"] = exc
        finally:
            done.set()

    threading.Thread(target=lookup, name=f"resolve-{host}"[:60], daemon=True).start()
    if not done.wait(timeout):
        raise ResolveTimeout(f"{host} did not resolve within {timeout:g} s")
    if "error" in answer:
        raise answer["error"]  # type: ignore[misc]
    return list(dict.fromkeys(str(info[4][0]) for info in answer["infos"]))  # type: ignore[union-attr]


def caching(resolver: Resolver) -> Resolver:
    """``resolver`` with each (host, port) looked up once, failures included.

    For one batch of checks that belong together (the lines of one prompt file), not for
    a process's lifetime: DNS answers change, and delivery must see the current one.
    """
    answers: dict[tuple[str, int], list[str] | OSError | UnicodeError] = {}
    lock = threading.Lock()

    def cached(host: str, port: int) -> list[str]:
        key = (host, port)
        with lock:
            answer = answers.get(key)
        if answer is None:
            try:
                answer = list(resolver(host, port))
            except (OSError, UnicodeError) as exc:  # what check_webhook_url turns into a refusal
                answer = exc
            with lock:
                answer = answers.setdefault(key, answer)
        if isinstance(answer, BaseException):
            raise answer
        return list(answer)

    return cached


def check_webhook_url(
    url: str,
    *,
    allow_http_loopback: bool = False,
    resolver: Resolver = system_resolver,
    field: str = "webhook_url",
) -> CheckedURL:
    """Validate ``url`` as a webhook target and resolve it; raise :class:`UnsafeURL` if unsafe.

    ``allow_http_loopback`` (local development only) tolerates loopback addresses, over https
    or http, and allows http when every address is loopback. Each step is one rule of the
    module docstring, in the order that decides which refusal a URL breaking several gets.
    """

    def fail(problem: str) -> UnsafeURL:
        return UnsafeURL(f"{field} {problem}")

    parts = _split_plain_url(url, fail)
    _require_https(parts.scheme, allow_http_loopback, fail)
    hostname = _plain_host(parts, fail)
    port = _valid_port(parts, fail)
    if not allow_http_loopback:
        _require_webhook_port(parts.scheme, port, fail)
    host = _normalize_host(hostname, fail)
    literal = _parse_ipv4_literal(host, fail)
    _refuse_metadata_name(host, fail)
    ips = [literal] if literal is not None else _resolve(host, port, resolver, fail, field)
    _require_public(ips, host, literal is not None, allow_http_loopback, fail)
    _loopback_only_exceptions(parts.scheme, port, ips, fail)
    return CheckedURL(
        url=url,
        scheme=parts.scheme,
        host=host,
        port=port,
        path_and_query=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        # Pinned: the sender connects to one of these, never to a fresh lookup of the name.
        addresses=tuple(str(ip) for ip in ips),
    )


def _split_plain_url(url: str, fail: Fail) -> SplitResult:
    """Bounded length, no whitespace or control characters, and parseable at all."""
    if not isinstance(url, str) or not url:
        raise fail("must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise fail(f"is longer than {MAX_URL_LENGTH} characters")
    if any(unicodedata.category(c)[0] in "CZ" for c in url):
        raise fail("must not contain whitespace or control characters")
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise fail(f"is not a valid URL ({exc})") from None


def _require_https(scheme: str, allow_http_loopback: bool, fail: Fail) -> None:
    """https only; http only in local development (and then only to loopback, see below)."""
    if scheme != "https" and not (scheme == "http" and allow_http_loopback):
        raise fail("must use https")


def _plain_host(parts: SplitResult, fail: Fail) -> str:
    """The host, named plainly: no userinfo, no IPv6 literal or zone id, no percent-encoding."""
    if "@" in parts.netloc:
        raise fail("must not contain user credentials (user:password@)")
    if "[" in parts.netloc or "]" in parts.netloc:
        raise fail("must not use an IPv6 literal host; use a DNS name")
    if "%" in parts.netloc:
        raise fail("host must not contain '%' (percent-encoding or an IPv6 zone id)")
    if not parts.hostname:
        raise fail("must include a host")
    return parts.hostname


def _valid_port(parts: SplitResult, fail: Fail) -> int:
    """The port the URL names (or its scheme's), if it is one at all."""
    try:
        port = parts.port
    except ValueError:
        raise fail("has an invalid port") from None
    if port is None:
        return DEFAULT_PORTS[parts.scheme]
    if not 1 <= port <= 65535:
        raise fail(f"port {port} is out of range 1-65535")
    return port


def _require_webhook_port(scheme: str, port: int, fail: Fail) -> None:
    """https on a port webhooks use; checked before any lookup too (a scan of ports must
    not even cost a DNS query) unless loopback addresses are allowed."""
    if scheme != "https" or port not in ALLOWED_HTTPS_PORTS:
        allowed = " or ".join(str(p) for p in sorted(ALLOWED_HTTPS_PORTS))
        raise fail(f"port {port} is not allowed; webhooks go to https on port {allowed}")


def _refuse_metadata_name(host: str, fail: Fail) -> None:
    """The metadata server by name (its addresses are refused in `_classify`)."""
    if host in METADATA_NAMES:
        raise fail(f"host {host} is the metadata server")


def _require_public(
    ips: list[IPAddress], host: str, literal: bool, allow_loopback: bool, fail: Fail
) -> None:
    """Every address public unicast (loopback too in local development): one bad one refuses."""
    for ip in ips:
        problem = _classify(ip)
        if problem is None or (allow_loopback and problem == "a loopback address"):
            continue
        where = f"host {host} is" if literal else f"host {host} resolves to {ip},"
        raise fail(f"{where} {problem}")


def _loopback_only_exceptions(scheme: str, port: int, ips: list[IPAddress], fail: Fail) -> None:
    """http, and ports other than the webhook ones, only where every address is loopback."""
    if all(ip.is_loopback for ip in ips):
        return
    if scheme == "http":
        raise fail("must use https (http is allowed only for loopback hosts)")
    _require_webhook_port(scheme, port, fail)


def _normalize_host(hostname: str, fail: Fail) -> str:
    """IDNA-encode, lower-case and strip one trailing dot; refuse anything not a DNS name."""
    try:
        host = hostname.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise fail(f"host {hostname!r} is not a valid internationalized domain name") from None
    host = host.removesuffix(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise fail(f"host {hostname!r} is not a valid host name")
    return host


def _parse_ipv4_literal(host: str, fail: Fail) -> IPAddress | None:
    """A canonical dotted-quad literal, None for a name; refuse what only inet_aton accepts."""
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
    except OSError:
        return None
    raise fail(f"host {host} is not a canonical IP address")


def _resolve(host: str, port: int, resolver: Resolver, fail: Fail, field: str) -> list[IPAddress]:
    """Every address a name stands for: loopback for localhost, else what DNS says in time."""
    if host == "localhost" or host.endswith(".localhost"):
        return [ipaddress.ip_address(a) for a in LOOPBACK_NAME_ADDRESSES]
    try:
        raw = resolver(host, port)
    except TimeoutError:  # before OSError, which it is
        raise LookupTimedOut(f"{field} host {host} did not resolve in time") from None
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        raw = []
    if not raw:
        raise Unresolvable(f"{field} host {host} does not resolve")
    ips: list[IPAddress] = []
    for address in raw:
        try:
            ips.append(ipaddress.ip_address(address))
        except ValueError:
            raise fail(f"host {host} resolves to an invalid address {address!r}") from None
    return list(dict.fromkeys(ips))


def _classify(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be connected to, or None for a public unicast address."""
    if ip in METADATA_ADDRESSES:
        return "the metadata server"
    if isinstance(ip, ipaddress.IPv6Address):
        for kind, v4 in _embedded_ipv4(ip):
            inner = _classify(v4)
            if inner is not None:
                return f"{kind} address embedding {v4}, {inner}"
        if ip.ipv4_mapped is not None:  # even a public one: the v4 address should be used
            return "an IPv4-mapped IPv6 address"
        if ip.is_site_local:
            return "a site-local address"
    for flag, problem in (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
    ):
        if flag:
            return problem
    for problem, networks in _NAMED_RANGES:
        if any(ip.version == net.version and ip in net for net in networks):
            return problem
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "a non-public address"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """IPv4 addresses carried inside mapped, 6to4, Teredo and NAT64 (64:ff9b::/96) addresses."""
    embedded = []
    if ip.ipv4_mapped is not None:
        embedded.append(("an IPv4-mapped IPv6", ip.ipv4_mapped))
    if ip.sixtofour is not None:
        embedded.append(("a 6to4", ip.sixtofour))
    if ip.teredo is not None:
        embedded += [("a Teredo", v4) for v4 in ip.teredo]
    if ip in _NAT64:
        embedded.append(("a NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    return embedded
