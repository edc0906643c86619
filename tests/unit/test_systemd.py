"""systemd: socket activation variables, sd_notify datagrams and the watchdog."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trioserve import ConfigError
from trioserve._systemd import (
    ActivatedSocket,
    Notifier,
    activated_sockets,
    listeners_for,
    run_watchdog,
    watchdog_interval,
)

TIMEOUT = 5
PID = 4242


def listen_env(count: str, names: str | None = None, pid: int = PID) -> dict[str, str]:
    env = {"LISTEN_PID": str(pid), "LISTEN_FDS": count, "OTHER": "kept"}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    return env


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[trio.socket.SocketType]:
    """A datagram socket bound in tmp_path, standing in for systemd's notify socket."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(str(tmp_path / "notify"))
        yield sock


async def receive(sock: trio.socket.SocketType) -> bytes:
    with trio.fail_after(TIMEOUT):
        return await sock.recv(4096)


# Socket activation


def test_no_variables_means_no_sockets() -> None:
    """Without LISTEN_PID and LISTEN_FDS there is nothing to adopt."""
    assert activated_sockets({}, pid=PID) == []


def test_sockets_start_at_fd_3_without_names() -> None:
    """LISTEN_FDS=2 means fds 3 and 4, unnamed when LISTEN_FDNAMES is not set."""
    assert activated_sockets(listen_env("2"), pid=PID) == [
        ActivatedSocket(3, None),
        ActivatedSocket(4, None),
    ]


def test_names_are_matched_by_position() -> None:
    """LISTEN_FDNAMES names the fds in order; an empty name counts as no name."""
    assert activated_sockets(listen_env("3", "web:echo:"), pid=PID) == [
        ActivatedSocket(3, "web"),
        ActivatedSocket(4, "echo"),
        ActivatedSocket(5, None),
    ]


def test_variables_are_unset_by_default() -> None:
    """The three LISTEN_* variables are removed so that workers do not see them."""
    env = listen_env("1", "web")
    activated_sockets(env, pid=PID)
    assert env == {"OTHER": "kept"}


def test_variables_stay_with_unset_false() -> None:
    """unset=False leaves the environment as it was."""
    env = listen_env("1", "web")
    activated_sockets(env, pid=PID, unset=False)
    assert env == listen_env("1", "web")


def test_listen_pid_of_another_process_means_no_sockets() -> None:
    """Variables meant for another pid (inherited from a parent) are ignored, and unset."""
    env = listen_env("2", pid=PID + 1)
    assert activated_sockets(env, pid=PID) == []
    assert env == {"OTHER": "kept"}


def test_default_environ_and_pid_are_the_process_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without arguments os.environ and os.getpid() are used."""
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
    assert activated_sockets() == [ActivatedSocket(3, None)]
    assert "LISTEN_PID" not in os.environ


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (listen_env("1", pid=0), "LISTEN_PID: expected a process id, got '0'"),
        ({**listen_env("1"), "LISTEN_PID": "abc"}, "LISTEN_PID: expected a process id, got 'abc'"),
        (listen_env("-1"), "LISTEN_FDS: expected a number of file descriptors, got '-1'"),
        (listen_env(" 1"), "LISTEN_FDS: expected a number of file descriptors, got ' 1'"),
        (listen_env("99999999999"), "LISTEN_FDS: expected a number of file descriptors below"),
        (listen_env("2", "web"), "LISTEN_FDNAMES: expected 2 names separated by ':'"),
        (listen_env("1", "a:b"), "LISTEN_FDNAMES: expected 1 names separated by ':'"),
    ],
)
def test_malformed_variables_are_config_errors(env: dict[str, str], message: str) -> None:
    """A malformed LISTEN_* value is a one-line ConfigError naming the variable; still unset."""
    with pytest.raises(ConfigError) as info:
        activated_sockets(env, pid=PID)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert env == {"OTHER": "kept"}


def test_single_app_gets_every_socket() -> None:
    """A plain server (app_names [None]) gets all sockets, whatever their names."""
    sockets = [ActivatedSocket(3, "myapp.socket"), ActivatedSocket(4, None)]
    assert listeners_for(sockets, [None]) == {None: [3, 4]}


def test_multiapp_with_one_app_gets_every_socket() -> None:
    """A MultiApp with one application gets all sockets even if the names differ."""
    sockets = [ActivatedSocket(3, "other"), ActivatedSocket(4, "web")]
    assert listeners_for(sockets, ["web"]) == {"web": [3, 4]}


def test_multiapp_sockets_go_to_the_app_of_their_name() -> None:
    """With several applications each socket goes to the prefix equal to its name."""
    sockets = [ActivatedSocket(3, "echo"), ActivatedSocket(4, "web"), ActivatedSocket(5, "echo")]
    assert listeners_for(sockets, ["web", "echo", "admin"]) == {
        "web": [4],
        "echo": [3, 5],
        "admin": [],
    }


def test_no_sockets_maps_every_app_to_nothing() -> None:
    """Without activated sockets every application maps to an empty list."""
    assert listeners_for([], ["web", "echo"]) == {"web": [], "echo": []}


@pytest.mark.parametrize("name", ["myapp.socket", None])
def test_multiapp_unmatched_name_is_a_config_error(name: str | None) -> None:
    """With several applications an unknown or missing name says which names were expected."""
    with pytest.raises(ConfigError) as info:
        listeners_for([ActivatedSocket(3, "web"), ActivatedSocket(4, name)], ["web", "echo"])
    assert str(info.value) == (
        f"LISTEN_FDNAMES: socket fd 4 is named {name!r}, which is no application's prefix; "
        "expected one of 'web', 'echo' (set FileDescriptorName= in the socket unit)"
    )


def test_listeners_for_needs_an_application() -> None:
    """An empty list of applications is a programming error."""
    with pytest.raises(ValueError, match="at least one application"):
        listeners_for([], [])


# Notification


async def test_notify_sends_the_exact_datagram(
    receiver: trio.socket.SocketType, tmp_path: Path
) -> None:
    """Each notify() is one datagram of KEY=value lines in the order given."""
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify")}
    notifier = Notifier.from_environ(env)
    assert notifier is not None
    with notifier:
        notifier.notify(READY=1, STATUS="Serving on 127.0.0.1:8000")
        notifier.notify(STOPPING=True)
        notifier.notify(MAINPID=1234)
    assert await receive(receiver) == b"READY=1\nSTATUS=Serving on 127.0.0.1:8000"
    assert await receive(receiver) == b"STOPPING=1"
    assert await receive(receiver) == b"MAINPID=1234"
    assert env == {}


@pytest.mark.skipif(sys.platform != "linux", reason="abstract sockets are Linux only")
async def test_notify_to_an_abstract_socket() -> None:
    """NOTIFY_SOCKET=@name addresses the abstract namespace (a leading NUL byte)."""
    name = f"trioserve-test-{os.getpid()}-{id(object())}"
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.bind("\0" + name)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier is not None
        with notifier:
            assert notifier.address == "\0" + name
            notifier.notify(RELOADING=1)
        assert await receive(sock) == b"RELOADING=1"


def test_no_notify_socket_means_no_notifier() -> None:
    """Without NOTIFY_SOCKET (or with it empty) there is no Notifier."""
    assert Notifier.from_environ({}) is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": ""}) is None


def test_notify_socket_kept_with_unset_false() -> None:
    """unset=False leaves NOTIFY_SOCKET in the environment."""
    env = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    notifier = Notifier.from_environ(env, unset=False)
    assert notifier is not None
    notifier.close()
    assert env == {"NOTIFY_SOCKET": "/run/systemd/notify"}


def test_relative_notify_socket_is_a_config_error() -> None:
    """A NOTIFY_SOCKET that is neither an absolute path nor @name is a ConfigError."""
    with pytest.raises(ConfigError, match=r"^NOTIFY_SOCKET: expected an absolute path or @NAME"):
        Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})


def test_notify_failure_is_swallowed_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Sending to a socket nobody listens on does not raise; debug log on the first failure."""
    caplog.set_level(logging.DEBUG, logger="trioserve.systemd")
    with Notifier(str(tmp_path / "nobody")) as notifier:
        notifier.notify(READY=1)
        notifier.notify(STATUS="still nobody")
    notifier.notify(STOPPING=1)  # closed socket: dropped too
    failures = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.DEBUG


def test_notify_rejects_newlines_and_empty_reports(tmp_path: Path) -> None:
    """A value with a newline would inject a field; no fields is a mistake too."""
    with Notifier(str(tmp_path / "nobody")) as notifier:
        with pytest.raises(ValueError, match="STATUS contains a newline"):
            notifier.notify(STATUS="a\nREADY=1")
        with pytest.raises(ValueError, match="at least one"):
            notifier.notify()


# Watchdog


async def ping(sock: trio.socket.SocketType, interval: float) -> bytes:
    """The next datagram, which must come within one and a half intervals."""
    with trio.fail_after(1.5 * interval):
        return await sock.recv(4096)


def test_watchdog_interval_is_half_the_timeout() -> None:
    """WATCHDOG_USEC=30000000 means a ping every 15 s; the variables are unset."""
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(PID)}
    assert watchdog_interval(env, pid=PID) == 15.0
    assert env == {}


def test_watchdog_interval_without_pid_variable() -> None:
    """WATCHDOG_PID is optional."""
    assert watchdog_interval({"WATCHDOG_USEC": "1000000"}, pid=PID) == 0.5


def test_watchdog_disabled_cases() -> None:
    """No WATCHDOG_USEC, or a WATCHDOG_PID of another process, means no watchdog."""
    assert watchdog_interval({}, pid=PID) is None
    env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(PID + 1)}
    assert watchdog_interval(env, pid=PID, unset=False) is None
    assert env == {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(PID + 1)}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WATCHDOG_USEC": "0"}, "WATCHDOG_USEC: expected a number of microseconds > 0, got '0'"),
        ({"WATCHDOG_USEC": "1.5"}, "WATCHDOG_USEC: expected a number of microseconds > 0"),
        ({"WATCHDOG_USEC": "10", "WATCHDOG_PID": "x"}, "WATCHDOG_PID: expected a process id"),
    ],
)
def test_malformed_watchdog_variables_are_config_errors(env: dict[str, str], message: str) -> None:
    """A malformed WATCHDOG_* value is a ConfigError naming the variable."""
    with pytest.raises(ConfigError) as info:
        watchdog_interval(env, pid=PID)
    assert str(info.value).startswith(message)


async def test_run_watchdog_pings_only_while_healthy(
    receiver: trio.socket.SocketType,
    tmp_path: Path,
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """WATCHDOG=1 goes out every interval while healthy() is true and stops while false."""
    interval = 10.0  # virtual seconds (autojump_clock)
    state = {"healthy": True}
    notifier = Notifier(str(tmp_path / "notify"))
    start = trio.current_time()
    nursery.start_soon(run_watchdog, notifier, interval, lambda: state["healthy"])
    assert await ping(receiver, interval) == b"WATCHDOG=1"
    assert trio.current_time() - start == pytest.approx(10.0)
    assert await ping(receiver, interval) == b"WATCHDOG=1"
    assert trio.current_time() - start == pytest.approx(20.0)

    state["healthy"] = False
    with trio.move_on_after(45) as silence:  # checks at 30, 40, 50 and 60 s all fail
        await receiver.recv(4096)
    assert silence.cancelled_caught

    state["healthy"] = True
    assert await ping(receiver, interval) == b"WATCHDOG=1"
    assert trio.current_time() - start == pytest.approx(70.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "watchdog: the master is not healthy, no longer pinging systemd"
    ]
    nursery.cancel_scope.cancel()
    notifier.close()
