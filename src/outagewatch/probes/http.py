"""HTTP probe: aiohttp with TraceConfig checkpoints for dns, connect, first_byte, transfer.

Phases are summed over redirects, like blackbox_exporter. ``connect`` includes the TLS
handshake: aiohttp has no signal between TCP and TLS.
"""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.http_exceptions import BadStatusLine

from outagewatch.model import Phase, Result
from outagewatch.probes._common import PhaseTimer, ProbeFailure, mismatch

if TYPE_CHECKING:
    from types import SimpleNamespace

    from outagewatch.config import HttpTarget
    from outagewatch.probes import ProbeRun

PHASES: tuple[Phase, ...] = (Phase.DNS, Phase.CONNECT, Phase.FIRST_BYTE, Phase.TRANSFER)

MAX_BODY = 1024 * 1024
_CHUNK = 64 * 1024


def _timer(ctx: SimpleNamespace) -> PhaseTimer | None:
    timer = ctx.trace_request_ctx
    return timer if isinstance(timer, PhaseTimer) else None


def _entering(phase: Phase) -> Any:
    async def callback(_session: object, ctx: SimpleNamespace, _params: object) -> None:
        timer = _timer(ctx)
        if timer is not None:
            timer.enter(phase)

    return callback


def _build_trace() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    # DNS and the connection: create_start opens "connect"; DNS nests inside it.
    trace.on_connection_create_start.append(_entering(Phase.CONNECT))
    trace.on_dns_resolvehost_start.append(_entering(Phase.DNS))
    trace.on_dns_resolvehost_end.append(_entering(Phase.CONNECT))
    trace.on_request_headers_sent.append(_entering(Phase.FIRST_BYTE))
    # request_end fires once the response headers are parsed; the body follows.
    trace.on_request_end.append(_entering(Phase.TRANSFER))
    trace.on_request_redirect.append(_entering(Phase.CONNECT))
    return trace


TRACE = _build_trace()


async def probe(target: HttpTarget, run: ProbeRun) -> None:
    timer = run.timer
    timer.enter(Phase.CONNECT)
    try:
        async with run.ctx.session.get(
            target.url,
            ssl=run.tls if run.tls is not None else False,
            allow_redirects=target.max_redirects > 0,
            max_redirects=max(target.max_redirects, 1),
            trace_request_ctx=timer,
            headers={"User-Agent": "outagewatch", "Connection": "close"},
        ) as response:
            body = await _read_bounded(response)
    except aiohttp.ClientResponseError as exc:
        line = _bad_status_line(exc)
        if line is None:
            raise
        raise mismatch("HTTP", line, what="response") from None
    timer.finish()
    _check_status(target, response.status)
    if target.expect_body is not None:
        text = body.decode(response.get_encoding() if response.charset else "utf-8", "replace")
        if re.search(target.expect_body, text) is None:
            raise ProbeFailure(
                Result.BODY,
                f"body (first {len(body)} bytes) does not match {target.expect_body!r}",
                phase=Phase.TRANSFER,
            )


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """Read at most MAX_BODY bytes; an endless body costs one MiB, not the deadline."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_BODY:
        chunk = await response.content.read(min(_CHUNK, MAX_BODY - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


_QUOTED_LINE = re.compile(r"""(b'[^\n]*'|b"[^\n]*")""")


def _bad_status_line(exc: BaseException) -> bytes | None:
    """The line a server answered instead of an HTTP status line, if that was the failure."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, BadStatusLine):
            # aiohttp keeps the line's repr: in .line (Python parser) or the message (C parser)
            quoted = _QUOTED_LINE.search(seen.line or seen.message)
            try:
                line = ast.literal_eval(quoted.group(1)) if quoted else seen.line
            except (ValueError, SyntaxError):
                line = seen.line
            return line if isinstance(line, bytes) else str(line).encode()
        seen = seen.__cause__ or seen.__context__
    return None


def _check_status(target: HttpTarget, status: int) -> None:
    wanted = target.expect_status
    if (status not in wanted) if wanted else not 200 <= status < 300:
        expected = ", ".join(map(str, wanted)) if wanted else "2xx"
        raise ProbeFailure(
            Result.STATUS, f"status {status}, expected {expected}", phase=Phase.FIRST_BYTE
        )


