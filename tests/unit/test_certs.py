"""trioserve._certs: reading a certificate's serial and validity, refusing what cannot
replace the context in use, and noticing replaced files."""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

import pytest
import trio
import trustme

from tests.pki import Pki, install_server_cert, replace_file, serial_of
from trioserve import Config
from trioserve._certs import (
    CertStore,
    certificate_info,
    file_signature,
    load_context,
    watch_cert_files,
)
from trioserve._errors import ConfigError
from trioserve._tls import server_certificate

UTC = datetime.UTC


def _files(tmp_path: Path, leaf: trustme.LeafCert) -> Config:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    install_server_cert(leaf, cert, key)
    return Config(certfile=str(cert), keyfile=str(key))


def test_certificate_info_reads_serial_and_validity(pki: Pki) -> None:
    """The serial and validity read from the DER are those cryptography reads."""
    from cryptography import x509

    not_after = datetime.datetime(2061, 5, 4, 3, 2, 1, tzinfo=UTC)  # GeneralizedTime
    leaf = pki.ca.issue_cert("localhost", not_after=not_after)
    pem = leaf.cert_chain_pems[0].bytes()
    info = certificate_info(pem.decode())
    parsed = x509.load_pem_x509_certificate(pem)
    assert info.serial == parsed.serial_number == serial_of(pem)
    assert info.not_before == parsed.not_valid_before_utc
    assert info.not_after == not_after
    # The server's certificate: UTCTime, the form used until 2049.
    server = certificate_info(pki.server.cert_chain_pems[0].bytes().decode())
    assert (
        server.not_after
        == x509.load_pem_x509_certificate(pki.server.cert_chain_pems[0].bytes()).not_valid_after_utc
    )


def test_certificate_info_refuses_what_is_no_certificate() -> None:
    """Bytes that are no X.509 certificate raise ValueError, not IndexError."""
    import ssl

    pem = ssl.DER_cert_to_PEM_cert(b"\x30\x03\x02\x01\x05")
    with pytest.raises(ValueError, match=r"not an X\.509 certificate"):
        certificate_info(pem)


def test_load_context_refuses_an_expired_or_future_certificate(tmp_path: Path, pki: Pki) -> None:
    """A certificate outside its validity period cannot replace the one in use."""
    now = datetime.datetime.now(UTC)
    expired = pki.ca.issue_cert(
        "localhost",
        not_before=now - datetime.timedelta(days=10),
        not_after=now - datetime.timedelta(days=1),
    )
    config = _files(tmp_path, expired)
    with pytest.raises(ConfigError, match=r"^--certfile: the certificate in .* expired on "):
        load_context(config)
    future = pki.ca.issue_cert("localhost", not_before=now + datetime.timedelta(days=1))
    config = _files(tmp_path, future)
    with pytest.raises(ConfigError, match="is not valid before"):
        load_context(config)
    context, info = load_context(config, now=now + datetime.timedelta(days=2))
    assert info.serial == serial_of(future.cert_chain_pems[0].bytes())
    assert server_certificate(context) is not None


def test_reload_swaps_the_context_and_logs_the_new_serial(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """reload() builds a new context from the files and says which certificate it has."""
    config = _files(tmp_path, pki.ca.issue_cert("localhost"))
    store = CertStore.from_config(config)
    assert store is not None
    first = store.context
    serial = install_server_cert(
        pki.ca.issue_cert("localhost"), tmp_path / "cert.pem", tmp_path / "key.pem"
    )
    with caplog.at_level(logging.INFO, "trioserve.tls"):
        info = store.reload("SIGURG")
    assert info is not None and info.serial == serial
    assert store.context is not first
    pem = server_certificate(store.context)
    assert pem is not None and serial_of(pem.encode()) == serial
    assert [r.getMessage() for r in caplog.records] == [
        f"SIGURG: certificate reloaded ({info.describe()})"
    ]


@pytest.mark.parametrize("problem", ["mismatch", "missing", "garbage", "expired"])
def test_a_bad_new_certificate_keeps_the_current_context(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture, problem: str
) -> None:
    """A certificate that does not load is one ERROR line with the reason; the old
    context stays."""
    config = _files(tmp_path, pki.ca.issue_cert("localhost"))
    store = CertStore.from_config(config)
    assert store is not None
    first = store.context
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    expected = {
        "mismatch": "does not match the certificate",
        "missing": "cannot read",
        "garbage": "no PEM certificate",
        "expired": "expired on",
    }[problem]
    if problem == "mismatch":
        replace_file(cert, pki.ca.issue_cert("localhost").cert_chain_pems[0].bytes())
    elif problem == "missing":
        os.unlink(key)
    elif problem == "garbage":
        replace_file(cert, b"not a certificate\n")
    else:
        now = datetime.datetime.now(UTC)
        leaf = pki.ca.issue_cert(
            "localhost",
            not_before=now - datetime.timedelta(days=3),
            not_after=now - datetime.timedelta(days=1),
        )
        install_server_cert(leaf, cert, key)
    with caplog.at_level(logging.INFO, "trioserve.tls"):
        assert store.reload("a certificate file changed") is None
    assert store.context is first
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert message.startswith(
        "a certificate file changed: certificate not reloaded (the current one stays): --"
    )
    assert expected in message and "\n" not in message


def test_file_signature_sees_renames_writes_and_symlink_swaps(tmp_path: Path) -> None:
    """A rename over the file, a rewrite of it, and a re-pointed ..data symlink (as in a
    Kubernetes secret volume) each change the signature; nothing else does."""
    first, second = tmp_path / "v1", tmp_path / "v2"
    first.mkdir()
    second.mkdir()
    (first / "tls.crt").write_bytes(b"one")
    (second / "tls.crt").write_bytes(b"one")  # same size and content, another file
    os.symlink("v1", tmp_path / "..data")
    os.symlink("..data/tls.crt", tmp_path / "tls.crt")
    paths = [str(tmp_path / "tls.crt")]
    before = file_signature(paths)
    assert file_signature(paths) == before
    temporary = tmp_path / "..data_tmp"
    os.symlink("v2", temporary)
    os.replace(temporary, tmp_path / "..data")
    swapped = file_signature(paths)
    assert swapped != before
    replace_file(second / "tls.crt", b"two")
    renamed = file_signature(paths)
    assert renamed != swapped
    os.unlink(second / "tls.crt")
    assert file_signature(paths) != renamed  # gone: a signature too, no exception


async def test_watch_acts_once_a_change_has_settled(tmp_path: Path, autojump_clock: object) -> None:
    """A change is acted on after it stayed for one more interval: a certificate and its
    key replaced a moment apart give one reload, after both."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"cert 1")
    key.write_bytes(b"key 1")
    calls: list[tuple[float, bytes]] = []

    def changed() -> None:
        calls.append((trio.current_time(), key.read_bytes()))

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: watch_cert_files(
                lambda: [str(cert), str(key)], changed, interval=1.0, task_status=task_status
            )
        )
        start = trio.current_time()
        await trio.sleep(3.5)
        assert calls == []  # nothing changed
        replace_file(cert, b"cert 2")  # seen at 4.0
        await trio.sleep(1.0)
        replace_file(key, b"key 2")  # seen at 5.0: still changing
        await trio.sleep(3.0)
        assert calls == [(start + 6.0, b"key 2")]
        replace_file(cert, b"cert 3")
        await trio.sleep(0.6)
        replace_file(cert, b"cert 3")  # rewritten: another inode, but then it stays
        await trio.sleep(3.0)
        assert len(calls) == 2
        nursery.cancel_scope.cancel()
