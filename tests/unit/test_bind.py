"""Bind specs: parsing every form, the canonical text, and creating real listeners."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import require_ipv6_loopback
from trioserve._bind import (
    DEFAULT_PORT,
    BindSpec,
    cleanup_listener,
    create_listeners,
    listener_address,
    listener_url,
    parse_bind,
)
from trioserve._errors import BindError

EXPECTED = "expected HOST:PORT, [IPV6]:PORT, unix:PATH[(MODE)] or fd://N"
TIMEOUT = 10


def tcp(host: str, port: int = DEFAULT_PORT) -> BindSpec:
    return BindSpec("tcp", host=host, port=port)


def unix(path: str, mode: int | None = None) -> BindSpec:
    return BindSpec("unix", path=path, mode=mode)


def fd(number: int) -> BindSpec:
    return BindSpec("fd", fd=number)


@asynccontextmanager
async def listening(*texts: str) -> AsyncIterator[list[trio.SocketListener]]:
    listeners = await create_listeners([parse_bind(text) for text in texts], backlog=16)
    try:
        yield listeners
    finally:
        for listener in listeners:
            await listener.aclose()


async def exchange(client: trio.abc.Stream, listener: trio.SocketListener) -> None:
    """Accept the client's connection and pass a few bytes each way."""
    with trio.fail_after(TIMEOUT):
        server = await listener.accept()
        async with server, client:
            await client.send_all(b"ping")
            assert await server.receive_some(4) == b"ping"
            await server.send_all(b"pong")
            assert await client.receive_some(4) == b"pong"


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that a plain listening socket already holds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def ipv6_loopback() -> None:
    require_ipv6_loopback()


@pytest.fixture
def unprivileged() -> None:
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 1))
    except PermissionError:
        return
    pytest.skip("this process may bind ports below 1024")


# Parsing


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("127.0.0.1:8000", tcp("127.0.0.1", 8000)),
        ("localhost:80", tcp("localhost", 80)),
        ("example.com:0", tcp("example.com", 0)),
        ("0.0.0.0:65535", tcp("0.0.0.0", 65535)),
        ("localhost", tcp("localhost")),
        ("10.1.2.3", tcp("10.1.2.3")),
        (":9000", tcp("0.0.0.0", 9000)),
        ("[::1]:8000", tcp("::1", 8000)),
        ("[::]:0", tcp("::", 0)),
        ("[2001:db8::17]", tcp("2001:db8::17")),
        ("[fe80::1%eth0]:80", tcp("fe80::1%eth0", 80)),
        ("unix:/run/app.sock", unix("/run/app.sock")),
        ("unix:app.sock", unix("app.sock")),
        ("unix:/run/app.sock(0660)", unix("/run/app.sock", 0o660)),
        ("unix:/run/app.sock(660)", unix("/run/app.sock", 0o660)),
        ("unix:/run/app.sock(1777)", unix("/run/app.sock", 0o1777)),
        ("unix:/run/my app (old).sock", unix("/run/my app (old).sock")),
        ("unix:/run/a)(0600)", unix("/run/a)", 0o600)),
        ("fd://0", fd(0)),
        ("fd://3", fd(3)),
    ],
)
def test_parse_bind_accepts_form(text: str, spec: BindSpec) -> None:
    """Each documented bind form parses to the expected spec."""
    assert parse_bind(text) == spec


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("127.0.0.1:8000", "127.0.0.1:8000"),
        ("localhost", "localhost:8000"),
        (":80", "0.0.0.0:80"),
        ("127.0.0.1:080", "127.0.0.1:80"),
        ("[::1]", "[::1]:8000"),
        ("[::1]:9000", "[::1]:9000"),
        ("unix:/run/app.sock", "unix:/run/app.sock"),
        ("unix:/run/app.sock(660)", "unix:/run/app.sock(0660)"),
        ("unix:/run/app.sock(0600)", "unix:/run/app.sock(0600)"),
        ("fd://007", "fd://7"),
    ],
)
def test_str_is_canonical_text(text: str, canonical: str) -> None:
    """str() of a parsed spec is the canonical form: explicit port, brackets, 4-digit mode."""
    assert str(parse_bind(text)) == canonical


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "it is empty"),
        ("::1", "put IPv6 addresses in brackets, e.g. [::1]:8000"),
        ("::1:8000", "put IPv6 addresses in brackets, e.g. [::1]:8000"),
        ("fe80::1", "put IPv6 addresses in brackets, e.g. [::1]:8000"),
        ("localhost:http", "port must be a number"),
        ("localhost:-1", "port must be a number"),
        ("localhost: 80", "port must be a number"),
        ("localhost:\N{ARABIC-INDIC DIGIT THREE}", "port must be a number"),
        ("localhost:", "port is missing after ':'"),
        (":", "port is missing after ':'"),
        ("127.0.0.1:65536", "port must be 0-65535"),
        ("127.0.0.1:99999999999", "port must be 0-65535"),
        ("[::1", "missing ']' after the IPv6 address"),
        ("[::1]8000", "expected ':' after ']'"),
        ("[::1]:", "port is missing after ':'"),
        ("[::1]:70000", "port must be 0-65535"),
        ("[127.0.0.1]:80", "'127.0.0.1' is not an IPv6 address"),
        ("[]:80", "'' is not an IPv6 address"),
        ("[zz::1]:80", "'zz::1' is not an IPv6 address"),
        ("bad host:80", "host 'bad host' is not a hostname or IP address"),
        ("unix", "write unix sockets as unix:PATH"),
        ("http://localhost:80", "drop the 'http://' (only fd:// takes a scheme)"),
        ("tcp://:80", "drop the 'tcp://' (only fd:// takes a scheme)"),
        ("unix:", "unix socket path is empty"),
        ("unix:(0660)", "unix socket path is empty"),
        ("unix:/a\0b", "unix socket path contains a NUL byte"),
        ("unix:/a(99)", "mode must be 3 or 4 octal digits in parentheses, e.g. (0660)"),
        ("unix:/a(06600)", "mode must be 3 or 4 octal digits in parentheses, e.g. (0660)"),
        ("unix:/a(rw)", "mode must be 3 or 4 octal digits in parentheses, e.g. (0660)"),
        ("unix:/a)", "mode must be 3 or 4 octal digits in parentheses, e.g. (0660)"),
        ("fd://", "N must be a non-negative integer"),
        ("fd://-1", "N must be a non-negative integer"),
        ("fd://three", "N must be a non-negative integer"),
        ("fd://99999999999", "N must be a non-negative integer"),
    ],
)
def test_parse_bind_rejects_with_reason(text: str, reason: str) -> None:
    """A bad bind value is a ValueError listing the forms, the value and why it is bad."""
    with pytest.raises(ValueError) as excinfo:
        parse_bind(text)
    assert str(excinfo.value) == f"{EXPECTED}, got {text!r}; {reason}"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "tcp"},
        {"kind": "tcp", "host": "localhost", "port": 65536},
        {"kind": "tcp", "host": "localhost", "path": "/a"},
        {"kind": "unix", "path": "/a", "port": 80},
        {"kind": "unix", "path": "/a", "mode": 0o10000},
        {"kind": "unix", "path": "/a)"},
        {"kind": "fd"},
        {"kind": "fd", "fd": 3, "host": "localhost"},
        {"kind": "udp", "host": "localhost"},
        {"kind": "tcp", "host": "unix"},
    ],
)
def test_bind_spec_rejects_fields_parse_bind_cannot_produce(kwargs: dict[str, object]) -> None:
    """BindSpec refuses field combinations that no bind text describes."""
    with pytest.raises(ValueError, match=r"^invalid bind spec: "):
        BindSpec(**kwargs)  # type: ignore[arg-type]


hostnames = st.from_regex(r"[A-Za-z0-9_.-]+", fullmatch=True)
tcp_specs = st.builds(
    tcp,
    st.one_of(st.ip_addresses().map(str), hostnames),
    st.integers(0, 65535),
)
unix_paths = st.text(st.characters(exclude_characters="\0"), min_size=1)
unix_specs = st.one_of(
    st.builds(unix, unix_paths.filter(lambda path: not path.endswith(")"))),
    st.builds(unix, unix_paths, st.integers(0, 0o7777)),
)
fd_specs = st.builds(fd, st.integers(0, 2**31 - 1))


@given(st.one_of(tcp_specs, unix_specs, fd_specs))
def test_str_round_trips(spec: BindSpec) -> None:
    """Every valid spec survives str() and parse_bind(), and its text is stable."""
    assert parse_bind(str(spec)) == spec
    assert str(parse_bind(str(spec))) == str(spec)


@given(st.text())
def test_parse_bind_only_raises_value_error(text: str) -> None:
    """Any text either parses to a spec that round-trips or is a ValueError with the forms."""
    try:
        spec = parse_bind(text)
    except ValueError as exc:
        assert str(exc).startswith(f"{EXPECTED}, got {text!r}")
    else:
        assert parse_bind(str(spec)) == spec


# TCP listeners


async def test_tcp_listener_reports_the_real_port() -> None:
    """Binding 127.0.0.1:0 gives a listener whose address and URL carry the chosen port."""
    async with listening("127.0.0.1:0") as listeners:
        [listener] = listeners
        port = listener.socket.getsockname()[1]
        assert port != 0
        assert listener_address(listener) == ("127.0.0.1", port)
        assert listener_url(listener, "http") == f"http://127.0.0.1:{port}"
        assert listener_url(listener, "tcp") == f"tcp://127.0.0.1:{port}"
        with trio.fail_after(TIMEOUT):
            client = await trio.open_tcp_stream("127.0.0.1", port)
        await exchange(client, listener)


async def test_listeners_come_in_spec_order(tmp_path: Path) -> None:
    """create_listeners returns one listener per spec, in the order of the specs."""
    path = tmp_path / "app.sock"
    async with listening("127.0.0.1:0", f"unix:{path}", "127.0.0.1:0") as listeners:
        addresses = [listener_address(listener) for listener in listeners]
        assert addresses[1] == str(path)
        assert isinstance(addresses[0], tuple)
        assert isinstance(addresses[2], tuple)
        assert addresses[0] != addresses[2]


async def test_ipv6_listener_reports_a_bracketed_url(ipv6_loopback: None) -> None:
    """Binding [::1]:0 reports ("::1", port) and a URL with the host in brackets."""
    async with listening("[::1]:0") as listeners:
        [listener] = listeners
        port = listener.socket.getsockname()[1]
        assert listener_address(listener) == ("::1", port)
        assert listener_url(listener, "http") == f"http://[::1]:{port}"
        with trio.fail_after(TIMEOUT):
            client = await trio.open_tcp_stream("::1", port)
        await exchange(client, listener)


async def test_ipv6_and_ipv4_wildcards_share_a_port(ipv6_loopback: None) -> None:
    """IPV6_V6ONLY lets [::]:P and 0.0.0.0:P listen side by side."""
    async with listening("0.0.0.0:0") as first:
        port = listener_address(first[0])[1]
        async with listening(f"[::]:{port}") as second:
            assert listener_address(second[0]) == ("::", port)


async def test_busy_port_is_a_bind_error(busy_port: int) -> None:
    """A port another socket listens on gives "address already in use" and a hint."""
    with pytest.raises(BindError) as excinfo:
        await create_listeners([tcp("127.0.0.1", busy_port)], backlog=16)
    assert str(excinfo.value) == (
        f"cannot listen on 127.0.0.1:{busy_port}: address already in use"
        " (is another server running?)"
    )


async def test_privileged_port_without_root_says_so(unprivileged: None) -> None:
    """EACCES on a port below 1024 explains that such ports need root."""
    with pytest.raises(BindError) as excinfo:
        await create_listeners([tcp("127.0.0.1", 1)], backlog=16)
    assert str(excinfo.value) == (
        "cannot listen on 127.0.0.1:1: permission denied (ports below 1024 need root)"
    )


async def test_unresolvable_host_is_a_bind_error() -> None:
    """A host name that does not resolve is a BindError naming the host."""
    with trio.fail_after(TIMEOUT), pytest.raises(BindError) as excinfo:
        await create_listeners([tcp("nonexistent.invalid", 80)], backlog=16)
    assert str(excinfo.value) == (
        "cannot listen on nonexistent.invalid:80: cannot resolve host 'nonexistent.invalid'"
    )


# Unix sockets


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
async def test_unix_socket_gets_the_mode_asked_for(tmp_path: Path, mode: int) -> None:
    """unix:PATH(MODE) creates a socket file with exactly those permission bits."""
    path = tmp_path / "app.sock"
    async with listening(f"unix:{path}({mode:o})") as listeners:
        [listener] = listeners
        st_mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(st_mode)
        assert stat.S_IMODE(st_mode) == mode
        assert listener_address(listener) == str(path)
        assert listener_url(listener, "http") == f"unix:{path}"
        with trio.fail_after(TIMEOUT):
            client = await trio.open_unix_socket(str(path))
        await exchange(client, listener)


async def test_stale_unix_socket_file_is_taken_over(tmp_path: Path) -> None:
    """A socket file nobody listens on any more is replaced by the new listener."""
    path = tmp_path / "app.sock"
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(path))
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    async with listening(f"unix:{path}") as listeners:
        with trio.fail_after(TIMEOUT):
            client = await trio.open_unix_socket(str(path))
        await exchange(client, listeners[0])


async def test_live_unix_socket_is_a_bind_error(tmp_path: Path) -> None:
    """A socket file another server accepts on is left alone and reported."""
    path = tmp_path / "app.sock"
    async with listening(f"unix:{path}") as listeners:
        with trio.fail_after(TIMEOUT), pytest.raises(BindError) as excinfo:
            await create_listeners([unix(str(path))], backlog=16)
        assert str(excinfo.value) == (
            f"cannot listen on unix:{path}: another server is accepting connections on it"
        )
        # Still the live server's file: connecting reaches its listener.
        assert listener_address(listeners[0]) == str(path)
        with trio.fail_after(TIMEOUT):
            client = await trio.open_unix_socket(str(path))
        await client.aclose()


async def test_regular_file_at_unix_path_is_a_bind_error(tmp_path: Path) -> None:
    """A file that is not a socket is never removed to make room for one."""
    path = tmp_path / "app.sock"
    path.write_text("precious")
    with pytest.raises(BindError) as excinfo:
        await create_listeners([unix(str(path))], backlog=16)
    assert str(excinfo.value) == (
        f"cannot listen on unix:{path}: {str(path)!r} exists and is not a socket"
    )
    assert path.read_text() == "precious"


async def test_unix_socket_file_outlives_the_listener(tmp_path: Path) -> None:
    """Closing a unix listener leaves its file; cleanup_listener removes it afterwards."""
    path = tmp_path / "app.sock"
    async with listening(f"unix:{path}") as listeners:
        pass
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    cleanup_listener(listeners[0])
    assert not path.exists()


async def test_cleanup_uses_the_path_resolved_at_bind_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative unix path is cleaned up even after the working directory changed."""
    monkeypatch.chdir(tmp_path)
    async with listening("unix:app.sock") as listeners:
        assert listener_address(listeners[0]) == "app.sock"
        monkeypatch.chdir("/")
        for listener in listeners:
            cleanup_listener(listener)
    assert not (tmp_path / "app.sock").exists()


async def test_cleanup_leaves_other_files_and_tcp_alone(tmp_path: Path) -> None:
    """cleanup_listener ignores TCP listeners and a path that is no longer a socket."""
    path = tmp_path / "app.sock"
    async with listening(f"unix:{path}", "127.0.0.1:0") as listeners:
        path.unlink()
        path.write_text("someone else's")
        for listener in listeners:
            cleanup_listener(listener)
        assert path.read_text() == "someone else's"
        assert listeners[1].socket.fileno() != -1


# Inherited file descriptors


async def test_fd_adopts_a_listening_socket() -> None:
    """fd://N serves connections on an inherited listening socket."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    number = sock.detach()
    async with listening(f"fd://{number}") as listeners:
        [listener] = listeners
        assert listener.socket.fileno() == number
        assert listener_address(listener) == ("127.0.0.1", port)
        with trio.fail_after(TIMEOUT):
            client = await trio.open_tcp_stream("127.0.0.1", port)
        await exchange(client, listener)


async def test_fd_of_non_listening_socket_is_a_bind_error() -> None:
    """fd://N of a socket that is not listening is refused, and the fd stays open."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        number = sock.fileno()
        with pytest.raises(BindError) as excinfo:
            await create_listeners([fd(number)], backlog=16)
        assert str(excinfo.value) == f"cannot listen on fd://{number}: the socket is not listening"
        assert sock.getsockname()[0] == "127.0.0.1"


async def test_fd_of_datagram_socket_is_a_bind_error() -> None:
    """fd://N of a UDP socket is refused as not SOCK_STREAM."""
    with socket.socket(type=socket.SOCK_DGRAM) as sock:
        number = sock.fileno()
        with pytest.raises(BindError) as excinfo:
            await create_listeners([fd(number)], backlog=16)
        assert str(excinfo.value) == (
            f"cannot listen on fd://{number}: it is not a SOCK_STREAM socket"
        )


async def test_fd_that_is_not_a_socket_is_a_bind_error() -> None:
    """fd://N of a pipe, or of a closed descriptor, is a BindError saying why."""
    read_end, write_end = os.pipe()
    os.close(write_end)
    try:
        with pytest.raises(BindError) as excinfo:
            await create_listeners([fd(read_end)], backlog=16)
        assert str(excinfo.value) == (
            f"cannot listen on fd://{read_end}: socket operation on non-socket"
        )
        os.fstat(read_end)
        with pytest.raises(BindError) as excinfo:
            await create_listeners([fd(write_end)], backlog=16)
        assert str(excinfo.value) == f"cannot listen on fd://{write_end}: bad file descriptor"
    finally:
        os.close(read_end)


# Failure part-way through


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_failure_part_way_closes_earlier_listeners(tmp_path: Path, busy_port: int) -> None:
    """When a later spec fails, the listeners already created are closed: no fd leaks."""
    specs = [tcp("127.0.0.1", 0), unix(str(tmp_path / "app.sock")), tcp("127.0.0.1", busy_port)]
    before = open_fd_count()
    with pytest.raises(BindError, match="address already in use"):
        await create_listeners(specs, backlog=16)
    assert open_fd_count() == before
