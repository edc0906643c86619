"""Certificate reload: new connections get a new SSL context; open ones keep theirs.

A :class:`CertStore` holds the context a server hands to each new TLS handshake. Its
:meth:`CertStore.reload` builds a new one from the same settings, through the same
:func:`~trioserve._tls.ssl_context` that built the first, and swaps it in only when it
loads: a file that cannot be read, a key that does not match its certificate, or a
certificate outside its validity period is logged at ERROR with the reason, and the
current context stays. Connections already open hold their own ``SSLStream`` and are not
touched.

:func:`watch_cert_files` polls the files (``--reload-certs-watch``). Polling is bounded
and cheap (a few ``stat`` calls a second) and sees every way a certificate is replaced:
an atomic rename (certbot, most deploy scripts), an in-place write, and a symlink swap
(Kubernetes secrets change ``..data``), since the signature of each file is its resolved
path with its inode, size and modification time. A change is acted on once the files
stayed the same for one more interval, so a certificate and its key renamed one after
the other are read together rather than as a mismatched pair.

Who triggers a reload: the master on ``SIGURG`` (``trioserve ctl reload-certs``) or a
file change, through the channel's ``ReloadCerts`` to every worker; a server with
``workers=0`` on the same signal or its own watcher.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import ssl
from collections.abc import Callable, Sequence

import attrs
import trio

from ._config import Config
from ._errors import ConfigError
from ._tls import server_certificate, ssl_context

LOGGER = logging.getLogger("trioserve.tls")

# ``trioserve ctl reload-certs``: a signal no other command uses, whose default action is
# to ignore it, so a process that does not handle it (a worker that got it from a signal
# to the process group, a server embedded with serve()) carries on unharmed.
RELOAD_SIGNAL = signal.SIGURG

# Seconds between two looks at the certificate files (--reload-certs-watch).
POLL_INTERVAL = 1.0


@attrs.frozen
class CertInfo:
    """What the log says about a certificate: its serial number and validity period."""

    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime

    def describe(self) -> str:
        return f"serial {self.serial:#x}, valid until {self.not_after:%Y-%m-%d %H:%M:%S} UTC"


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """The DER element at ``pos``: (tag, where its content starts, where it ends)."""
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(der[pos : pos + size], "big")
        pos += size
    end = pos + length
    if end > len(der):
        raise ValueError("truncated DER")
    return tag, pos, end


def _time(tag: int, value: bytes) -> datetime.datetime:
    text = value.decode("ascii")
    if tag == 0x17:  # UTCTime, YYMMDDHHMMSSZ: RFC 5280 puts YY >= 50 in the 1900s
        year = int(text[:2])
        text = str(1900 + year if year >= 50 else 2000 + year) + text[2:]
    elif tag != 0x18:  # GeneralizedTime, YYYYMMDDHHMMSSZ
        raise ValueError(f"not a time: tag {tag:#x}")
    parsed = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ")
    return parsed.replace(tzinfo=datetime.UTC)


def certificate_info(pem: str) -> CertInfo:
    """The serial number and validity of a PEM certificate (RFC 5280 section 4.1).

    The ssl module reads neither from a certificate it has not verified as a peer's, so
    the few fields needed are read from the DER here.

    Raises:
        ValueError: it is no X.509 certificate.
    """
    der = ssl.PEM_cert_to_DER_cert(pem)
    try:
        _, cert, _ = _tlv(der, 0)
        _, tbs, _ = _tlv(der, cert)
        tag, start, end = _tlv(der, tbs)
        if tag == 0xA0:  # the optional [0] version
            tag, start, end = _tlv(der, end)
        if tag != 0x02:
            raise ValueError("no serial number")
        serial = int.from_bytes(der[start:end], "big", signed=True)
        _, _, end = _tlv(der, end)  # signature algorithm
        _, _, end = _tlv(der, end)  # issuer
        _, validity, _ = _tlv(der, end)
        tag, start, end = _tlv(der, validity)
        not_before = _time(tag, der[start:end])
        tag, start, end = _tlv(der, end)
        not_after = _time(tag, der[start:end])
    except (IndexError, ValueError) as exc:
        raise ValueError(f"not an X.509 certificate: {exc}") from None
    return CertInfo(serial, not_before, not_after)


def load_context(
    config: Config, *, now: datetime.datetime | None = None
) -> tuple[ssl.SSLContext, CertInfo]:
    """A new context from ``config``'s TLS files, refused unless it can replace one in use.

    On top of :func:`~trioserve._tls.ssl_context`'s checks, the certificate must be valid
    ``now``: an expired one (or one not valid yet) would fail every client that checks,
    while the one in use may still be good for days.

    Raises:
        ConfigError: why the files cannot be used, naming the setting and the file.
    """
    context = ssl_context(config)
    if context is None:
        raise ConfigError("--certfile: not set, so there is no certificate to reload")
    pem = server_certificate(context)
    assert pem is not None  # ssl_context() notes the certificate of each context it builds
    try:
        info = certificate_info(pem)
    except ValueError as exc:
        raise ConfigError(f"--certfile: {config.certfile!r}: {exc}") from None
    now = now or datetime.datetime.now(datetime.UTC)
    if info.not_after < now:
        raise ConfigError(
            f"--certfile: the certificate in {config.certfile!r} expired on "
            f"{info.not_after:%Y-%m-%d %H:%M:%S} UTC"
        )
    if info.not_before > now:
        raise ConfigError(
            f"--certfile: the certificate in {config.certfile!r} is not valid before "
            f"{info.not_before:%Y-%m-%d %H:%M:%S} UTC"
        )
    return context, info


@attrs.define(eq=False)
class CertStore:
    """The SSL context a server gives each new TLS connection, and how to replace it.

    Attributes:
        config: The settings the context is built from.
        context: The context of new handshakes: read once per connection, replaced
            whole by :meth:`reload` (never changed in place, so an open connection's
            context stays as it was).
    """

    config: Config
    context: ssl.SSLContext

    @classmethod
    def from_config(cls, config: Config) -> CertStore | None:
        """The store of ``config``'s first context, or None without TLS.

        Raises:
            ConfigError: as :func:`~trioserve._tls.ssl_context` does.
        """
        context = ssl_context(config)
        return None if context is None else cls(config, context)

    def reload(self, why: str, *, level: int = logging.INFO) -> CertInfo | None:
        """Build a new context from the files; new connections use it from now on.

        Args:
            why: What asked for it, for the log ("SIGURG", "a file changed").
            level: The level of the log line that says it worked.

        Returns:
            The new certificate's details, or None when the files cannot be used: then
            the reason is logged at ERROR and the current context stays in use.
        """
        try:
            context, info = load_context(self.config)
        except (ConfigError, ssl.SSLError, OSError) as exc:
            # ssl_context() names the setting for every problem it knows; anything else
            # from OpenSSL or the file system must not take a serving process down either.
            LOGGER.error("%s: certificate not reloaded (the current one stays): %s", why, exc)
            return None
        self.context = context
        LOGGER.log(level, "%s: certificate reloaded (%s)", why, info.describe())
        return info


def cert_paths(config: Config) -> list[str]:
    """The files a reload reads: certificate, key and client CAs, as set."""
    return [path for path in (config.certfile, config.keyfile, config.ca_certs) if path]


Signature = tuple[tuple[object, ...], ...]


def file_signature(paths: Sequence[str]) -> Signature:
    """What changes when any of ``paths`` is replaced, written, or re-pointed by a symlink."""
    signature: list[tuple[object, ...]] = []
    for path in paths:
        real = os.path.realpath(path)
        try:
            stat = os.stat(real)
        except OSError as exc:  # gone for a moment, between an unlink and a rename
            signature.append((real, exc.errno))
        else:
            signature.append((real, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


async def watch_cert_files(
    paths: Callable[[], Sequence[str]],
    on_change: Callable[[], object],
    *,
    interval: float = POLL_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``on_change()`` whenever the files ``paths()`` names changed and then stayed
    unchanged for ``interval`` seconds; runs until cancelled.

    ``paths`` is asked at every look, so a reload of the settings that names other files
    is followed (and counts as a change). The files as they are when this starts are the
    baseline. A change that is undone before it settled (a file moved away and back) is
    no change.
    """
    seen = file_signature(paths())
    settling: Signature | None = None
    task_status.started()
    while True:
        await trio.sleep(interval)
        current = file_signature(paths())
        if current == seen:
            settling = None
        elif current != settling:
            settling = current  # changed: wait one more interval for the rest of it
        else:
            seen, settling = current, None
            on_change()
