from __future__ import annotations

import asyncio
import time

import pytest
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.scripted import Scripted, line
from tests.helpers.targets import make_target

from outagewatch.model import Phase, Result
from outagewatch.probes import run_probe


def pop3(port, dovecot, ca=None, **fields):
    fields.setdefault("username", dovecot.user)
    fields.setdefault("password", dovecot.password)
    return make_target(type="pop3", host="localhost", port=port,
                       ca_file=str(ca) if ca else None, **fields)


async def _threads_settle(ctx, timeout=2.0):
    deadline = time.monotonic() + timeout
    while (ctx.threads.running or ctx.threads.stuck) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


class TestPop3Probe:
    @pytest.mark.parametrize("tls", ["starttls", "implicit", "none"])
    async def test_ok(self, dovecot, probe_ctx, tls_files, tls):
        """USER/PASS and STAT against Dovecot over STLS, POP3S and plaintext."""
        port = dovecot.pop3s if tls == "implicit" else dovecot.pop3
        sample = await run_probe(pop3(port, dovecot, tls_files["ca"], tls=tls), probe_ctx,
                                 timeout=5)
        assert Result.OK == sample.result, sample.detail
        assert {Phase.GREETING, Phase.LOGIN, Phase.STAT, Phase.LOGOUT} <= set(sample.phases)
        assert (sample.cert_expiry is not None) == (tls != "none")

    async def test_wrong_password(self, dovecot, probe_ctx, tls_files):
        sample = await run_probe(pop3(dovecot.pop3, dovecot, tls_files["ca"], password="nope"),
                                 probe_ctx, timeout=5)
        assert (Result.AUTH, Phase.LOGIN) == (sample.result, sample.phase)

    async def test_untrusted_certificate(self, dovecot, probe_ctx):
        """poplib does not verify by default; the probe always does."""
        sample = await run_probe(pop3(dovecot.pop3s, dovecot, tls="implicit"), probe_ctx,
                                 timeout=5)
        assert (Result.TLS, Phase.TLS) == (sample.result, sample.phase)

    async def test_stls_not_offered(self, dovecot, probe_ctx, tls_files):
        """tls: starttls never sends USER/PASS in plaintext when STLS is not offered."""
        seen: list[bytes] = []

        async def no_stls(reader, writer):
            writer.write(b"+OK ready\r\n")
            while request := await line(reader):
                seen.append(request)
                writer.write(b"+OK\r\nUSER\r\n.\r\n" if request == b"CAPA" else b"-ERR no\r\n")
                await writer.drain()

        async with Scripted(no_stls) as server:
            sample = await run_probe(pop3(server.port, dovecot, tls_files["ca"]), probe_ctx,
                                     timeout=5)
        assert (Result.TLS, Phase.STARTTLS) == (sample.result, sample.phase)
        assert not any(request.startswith((b"USER", b"PASS")) for request in seen)

    @pytest.mark.parametrize("implicit", [False, True])
    async def test_drip_feed_releases_the_thread(self, dovecot, probe_ctx, tls_files, implicit):
        """Against a server dripping a byte every 100 ms the deadline holds, and the worker
        thread is unblocked and ends instead of hanging on (plain and TLS sockets)."""
        upstream = dovecot.pop3s if implicit else dovecot.pop3
        async with FaultProxy(upstream, Fault("drip", seconds=0.1)) as proxy:
            target = pop3(proxy.port, dovecot, tls_files["ca"],
                          tls="implicit" if implicit else "starttls")
            started = time.monotonic()
            sample = await run_probe(target, probe_ctx, timeout=0.6)
            assert time.monotonic() - started < 0.85
            assert Result.TIMEOUT == sample.result
            await _threads_settle(probe_ctx)
        assert 0 == probe_ctx.threads.running
        assert 0 == probe_ctx.threads.stuck

    async def test_limiter_bounds_threads(self, dovecot, probe_ctx, tls_files):
        """Many concurrent probes share the dedicated limiter and all succeed."""
        targets = [pop3(dovecot.pop3, dovecot, tls_files["ca"], name=f"p{i}") for i in range(20)]
        samples = await asyncio.gather(*(run_probe(t, probe_ctx, timeout=10) for t in targets))
        assert all(s.ok for s in samples), [s.detail for s in samples if not s.ok]
        assert probe_ctx.pop3_limiter.borrowed_tokens == 0
