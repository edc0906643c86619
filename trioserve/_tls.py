"""TLS: the server's SSL context from the settings, the handshake, the ASGI TLS extension.

:func:`ssl_context` turns the TLS settings into an :class:`ssl.SSLContext` (or None when TLS
is off) and reports every problem as a one-line :class:`ConfigError` that names the setting
and the file. :func:`tls_handshake` wraps an accepted stream and completes the handshake
within a deadline; a client that fails it (plaintext HTTP on the TLS port, a TLS version or
cipher mismatch, a missing client certificate, silence) is logged at DEBUG and dropped,
because those are the client's problem, not the server's. :func:`tls_extension` builds
``scope["extensions"]["tls"]``.
"""

from __future__ import annotations

import logging
import re
import ssl
import weakref
from typing import Any

import trio

from ._config import Config
from ._errors import ConfigError
from ._streams import stream_addresses
from ._versions import http_versions

LOGGER = logging.getLogger("trioserve.tls")

_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
# ssl.SSLObject.version() names → the protocol numbers the ASGI TLS extension wants.
_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)

# Our own certificate (PEM) for each context built by ssl_context(): the ssl module has no
# way to read back the certificate a context will send, and the TLS extension wants it.
_SERVER_CERTS: weakref.WeakKeyDictionary[ssl.SSLContext, str] = weakref.WeakKeyDictionary()

# OpenSSL cipher name → IANA cipher suite number; the mapping is global to OpenSSL.
_CIPHER_IDS: dict[str, int] = {}


class _NoPassword(Exception):
    """Raised from the password callback so OpenSSL never prompts on the terminal."""


def _read(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError(f"{flag}: cannot read {path!r}: {reason}") from None


def _leaf_certificate(certfile: str) -> str:
    """The first certificate of ``certfile`` (the one the server sends), as PEM."""
    match = _PEM_CERT.search(_read("--certfile", certfile))
    if match is None:
        raise ConfigError(f"--certfile: no PEM certificate in {certfile!r}")
    try:
        der = ssl.PEM_cert_to_DER_cert(match.group().decode("ascii"))
        # A scratch context parses the DER, so a corrupt certificate is blamed on
        # --certfile rather than showing up as OpenSSL's vague "PEM lib" later.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
    except (ValueError, ssl.SSLError):
        raise ConfigError(f"--certfile: invalid PEM certificate in {certfile!r}") from None
    return ssl.DER_cert_to_PEM_cert(der)


def _load_cert_chain(context: ssl.SSLContext, config: Config, certfile: str) -> None:
    keyfile = config.keyfile
    key_path = keyfile if keyfile is not None else certfile
    key_flag = "--keyfile" if keyfile is not None else "--certfile"
    if keyfile is not None:
        _read("--keyfile", keyfile)
    password = config.keyfile_password
    asked = False

    def get_password() -> str:
        nonlocal asked
        asked = True
        if password is None:
            raise _NoPassword
        return password

    try:
        context.load_cert_chain(certfile, keyfile, password=get_password)
    except _NoPassword:
        raise ConfigError(
            f"{key_flag}: the key in {key_path!r} is encrypted; set --keyfile-password"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{key_flag}: the key in {key_path!r} does not match the certificate "
                f"in {certfile!r}"
            ) from None
        if asked:
            raise ConfigError(f"--keyfile-password: wrong password for {key_path!r}") from None
        # The certificate was checked already, so what OpenSSL rejected is the key.
        raise ConfigError(f"{key_flag}: no valid PEM private key in {key_path!r}") from None
    except OSError as exc:  # the file changed since it was read
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError(f"{key_flag}: cannot read {key_path!r}: {reason}") from None


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """Build the server's SSL context from the TLS settings.

    TLS is on when ``certfile`` is set; it may hold the private key too, in which case
    ``keyfile`` can be left out. The context accepts TLS ``tls_min_version`` and newer,
    offers ALPN ``h2`` then ``http/1.1`` when HTTP/2 is served (see
    :func:`~trioserve._versions.http_versions`), ``http/1.1`` alone otherwise, refuses
    renegotiation, and verifies client certificates
    against ``ca_certs`` when ``cert_reqs`` is "optional" or "required". Python's system
    CA store is never loaded: only ``ca_certs`` decides which client certificates pass.

    Returns:
        The context, or None when neither ``certfile`` nor ``keyfile`` is set.

    Raises:
        ConfigError: a setting is missing or a file cannot be read, is not PEM, holds a
            key that does not match the certificate or cannot be decrypted with
            ``keyfile_password``. The message names the setting and the file. Also
            HTTP/2 asked for without the h2 package.
    """
    certfile = config.certfile
    if certfile is None:
        if config.keyfile is not None:
            raise ConfigError("--keyfile: needs --certfile")
        if config.cert_reqs != "none":
            # Asking for client certificates without TLS would silently serve plaintext.
            raise ConfigError(f"--cert-reqs {config.cert_reqs}: needs --certfile")
        return None
    if config.cert_reqs != "none" and config.ca_certs is None:
        # Without a CA, every client certificate fails verification, even when optional.
        raise ConfigError(f"--cert-reqs {config.cert_reqs}: needs --ca-certs")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _MIN_VERSIONS[config.tls_min_version]
    # Client-initiated renegotiation costs the server a handshake per request: a cheap DoS.
    context.options |= ssl.OP_NO_RENEGOTIATION
    if config.ciphers:
        try:
            context.set_ciphers(config.ciphers)
        except ssl.SSLError:
            raise ConfigError(
                f"--ciphers: no cipher matches {config.ciphers!r}; see 'openssl ciphers'"
            ) from None
    context.set_alpn_protocols(list(http_versions(config).alpn))

    server_cert = _leaf_certificate(certfile)
    _load_cert_chain(context, config, certfile)

    if config.ca_certs is not None:
        _read("--ca-certs", config.ca_certs)
        try:
            context.load_verify_locations(cafile=config.ca_certs)
        except ssl.SSLError:
            raise ConfigError(
                f"--ca-certs: no valid PEM certificate in {config.ca_certs!r}"
            ) from None
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise ConfigError(f"--ca-certs: cannot read {config.ca_certs!r}: {reason}") from None
    context.verify_mode = _VERIFY_MODES[config.cert_reqs]

    _SERVER_CERTS[context] = server_cert
    return context


def server_certificate(context: ssl.SSLContext) -> str | None:
    """The certificate (PEM) a context built by :func:`ssl_context` sends; None for others."""
    return _SERVER_CERTS.get(context)


def _peer(stream: trio.abc.Stream) -> str:
    client, _ = stream_addresses(stream)
    return f"{client[0]}:{client[1]}" if client is not None else "a client"


def _failure_reason(exc: BaseException) -> str:
    """A short, one-line reason for a failed handshake, from OpenSSL when it has one."""
    cause = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
    if isinstance(cause, ssl.SSLError):
        if cause.reason:
            # "HTTP_REQUEST" → "http request", "NO_SHARED_CIPHER" → "no shared cipher"
            return str(cause.reason).lower().replace("_", " ")
        return type(cause).__name__
    if cause is not None:
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    return "connection lost"


async def tls_handshake(
    stream: trio.abc.Stream,
    context: ssl.SSLContext,
    # A timeout here is an expected outcome (return None), not a Cancelled to catch.
    timeout: float,  # noqa: ASYNC109
) -> trio.SSLStream[trio.abc.Stream] | None:
    """Do the server side of a TLS handshake on an accepted ``stream``.

    Args:
        stream: The accepted transport stream.
        context: A server-side context, normally from :func:`ssl_context`.
        timeout: Seconds the whole handshake may take.

    Returns:
        The encrypted stream, ready to use; or None when the handshake timed out or
        failed, in which case ``stream`` has been closed and one DEBUG line logged on
        ``trioserve.tls``. Clients that cannot talk TLS are routine on a public port, so
        they are neither errors nor warnings.

    Cancellation from outside closes ``stream`` and propagates.
    """
    ssl_stream = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
    try:
        with trio.move_on_after(timeout) as scope:
            await ssl_stream.do_handshake()
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
        LOGGER.debug("TLS handshake with %s failed: %s", _peer(stream), _failure_reason(exc))
        await trio.aclose_forcefully(stream)
        return None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    if scope.cancelled_caught:
        LOGGER.debug("TLS handshake with %s timed out after %gs", _peer(stream), timeout)
        await trio.aclose_forcefully(stream)
        return None
    return ssl_stream


def negotiated_h2(stream: trio.abc.Stream) -> bool:
    """Whether ``stream`` is TLS whose handshake chose HTTP/2 by ALPN."""
    return isinstance(stream, trio.SSLStream) and stream.selected_alpn_protocol() == "h2"


def _rfc4514_value(value: str) -> str:
    """Escape an attribute value as RFC 4514 section 2.4 requires."""
    chars = ["\\" + c if c in ',+"\\<>;' else "\\00" if c == "\0" else c for c in value]
    if chars and chars[0] in (" ", "#"):
        chars[0] = "\\" + chars[0]
    if chars and chars[-1] == " ":
        chars[-1] = "\\ "
    return "".join(chars)


# The ssl module's long attribute names → RFC 4514's short ones where it defines them.
_RFC4514_NAMES = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _rfc4514_name(subject: Any) -> str | None:
    """``subject`` from :meth:`ssl.SSLObject.getpeercert` as an RFC 4514 string.

    RFC 4514 lists the RDNs most specific first, the reverse of the certificate order the
    ssl module gives. Attributes without an RFC 4514 short name keep the ssl module's name
    (e.g. ``emailAddress``) because the OID is not available.
    """
    if not subject:
        return None
    rdns = [
        "+".join(f"{_RFC4514_NAMES.get(key, key)}={_rfc4514_value(value)}" for key, value in rdn)
        for rdn in subject
    ]
    return ",".join(reversed(rdns))


def _cipher_suite(stream: trio.SSLStream[Any]) -> int | None:
    cipher = stream.cipher()
    if cipher is None:
        return None
    name = cipher[0]
    if name not in _CIPHER_IDS:
        # OpenSSL's cipher id is 0x0300_0000 | the IANA number (RFC 8446 / the TLS registry).
        for info in stream.context.get_ciphers():
            _CIPHER_IDS[info["name"]] = info["id"] & 0xFFFF
    return _CIPHER_IDS.get(name)


def tls_extension(stream: trio.SSLStream[Any]) -> dict[str, Any]:
    """The ASGI TLS extension (``scope["extensions"]["tls"]``) of a handshaken stream.

    - ``server_cert``: our certificate as PEM when the context came from
      :func:`ssl_context`; None for other contexts (the ssl module cannot read it back).
    - ``client_cert_chain``: the client's certificate as PEM, or ``[]`` without one. Only
      the client's own certificate is listed: before Python 3.13 the ssl module does not
      expose the intermediates a client sends.
    - ``client_cert_name``: the client certificate's subject in RFC 4514 form, or None.
      It is only known for a verified certificate (``cert_reqs`` optional or required).
    - ``client_cert_error``: always None, since a certificate that fails verification
      fails the handshake and never reaches the app.
    - ``tls_version``: 0x0303 for TLS 1.2, 0x0304 for TLS 1.3.
    - ``cipher_suite``: the IANA number of the negotiated suite (e.g. 0x1302 for
      TLS_AES_256_GCM_SHA384), or None if OpenSSL does not list it.
    """
    der = stream.getpeercert(binary_form=True)
    return {
        "server_cert": _SERVER_CERTS.get(stream.context),
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": _rfc4514_name((stream.getpeercert() or {}).get("subject")),
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(stream.version() or ""),
        "cipher_suite": _cipher_suite(stream),
    }
