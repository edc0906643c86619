"""trioserve._daemon: the locked pid file, paths made absolute for a daemon, the umask
setting, the readiness pipe and the --user/--group account.

The lock is ``fcntl.flock``: it belongs to the open file, so it survives other opens and
closes of the file in the same process (a hook reading the pid file), which a POSIX
``lockf`` lock would not. Conflicts are still checked from another process, as a second
server would meet them.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import select
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from trioserve import ConfigError, TrioserveError
from trioserve._config import Config, settings
from trioserve._daemon import (
    Account,
    AlreadyRunning,
    PidFile,
    Readiness,
    absolute_paths,
    give_unix_sockets,
    holder,
    read_pid,
    resolve_account,
)

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10

# Takes the lock on argv[1] (with PidFile, or bare flock on an empty file with "bare"),
# says so, and holds it until its stdin closes.
_HOLD = textwrap.dedent(
    """\
    import fcntl, os, sys
    from trioserve._daemon import PidFile
    if sys.argv[2:] == ["bare"]:
        fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        PidFile.acquire(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()
    """
)


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in another interpreter (another process, for the lock's sake)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def content(pidfile: PidFile) -> str:
    """What the locked file says, read through its own descriptor (see the docstring)."""
    return os.pread(pidfile.fd, 100, 0).decode()


def acquire_elsewhere(path: Path) -> tuple[int, str]:
    """Try PidFile.acquire(path) in another process: (0, "") or (1, the error)."""
    code = textwrap.dedent(
        """\
        import sys
        from trioserve._daemon import AlreadyRunning, PidFile
        try:
            PidFile.acquire(sys.argv[1]).release()
        except AlreadyRunning as exc:
            print(exc)
            sys.exit(1)
        """
    )
    result = _python(code, str(path))
    assert result.stderr == ""
    return result.returncode, result.stdout.strip()


def holder_elsewhere(path: Path) -> int | None:
    """holder(path), asked by another process."""
    code = "import sys; from trioserve._daemon import holder; print(holder(sys.argv[1]))"
    result = _python(code, str(path))
    assert result.returncode == 0, result.stderr
    text = result.stdout.strip()
    return None if text == "None" else int(text)


@contextmanager
def held(path: Path, *how: str) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding the lock on ``path`` until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path), *how],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], TIMEOUT)
        assert ready and process.stdout.readline() == b"locked\n"
        yield process
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()


# -- the pid file --------------------------------------------------------------------------


def test_acquire_writes_this_pid_and_locks_out_other_processes(tmp_path: Path) -> None:
    """The file holds this pid; another process gets AlreadyRunning naming it."""
    path = tmp_path / "app.pid"
    pidfile = PidFile.acquire(path)
    try:
        assert content(pidfile) == f"{os.getpid()}\n"
        assert acquire_elsewhere(path) == (
            1,
            f"--pid: already running as pid {os.getpid()} (pid file {str(path)!r} is locked)",
        )
    finally:
        pidfile.release()
    assert not path.exists()
    assert acquire_elsewhere(path) == (0, "")  # released: free for the next master


def test_acquire_writes_the_pid_it_is_given(tmp_path: Path) -> None:
    """``pid=`` is what the file says, and what a refused master is told."""
    path = tmp_path / "app.pid"
    pidfile = PidFile.acquire(path, pid=4242)
    try:
        assert content(pidfile) == "4242\n"
        assert "already running as pid 4242 " in acquire_elsewhere(path)[1]
    finally:
        pidfile.release()


def test_acquire_refused_by_a_lock_held_elsewhere(tmp_path: Path) -> None:
    """AlreadyRunning is raised here too, and the holder's file is left as it was."""
    path = tmp_path / "app.pid"
    with held(path) as process:
        with pytest.raises(AlreadyRunning, match=rf"already running as pid {process.pid} "):
            PidFile.acquire(path)
        assert read_pid(path) == process.pid


def test_a_locked_file_without_a_pid_names_another_process(tmp_path: Path) -> None:
    """A lock on a file with no pid in it (not a trioserve master) is still respected."""
    path = tmp_path / "app.pid"
    with held(path, "bare"):
        with pytest.raises(AlreadyRunning) as info:
            PidFile.acquire(path)
        assert str(info.value) == (
            f"--pid: already running as another process (pid file {str(path)!r} is locked)"
        )
        assert holder_elsewhere(path) == -1


@pytest.mark.parametrize("left", ["999999\n", "12345678901234567890\n", "", "garbage"])
def test_stale_file_is_taken_over(tmp_path: Path, left: str) -> None:
    """A file nobody holds (its master died) is overwritten whole with this pid."""
    path = tmp_path / "app.pid"
    path.write_text(left)
    pidfile = PidFile.acquire(path)
    try:
        assert content(pidfile) == f"{os.getpid()}\n"
    finally:
        pidfile.release()


def test_acquire_in_a_missing_directory_is_a_one_line_error(tmp_path: Path) -> None:
    """A pid file that cannot be created names the setting, the path and the reason."""
    path = tmp_path / "nowhere" / "app.pid"
    with pytest.raises(TrioserveError) as info:
        PidFile.acquire(path)
    assert str(info.value) == f"--pid: cannot open {str(path)!r}: no such file or directory"


def test_relative_path_is_kept_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The path is made absolute at once: a daemon changes directory afterwards."""
    monkeypatch.chdir(tmp_path)
    pidfile = PidFile.acquire("app.pid")
    try:
        assert pidfile.path == tmp_path / "app.pid"
        monkeypatch.chdir("/")
    finally:
        pidfile.release()
    assert not (tmp_path / "app.pid").exists()


def test_release_removes_only_its_own_file(tmp_path: Path) -> None:
    """A file another master wrote at the same path since (a USR2 upgrade) is kept."""
    path = tmp_path / "app.pid"
    pidfile = PidFile.acquire(path)
    newer = tmp_path / "newer"
    newer.write_text("4242\n")
    os.replace(newer, path)
    pidfile.release()
    assert path.read_text() == "4242\n"
    pidfile.release()  # a second release does nothing
    assert path.exists()


def test_release_when_the_file_is_gone(tmp_path: Path) -> None:
    """Someone deleted the file: release still drops the lock, without an error."""
    path = tmp_path / "app.pid"
    pidfile = PidFile.acquire(path)
    path.unlink()
    pidfile.release()
    assert pidfile.fd == -1


def test_rename_keeps_the_lock(tmp_path: Path) -> None:
    """After rename (FILE -> FILE.oldbin) the new name is locked, the old one is free."""
    path = tmp_path / "app.pid"
    oldbin = tmp_path / "app.pid.oldbin"
    pidfile = PidFile.acquire(path)
    try:
        pidfile.rename(oldbin)
        assert pidfile.path == oldbin
        assert not path.exists()
        assert content(pidfile) == f"{os.getpid()}\n"
        assert holder_elsewhere(oldbin) == os.getpid()
        assert acquire_elsewhere(oldbin)[0] == 1
        assert acquire_elsewhere(path) == (0, "")  # a new master may take FILE
    finally:
        pidfile.release()
    assert not oldbin.exists()


def test_reading_the_pid_file_in_the_master_keeps_it_locked(tmp_path: Path) -> None:
    """Opening and closing the pid file in the holding process does not unlock it."""
    path = tmp_path / "app.pid"
    pidfile = PidFile.acquire(path)
    try:
        assert read_pid(path) == os.getpid()  # opens and closes the file
        assert acquire_elsewhere(path)[0] == 1
    finally:
        pidfile.release()


def test_holder_of_a_locked_file_is_its_pid(tmp_path: Path) -> None:
    """holder() names the live process that holds the lock."""
    path = tmp_path / "app.pid"
    with held(path) as process:
        assert holder_elsewhere(path) == process.pid
    assert holder_elsewhere(path) is None  # its lock went with it; the file stays


@pytest.mark.parametrize("content", [None, "", "999999\n", "garbage"])
def test_holder_of_an_unlocked_or_missing_file_is_none(tmp_path: Path, content: str | None) -> None:
    """No lock, no master: whatever the file says, or when there is no file."""
    path = tmp_path / "app.pid"
    if content is not None:
        path.write_text(content)
    assert holder(path) is None  # (safe here: this process holds no lock on it)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, None), ("", None), ("  \n", None), ("123\n", 123), ("12x\n", None), ("-5", None)],
)
def test_read_pid(tmp_path: Path, content: str | None, expected: int | None) -> None:
    """read_pid: the number in the file, or None when missing, empty or not a number."""
    path = tmp_path / "app.pid"
    if content is not None:
        path.write_text(content)
    assert read_pid(path) == expected


# -- readiness ----------------------------------------------------------------------------


def test_readiness_reports_once_and_closes() -> None:
    """The daemon's status and message go down the pipe once; later reports do nothing."""
    read_end, write_end = os.pipe()
    try:
        readiness = Readiness(write_end)
        readiness.report(3, "lifespan startup failed")
        readiness.report(0)
        assert readiness.fd == -1
        assert os.read(read_end, 100) == b"3 lifespan startup failed"
        assert os.read(read_end, 100) == b""  # the write end is closed
    finally:
        os.close(read_end)


def test_readiness_report_without_a_reader_is_not_an_error() -> None:
    """The starting command was killed: the daemon carries on."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    Readiness(write_end).report(0)


# -- absolute paths ---------------------------------------------------------------------

# Every setting that names a file or directory. The config file is not among them: it
# is read before a daemon forks, and SIGHUP resolves it against the starting directory.
PATH_SETTINGS = sorted(
    info.name
    for info in settings()
    if info.setting.metavar in ("FILE", "DIR") and info.name != "config"
)


def test_the_path_settings_are_the_expected_ones() -> None:
    """A new path setting shows up here and must be handled by absolute_paths."""
    assert PATH_SETTINGS == [
        "access_log",
        "app_dir",
        "ca_certs",
        "certfile",
        "chdir",
        "error_log",
        "keyfile",
        "log_config",
        "pid",
        "reload_dir",
    ]


@pytest.mark.parametrize("name", PATH_SETTINGS)
def test_absolute_paths_resolves_every_path_setting(name: str) -> None:
    """A relative path is joined to the starting directory; absolute ones are kept."""
    many = name == "reload_dir"
    given: dict[str, Any] = {name: ["rel/x", "/abs/y"] if many else "rel/x"}
    config = Config(**given)
    resolved = getattr(absolute_paths(config, "/start"), name)
    assert resolved == (("/start/rel/x", "/abs/y") if many else "/start/rel/x")
    if not many:
        kept: dict[str, Any] = {name: "/abs/y"}
        absolute = Config(**kept)
        assert getattr(absolute_paths(absolute, "/start"), name) == "/abs/y"


@pytest.mark.parametrize("name", ["error_log", "access_log"])
def test_absolute_paths_keeps_standard_streams(name: str) -> None:
    """'-' (stderr or stdout) is not a file name."""
    streams: dict[str, Any] = {name: "-"}
    assert getattr(absolute_paths(Config(**streams), "/start"), name) == "-"


def test_absolute_paths_keeps_unset_settings() -> None:
    """None stays None, and the other settings are untouched."""
    config = Config(workers=3)
    resolved = absolute_paths(config, "/start")
    assert (resolved.pid, resolved.certfile, resolved.chdir) == (None, None, None)
    assert resolved.workers == 3
    assert resolved.app_dir == "/start/."


def test_absolute_paths_resolves_relative_unix_binds_only() -> None:
    """unix:PATH relative to the start; absolute, abstract, TCP and fd binds as they were."""
    binds = [
        "unix:run/app.sock",
        "unix:run/app.sock(0660)",
        "unix:/run/app.sock",
        "unix:@abstract",
        "127.0.0.1:8000",
        "[::1]:8000",
        "fd://3",
    ]
    assert absolute_paths(Config(bind=binds), "/start").bind == (
        "unix:/start/run/app.sock",
        "unix:/start/run/app.sock(0660)",
        "unix:/run/app.sock",
        "unix:@abstract",
        "127.0.0.1:8000",
        "[::1]:8000",
        "fd://3",
    )


# -- the umask setting ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "umask"),
    [
        ("022", "0o022"),
        ("0o027", "0o027"),
        ("0O027", "0o027"),
        ("0027", "0o027"),
        ("77", "0o077"),
        ("0", "0o000"),
        ("777", "0o777"),
        (0o027, "0o027"),
        (0, "0o000"),
        ("inherit", "inherit"),
        (" Inherit ", "inherit"),
    ],
)
def test_umask_accepted(given: Any, umask: str) -> None:
    """Octal text (with or without 0o) and ints up to 0o777 become '0oNNN'; 'inherit'."""
    assert Config(umask=given).umask == umask


@pytest.mark.parametrize(
    "given", ["", "8", "999", "0o1000", "01000", "00000", "0x22", "abc", -1, 0o1000, True, 1.5]
)
def test_umask_refused(given: Any) -> None:
    """Anything else is a ConfigError naming the setting, the form and the value."""
    with pytest.raises(ConfigError) as info:
        Config(umask=given)
    assert str(info.value) == (
        f"umask: expected an octal umask such as 022 or 0o027, or 'inherit', got {given!r}"
    )


# -- --user and --group ---------------------------------------------------------------


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """resolve_account believes it runs as root (the lookups themselves need no root)."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def test_nothing_to_resolve_without_user_or_group() -> None:
    """Neither --user nor --group: None, whoever runs."""
    assert resolve_account(None, None) is None


def test_not_root_is_a_warning_and_no_account(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without root the settings are ignored, with one warning saying why."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with caplog.at_level(logging.WARNING, logger="trioserve.daemon"):
        assert resolve_account("nobody", None) is None
    assert [record.getMessage() for record in caplog.records] == [
        "--user/--group ignored: dropping privileges needs root, and this runs as uid 1000"
    ]


@pytest.mark.usefixtures("as_root")
def test_user_name_gives_its_uid_primary_group_and_name() -> None:
    """--user NAME: its uid, its primary group, its name (for initgroups)."""
    entry = pwd.getpwuid(0)
    assert resolve_account(entry.pw_name, None) == Account(0, entry.pw_gid, entry.pw_name)


@pytest.mark.usefixtures("as_root")
def test_numeric_ids_are_accepted() -> None:
    """--user UID and --group GID as numbers, known to the system or not."""
    entry = pwd.getpwuid(0)
    assert resolve_account("0", None) == Account(0, entry.pw_gid, entry.pw_name)
    unknown = _unused_uid()
    assert resolve_account(str(unknown), "4321") == Account(unknown, 4321, None)
    assert resolve_account(None, "4321") == Account(os.getuid(), 4321, None)


@pytest.mark.usefixtures("as_root")
def test_group_name_replaces_the_primary_group() -> None:
    """--group NAME wins over the user's primary group."""
    group = grp.getgrgid(0).gr_name
    entry = pwd.getpwuid(0)
    other = next(g for g in grp.getgrall() if g.gr_gid != entry.pw_gid)
    account = resolve_account(entry.pw_name, other.gr_name)
    assert account == Account(0, other.gr_gid, entry.pw_name)
    assert resolve_account(None, group) == Account(os.getuid(), 0, None)


@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize(
    ("user", "group", "message"),
    [
        ("no-such-user-x", None, "--user: no such user 'no-such-user-x'"),
        (None, "no-such-group-x", "--group: no such group 'no-such-group-x'"),
        ("0", "no-such-group-x", "--group: no such group 'no-such-group-x'"),
    ],
)
def test_unknown_names_are_one_line_errors(
    user: str | None, group: str | None, message: str
) -> None:
    """An unknown user or group name is an error naming the flag and the value."""
    with pytest.raises(TrioserveError) as info:
        resolve_account(user, group)
    assert str(info.value) == message


def _unused_uid() -> int:
    used = {entry.pw_uid for entry in pwd.getpwall()}
    return next(uid for uid in range(54321, 60000) if uid not in used)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_drop_becomes_the_account_for_good() -> None:
    """Account.drop: uid, gid and supplementary groups; no way back to root."""
    code = textwrap.dedent(
        """\
        import os, sys
        from trioserve._daemon import Account
        Account(int(sys.argv[1]), int(sys.argv[2]), None).drop()
        print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
        try:
            os.setuid(0)
        except PermissionError:
            print("stuck")
        """
    )
    uid = _unused_uid()
    result = _python(code, str(uid), "4321")
    assert result.stdout.split("\n")[:2] == [f"{uid} {uid} 4321 [4321]", "stuck"]


async def test_give_unix_sockets_changes_the_owner_of_socket_files_only(tmp_path: Path) -> None:
    """The unix socket file goes to the account; TCP sockets and no account: nothing."""
    path = tmp_path / "app.sock"
    unix = trio.socket.socket(socket.AF_UNIX)
    tcp = trio.socket.socket()
    with unix, tcp:
        await unix.bind(str(path))
        await tcp.bind(("127.0.0.1", 0))
        unix.listen()
        tcp.listen()
        listeners = [trio.SocketListener(unix), trio.SocketListener(tcp)]
        give_unix_sockets(listeners, None)
        stat = path.stat()
        give_unix_sockets(listeners, Account(stat.st_uid, stat.st_gid, None))  # no-op chown
        if os.geteuid() == 0:
            give_unix_sockets(listeners, Account(4321, 4322, None))
            stat = path.stat()
            assert (stat.st_uid, stat.st_gid) == (4321, 4322)
