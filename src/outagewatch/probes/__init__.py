"""Probes: one module per protocol behind one entry point, ``run_probe``, which never raises.

``run_probe`` owns the total deadline, the phase timer and the mapping of every failure to a
``Sample``; the protocol modules only speak their protocol and raise.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, assert_never

import aiohttp
import anyio

from outagewatch.config import (
    HttpTarget,
    ImapTarget,
    MailLoopTarget,
    Pop3Target,
    SmtpTarget,
    Target,
)
from outagewatch.model import Phase, ProbeType, Result, Sample
from outagewatch.probes import http, imap, mailloop, pop3, smtp
from outagewatch.probes._common import PhaseTimer, ProbeFailure, classify, describe
from outagewatch.probes._scrub import scrub, secret_forms
from outagewatch.tls import RecordingContext, make_tls_context

if TYPE_CHECKING:
    from outagewatch.clock import Clock
    from outagewatch.config import _Tls

__all__ = [
    "ProbeContext", "ProbeRun", "ThreadTracker", "new_http_session", "phases_of", "run_probe",
]


def phases_of(probe_type: ProbeType) -> tuple[Phase, ...]:
    """The phases a probe type reports, in the order they happen (its module's PHASES)."""
    match probe_type:
        case ProbeType.HTTP:
            return http.PHASES
        case ProbeType.SMTP:
            return smtp.PHASES
        case ProbeType.IMAP:
            return imap.PHASES
        case ProbeType.POP3:
            return pop3.PHASES
        case ProbeType.MAILLOOP:
            return mailloop.PHASES
        case _:
            assert_never(probe_type)


class ThreadTracker:
    """Counts POP3 worker threads, and those still running after their probe gave up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.stuck = 0

    def started(self) -> None:
        with self._lock:
            self.running += 1

    def abandoned(self) -> None:
        with self._lock:
            self.stuck += 1

    def ended(self, *, was_abandoned: bool) -> None:
        with self._lock:
            self.running -= 1
            if was_abandoned:
                self.stuck -= 1


def new_http_session(*, limit: int = 0) -> aiohttp.ClientSession:
    """One session for all HTTP probes: no keep-alive and no DNS cache, so that every run
    measures DNS and connect honestly; no library timeouts, the probe deadline rules."""
    connector = aiohttp.TCPConnector(force_close=True, use_dns_cache=False, limit=limit)
    return aiohttp.ClientSession(
        connector=connector,
        trace_configs=[http.TRACE],
        timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None),
        auto_decompress=True,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


@dataclass
class ProbeContext:
    """What probes share: clock, HTTP session, POP3 worker tokens, per-target TLS contexts.

    Each POP3 target has its own worker token (``pop3_worker``): a pool shared by all POP3
    targets made a healthy server's probe wait behind slow ones, and that wait was measured as
    its time. POP3 threads are bounded by the POP3 runs in flight past their greeting, which
    the scheduler's capacity bounds.
    """

    clock: Clock
    session: aiohttp.ClientSession
    threads: ThreadTracker = field(default_factory=ThreadTracker)
    _tls: dict[str, tuple[object, RecordingContext]] = field(default_factory=dict)
    _pop3_workers: dict[str, anyio.CapacityLimiter] = field(default_factory=dict)
    loops: dict[str, mailloop.LoopState] = field(default_factory=dict)

    def tls_for(
        self, target: HttpTarget | SmtpTarget | ImapTarget | Pop3Target
    ) -> RecordingContext:
        """The target's TLS context, built once and rebuilt only when its settings change."""
        key = (target.tls_verify, target.ca_file)
        cached = self._tls.get(target.name)
        if cached is None or cached[0] != key:
            cached = (key, make_tls_context(verify=target.tls_verify, ca_file=target.ca_file))
            self._tls[target.name] = cached
        return cached[1]

    def tls_part(self, name: str, part: str, settings: _Tls) -> RecordingContext | None:
        """A TLS context of one connection of a target that makes two (a mail loop's
        ``submit`` and ``fetch``); None when that connection has ``tls: none``."""
        if getattr(settings, "tls", "none") == "none":
            return None
        key = (settings.tls_verify, settings.ca_file)
        slot = f"{name}\0{part}"
        cached = self._tls.get(slot)
        if cached is None or cached[0] != key:
            cached = (key, make_tls_context(verify=settings.tls_verify,
                                            ca_file=settings.ca_file))
            self._tls[slot] = cached
        cached[1].reset()
        return cached[1]

    def loop_state(self, target: MailLoopTarget) -> mailloop.LoopState:
        """A mail-loop target's memory across its runs."""
        state = self.loops.get(target.name)
        if state is None:
            state = self.loops[target.name] = mailloop.LoopState()
        state.platform = target.platform  # a reload may have moved it
        return state

    def pop3_worker(self, name: str) -> anyio.CapacityLimiter:
        """The POP3 target's own worker token: its probe never waits behind another's."""
        limiter = self._pop3_workers.get(name)
        if limiter is None:
            limiter = self._pop3_workers[name] = anyio.CapacityLimiter(1)
        return limiter

    def forget(self, name: str) -> None:
        self._tls.pop(name, None)
        for part in ("submit", "fetch"):
            self._tls.pop(f"{name}\0{part}", None)
        self.loops.pop(name, None)
        self._pop3_workers.pop(name, None)


@dataclass(frozen=True, slots=True)
class ProbeRun:
    """One run's scratch state, handed to the protocol module."""

    ctx: ProbeContext
    timer: PhaseTimer
    tls: RecordingContext | None
    timeout: float
    # a mail loop's duration ends when its mail is seen (monotonic), not after its cleanup
    seen: list[float] = field(default_factory=list)


_SILENT = (": connected, but no greeting came (a port where the client speaks first,"
           " like HTTP or implicit TLS?)")


async def run_probe(target: Target, ctx: ProbeContext, *, timeout: float) -> Sample:
    """Probe ``target`` once within ``timeout`` seconds; return a Sample, never raise
    (except CancelledError when the caller cancels)."""
    timer = PhaseTimer()
    # a mail loop makes two connections and asks for their contexts itself (tls_part)
    tls = (ctx.tls_for(target)
           if not isinstance(target, MailLoopTarget) and target.uses_tls else None)
    if tls is not None:
        tls.reset()
    run = ProbeRun(ctx=ctx, timer=timer, tls=tls, timeout=timeout)
    started_at = ctx.clock.now()
    t0 = ctx.clock.monotonic()
    result, phase, detail = Result.OK, None, ""
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            await _dispatch(target, run)
    except Exception as exc:  # every failure becomes data
        phase = exc.phase if isinstance(exc, ProbeFailure) and exc.phase else timer.current
        if deadline.expired():
            result, detail = Result.TIMEOUT, f"no answer within the {timeout:g}s deadline"
            if phase is Phase.GREETING:  # connected, and the server waits for us to speak
                detail += _SILENT
        else:
            result = classify(exc)
            detail = exc.detail if isinstance(exc, ProbeFailure) else describe(exc)
    duration = (run.seen[0] if run.seen else ctx.clock.monotonic()) - t0
    timer.finish()
    for holder in _credentials_of(target):
        secret = getattr(holder, "password", None)
        if secret is not None and detail:
            # a server may echo the password, in any form its client sent it
            forms = secret_forms(secret.get_secret_value(),
                                 username=getattr(holder, "username", None))
            detail = scrub(detail, forms)
    return Sample(
        target=target.name,
        started_at=started_at,
        duration=duration,
        result=result,
        phase=phase,
        phases=timer.durations,
        detail=detail,
        cert_expiry=tls.peer_not_after if tls is not None else None,
    )


def _credentials_of(target: Target) -> tuple[object, ...]:
    """What holds a target's passwords: itself, or a mail loop's two connections."""
    if isinstance(target, MailLoopTarget):
        return (target.submit, target.fetch)
    return (target,)


async def _dispatch(target: Target, run: ProbeRun) -> None:
    match target:
        case HttpTarget():
            await http.probe(target, run)
        case SmtpTarget():
            await smtp.probe(target, run)
        case ImapTarget():
            await imap.probe(target, run)
        case Pop3Target():
            await pop3.probe(target, run)
        case MailLoopTarget():
            await mailloop.probe(target, run)
        case _:
            assert_never(target)
