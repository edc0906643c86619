"""ssl_context(): TLS settings → SSLContext, and one-line ConfigErrors for every mistake."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from cryptography.hazmat.primitives import serialization

from tests.pki import Pki
from trioserve._config import Config
from trioserve._errors import ConfigError
from trioserve._tls import _rfc4514_name, ssl_context


@attrs.frozen
class Pems:
    """PEM files written by trustme: a CA, a server cert for localhost and a stray key."""

    ca: Path
    cert: Path
    key: Path
    cert_and_key: Path
    other_key: Path
    encrypted_key: Path
    garbage: Path
    corrupt_cert: Path
    missing: Path


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Pems:
    """The shared certificates' PEM files (tests/conftest.py), and broken ones beside them."""
    tmp = tmp_path_factory.mktemp("pems")
    pki.ca.issue_cert("other.example").private_key_pem.write_to_path(tmp / "other_key.pem")
    key = serialization.load_pem_private_key(pki.server.private_key_pem.bytes(), password=None)
    (tmp / "encrypted_key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    (tmp / "garbage.pem").write_text("this is not PEM\n")
    pem = pki.server.cert_chain_pems[0].bytes().decode()
    # Valid armour around a body that is not a certificate.
    (tmp / "corrupt_cert.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA" + pem.splitlines()[5] + "\n-----END CERTIFICATE-----\n"
    )
    return Pems(
        ca=pki.ca_file,
        cert=pki.cert_file,
        key=pki.key_file,
        cert_and_key=pki.cert_and_key_file,
        other_key=tmp / "other_key.pem",
        encrypted_key=tmp / "encrypted_key.pem",
        garbage=tmp / "garbage.pem",
        corrupt_cert=tmp / "corrupt_cert.pem",
        missing=tmp / "missing.pem",
    )


def tls_config(pems: Pems, **overrides: object) -> Config:
    """A Config with the server cert and key, plus ``overrides`` (paths as strings)."""
    values: dict[str, object] = {"certfile": str(pems.cert), "keyfile": str(pems.key)}
    values.update(overrides)
    return Config(**values)  # type: ignore[arg-type]


def test_no_tls_without_certfile_or_keyfile():
    """With no certfile and no keyfile, TLS is off: no context."""
    assert ssl_context(Config()) is None


def test_server_context_with_cert_and_key(pems):
    """A cert and key give a server-side context with TLS 1.2 floor and no client auth."""
    context = ssl_context(tls_config(pems))
    assert context is not None
    assert context.protocol is ssl.PROTOCOL_TLS_SERVER
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_NONE
    assert context.options & ssl.OP_NO_RENEGOTIATION
    # No system CA store: nothing is trusted for client certificates unless --ca-certs.
    assert context.cert_store_stats()["x509_ca"] == 0


def test_certfile_holding_the_key_needs_no_keyfile(pems):
    """A certfile that contains the private key too is enough on its own."""
    assert ssl_context(Config(certfile=str(pems.cert_and_key))) is not None


def test_encrypted_key_with_the_right_password(pems):
    """An encrypted keyfile loads with the right keyfile_password."""
    config = tls_config(pems, keyfile=str(pems.encrypted_key), keyfile_password="s3cret")
    assert ssl_context(config) is not None


@pytest.mark.parametrize(
    ("version", "expected"),
    [("1.2", ssl.TLSVersion.TLSv1_2), ("1.3", ssl.TLSVersion.TLSv1_3)],
)
def test_minimum_version_follows_tls_min_version(pems, version, expected):
    """tls_min_version sets the context's minimum_version."""
    context = ssl_context(tls_config(pems, tls_min_version=version))
    assert context is not None
    assert context.minimum_version is expected


@pytest.mark.parametrize(
    ("cert_reqs", "expected"),
    [("none", ssl.CERT_NONE), ("optional", ssl.CERT_OPTIONAL), ("required", ssl.CERT_REQUIRED)],
)
def test_verify_mode_follows_cert_reqs(pems, cert_reqs, expected):
    """cert_reqs sets verify_mode, and ca_certs is the only trusted CA."""
    context = ssl_context(tls_config(pems, cert_reqs=cert_reqs, ca_certs=str(pems.ca)))
    assert context is not None
    assert context.verify_mode is expected
    assert context.cert_store_stats()["x509_ca"] == 1


def test_ciphers_are_applied(pems):
    """A valid cipher string restricts the TLS 1.2 ciphers offered."""
    context = ssl_context(tls_config(pems, ciphers="ECDHE+AESGCM"))
    assert context is not None
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12
    assert all(name.startswith("ECDHE-") and "GCM" in name for name in tls12)


ErrorCase = Callable[[Pems], tuple[dict[str, object], str]]

ERROR_CASES: dict[str, ErrorCase] = {
    "keyfile without certfile": lambda p: (
        {"certfile": None, "keyfile": str(p.key)},
        "--keyfile: needs --certfile",
    ),
    "cert_reqs without certfile": lambda p: (
        {"certfile": None, "keyfile": None, "cert_reqs": "required", "ca_certs": str(p.ca)},
        "--cert-reqs required: needs --certfile",
    ),
    "required without ca_certs": lambda p: (
        {"cert_reqs": "required"},
        "--cert-reqs required: needs --ca-certs",
    ),
    "optional without ca_certs": lambda p: (
        {"cert_reqs": "optional"},
        "--cert-reqs optional: needs --ca-certs",
    ),
    "missing certfile": lambda p: (
        {"certfile": str(p.missing)},
        f"--certfile: cannot read {str(p.missing)!r}: no such file or directory",
    ),
    "certfile is a directory": lambda p: (
        {"certfile": str(p.missing.parent)},
        f"--certfile: cannot read {str(p.missing.parent)!r}: is a directory",
    ),
    "missing keyfile": lambda p: (
        {"keyfile": str(p.missing)},
        f"--keyfile: cannot read {str(p.missing)!r}: no such file or directory",
    ),
    "missing ca_certs": lambda p: (
        {"cert_reqs": "required", "ca_certs": str(p.missing)},
        f"--ca-certs: cannot read {str(p.missing)!r}: no such file or directory",
    ),
    "certfile not PEM": lambda p: (
        {"certfile": str(p.garbage)},
        f"--certfile: no PEM certificate in {str(p.garbage)!r}",
    ),
    "certfile is a key": lambda p: (
        {"certfile": str(p.key)},
        f"--certfile: no PEM certificate in {str(p.key)!r}",
    ),
    "certfile corrupt": lambda p: (
        {"certfile": str(p.corrupt_cert)},
        f"--certfile: invalid PEM certificate in {str(p.corrupt_cert)!r}",
    ),
    "keyfile not PEM": lambda p: (
        {"keyfile": str(p.garbage)},
        f"--keyfile: no valid PEM private key in {str(p.garbage)!r}",
    ),
    "keyfile is a certificate": lambda p: (
        {"keyfile": str(p.cert)},
        f"--keyfile: no valid PEM private key in {str(p.cert)!r}",
    ),
    "certfile without key and no keyfile": lambda p: (
        {"keyfile": None},
        f"--certfile: no valid PEM private key in {str(p.cert)!r}",
    ),
    "key does not match cert": lambda p: (
        {"keyfile": str(p.other_key)},
        f"--keyfile: the key in {str(p.other_key)!r} does not match the certificate "
        f"in {str(p.cert)!r}",
    ),
    "encrypted key without password": lambda p: (
        {"keyfile": str(p.encrypted_key)},
        f"--keyfile: the key in {str(p.encrypted_key)!r} is encrypted; set --keyfile-password",
    ),
    "encrypted key with wrong password": lambda p: (
        {"keyfile": str(p.encrypted_key), "keyfile_password": "wrong"},
        f"--keyfile-password: wrong password for {str(p.encrypted_key)!r}",
    ),
    "ca_certs not PEM": lambda p: (
        {"cert_reqs": "required", "ca_certs": str(p.garbage)},
        f"--ca-certs: no valid PEM certificate in {str(p.garbage)!r}",
    ),
    "bad ciphers": lambda p: (
        {"ciphers": "NO-SUCH-CIPHER"},
        "--ciphers: no cipher matches 'NO-SUCH-CIPHER'; see 'openssl ciphers'",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_config_errors_are_one_line_and_name_the_setting(pems, case):
    """Each TLS mistake is a one-line ConfigError naming the setting and the file."""
    overrides, message = case(pems)
    with pytest.raises(ConfigError) as info:
        ssl_context(tls_config(pems, **overrides))
    assert str(info.value) == message
    assert "\n" not in str(info.value)
    # No chained OpenSSL traceback behind the one-line message.
    error = info.value
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_client_cert_name_is_rfc4514():
    """Subjects are rendered most specific RDN first, with RFC 4514 escaping."""
    subject = (
        (("countryName", "NZ"),),
        (("organizationName", "Acme, Inc."),),
        (("commonName", " lead#"), ("userId", "a+b")),
        (("emailAddress", "x@example.org "),),
    )
    assert _rfc4514_name(subject) == (
        "emailAddress=x@example.org\\ ,CN=\\ lead#+UID=a\\+b,O=Acme\\, Inc.,C=NZ"
    )
    assert _rfc4514_name(()) is None
    assert _rfc4514_name(None) is None
