"""The one place popvault builds a client TLS context."""

from __future__ import annotations

import ssl
from pathlib import Path

from popvault.errors import TLSError


def make_client_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A verifying client context: the system trust store plus ``ca_file``, if given.

    Certificates and host names are always checked, and nothing older than
    TLS 1.2 is spoken (RFC 8996 deprecates TLS 1.0 and 1.1). A ``ca_file``
    that cannot be read raises :class:`~popvault.errors.TLSError`.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot load the CA file {str(ca_file)!r}: {exc}") from exc
    return context
