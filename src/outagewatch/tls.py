"""Client TLS contexts that record the handshake: when it finished and the peer's expiry.

Probes read both from the context after a run; notifications use the same verifying context.
"""

from __future__ import annotations

import ssl
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = ["RecordingContext", "make_tls_context"]


class RecordingContext(ssl.SSLContext):
    """A client SSLContext that remembers when its last handshake finished and the peer's
    certificate expiry; one per target, and a target never runs twice at once."""

    handshake_done: float | None
    peer_not_after: float | None

    def reset(self) -> None:
        self.handshake_done = None
        self.peer_not_after = None

    def record(self, cert: Mapping[str, object] | None) -> None:
        self.handshake_done = time.monotonic()
        not_after = (cert or {}).get("notAfter")
        self.peer_not_after = ssl.cert_time_to_seconds(not_after) if isinstance(
            not_after, str
        ) else None


class _RecordingSSLObject(ssl.SSLObject):
    """The SSLObject of a RecordingContext: records on its context once the handshake is done
    (asyncio's TLS, as used by aiohttp, aiosmtplib and our IMAP, goes through it)."""

    def do_handshake(self) -> None:
        super().do_handshake()
        ctx = self.context
        if isinstance(ctx, RecordingContext):
            ctx.record(self.getpeercert())


def make_tls_context(*, verify: bool, ca_file: Path | None) -> RecordingContext:
    """A client context that verifies by default (never the stdlib's unverified one)."""
    ctx = RecordingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sslobject_class = _RecordingSSLObject
    ctx.reset()
    if verify:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if ca_file is not None:
            ctx.load_verify_locations(cafile=str(ca_file))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
