"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tests.helpers
from tests.pki import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The TLS certificates (tests/pki.py), made once for the session: a CA, a server
    certificate for localhost and 127.0.0.1 with its PEM files, a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(params=tests.helpers.PARSERS)
def http_parser(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test on each HTTP/1.1 parser (--http): tests.helpers' serve_http_connection
    and http_options then parse with it; skipped when the parser is not installed."""
    tests.helpers.parser_module(request.param)
    tests.helpers.parser_choice = request.param
    yield request.param
    tests.helpers.parser_choice = "h11"
