"""Hostile servers cannot make a probe hold much memory: every read is bounded.

Each test measures, with tracemalloc (which sees the POP3 worker thread too), how far one
probe's memory peaks above where it started while a real server floods it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
import zlib
from collections.abc import Iterator

import pytest
from tests.helpers.scripted import Scripted, line
from tests.helpers.targets import make_target

from outagewatch.model import Phase, Result
from outagewatch.probes import run_probe

MiB = 1024 * 1024
BOUND = 4 * MiB  # what one probe may hold at its peak, whatever the server sends


class Peak:
    growth = 0


@contextlib.contextmanager
def peak_growth() -> Iterator[Peak]:
    """How far traced memory peaks above its level at the start of the block."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    peak = Peak()
    start = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    try:
        yield peak
    finally:
        peak.growth = tracemalloc.get_traced_memory()[1] - start
        if not tracing:
            tracemalloc.stop()


class Flood:
    """A scripted server that sends ``prologue`` and, on the first request containing
    ``trigger``, ``answer`` and then ``line_`` up to ``total`` bytes; then it waits for the
    client to hang up. ``ended`` is set when its handler is done, so that the test never
    leaves it to be cancelled."""

    def __init__(self, prologue: bytes, trigger: bytes, answer: bytes, line_: bytes,
                 total: int) -> None:
        self.prologue, self.trigger, self.answer = prologue, trigger, answer
        self.chunk = line_ * (64 * 1024 // len(line_)) if line_ else b""
        self.total = total
        self.sent = 0
        self.ended = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.prologue)
            while request := await line(reader):
                if self.trigger in request.upper():
                    writer.write(self.answer)
                    while self.sent < self.total:
                        writer.write(self.chunk)
                        self.sent += len(self.chunk)
                        await writer.drain()
                    await reader.read()  # until the client hangs up
                    return
                writer.write(b"-ERR no\r\n")
                await writer.drain()
        finally:
            self.ended.set()


def _mail_target(kind: str, tls: str = "none"):
    def target_of(port: int):
        return make_target(type=kind, host="127.0.0.1", port=port, tls=tls, username="probe",
                           password="s3cret-pw")
    return target_of


def _http_target(port: int):
    return make_target(type="http", url=f"http://127.0.0.1:{port}/")


async def _probe_flood(flood: Flood, target_of, probe_ctx, timeout: float):
    async with Scripted(flood) as server:
        with peak_growth() as peak:
            started = time.monotonic()
            sample = await run_probe(target_of(server.port), probe_ctx, timeout=timeout)
            elapsed = time.monotonic() - started
        await asyncio.wait_for(flood.ended.wait(), 5)
    return sample, peak.growth, elapsed


class TestPop3Bounds:
    async def test_capa_flood(self, probe_ctx):
        """A server answering CAPA with endless lines: the probe gives up after 64 KiB.
        Before the byte budget the lines piled up until the deadline: these 32 MiB peaked at
        33.5 MiB (an uncapped flood: 463 MiB in 2 s here; 488 MiB at the default 35 s in the
        field), then 'timeout'; now 0.6 MiB and 'protocol' at once."""
        flood = Flood(b"+OK ready\r\n", b"CAPA", b"+OK\r\n", b"X" * 1000 + b"\r\n", 32 * MiB)
        target_of = _mail_target("pop3", "starttls")
        sample, growth, elapsed = await _probe_flood(flood, target_of, probe_ctx, 5)
        assert growth < BOUND, f"peak grew by {growth / MiB:.1f} MiB"
        assert (Result.PROTOCOL, Phase.STARTTLS) == (sample.result, sample.phase), sample.detail
        assert elapsed < 2


class TestImapBounds:
    @pytest.mark.parametrize("length", [64, 128, 512])
    async def test_burst_of_lines(self, probe_ctx, length):
        """250 KB of untagged lines in one burst, under the byte bound: aioimaplib's recursive
        parser copied the rest of its input once per line, and one probe peaked at 32.4, 34.2
        and 8.8 MiB (lines of 64, 128 and 512 bytes) before it was fed 1 KiB pieces; now
        0.5 MiB."""
        burst = (b"* 1 EXISTS " + b"x" * (length - 13) + b"\r\n") * (250_000 // length)
        flood = Flood(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n", b"LOGIN", burst, b"",
                      0)
        sample, growth, _ = await _probe_flood(flood, _mail_target("imap"), probe_ctx, 1)
        assert growth < BOUND, f"peak grew by {growth / MiB:.1f} MiB"
        assert (Result.TIMEOUT, Phase.LOGIN) == (sample.result, sample.phase), sample.detail


class TestOtherBounds:
    """Guards on what the libraries bound for us (checked, no fix needed): a library upgrade
    that drops a bound fails here."""

    async def test_smtp_ehlo_flood(self, probe_ctx):
        """aiosmtplib refuses a response over 32 KiB and drops what comes between commands."""
        flood = Flood(b"220 ready\r\n", b"EHLO", b"250-hello\r\n", b"250-X" + b"x" * 200 + b"\r\n",
                      32 * MiB)
        sample, growth, elapsed = await _probe_flood(flood, _mail_target("smtp"), probe_ctx, 5)
        assert growth < BOUND, f"peak grew by {growth / MiB:.1f} MiB"
        assert (Result.PROTOCOL, Phase.EHLO) == (sample.result, sample.phase), sample.detail
        assert elapsed < 2

    async def test_http_header_flood(self, probe_ctx):
        """aiohttp refuses more than 128 header lines."""
        flood = Flood(b"", b"GET", b"HTTP/1.1 200 OK\r\n", b"X-Filler: yes\r\n", 32 * MiB)
        sample, growth, elapsed = await _probe_flood(flood, _http_target, probe_ctx, 5)
        assert growth < BOUND, f"peak grew by {growth / MiB:.1f} MiB"
        assert (Result.PROTOCOL, Phase.FIRST_BYTE) == (sample.result, sample.phase)
        assert elapsed < 2

    async def test_http_gzip_bomb(self, probe_ctx):
        """A 64 KiB gzip body that inflates to 64 MiB: aiohttp (3.13.3 and later) inflates
        in bounded steps and the probe reads at most MAX_BODY: 2.4 MiB."""
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        bomb = b"".join(packer.compress(bytes(MiB)) for _ in range(64)) + packer.flush()
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
        flood = Flood(b"", b"GET", head % len(bomb) + bomb, b"", 0)
        sample, growth, _ = await _probe_flood(flood, _http_target, probe_ctx, 5)
        assert growth < 2 * BOUND, f"peak grew by {growth / MiB:.1f} MiB"
        assert Result.OK == sample.result, sample.detail
