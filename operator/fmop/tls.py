"""Server TLS from a certificate and key on disk (a mounted Secret: cert-manager's tls.crt/tls.key),
picked up again when they change, without a restart.

cert-manager renews a certificate well before it expires and the kubelet swaps the Secret's files
atomically (the `..data` symlink). Each TLS handshake looks at the files (one stat each) and, when
they changed, loads them into a fresh SSLContext that this and later connections use; a pair that
does not load (half-written, or a key that does not match) is logged and the last good one stays.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

log = logging.getLogger(__name__)


def _stamp(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    stats = [os.stat(p) for p in paths]  # follows the ..data symlink the kubelet swaps on a Secret update
    return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in stats)


def load(cert_file: Path | str, key_file: Path | str) -> ssl.SSLContext:
    """A server context holding the pair; ValueError naming both files and what is wrong with them."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot load the TLS certificate {cert_file} with the key {key_file}: {e} (both PEM; the key "
                         "unencrypted and belonging to the certificate, as cert-manager writes tls.crt and tls.key)") from e
    return ctx


class ReloadingContext:
    """`context` goes to the server (aiohttp's TCPSite); it serves the files' current pair."""

    def __init__(self, cert_file: Path | str, key_file: Path | str) -> None:
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self._stamp = _stamp(self.cert_file, self.key_file)
        self.context = load(self.cert_file, self.key_file)
        self.current = self.context
        self.context.sni_callback = self._on_handshake  # called for every ClientHello, with or without SNI
        self.reloads = 0

    def _on_handshake(self, conn: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        self.refresh()
        if self.current is not self.context:
            conn.context = self.current

    def refresh(self) -> None:
        """Load the pair again if the files changed; keep the last good one if they cannot be loaded."""
        try:
            stamp = _stamp(self.cert_file, self.key_file)
            if stamp == self._stamp:
                return
            self.current = load(self.cert_file, self.key_file)
        except (OSError, ValueError) as e:
            log.warning("webhook TLS: keeping the certificate loaded before: %s", e)
            return
        self._stamp = stamp
        self.reloads += 1
        log.info("webhook TLS: loaded the renewed certificate %s", self.cert_file)


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext | None:
    """The webhook's server context for --webhook-tls-cert/--webhook-tls-key; None when both are empty (plain HTTP)."""
    if not cert_file and not key_file:
        return None
    return ReloadingContext(cert_file, key_file).context
