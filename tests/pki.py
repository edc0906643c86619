"""The TLS certificates of the tests: one trustme CA, a server and a client certificate.

The ``pki`` fixture of tests/conftest.py makes them once per session.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import attrs
import trio
import trustme
from cryptography import x509

from tests.helpers import H11Client


@attrs.frozen
class Pki:
    """A trustme CA, a server certificate for localhost and 127.0.0.1, a client
    certificate, and the server side's PEM files."""

    ca: trustme.CA
    server: trustme.LeafCert
    client: trustme.LeafCert
    ca_file: Path
    cert_file: Path
    key_file: Path
    cert_and_key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """A client's context trusting the CA (without a client certificate)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def make_pki(directory: Path) -> Pki:
    """Issue the certificates and write the PEM files into ``directory``."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    # A subject with a comma in a field: its RFC 4514 form needs escaping.
    client = ca.issue_cert(
        "client.example.org",
        common_name="client",
        organization_name="trioserve tests",
        organization_unit_name="unit, one",
    )
    ca.cert_pem.write_to_path(directory / "ca.pem")
    server.cert_chain_pems[0].write_to_path(directory / "cert.pem")
    server.private_key_pem.write_to_path(directory / "key.pem")
    server.private_key_and_cert_chain_pem.write_to_path(directory / "cert_and_key.pem")
    return Pki(
        ca=ca,
        server=server,
        client=client,
        ca_file=directory / "ca.pem",
        cert_file=directory / "cert.pem",
        key_file=directory / "key.pem",
        cert_and_key_file=directory / "cert_and_key.pem",
    )


# -- certificate reload ---------------------------------------------------------------------


def serial_of(pem_or_der: bytes) -> int:
    """The serial number of a certificate, PEM or DER (read by cryptography, not trioserve)."""
    if pem_or_der.startswith(b"-----"):
        return x509.load_pem_x509_certificate(pem_or_der).serial_number
    return x509.load_der_x509_certificate(pem_or_der).serial_number


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically as certbot and deploy scripts do: a new file renamed over it."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def install_server_cert(leaf: trustme.LeafCert, cert_file: Path, key_file: Path) -> int:
    """Write ``leaf``'s chain and key over ``cert_file`` and ``key_file`` (each renamed into
    place, the certificate first); returns its serial number."""
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    replace_file(cert_file, chain)
    replace_file(key_file, leaf.private_key_pem.bytes())
    return serial_of(leaf.cert_chain_pems[0].bytes())


class TLSConnection:
    """A kept-alive HTTPS connection: the serial of the certificate the server sent, and
    requests one at a time."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.client = H11Client(stream)
        der = stream.getpeercert(binary_form=True)
        assert der is not None
        self.serial = serial_of(der)

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> TLSConnection:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, context, server_hostname="localhost")
        await stream.do_handshake()
        return cls(stream)

    async def get(self, target: bytes = b"/") -> bytes:
        """GET ``target``; the body of a 200 response."""
        response, body = await self.client.request(target=target)
        assert response.status_code == 200, response
        return body

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
