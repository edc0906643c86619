"""Tests for trioserve._proxy: trusted peers, proxy headers, and reading a PROXY header."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import trio
import trio.testing

from trioserve import Config
from trioserve._proto.proxy_protocol import ProxyInfo, ProxyProtocolError
from trioserve._proxy import TrustedPeers, apply_proxy_headers, read_proxy_protocol

PROXY_PEER = ("10.0.0.1", 51000)
TRUSTED = TrustedPeers(["10.0.0.0/8", "fd00::/8"])


def make_scope(
    *headers: tuple[str, str], client: Any = PROXY_PEER, type_: str = "http"
) -> dict[str, Any]:
    return {
        "type": type_,
        "scheme": "http" if type_ == "http" else "ws",
        "client": client,
        "server": ("10.0.0.9", 8000),
        "headers": [(b"host", b"backend:8000")]
        + [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers],
    }


def applied(*headers: tuple[str, str], trusted: TrustedPeers = TRUSTED, **kw: Any) -> Any:
    scope = make_scope(*headers, **kw)
    apply_proxy_headers(scope, trusted)
    return scope


def host_headers(scope: dict[str, Any]) -> list[bytes]:
    return [value for name, value in scope["headers"] if name == b"host"]


# -- TrustedPeers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "host", "expected"),
    [
        (["127.0.0.1"], "127.0.0.1", True),
        (["127.0.0.1"], "127.0.0.2", False),
        (["127.0.0.1", "192.0.2.7"], "192.0.2.7", True),
        (["10.0.0.0/8"], "10.255.0.3", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["10.0.0.7/8"], "10.1.2.3", True),  # host bits set: the network is meant
        (["::1"], "::1", True),
        (["::1"], "::2", False),
        (["2001:db8::/32"], "2001:db8:ffff::5", True),
        (["2001:db8::/32"], "2001:db9::5", False),
        (["2001:db8::/32"], "192.0.2.1", False),
        (["192.0.2.0/24"], "2001:db8::1", False),
        (["127.0.0.1"], "::ffff:127.0.0.1", True),  # IPv4 peer on a dual-stack socket
        (["127.0.0.1"], "localhost", False),
        (["127.0.0.1"], "", False),
        ([], "127.0.0.1", False),
        (["*"], "203.0.113.9", True),
        (["*"], "2001:db8::1", True),
        (["*"], "not-an-address", True),
    ],
)
def test_trusted_peers_membership(allow: list[str], host: str, expected: bool) -> None:
    """A host is trusted when it is one of the addresses or inside one of the networks."""
    assert (host in TrustedPeers(allow)) is expected


@pytest.mark.parametrize("allow", [[], ["127.0.0.1"], ["*"]])
def test_unix_socket_peer_is_always_trusted(allow: list[str]) -> None:
    """A peer with no address (a unix socket, hence local) is trusted whatever the list."""
    assert None in TrustedPeers(allow)


def test_default_setting_trusts_only_loopback() -> None:
    """The default forwarded_allow_ips trusts IPv4 and IPv6 loopback and nothing else."""
    peers = TrustedPeers(Config().forwarded_allow_ips)
    assert "127.0.0.1" in peers
    assert "::1" in peers
    assert "127.0.0.2" not in peers
    assert "192.0.2.1" not in peers


@pytest.mark.parametrize("entry", ["localhost", "10.0.0.0/33", "1.2.3", ""])
def test_trusted_peers_refuses_bad_entries(entry: str) -> None:
    """An entry that is not an address, a network or '*' is a ValueError naming it."""
    with pytest.raises(ValueError, match=f"forwarded_allow_ips: .* got {entry!r}"):
        TrustedPeers(["127.0.0.1", entry])


# -- untrusted peers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [("x-forwarded-for", "203.0.113.7"), ("x-forwarded-proto", "https"),
         ("x-forwarded-host", "example.com")],
        [("forwarded", "for=203.0.113.7;proto=https;host=example.com")],
    ],
)  # fmt: skip
def test_untrusted_peer_leaves_scope_unchanged(headers: list[tuple[str, str]]) -> None:
    """Proxy headers from a peer outside forwarded_allow_ips are ignored entirely."""
    scope = make_scope(*headers, client=("192.0.2.50", 40000))
    before = copy.deepcopy(scope)
    apply_proxy_headers(scope, TRUSTED)
    assert scope == before


def test_unix_socket_peer_headers_are_applied() -> None:
    """A scope without a client address (unix socket) has its proxy headers applied."""
    scope = applied(("x-forwarded-for", "203.0.113.7"), client=None)
    assert scope["client"] == ("203.0.113.7", 0)


def test_no_proxy_headers_leaves_scope_unchanged() -> None:
    """A trusted peer that sends no proxy headers changes nothing."""
    scope = make_scope()
    before = copy.deepcopy(scope)
    apply_proxy_headers(scope, TRUSTED)
    assert scope == before


# -- X-Forwarded-* -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "client"),
    [
        ("203.0.113.7", ("203.0.113.7", 0)),
        (" 203.0.113.7 ", ("203.0.113.7", 0)),
        ("2001:db8::7", ("2001:db8::7", 0)),
        ("203.0.113.7:5555", ("203.0.113.7", 0)),
        ("[2001:db8::7]:443", ("2001:db8::7", 0)),
        # Walking from the right: trusted proxies are skipped ...
        ("203.0.113.7, 10.0.0.2, 10.0.0.3", ("203.0.113.7", 0)),
        ("203.0.113.7,fd00::2", ("203.0.113.7", 0)),
        # ... and whatever the client itself put to the left of its address is not used.
        ("6.6.6.6, 203.0.113.7", ("203.0.113.7", 0)),
        ("6.6.6.6, 203.0.113.7, 10.0.0.2", ("203.0.113.7", 0)),
        # Every hop trusted: the leftmost one.
        ("10.0.0.5, 10.0.0.2", ("10.0.0.5", 0)),
        # The hop that would be the client is not an address: the client stays.
        ("203.0.113.7, unknown", PROXY_PEER),
        ("203.0.113.7, _hidden, 10.0.0.2", PROXY_PEER),
        ("203.0.113.7, , 10.0.0.2", PROXY_PEER),
        ("fe80::1%eth0", PROXY_PEER),
        ("", PROXY_PEER),
    ],
)
def test_x_forwarded_for_sets_the_client(value: str, client: tuple[str, int]) -> None:
    """X-Forwarded-For gives the first untrusted hop from the right, with port 0."""
    assert applied(("x-forwarded-for", value))["client"] == client


def test_x_forwarded_for_with_star_takes_the_leftmost() -> None:
    """With '*' every hop is trusted, so the leftmost address is the client."""
    scope = applied(("x-forwarded-for", "203.0.113.7, 198.51.100.3"), trusted=TrustedPeers("*"))
    assert scope["client"] == ("203.0.113.7", 0)


def test_x_forwarded_for_lines_are_one_list() -> None:
    """Several X-Forwarded-For header lines are read as one comma-separated list."""
    scope = applied(("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.7, 10.0.0.2"))
    assert scope["client"] == ("203.0.113.7", 0)


@pytest.mark.parametrize(
    ("proto", "type_", "scheme"),
    [
        ("https", "http", "https"),
        ("http", "http", "http"),
        ("HTTPS", "http", "https"),
        ("wss", "http", "https"),
        ("https", "websocket", "wss"),
        ("http", "websocket", "ws"),
        ("wss", "websocket", "wss"),
        ("ws", "websocket", "ws"),
    ],
)
def test_x_forwarded_proto_sets_the_scheme(proto: str, type_: str, scheme: str) -> None:
    """X-Forwarded-Proto sets the scheme, mapped to the scope type (https is wss on ws)."""
    scope = applied(("x-forwarded-proto", proto), type_=type_)
    assert scope["scheme"] == scheme


@pytest.mark.parametrize("proto", ["ftp", "", "https://", "javascript"])
def test_invalid_x_forwarded_proto_is_ignored(proto: str) -> None:
    """A proto other than http, https, ws or wss leaves the scheme alone."""
    assert applied(("x-forwarded-proto", proto))["scheme"] == "http"


@pytest.mark.parametrize(
    ("forwarded_for", "proto", "scheme"),
    [
        ("203.0.113.7, 10.0.0.2", "https, http", "https"),  # lined up with the chosen hop
        ("6.6.6.6, 203.0.113.7", "http, https", "https"),
        ("203.0.113.7, 10.0.0.2", "https", "https"),  # a single value
        ("203.0.113.7, 10.0.0.2, 10.0.0.3", "http, https", "https"),  # lengths differ: last
    ],
)
def test_x_forwarded_proto_list_follows_the_client_hop(
    forwarded_for: str, proto: str, scheme: str
) -> None:
    """A list of protos is read at the chosen hop when it lines up, else the last entry."""
    scope = applied(("x-forwarded-for", forwarded_for), ("x-forwarded-proto", proto))
    assert scope["scheme"] == scheme


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", b"example.com"),
        ("example.com:8443", b"example.com:8443"),
        ("[2001:db8::1]:8443", b"[2001:db8::1]:8443"),
        ("192.0.2.1", b"192.0.2.1"),
        ("evil.example, example.com", b"example.com"),  # the nearest proxy's value
    ],
)
def test_x_forwarded_host_rewrites_the_host_header(host: str, expected: bytes) -> None:
    """X-Forwarded-Host replaces the host header, as ASGI has no other place for it."""
    assert host_headers(applied(("x-forwarded-host", host))) == [expected]


@pytest.mark.parametrize("host", ["", "exa mple.com", "example.com/path", "a@b", "h:99999x"])
def test_invalid_x_forwarded_host_is_ignored(host: str) -> None:
    """A forwarded host that is not a valid Host value leaves the host header alone."""
    assert host_headers(applied(("x-forwarded-host", host))) == [b"backend:8000"]


def test_host_header_is_added_or_deduplicated() -> None:
    """The forwarded host is added when there was no host header and replaces duplicates."""
    scope = {"type": "http", "client": PROXY_PEER, "headers": [(b"accept", b"*/*")]}
    apply_proxy_headers(scope, TRUSTED)
    assert scope["headers"] == [(b"accept", b"*/*")]
    scope["headers"] = [(b"x-forwarded-host", b"example.com"), (b"accept", b"*/*")]
    apply_proxy_headers(scope, TRUSTED)
    assert scope["headers"][-1] == (b"host", b"example.com")
    scope["headers"] = [(b"host", b"a"), (b"x-forwarded-host", b"example.com"), (b"host", b"b")]
    apply_proxy_headers(scope, TRUSTED)
    assert scope["headers"] == [(b"host", b"example.com"), (b"x-forwarded-host", b"example.com")]


# -- Forwarded (RFC 7239) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "client", "scheme", "host"),
    [
        ("for=192.0.2.60;proto=https;by=203.0.113.43;host=example.com",
         ("192.0.2.60", 0), "https", b"example.com"),
        ('for="192.0.2.60:4711"', ("192.0.2.60", 4711), "http", b"backend:8000"),
        ('for="[2001:db8:cafe::17]:4711";proto=https',
         ("2001:db8:cafe::17", 4711), "https", b"backend:8000"),
        ('for="[2001:db8:cafe::17]"', ("2001:db8:cafe::17", 0), "http", b"backend:8000"),
        ('For="192.0.2.60";Proto=HTTPS;HOST="example.com:8443"',
         ("192.0.2.60", 0), "https", b"example.com:8443"),
        ('for = 192.0.2.60', PROXY_PEER, "http", b"backend:8000"),  # malformed: no change
        ('for="\\1\\9\\2.0.2.60"', ("192.0.2.60", 0), "http", b"backend:8000"),  # quoted-pair
        ("for=192.0.2.60:4711", ("192.0.2.60", 4711), "http", b"backend:8000"),  # unquoted
        ('for="192.0.2.60:_port7"', ("192.0.2.60", 0), "http", b"backend:8000"),
        # Obfuscated or unknown client: the client stays, the rest still applies.
        ("for=_hidden;proto=https;host=example.com", PROXY_PEER, "https", b"example.com"),
        ("for=unknown;proto=https", PROXY_PEER, "https", b"backend:8000"),
        ("proto=https", PROXY_PEER, "https", b"backend:8000"),
        ('for="[2001:db8::1"', PROXY_PEER, "http", b"backend:8000"),
        ('for="[192.0.2.1]"', PROXY_PEER, "http", b"backend:8000"),
        ('for="192.0.2.60:70000"', PROXY_PEER, "http", b"backend:8000"),
        ('for=192.0.2.60;proto=gopher;host="bad/host"', ("192.0.2.60", 0), "http",
         b"backend:8000"),
        # Several hops, from the right: trusted proxies are skipped.
        ("for=203.0.113.7;proto=https;host=example.com, for=10.0.0.2;proto=http;host=lb",
         ("203.0.113.7", 0), "https", b"example.com"),
        ("for=6.6.6.6;host=evil.example, for=203.0.113.7;host=example.com",
         ("203.0.113.7", 0), "http", b"example.com"),
        ("for=10.0.0.5;proto=https, for=10.0.0.2", ("10.0.0.5", 0), "https", b"backend:8000"),
        ('for=203.0.113.7, for="[fd00::3]:80"', ("203.0.113.7", 0), "http", b"backend:8000"),
        ("for=203.0.113.7, for=_proxy;proto=https", PROXY_PEER, "https", b"backend:8000"),
        (",  for=203.0.113.7 ;proto=https ,", ("203.0.113.7", 0), "https", b"backend:8000"),
        ("for=203.0.113.7;;proto=https;", ("203.0.113.7", 0), "https", b"backend:8000"),
    ],
)  # fmt: skip
def test_forwarded_header(value: str, client: tuple[str, int], scheme: str, host: bytes) -> None:
    """Forwarded sets client (with for= port), scheme and host from the client's hop."""
    scope = applied(("forwarded", value))
    assert scope["client"] == client
    assert scope["scheme"] == scheme
    assert host_headers(scope) == [host]


def test_forwarded_lines_are_one_list() -> None:
    """Several Forwarded header lines are read as one list of hops."""
    scope = applied(("forwarded", "for=203.0.113.7"), ("forwarded", "for=10.0.0.2"))
    assert scope["client"] == ("203.0.113.7", 0)


def test_forwarded_takes_precedence_over_x_forwarded() -> None:
    """With both present, Forwarded is used and X-Forwarded-* are ignored altogether."""
    scope = applied(
        ("x-forwarded-for", "198.51.100.1"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "other.example"),
        ("forwarded", "for=203.0.113.7"),
    )
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "http"
    assert host_headers(scope) == [b"backend:8000"]


def test_forwarded_on_websocket_scope_maps_proto() -> None:
    """Forwarded proto=https on a websocket scope gives the wss scheme."""
    assert applied(("forwarded", "proto=https"), type_="websocket")["scheme"] == "wss"


@pytest.mark.parametrize(
    "value",
    [
        "for=192.0.2.1;for=192.0.2.2",  # a parameter twice in one element
        'for="192.0.2.1',  # unterminated quoted string
        'for="192.0.2.1\\',
        "for",
        "=192.0.2.1",
        "for=",
        "for=192.0.2.1 proto=https",
        "for=192.0.2.1;host=bad/host",  # '/' must be quoted
        "for=192.0.2.1/8",
        "",
        " , ",
    ],
)
def test_malformed_forwarded_changes_nothing(value: str) -> None:
    """A Forwarded header that breaks RFC 7239's grammar is ignored, X-Forwarded-* too."""
    scope = make_scope(("forwarded", value), ("x-forwarded-for", "198.51.100.1"))
    before = copy.deepcopy(scope)
    apply_proxy_headers(scope, TRUSTED)
    assert scope == before


# -- read_proxy_protocol -------------------------------------------------------------------

V1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
V1_INFO = ProxyInfo(("192.0.2.1", 56324), ("198.51.100.2", 443))
V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"


async def send_in_pieces(stream: trio.abc.Stream, *pieces: bytes) -> None:
    """Send each piece only once the reader has taken the previous one and blocked."""
    for piece in pieces:
        await trio.testing.wait_all_tasks_blocked()
        await stream.send_all(piece)


@pytest.mark.parametrize("mode", ["v1", "auto"])
async def test_read_proxy_header_split_across_sends(nursery: trio.Nursery, mode: str) -> None:
    """A header arriving in several pieces is read whole; bytes past it are returned."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(send_in_pieces, client, V1[:3], V1[3:20], V1[20:-1], V1[-1:] + b"GET")
    with trio.fail_after(5):
        assert await read_proxy_protocol(server, mode, timeout=10) == (V1_INFO, b"GET")


async def test_read_proxy_header_byte_by_byte(nursery: trio.Nursery) -> None:
    """A v2 header sent one byte at a time is read, with nothing past it."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(send_in_pieces, client, *(V2_LOCAL[i : i + 1] for i in range(16)))
    with trio.fail_after(5):
        info, rest = await read_proxy_protocol(server, "v2", timeout=10)
    assert info == ProxyInfo(None, None)
    assert rest == b""


async def test_read_proxy_header_returns_leftover_bytes() -> None:
    """Bytes received together with the header are returned for the app's protocol."""
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(V1 + b"GET / HTTP/1.1\r\n\r\n")
    with trio.fail_after(5):
        info, rest = await read_proxy_protocol(server, "v1", timeout=10)
    assert info == V1_INFO
    assert rest == b"GET / HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize("sent", [b"", V1[:10]])
async def test_read_proxy_header_times_out(autojump_clock: Any, sent: bytes) -> None:
    """A header not complete within the timeout is a ProxyProtocolError after that time."""
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(sent)
    start = trio.current_time()
    with pytest.raises(ProxyProtocolError, match=r"no PROXY header within 2\.5 seconds"):
        await read_proxy_protocol(server, "auto", timeout=2.5)
    assert trio.current_time() - start == pytest.approx(2.5)


@pytest.mark.parametrize("sent", [b"", V1[:10], V2_LOCAL[:15]])
async def test_read_proxy_header_eof(sent: bytes) -> None:
    """The peer closing before the header is complete is a ProxyProtocolError."""
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(sent)
    await client.send_eof()
    with trio.fail_after(5), pytest.raises(ProxyProtocolError, match="connection closed"):
        await read_proxy_protocol(server, "auto", timeout=10)


async def test_read_proxy_header_invalid_fails_at_once() -> None:
    """An invalid header is refused as soon as it is seen, without waiting for more."""
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(b"GET / HTTP/1.1\r\n")
    with trio.fail_after(5), pytest.raises(ProxyProtocolError, match="must start with"):
        await read_proxy_protocol(server, "v1", timeout=10)
