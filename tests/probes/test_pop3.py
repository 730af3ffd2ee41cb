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

    async def test_many_at_once(self, dovecot, probe_ctx, tls_files):
        """Many concurrent probes all succeed, and their threads end."""
        targets = [pop3(dovecot.pop3, dovecot, tls_files["ca"], name=f"p{i}") for i in range(20)]
        samples = await asyncio.gather(*(run_probe(t, probe_ctx, timeout=10) for t in targets))
        assert all(s.ok for s in samples), [s.detail for s in samples if not s.ok]
        await _threads_settle(probe_ctx)
        assert 0 == probe_ctx.threads.running


async def _until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.01)


class TestPop3Workers:
    """Issue 10, item 9: a POP3 probe never waits for a worker thread behind other targets'
    probes, so that wait is never measured as its server's time."""

    async def test_slow_servers_do_not_starve_a_healthy_one(self, dovecot, probe_ctx,
                                                             tls_files):
        """80 POP3 servers of one platform greet and then stall at login, holding their
        threads until their deadline; a healthy Dovecot target of the same platform probed
        meanwhile is OK (it waited behind them for one of the context's 8 threads and timed
        out: a false BAD)."""
        async with FaultProxy(dovecot.pop3, Fault("stall_after", after=1)) as proxy:
            slow = [pop3(proxy.port, dovecot, tls="none", name=f"slow{i}") for i in range(80)]
            tasks = [asyncio.create_task(run_probe(t, probe_ctx, timeout=30)) for t in slow]
            try:
                await _until(lambda: proxy.connections == 80 and probe_ctx.threads.running >= 8)
                healthy = pop3(dovecot.pop3, dovecot, tls="none", name="healthy")
                sample = await run_probe(healthy, probe_ctx, timeout=5)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            await _threads_settle(probe_ctx)
        assert Result.OK == sample.result, sample.detail

    @pytest.mark.parametrize("tls", ["none", "starttls"])
    async def test_a_silent_server_holds_no_thread(self, dovecot, probe_ctx, tls_files, tls):
        """A server that accepts and never greets (a blackhole behind a load balancer) is
        waited for on the event loop: no worker thread is taken until it speaks."""
        async with FaultProxy(dovecot.pop3, Fault("stall")) as proxy:
            target = pop3(proxy.port, dovecot, tls_files["ca"], tls=tls)
            task = asyncio.create_task(run_probe(target, probe_ctx, timeout=0.5))
            most = 0
            while not task.done():
                most = max(most, probe_ctx.threads.running)
                await asyncio.sleep(0.005)
            sample = task.result()
        assert (Result.TIMEOUT, Phase.GREETING) == (sample.result, sample.phase)
        assert 1 == proxy.connections
        assert 0 == most


def _scripted_target(port, **fields):
    fields.setdefault("tls", "none")
    return make_target(type="pop3", host="127.0.0.1", port=port, username="probe",
                       password="s3cret-pw", **fields)


def _login_server(answer_user: bytes, answer_pass: bytes | None):
    """A POP3 server that greets, answers USER and PASS as told (None: hangs up at PASS)."""

    async def handler(reader, writer):
        writer.write(b"+OK ready\r\n")
        while request := await line(reader):
            if request.startswith(b"USER"):
                writer.write(answer_user)
            elif request.startswith(b"PASS"):
                if answer_pass is None:
                    return
                writer.write(answer_pass)
            else:
                writer.write(b"-ERR unknown\r\n")
            await writer.drain()

    return handler


class TestPop3Replies:
    """Only the server's ``-`` reply to USER or PASS is a refusal (``auth``); what poplib says
    itself, or a reply that is no POP3 reply, is ``protocol``."""

    @pytest.mark.parametrize(
        ("answer_user", "answer_pass"),
        [
            (b"+OK " + b"u" * 3000 + b"\r\n", b"+OK\r\n"),
            (b"+OK\r\n", b"+OK " + b"p" * 3000 + b"\r\n"),
            (b"+OK\r\n", b"-ERR " + b"p" * 3000 + b"\r\n"),
            (b"+OK\r\n", None),
            (b"+OK\r\n", b"HTTP/1.1 400 Bad Request\r\n"),
        ],
        ids=["long-line-at-user", "long-line-at-pass", "long-err-at-pass", "eof-at-pass",
             "not-pop3-at-pass"],
    )
    async def test_not_a_refusal(self, probe_ctx, answer_user, answer_pass):
        """An over-long line, a hang-up or a foreign reply at login is a protocol failure in
        the login phase (all were ``auth`` before: poplib raises error_proto for them too)."""
        async with Scripted(_login_server(answer_user, answer_pass)) as server:
            sample = await run_probe(_scripted_target(server.port), probe_ctx, timeout=3)
        assert (Result.PROTOCOL, Phase.LOGIN) == (sample.result, sample.phase), sample.detail

    async def test_refusal_is_auth(self, probe_ctx):
        """``-ERR`` to PASS stays a refusal, with the server's words (printable)."""
        answer = b"-ERR [AUTH] bad \x1b[31mpassword\r\n"
        async with Scripted(_login_server(b"+OK\r\n", answer)) as server:
            sample = await run_probe(_scripted_target(server.port), probe_ctx, timeout=3)
        assert (Result.AUTH, Phase.LOGIN) == (sample.result, sample.phase)
        assert "login refused: -ERR [AUTH] bad \\x1b[31mpassword" == sample.detail
