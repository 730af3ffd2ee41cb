from __future__ import annotations

import asyncio
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from tests.helpers.scripted import Scripted, line
from tests.helpers.smtpd import PASSWORD, USER, start_smtpd
from tests.helpers.targets import make_target

from outagewatch.model import Phase, Result
from outagewatch.probes import run_probe
from outagewatch.probes._common import PhaseTimer, ProbeFailure
from outagewatch.probes.smtp import open_session
from outagewatch.tls import make_tls_context


def smtp(port, ca, **fields):
    return make_target(type="smtp", host="localhost", port=port, ca_file=str(ca), **fields)


class TestSmtpProbe:
    async def test_starttls_and_auth(self, smtpd, probe_ctx, tls_files):
        """STARTTLS, a second EHLO and AUTH all happen and are timed."""
        sample = await run_probe(
            smtp(smtpd.port, tls_files["ca"], username=USER, password=PASSWORD), probe_ctx,
            timeout=5)
        assert Result.OK == sample.result, sample.detail
        for phase in (Phase.CONNECT, Phase.GREETING, Phase.EHLO, Phase.STARTTLS, Phase.LOGIN,
                      Phase.LOGOUT):
            assert phase in sample.phases
        assert sample.cert_expiry is not None

    async def test_implicit_tls_splits_handshake_from_banner(self, smtpd, probe_ctx, tls_files):
        """On port 465 style TLS the handshake and the banner are separate phases."""
        sample = await run_probe(
            smtp(smtpd.implicit_port, tls_files["ca"], tls="implicit"), probe_ctx, timeout=5)
        assert Result.OK == sample.result, sample.detail
        assert sample.phases[Phase.TLS] > 0
        assert Phase.GREETING in sample.phases

    async def test_plain_without_credentials(self, smtpd, probe_ctx, tls_files):
        """tls: none with no username: banner, EHLO, QUIT; no AUTH is attempted."""
        sample = await run_probe(smtp(smtpd.port, tls_files["ca"], tls="none"), probe_ctx,
                                 timeout=5)
        assert Result.OK == sample.result
        assert Phase.LOGIN not in sample.phases

    async def test_wrong_password(self, smtpd, probe_ctx, tls_files):
        """A refused login is 'auth' in the login phase, with the server's answer."""
        sample = await run_probe(
            smtp(smtpd.port, tls_files["ca"], username=USER, password="wrong-password"),
            probe_ctx, timeout=5)
        assert (Result.AUTH, Phase.LOGIN) == (sample.result, sample.phase)
        assert "535" in sample.detail
        assert "wrong-password" not in sample.detail

    async def test_starttls_not_offered_is_a_failure(self, server_tls, probe_ctx, tls_files):
        """tls: starttls never falls back to plaintext when STARTTLS is missing."""
        server = await start_smtpd(server_tls, offer_starttls=False)
        try:
            sample = await run_probe(
                smtp(server.port, tls_files["ca"], username=USER, password=PASSWORD),
                probe_ctx, timeout=5)
        finally:
            await server.stop()
        assert (Result.TLS, Phase.EHLO) == (sample.result, sample.phase)
        assert "STARTTLS" in sample.detail

    async def test_untrusted_certificate(self, smtpd, probe_ctx):
        """STARTTLS to a certificate the system does not trust fails as 'tls'."""
        target = make_target(type="smtp", host="localhost", port=smtpd.port)
        sample = await run_probe(target, probe_ctx, timeout=5)
        assert (Result.TLS, Phase.STARTTLS) == (sample.result, sample.phase)


def _mail(message_id="<loop-1@outagewatch.test>"):
    message = EmailMessage()
    message["From"] = "probe@outagewatch.test"
    message["To"] = "loop@outagewatch.test"
    message["Subject"] = "outagewatch mail loop"
    message["Message-ID"] = message_id
    message.set_content("sent by a test\n")
    return message


async def _session(port, ca, timer, *, tls_mode="starttls"):
    return await open_session(
        "localhost", port, tls_mode, ehlo_hostname="probe.test", timer=timer,
        tls=make_tls_context(verify=True, ca_file=ca),
    )


class TestSmtpSession:
    async def test_send_arrives(self, smtpd, tls_files):
        """A mail sent over STARTTLS and AUTH arrives with its envelope and Message-ID, and
        every step is timed."""
        timer = PhaseTimer()
        async with asyncio.timeout(5):
            session = await _session(smtpd.port, tls_files["ca"], timer)
            try:
                await session.ehlo_and_starttls()
                await session.login(USER, PASSWORD)
                await session.send(_mail(), sender="probe@outagewatch.test",
                                   recipients=["loop@outagewatch.test"])
                await session.quit()
            finally:
                session.abort()
        timer.finish()
        [envelope] = smtpd.sink.messages
        assert ("probe@outagewatch.test", ["loop@outagewatch.test"]) == (
            envelope.mail_from, envelope.rcpt_tos)
        assert "<loop-1@outagewatch.test>" == BytesParser().parsebytes(
            envelope.original_content)["Message-ID"]
        assert {Phase.DNS, Phase.CONNECT, Phase.GREETING, Phase.EHLO, Phase.STARTTLS,
                Phase.LOGIN, Phase.LOGOUT} == set(timer.durations)

    async def test_abort_without_quit(self, smtpd, tls_files):
        """abort() ends a session mid-way, without QUIT, and closes its socket; a second
        abort() is harmless."""
        async with asyncio.timeout(5):
            session = await _session(smtpd.implicit_port, tls_files["ca"], PhaseTimer(),
                                     tls_mode="implicit")
            await session.ehlo_and_starttls()
            session.abort()
            await asyncio.sleep(0)  # the transport closes its socket on the next loop turn
            session.abort()
        assert -1 == session._sock.fileno()
        assert [] == smtpd.sink.messages

    async def test_refused_recipient_fails_the_send(self, tls_files):
        """A mail one recipient refused is a failure naming that recipient, though the
        server took it for the others."""
        async def refuse_second(reader, writer):
            writer.write(b"220 mx.test ESMTP\r\n")
            while request := await line(reader):
                verb = request[:4].upper()
                if verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    while await line(reader) != b".":
                        pass
                    reply = b"250 queued"
                else:
                    reply = {b"EHLO": b"250 mx.test", b"QUIT": b"221 bye"}.get(verb, b"250 ok")
                    if b"nobody@" in request:
                        reply = b"550 5.1.1 no such user"
                writer.write(reply + b"\r\n")
                await writer.drain()

        async with Scripted(refuse_second) as server, asyncio.timeout(5):
            session = await _session(server.port, tls_files["ca"], PhaseTimer(),
                                     tls_mode="none")
            try:
                await session.ehlo_and_starttls()
                with pytest.raises(ProbeFailure) as failure:
                    await session.send(_mail(), sender="probe@outagewatch.test",
                                       recipients=["loop@outagewatch.test",
                                                   "nobody@outagewatch.test"])
            finally:
                session.abort()
        assert Result.PROTOCOL == failure.value.result
        assert "recipient nobody@outagewatch.test refused: 550 5.1.1 no such user" == (
            failure.value.detail)
