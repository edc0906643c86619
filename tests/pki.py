"""The TLS certificates of the tests: one trustme CA, a server and a client certificate.

The ``pki`` fixture of tests/conftest.py makes them once per session.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs
import trustme


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
