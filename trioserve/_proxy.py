"""Running behind a proxy: which peers are trusted, what their headers mean for the ASGI
scope, and reading a PROXY protocol header off a fresh connection.

:class:`TrustedPeers` is ``--forwarded-allow-ips``. :func:`apply_proxy_headers` rewrites a
request scope from ``Forwarded`` (RFC 7239) or ``X-Forwarded-*`` headers sent by a trusted
peer. :func:`read_proxy_protocol` is the trio edge of :mod:`trioserve._proto.proxy_protocol`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any

import trio

from ._proto.proxy_protocol import NEED_MORE, ProxyInfo, ProxyProtocolError, parse_proxy_header

__all__ = ["TrustedPeers", "apply_proxy_headers", "read_proxy_protocol"]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedPeers:
    """The peers whose proxy headers are believed: ``--forwarded-allow-ips``.

    Args:
        allow: IP addresses or networks in CIDR notation (host bits may be set:
            ``10.0.0.7/8`` means ``10.0.0.0/8``); ``"*"`` trusts every peer.

    ``host in peers`` is true for an address inside one of the networks. An IPv4 address
    seen through a dual-stack socket (``::ffff:10.0.0.7``) matches IPv4 networks too.
    ``None`` -- the peer of a unix socket, which has no address -- is always trusted:
    only processes on this machine can connect to a unix socket, and a proxy in front of
    one is the usual reason it exists.

    Raises:
        ValueError: an entry is neither ``"*"`` nor an IP address or network.
    """

    def __init__(self, allow: Sequence[str]) -> None:
        entries = [allow] if isinstance(allow, str) else list(allow)
        self._all = False
        self._networks: list[_Network] = []
        for entry in entries:
            item = entry.strip()
            if item == "*":
                self._all = True
                continue
            try:
                self._networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(
                    "forwarded_allow_ips: expected IP addresses or networks (CIDR), or '*', "
                    f"got {entry!r}"
                ) from None

    def __contains__(self, host: str | None) -> bool:
        if host is None or self._all:
            return True
        address = _ip(host)
        if address is None:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            mapped = address.ipv4_mapped
            if any(mapped in network for network in self._networks):
                return True
        return any(address in network for network in self._networks)

    def __repr__(self) -> str:
        items = ["*"] if self._all else []
        items += [str(network) for network in self._networks]
        return f"TrustedPeers({items!r})"


def _ip(text: str) -> _Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# -- proxy headers -------------------------------------------------------------------------

_SCHEMES = {"http", "https", "ws", "wss"}
# A Host header value: a registered name, an IPv4 address or a bracketed IPv6 address,
# then an optional port. Anything else from a proxy is ignored rather than passed on.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(?::[0-9]{1,5})?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Unquoted values: a token, plus ':' '[' ']' which RFC 7239 wants quoted but some
# proxies send bare (for=192.0.2.1:4711).
_BARE_VALUE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z:\[\]-]+")
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]+")
_OWS = " \t"


def apply_proxy_headers(scope: MutableMapping[str, Any], trusted: TrustedPeers) -> None:
    """Rewrite an ``http`` or ``websocket`` scope from its proxy headers, in place.

    Nothing happens unless ``scope["client"]`` is a trusted peer. Then ``Forwarded``
    (RFC 7239) is used when present, and ``X-Forwarded-For``, ``-Proto`` and ``-Host``
    otherwise; the two are never mixed.

    The client is found by walking the hops from the right (the one nearest to this
    server), skipping trusted proxies: the first untrusted hop is the client, since
    anything to its left was sent by the client itself and could be made up. When every
    hop is trusted the leftmost one is used. The proto and host that go with that hop are
    used too:

    - ``scope["client"]`` becomes the hop's address; the port is the ``for=`` port of a
      ``Forwarded`` hop, else 0. An obfuscated (``_hidden``), ``unknown`` or malformed
      address leaves the client unchanged.
    - ``scope["scheme"]`` becomes the proto when it is http, https, ws or wss, mapped to
      the scope type (https is wss on a websocket, and the other way round).
    - The ``host`` header in ``scope["headers"]`` is replaced by the forwarded host (ASGI
      has no other place for it), when that is a valid host.

    ``X-Forwarded-Proto`` and ``-Host`` are lists when proxies append to them; the entry
    lined up with the chosen ``X-Forwarded-For`` hop is used when the lists have the same
    length, otherwise the last one (set by the nearest proxy). A malformed ``Forwarded``
    header changes nothing.
    """
    client = scope.get("client")
    if (client[0] if client else None) not in trusted:
        return
    headers = list(scope.get("headers") or ())  # read several times below
    forwarded = _header(headers, b"forwarded")
    if forwarded is not None:
        hop = _forwarded_hop(forwarded, trusted)
        if hop is None:
            return
        new_client, proto, host = hop
    else:
        new_client, proto, host = _x_forwarded(headers, trusted)
    if new_client is not None:
        scope["client"] = new_client
    if proto is not None and proto.lower() in _SCHEMES:
        secure = proto.lower() in ("https", "wss")
        if scope.get("type") == "websocket":
            scope["scheme"] = "wss" if secure else "ws"
        else:
            scope["scheme"] = "https" if secure else "http"
    if host is not None and _HOST.fullmatch(host):
        scope["headers"] = _with_host(headers, host.encode("ascii"))


def _header(headers: Iterable[Any], name: bytes) -> str | None:
    """All values of one header joined by commas (as HTTP lists are), or None if absent."""
    values = [bytes(value) for key, value in headers if bytes(key).lower() == name]
    return b",".join(values).decode("latin-1") if values else None


def _with_host(headers: Iterable[Any], host: bytes) -> list[tuple[bytes, bytes]]:
    result: list[tuple[bytes, bytes]] = []
    replaced = False
    for key, value in headers:
        if bytes(key).lower() == b"host":
            if not replaced:
                result.append((b"host", host))
                replaced = True
        else:
            result.append((bytes(key), bytes(value)))
    if not replaced:
        result.append((b"host", host))
    return result


def _x_forwarded(
    headers: Iterable[Any], trusted: TrustedPeers
) -> tuple[tuple[str, int] | None, str | None, str | None]:
    client: tuple[str, int] | None = None
    hops: list[str] = []
    depth = 0  # how many hops from the right the client is
    forwarded_for = _header(headers, b"x-forwarded-for")
    if forwarded_for is not None:
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        host: str | None = None
        for depth, hop in enumerate(reversed(hops)):  # noqa: B007 -- depth is used below
            host = _xff_host(hop)
            if host is None or host not in trusted:
                break
        client = (host, 0) if host is not None else None

    def lined_up(name: bytes) -> str | None:
        value = _header(headers, name)
        if value is None:
            return None
        entries = [entry.strip() for entry in value.split(",")]
        return entries[-1 - depth] if len(entries) == len(hops) else entries[-1]

    return client, lined_up(b"x-forwarded-proto"), lined_up(b"x-forwarded-host")


def _xff_host(hop: str) -> str | None:
    """The address of an X-Forwarded-For hop, which some proxies send with a port."""
    address = _ip(hop)
    if address is None:
        if hop.startswith("[") and "]" in hop:
            address = _ip(hop[1 : hop.index("]")])
        elif hop.count(":") == 1:
            address = _ip(hop.partition(":")[0])
    if address is None or (isinstance(address, ipaddress.IPv6Address) and address.scope_id):
        return None
    return str(address)


def _forwarded_hop(
    value: str, trusted: TrustedPeers
) -> tuple[tuple[str, int] | None, str | None, str | None] | None:
    elements = _parse_forwarded(value)
    if not elements:
        return None
    chosen = elements[0]
    node: tuple[str, int] | None = None
    for element in reversed(elements):
        node = _forwarded_node(element["for"]) if "for" in element else None
        if node is None or node[0] not in trusted:
            chosen = element
            break
    return node, chosen.get("proto"), chosen.get("host")


def _parse_forwarded(value: str) -> list[dict[str, str]] | None:
    """The elements of a Forwarded header, each a dict of lowercased parameter names.

    None when the header does not follow RFC 7239's grammar; empty elements are dropped.
    """
    elements: list[dict[str, str]] = []
    pairs: dict[str, str] = {}
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in _OWS:
            i += 1
        if i < n and value[i] not in ",;":
            name_match = _TOKEN.match(value, i)
            if name_match is None or name_match.end() >= n or value[name_match.end()] != "=":
                return None
            name = name_match.group().lower()
            i = name_match.end() + 1
            if i < n and value[i] == '"':
                parsed = _quoted_string(value, i)
                if parsed is None:
                    return None
                pair_value, i = parsed
            else:
                value_match = _BARE_VALUE.match(value, i)
                if value_match is None:
                    return None
                pair_value, i = value_match.group(), value_match.end()
            if name in pairs:  # RFC 7239: each parameter at most once per element
                return None
            pairs[name] = pair_value
            while i < n and value[i] in _OWS:
                i += 1
        if i >= n or value[i] == ",":
            if pairs:
                elements.append(pairs)
            pairs = {}
            if i >= n:
                return elements
        elif value[i] != ";":
            return None
        i += 1


def _quoted_string(value: str, start: int) -> tuple[str, int] | None:
    """The unescaped content of the quoted string at ``value[start]`` and the index after it."""
    out: list[str] = []
    i = start + 1
    while i < len(value):
        char = value[i]
        if char == '"':
            return "".join(out), i + 1
        if char == "\\":
            i += 1
            if i >= len(value):
                return None
            char = value[i]
        out.append(char)
        i += 1
    return None


def _forwarded_node(node: str) -> tuple[str, int] | None:
    """(address, port) of a ``for=`` node, or None for ``unknown``, obfuscated or malformed."""
    bare = _ip(node)
    if isinstance(bare, ipaddress.IPv6Address) and not bare.scope_id:
        return str(bare), 0  # an unbracketed IPv6 address: lenient, no port possible
    if node.startswith("["):
        host, bracket, rest = node[1:].partition("]")
        if not bracket:
            return None
        version = 6
    else:
        host, colon, port_text = node.partition(":")
        rest = colon + port_text
        version = 4
    port = 0
    if rest:
        port_text = rest[1:]
        if not rest.startswith(":"):
            return None
        if port_text.isascii() and port_text.isdigit() and len(port_text) <= 5:
            port = int(port_text)
            if port > 65535:
                return None
        elif not _OBFUSCATED.fullmatch(port_text):
            return None
    address = _ip(host)
    if address is None or address.version != version:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None
    return str(address), port


# -- PROXY protocol ------------------------------------------------------------------------


# The timeout is a parameter rather than the caller's cancel scope because running out of
# time is a protocol failure, reported like any other as a ProxyProtocolError.
async def read_proxy_protocol(
    stream: trio.abc.Stream,
    mode: str,
    timeout: float,  # noqa: ASYNC109
) -> tuple[ProxyInfo, bytes]:
    """Read the PROXY protocol header that starts ``stream``.

    Args:
        stream: A freshly accepted connection.
        mode: "v1", "v2" or "auto", as for
            :func:`~trioserve._proto.proxy_protocol.parse_proxy_header`.
        timeout: Seconds the whole header may take to arrive.

    Returns:
        The header's information, and the bytes received after the header: they belong
        to the proxied connection (wrap the stream in a ``PrefixedStream`` to replay them).

    Raises:
        ProxyProtocolError: the header is invalid, incomplete when the peer closed, or
            not complete within ``timeout``.
    """
    data = b""
    try:
        with trio.fail_after(timeout):
            while True:
                result = parse_proxy_header(data, mode)
                if result is not NEED_MORE:
                    info, consumed = result
                    return info, data[consumed:]
                chunk = await stream.receive_some()
                if not chunk:
                    raise ProxyProtocolError(
                        f"connection closed after {len(data)} bytes of an incomplete PROXY header"
                    )
                data += chunk
    except trio.TooSlowError:
        raise ProxyProtocolError(f"no PROXY header within {timeout:g} seconds") from None
