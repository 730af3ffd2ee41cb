from __future__ import annotations

import time

from tests.conftest import make_target
from tests.helpers.scripted import Scripted, line

from outagewatch.model import Phase, Result
from outagewatch.probes import run_probe


def imap(port, dovecot, ca=None, **fields):
    fields.setdefault("username", dovecot.user)
    fields.setdefault("password", dovecot.password)
    return make_target(type="imap", host="localhost", port=port,
                       ca_file=str(ca) if ca else None, **fields)


class TestImapProbe:
    async def test_starttls_login_select(self, dovecot, probe_ctx, tls_files):
        """STARTTLS, LOGIN, SELECT INBOX and LOGOUT against Dovecot, each timed."""
        sample = await run_probe(imap(dovecot.imap, dovecot, tls_files["ca"]), probe_ctx,
                                 timeout=5)
        assert Result.OK == sample.result, sample.detail
        for phase in (Phase.GREETING, Phase.STARTTLS, Phase.LOGIN, Phase.SELECT, Phase.LOGOUT):
            assert phase in sample.phases
        assert sample.cert_expiry is not None

    async def test_implicit_tls(self, dovecot, probe_ctx, tls_files):
        sample = await run_probe(imap(dovecot.imaps, dovecot, tls_files["ca"], tls="implicit"),
                                 probe_ctx, timeout=5)
        assert Result.OK == sample.result, sample.detail
        assert Phase.TLS in sample.phases

    async def test_plain(self, dovecot, probe_ctx):
        sample = await run_probe(imap(dovecot.imap, dovecot, tls="none"), probe_ctx, timeout=5)
        assert Result.OK == sample.result, sample.detail

    async def test_wrong_password(self, dovecot, probe_ctx, tls_files):
        """LOGIN answered NO is 'auth' (aioimaplib returns it rather than raising)."""
        sample = await run_probe(
            imap(dovecot.imap, dovecot, tls_files["ca"], password="not-the-password"),
            probe_ctx, timeout=5)
        assert (Result.AUTH, Phase.LOGIN) == (sample.result, sample.phase)
        assert "not-the-password" not in sample.detail

    async def test_missing_mailbox(self, dovecot, probe_ctx, tls_files):
        """SELECT of a mailbox that does not exist fails in the select phase."""
        sample = await run_probe(
            imap(dovecot.imap, dovecot, tls_files["ca"], mailbox="Nope"), probe_ctx, timeout=5)
        assert (Result.PROTOCOL, Phase.SELECT) == (sample.result, sample.phase)
        assert "SELECT Nope" in sample.detail

    async def test_bye_greeting_fails_fast(self, probe_ctx, dovecot):
        """A server that greets with BYE fails at once, not after the deadline."""
        async def bye(reader, writer):
            writer.write(b"* BYE too many connections\r\n")
            await writer.drain()
            await reader.read()

        async with Scripted(bye) as server:
            started = time.monotonic()
            sample = await run_probe(imap(server.port, dovecot, tls="none"), probe_ctx,
                                     timeout=5)
        assert (Result.PROTOCOL, Phase.GREETING) == (sample.result, sample.phase)
        assert "BYE" in sample.detail
        assert time.monotonic() - started < 1

    async def test_close_during_login_fails_fast(self, probe_ctx, dovecot):
        """A server that hangs up while LOGIN is pending fails at once (aioimaplib alone would
        wait for its timeout)."""
        async def hang_up_on_login(reader, writer):
            writer.write(b"* OK ready\r\n")
            while True:
                request = await line(reader)
                tag, _, command = request.partition(b" ")
                if command.startswith(b"CAPABILITY"):
                    writer.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag +
                                 b" OK done\r\n")
                    await writer.drain()
                else:
                    return  # LOGIN: hang up

        async with Scripted(hang_up_on_login) as server:
            started = time.monotonic()
            sample = await run_probe(imap(server.port, dovecot, tls="none"), probe_ctx,
                                     timeout=5)
        assert (Result.PROTOCOL, Phase.LOGIN) == (sample.result, sample.phase)
        assert "closed" in sample.detail
        assert time.monotonic() - started < 1

    async def test_starttls_not_offered(self, probe_ctx, dovecot, tls_files):
        """tls: starttls never sends LOGIN in plaintext when STARTTLS is not offered."""
        seen: list[bytes] = []

        async def no_starttls(reader, writer):
            writer.write(b"* OK ready\r\n")
            while request := await line(reader):
                seen.append(request)
                tag = request.partition(b" ")[0]
                writer.write(b"* CAPABILITY IMAP4rev1\r\n" + tag + b" OK done\r\n")
                await writer.drain()

        async with Scripted(no_starttls) as server:
            sample = await run_probe(imap(server.port, dovecot, tls_files["ca"]), probe_ctx,
                                     timeout=5)
        assert (Result.TLS, Phase.STARTTLS) == (sample.result, sample.phase)
        assert not any(b"LOGIN" in request for request in seen)


class TestGreetingCapabilities:
    def test_taken_from_the_greeting(self):
        """Dovecot's greeting carries its capabilities; no CAPABILITY round trip is needed."""
        from outagewatch.probes.imap import _greeting_capabilities

        line = b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] Dovecot ready."
        assert {"IMAP4rev1", "STARTTLS", "AUTH=PLAIN"} == _greeting_capabilities(line)

    def test_absent_or_not_imap4rev1(self):
        from outagewatch.probes.imap import _greeting_capabilities

        assert _greeting_capabilities(b"* OK ready") is None
        assert _greeting_capabilities(b"* OK [CAPABILITY FOO] hi") is None
        assert _greeting_capabilities(b"* BYE [CAPABILITY IMAP4rev1] go") is None
