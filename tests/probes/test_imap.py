from __future__ import annotations

import asyncio
import os
import time
import uuid
from email.message import EmailMessage

import pytest
from tests.helpers.scripted import Scripted, line
from tests.helpers.targets import make_target

from outagewatch.model import Phase, Result
from outagewatch.probes import run_probe
from outagewatch.probes._common import PhaseTimer, ProbeFailure
from outagewatch.probes.imap import ImapSession
from outagewatch.tls import make_tls_context


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


def deliver(dovecot, message_id):
    """Drop a mail into the test user's Maildir, as a local delivery agent would."""
    message = EmailMessage()
    message["From"] = "probe@outagewatch.test"
    message["Subject"] = "outagewatch mail loop"
    message["Message-ID"] = message_id
    message.set_content("looked for by a test\n")
    inbox = dovecot.workdir / "mail" / dovecot.user
    path = inbox / "new" / f"{uuid.uuid4().hex}.outagewatch-test"
    path.write_bytes(message.as_bytes())
    owner = inbox.stat()
    os.chown(path, owner.st_uid, owner.st_gid)


class TestImapSession:
    async def _open(self, dovecot, tls_files, timer):
        session = await ImapSession.connect(
            "localhost", dovecot.imap, "starttls", timer=timer,
            tls=make_tls_context(verify=True, ca_file=tls_files["ca"]))
        await session.login(dovecot.user, dovecot.password)
        await session.select("INBOX")
        return session

    async def test_find_read_and_delete_a_mail(self, dovecot, tls_files):
        """A delivered mail is found by its Message-ID, its header read, and it is gone after
        it was flagged deleted and expunged; each named step is timed."""
        message_id = f"<{uuid.uuid4().hex}@outagewatch.test>"
        deliver(dovecot, message_id)
        timer = PhaseTimer()
        async with asyncio.timeout(5):
            session = await self._open(dovecot, tls_files, timer)
            try:
                [uid] = await session.uid_search(f'HEADER Message-ID "{message_id}"')
                found = await session.uid_fetch_header(uid, "Message-ID")
                subject = await session.uid_fetch_header(uid, "Subject")
                missing = await session.uid_fetch_header(uid, "X-Not-There")
                await session.uid_store_deleted([uid])
                await session.expunge()
                after = await session.uid_search(f'HEADER Message-ID "{message_id}"')
                await session.logout()
            finally:
                await session.close()
        timer.finish()
        assert (message_id, "outagewatch mail loop", None, []) == (found, subject, missing,
                                                                  after)
        assert {Phase.DNS, Phase.CONNECT, Phase.GREETING, Phase.STARTTLS, Phase.LOGIN,
                Phase.SELECT, Phase.LOGOUT} == set(timer.durations)

    async def test_nothing_found(self, dovecot, tls_files):
        """A search that matches nothing is an empty list; a UID that does not exist has no
        header; deleting nothing sends nothing."""
        async with asyncio.timeout(5):
            session = await self._open(dovecot, tls_files, PhaseTimer())
            try:
                found = await session.uid_search('HEADER Message-ID "<no-such@mail>"')
                header = await session.uid_fetch_header(999_999, "Message-ID")
                await session.uid_store_deleted([])
            finally:
                await session.close()
        assert ([], None) == (found, header)

    async def test_refused_command_is_a_failure(self, dovecot, tls_files):
        """A search the server answers BAD raises a protocol failure with its answer."""
        async with asyncio.timeout(5):
            session = await self._open(dovecot, tls_files, PhaseTimer())
            try:
                with pytest.raises(ProbeFailure) as failure:
                    await session.uid_search("NO-SUCH-KEY")
            finally:
                await session.close()
        assert Result.PROTOCOL == failure.value.result
        assert failure.value.detail.startswith("UID SEARCH failed: BAD")


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
