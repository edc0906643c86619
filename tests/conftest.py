"""Fixtures shared by every test directory."""

from __future__ import annotations

import pytest

from tests.pki import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The TLS certificates (tests/pki.py), made once for the session: a CA, a server
    certificate for localhost and 127.0.0.1 with its PEM files, a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))
