"""Certificate reload in process (serve() with workers=0, --reload-certs-watch): new
connections get the new certificate, open ones keep working, and a bad certificate
leaves the current one in use."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import hello_app
from tests.pki import Pki, TLSConnection, install_server_cert, replace_file
from trioserve import Config, serve

TIMEOUT = 10


async def _serve_watching(
    nursery: trio.Nursery, pki: Pki, cert: Path, key: Path, **settings: Any
) -> int:
    config = Config(
        app=hello_app,
        bind=["127.0.0.1:0"],
        workers=0,
        certfile=str(cert),
        keyfile=str(key),
        reload_certs_watch=True,
        lifespan="off",
        **settings,
    )
    [(_, port)] = await nursery.start(serve, config)
    return int(port)


class _ErrorLogged(logging.Handler):
    """Sets ``event`` at the first ERROR record (emitted from the server's trio thread)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.event = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.event.set()


async def _until_served(port: int, pki: Pki, serial: int) -> TLSConnection:
    """A new connection served with certificate ``serial``; waits (bounded) for it."""
    with trio.fail_after(TIMEOUT):
        while True:
            conn = await TLSConnection.open(port, pki.client_context())
            if conn.serial == serial:
                return conn
            await conn.aclose()
            await trio.sleep(0.1)


async def test_changed_files_are_served_to_new_connections_only(
    nursery: trio.Nursery, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After an atomic rename of certificate and key, new connections see the new serial
    while a connection opened before keeps the old one and goes on serving; no request
    of a client loop running across the reload fails."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    old_serial = install_server_cert(pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
    port = await _serve_watching(nursery, pki, cert, key)
    with caplog.at_level(logging.INFO, "trioserve"):
        with trio.fail_after(TIMEOUT):
            before = await TLSConnection.open(port, pki.client_context())
            assert before.serial == old_serial
            assert await before.get() == b"Hello, world!"

        seen: Counter[int] = Counter()
        failures: list[BaseException] = []
        stop = trio.Event()

        async def client_loop() -> None:
            # Bounded: at most 2000 connections, and the test's own deadline.
            for _ in range(2000):
                if stop.is_set():
                    return
                try:
                    conn = await TLSConnection.open(port, pki.client_context())
                    await conn.get()
                    await conn.aclose()
                except Exception as exc:  # counted: the assertion below shows them
                    failures.append(exc)
                else:
                    seen[conn.serial] += 1

        async with trio.open_nursery() as clients:
            clients.start_soon(client_loop)
            new_serial = install_server_cert(pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
            after = await _until_served(port, pki, new_serial)
            stop.set()
        assert failures == []
        assert seen[old_serial] > 0 and set(seen) <= {old_serial, new_serial}
        with trio.fail_after(TIMEOUT):
            assert await after.get() == b"Hello, world!"
            # The connection from before the reload: still its certificate, still served.
            assert await before.get() == b"Hello, world!"
        assert before.serial == old_serial
        await before.aclose()
        await after.aclose()
    reloaded = [r for r in caplog.records if "certificate reloaded" in r.getMessage()]
    assert [r.levelno for r in reloaded] == [logging.INFO]
    assert reloaded[0].getMessage().startswith("a certificate file changed: certificate reloaded")
    assert f"serial {new_serial:#x}" in reloaded[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_mismatched_key_is_logged_and_the_old_certificate_stays(
    nursery: trio.Nursery, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new certificate whose key is not there is logged at ERROR once; new connections
    still get the old certificate, and the next good pair is picked up."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    old_serial = install_server_cert(pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
    port = await _serve_watching(nursery, pki, cert, key)
    errors = _ErrorLogged()
    logging.getLogger("trioserve.tls").addHandler(errors)
    try:
        with caplog.at_level(logging.INFO, "trioserve"):
            replace_file(
                cert, pki.ca.issue_cert("localhost", "127.0.0.1").cert_chain_pems[0].bytes()
            )
            with trio.fail_after(TIMEOUT):
                await errors.event.wait()
    finally:
        logging.getLogger("trioserve.tls").removeHandler(errors)
    with caplog.at_level(logging.INFO, "trioserve"):
        [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert "does not match the certificate" in error.getMessage()
        with trio.fail_after(TIMEOUT):
            conn = await TLSConnection.open(port, pki.client_context())
            assert conn.serial == old_serial
            assert await conn.get() == b"Hello, world!"
        await conn.aclose()
        fixed = install_server_cert(pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
        await (await _until_served(port, pki, fixed)).aclose()


async def test_a_kubernetes_secret_symlink_swap_is_seen(
    nursery: trio.Nursery, pki: Pki, tmp_path: Path
) -> None:
    """A secret volume's update (a new directory, then ..data re-pointed to it) reloads."""

    def write_version(name: str) -> int:
        directory = tmp_path / name
        directory.mkdir()
        leaf = pki.ca.issue_cert("localhost", "127.0.0.1")
        return install_server_cert(leaf, directory / "tls.crt", directory / "tls.key")

    first = write_version("..2026_01")
    os.symlink("..2026_01", tmp_path / "..data")
    for name in ("tls.crt", "tls.key"):
        os.symlink(f"..data/{name}", tmp_path / name)
    port = await _serve_watching(nursery, pki, tmp_path / "tls.crt", tmp_path / "tls.key")
    with trio.fail_after(TIMEOUT):
        conn = await TLSConnection.open(port, pki.client_context())
        assert conn.serial == first
        await conn.aclose()
    second = write_version("..2026_02")
    os.symlink("..2026_02", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    await (await _until_served(port, pki, second)).aclose()
