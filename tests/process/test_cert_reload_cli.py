"""Certificate reload under the real CLI: ``trioserve ctl reload-certs``, SIGURG and
--reload-certs-watch give every worker the new certificate for new connections, with
the same worker processes, no failed request, and open connections kept."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import trio

from tests.pki import Pki, TLSConnection, install_server_cert, replace_file
from tests.process.test_cli import ROOT, TIMEOUT
from tests.process.test_master import PID_APP, QUICK
from trioserve.testing import ServerProcess, running_process

# Each load client: at most this many connections, of up to 5 requests each.
CONNECTIONS_PER_CLIENT = 300
CLIENTS = 4


def _tls_args(cert: Path, key: Path, *more: str) -> tuple[str, ...]:
    return (*PID_APP, *QUICK, "--certfile", str(cert), "--keyfile", str(key), *more)


async def _served(port: int, pki: Pki) -> tuple[TLSConnection, int]:
    """A new connection, and the pid of the worker that served its first request."""
    conn = await TLSConnection.open(port, pki.client_context())
    body = await conn.get()
    return conn, int(body.split()[0])


async def _until_every_worker_serves(port: int, pki: Pki, serial: int, pids: set[int]) -> None:
    """Open connections until each worker in ``pids`` served one with certificate
    ``serial`` (bounded by TIMEOUT)."""
    done: set[int] = set()
    with trio.fail_after(TIMEOUT):
        while done != pids:
            conn, pid = await _served(port, pki)
            if conn.serial == serial:
                done.add(pid)
            await conn.aclose()


class Load:
    """CLIENTS clients sending GET / over new TLS connections (up to 5 requests on each)
    until told to stop; every failure is kept, none is retried."""

    def __init__(self, port: int, pki: Pki) -> None:
        self.port = port
        self.pki = pki
        self.serials: Counter[int] = Counter()  # certificate serial -> connections
        self.requests = 0
        self.failures: list[str] = []
        self.stop = trio.Event()
        self._counted = trio.Event()

    async def wait_for(self, serial: int, connections: int) -> None:
        """Until the load made ``connections`` connections that got certificate ``serial``."""
        with trio.fail_after(TIMEOUT):
            while self.serials[serial] < connections:
                await self._counted.wait()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(CLIENTS):
                nursery.start_soon(self._client)

    async def _client(self) -> None:
        for round_ in range(CONNECTIONS_PER_CLIENT):
            if self.stop.is_set():
                return
            try:
                with trio.fail_after(TIMEOUT):
                    conn = await TLSConnection.open(self.port, self.pki.client_context())
                    self.serials[conn.serial] += 1
                    self._counted.set()
                    self._counted = trio.Event()
                    for _ in range(1 + round_ % 5):
                        await conn.get()
                        self.requests += 1
                    await conn.aclose()
            except Exception as exc:  # counted and shown by the test's assertion
                self.failures.append(repr(exc))


async def _ctl(*args: str) -> tuple[int, str]:
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "trioserve", "ctl", *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return result.returncode, (result.stdout + result.stderr).decode()


async def _ready(server: ServerProcess, workers: int) -> set[int]:
    await server.wait_for_line(f"{workers} worker(s) ready", timeout=TIMEOUT)
    pids = set(server.worker_pids())
    assert len(pids) == workers
    return pids


async def test_ctl_reload_certs_under_load_keeps_workers_and_open_connections(
    pki: Pki, tmp_path: Path
) -> None:
    """ctl reload-certs with 2 workers: both serve the new serial to new connections, a
    connection opened before goes on with the old one, no request of the load fails,
    and the workers are the same processes."""
    cert, key, pidfile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "app.pid"
    old_serial = install_server_cert(pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
    # The connection opened before stays idle while the load runs: a keep-alive long
    # enough for a slow machine.
    args = _tls_args(cert, key, "--workers", "2", "--pid", str(pidfile), "--keep-alive", "120")
    async with running_process(*args, cwd=ROOT, timeout=TIMEOUT) as server:
        pids = await _ready(server, 2)
        with trio.fail_after(TIMEOUT):
            before, _ = await _served(server.port, pki)
        assert before.serial == old_serial
        load = Load(server.port, pki)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load.run)
            new_serial = install_server_cert(pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
            status, output = await _ctl("reload-certs", "--pid", str(pidfile))
            assert (status, output) == (0, f"trioserve: sent SIGURG to pid {server.pid}\n")
            line = await server.wait_for_line("SIGURG: new certificate", timeout=TIMEOUT)
            assert f"serial {new_serial:#x}" in line and "sent to 2 worker(s)" in line
            await _until_every_worker_serves(server.port, pki, new_serial, pids)
            await load.wait_for(new_serial, 40)  # the load goes on across the reload
            load.stop.set()
        assert load.failures == []
        assert load.requests > 0 and load.serials[old_serial] > 0
        with trio.fail_after(TIMEOUT):
            # Opened before the reload: its certificate, and it still serves.
            assert int((await before.get()).split()[0]) in pids
            await before.aclose()
        assert set(server.worker_pids()) == pids
        assert await server.stop() == 0
    assert not [line for line in server.lines if "[ERROR]" in line or "Traceback" in line]


async def test_watch_and_signal_reload_and_a_bad_certificate_is_refused(
    pki: Pki, tmp_path: Path
) -> None:
    """--reload-certs-watch: a certificate whose key is missing is one ERROR line from the
    master and the old serial is still served; a good pair then reloads, and so does
    SIGURG sent to the master itself."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    old_serial = install_server_cert(pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
    args = _tls_args(cert, key, "--workers", "2", "--reload-certs-watch")
    async with running_process(*args, cwd=ROOT, timeout=TIMEOUT) as server:
        pids = await _ready(server, 2)
        replace_file(cert, pki.ca.issue_cert("localhost", "127.0.0.1").cert_chain_pems[0].bytes())
        line = await server.wait_for_line("certificate not reloaded", timeout=TIMEOUT)
        assert "[ERROR]" in line and f"[{server.pid}]" in line
        assert "does not match the certificate" in line
        with trio.fail_after(TIMEOUT):
            for _ in range(4):  # both workers, whichever accepts
                conn, _ = await _served(server.port, pki)
                assert conn.serial == old_serial
                await conn.aclose()

        watched = install_server_cert(pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
        line = await server.wait_for_line("a certificate file changed: new certificate")
        assert f"serial {watched:#x}" in line
        await _until_every_worker_serves(server.port, pki, watched, pids)

        signalled = install_server_cert(pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
        server.send_signal(signal.SIGURG)
        # The watcher may see the same files first: either way, one reload serves them.
        await _until_every_worker_serves(server.port, pki, signalled, pids)
        assert [line for line in server.lines if "SIGURG: new certificate" in line]
        assert set(server.worker_pids()) == pids
        assert await server.stop() == 0
    errors = [line for line in server.lines if "[ERROR]" in line or "Traceback" in line]
    assert len(errors) == 1, errors


async def test_sigurg_reloads_in_process_with_no_workers(pki: Pki, tmp_path: Path) -> None:
    """With --workers 0 the server itself reloads on SIGURG, keeping its pid."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    old_serial = install_server_cert(pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
    async with running_process(*_tls_args(cert, key, "--workers", "0"), cwd=ROOT) as server:
        with trio.fail_after(TIMEOUT):
            before, pid = await _served(server.port, pki)
        assert (before.serial, pid) == (old_serial, server.pid)
        new_serial = install_server_cert(pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
        server.send_signal(signal.SIGURG)
        line = await server.wait_for_line("SIGURG: certificate reloaded", timeout=TIMEOUT)
        assert f"serial {new_serial:#x}" in line
        with trio.fail_after(TIMEOUT):
            after, pid = await _served(server.port, pki)
            assert (after.serial, pid) == (new_serial, server.pid)
            assert int((await before.get()).split()[0]) == server.pid
            await before.aclose()
            await after.aclose()
        assert await server.stop() == 0
