"""Issue 14: the mail-loop probe in hostile mailboxes and against faulting servers.

Each test here reproduces a defect an independent attack found (against the real Postfix and
Dovecot of the ``loop`` fixture, through real faulting proxies) and asserts what an operator
relies on: the named folder is the one watched, no foreign mail is ever removed, no sender can
make every run fail, cleanup never changes a verdict, and every run ends by its deadline
without leaving a thread behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from email.message import EmailMessage

import aioimaplib
import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.lineproxy import CUT, LineProxy, tag_of
from tests.helpers.scripted import Scripted
from tests.probes.test_mailloop import has_ours, ours

from outagewatch.model import Phase, Result
from outagewatch.probes import mailloop, run_probe
from outagewatch.probes._common import PhaseTimer
from outagewatch.probes.imap import ImapSession, mailbox_name


async def _create(loop, folder: str) -> None:
    """A folder in the test's mailbox, made by a plain IMAP client (aioimaplib)."""
    client = aioimaplib.IMAP4(host="127.0.0.1", port=loop.dovecot.imap, timeout=10)
    await client.wait_hello_from_server()
    try:
        assert "OK" == (await client.login(loop.user, loop.password)).result
        assert "OK" == (await client.create(mailbox_name(folder))).result
    finally:
        await client.logout()


# -- folders ------------------------------------------------------------------------------

def test_folder_names_are_quoted_in_modified_utf7():
    assert '"INBOX"' == mailbox_name("INBOX")
    assert '"Junk E-mail"' == mailbox_name("Junk E-mail")
    assert '"Entw&APw-rfe"' == mailbox_name("Entwürfe")
    assert '"Tom &- Jerry"' == mailbox_name("Tom & Jerry")
    assert '"&ZeVnLIqe-"' == mailbox_name("日本語")
    assert r'"a \"b\" \\ c"' == mailbox_name('a "b" \\ c')


async def test_a_junk_folder_that_does_not_exist_yet_is_no_failure(loop, probe_ctx):
    """Many servers create Junk with the first spam: until then the mail in INBOX is ok."""
    sample = await run_probe(loop.target(fetch={"junk": "Spam"}), probe_ctx, timeout=10)
    assert Result.OK == sample.result, sample.detail
    assert 0 == probe_ctx.loops["loop-test"].cleanup_failures


async def test_a_junk_folder_with_a_space_is_that_folder(loop, probe_ctx):
    """``junk: Junk E-mail`` beside a ``Junk``: unquoted, Dovecot read ``SELECT Junk`` and the
    probe called a mail filed in Junk spam "in Junk E-mail"."""
    await _create(loop, "Junk E-mail")
    loop.junk()  # the MTA files the mail in "Junk", not the folder named
    sample = await run_probe(loop.target(fetch={"junk": "Junk E-mail"}), probe_ctx,
                             timeout=3)
    assert (Result.LOST, Phase.DELIVERY) == (sample.result, sample.phase), sample.detail


async def test_a_mailbox_with_a_non_ascii_name_is_watched(loop, probe_ctx):
    """``mailbox: Entwürfe`` (modified UTF-7 on the wire): selected, the loop runs."""
    await _create(loop, "Entwürfe")
    sample = await run_probe(loop.target(fetch={"mailbox": "Entwürfe"}), probe_ctx,
                             timeout=3)
    assert (Result.LOST, Phase.DELIVERY) == (sample.result, sample.phase), sample.detail


# -- never another's mail -----------------------------------------------------------------

async def test_a_foreign_mail_flagged_deleted_is_never_expunged(loop, probe_ctx):
    """A mail client flagged a foreign mail \\Deleted and did not expunge it: the probe's
    EXPUNGE removes the UIDs it flagged and no other."""
    await loop.deliver(None)
    session = await ImapSession.connect("127.0.0.1", loop.dovecot.imap, "none",
                                        timer=PhaseTimer(), tls=None)
    try:
        await session.login(loop.user, loop.password)
        await session.select("INBOX")
        await session.uid_store_deleted(await session.uid_search("ALL"))
    finally:
        await session.close()
    sample = await run_probe(loop.target(), probe_ctx, timeout=10)
    assert Result.OK == sample.result, sample.detail
    assert [None] == list((await loop.inbox()).values())


@pytest.mark.parametrize("form", ["=?utf-8?q?{token}?=", "=?us-ascii?b?{b64}?="])
async def test_an_encoded_word_is_no_token(loop, probe_ctx, form):
    """The header must be the token as sent, byte for byte: an RFC 2047 encoded word that
    decodes to an old token is someone else's mail, and stays."""
    old = mailloop.new_token(time.time() - 7200)
    await loop.drop(1, form.format(token=old, b64=base64.b64encode(old.encode()).decode()))
    sample = await run_probe(loop.target(), probe_ctx, timeout=10)
    assert Result.OK == sample.result, sample.detail
    assert 1 == len(await loop.inbox())


async def test_a_mail_with_two_probe_headers_is_not_ours(loop, probe_ctx):
    old = mailloop.new_token(time.time() - 7200)
    await loop.drop(1, f"{old}\r\n{mailloop.HEADER}: someone-elses")
    sample = await run_probe(loop.target(), probe_ctx, timeout=10)
    assert Result.OK == sample.result, sample.detail
    assert 1 == len(await loop.inbox())


async def test_a_token_in_the_subject_only_is_never_deleted(loop, probe_ctx):
    old = mailloop.new_token(time.time() - 7200)
    await loop.deliver(None, subject=f"{mailloop.SUBJECT} {old}")
    sample = await run_probe(loop.target(), probe_ctx, timeout=10)
    assert Result.OK == sample.result, sample.detail
    assert 1 == len(await loop.inbox())


# -- no sender can make every run fail ----------------------------------------------------

async def test_late_mails_are_swept_behind_100_foreign_header_mails(loop, probe_ctx):
    """The sweep reads the oldest 100 mails carrying a token-like header: 100 mails whose
    header is no token no longer hide a late mail from it."""
    await loop.drop(100, "not-a-token")
    loop.hold()
    sample = await run_probe(loop.target(), probe_ctx, timeout=1.5)
    assert Result.LOST == sample.result, sample.detail
    loop.release()
    state = probe_ctx.loops["loop-test"]
    first = next(iter(state.pending))
    await loop.wait_for(lambda m: first in m.values(), "the late mail arrives")
    sample = await run_probe(loop.target(), probe_ctx, timeout=10)
    assert Result.OK == sample.result, sample.detail
    assert 1 == state.late
    assert [] == ours(await loop.inbox())


async def test_a_sweep_search_of_50000_uids_fits_its_budget(loop, probe_ctx):
    """A mailbox holding 50,000 mails with our header answers the sweep's search with some
    350 KB (emulated: the proxy answers that one search itself): more than a look's
    budget, within the sweep's."""
    uids = b" ".join(b"%d" % n for n in range(100_000, 150_000))

    def huge(line: bytes) -> bytes | None:
        if f'UID SEARCH HEADER {mailloop.HEADER} "{mailloop.TOKEN_PREFIX}"'.encode() in line:
            return b"* SEARCH " + uids + b"\r\n" + tag_of(line) + b" OK done\r\n"
        return None

    async with LineProxy(loop.dovecot.imap, huge) as proxy:
        sample = await run_probe(loop.target(fetch={"port": proxy.port}), probe_ctx,
                                 timeout=10)
        assert 1 == proxy.answered
    assert Result.OK == sample.result, sample.detail
    assert 0 == probe_ctx.loops["loop-test"].cleanup_failures


async def _send_big(loop) -> None:
    """A foreign mail with a header block of some 100 KB (within Postfix's limit)."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "x@example.org", loop.address, "big"
    message["X-Pad"] = " ".join(["padding"] * 12000)
    message.set_content("hello")
    await aiosmtplib.send(message, hostname="127.0.0.1", port=loop.postfix.port,
                          start_tls=False, local_hostname="client.test")


async def test_pop3_foreign_mails_with_big_headers_fail_no_run(loop, probe_ctx):
    """Eleven mails of 100 KB headers from anyone: each POP3 look read the newest 100 within
    one 1 MiB budget and failed ``protocol``, every run, for ever. Each header read now has
    its own budget, and a look stops at the probe's mail."""
    for _ in range(11):
        await _send_big(loop)
    await loop.wait_for(lambda mails: len(mails) == 11, "the big mails arrive")
    sample = await run_probe(loop.pop3_target(), probe_ctx, timeout=10)
    assert Result.OK == sample.result, sample.detail
    assert 11 == len(await loop.inbox())


# -- cleanup never changes the verdict ----------------------------------------------------

async def test_a_cleanup_failure_after_the_mail_was_seen_keeps_ok(loop, probe_ctx):
    """The connection drops on UID STORE, after the mail was seen: still ok, the failure
    counted (``outagewatch_mailloop_cleanup_failures_total``)."""
    cut = LineProxy(loop.dovecot.imap, lambda line: CUT if b"UID STORE" in line else None)
    async with cut as proxy:
        sample = await run_probe(loop.target(fetch={"port": proxy.port}), probe_ctx,
                                 timeout=10)
    assert Result.OK == sample.result, sample.detail
    assert 1 == probe_ctx.loops["loop-test"].cleanup_failures


async def test_a_lost_mail_on_a_slow_server_is_lost_not_timeout(loop, probe_ctx):
    """A server 100 ms away, a junk folder and young probe mails of another daemon: the
    sweep overran the second kept back for cleanup and the verdict became ``timeout`` in
    cleanup while ``lost`` was counted. The verdict is the delivery's."""
    await loop.drop(5, mailloop.new_token(time.time() - 60))
    loop.hold()
    async with LineProxy(loop.dovecot.imap, rtt=0.1) as proxy:
        target = loop.target(fetch={"port": proxy.port, "junk": "Junk"})
        sample = await run_probe(target, probe_ctx, timeout=10)
    assert (Result.LOST, Phase.DELIVERY) == (sample.result, sample.phase), sample.detail
    assert sample.duration <= 10


# -- submission whose outcome is unknown ----------------------------------------------------

async def test_a_connection_lost_after_the_final_dot_keeps_the_mail_pending(loop, probe_ctx):
    """Postfix queued the mail (250 after DATA) but the reply never reached the probe: a
    failed run, and the mail, which does arrive, stays pending (late when seen)."""
    # the server's chunks: banner, EHLO, MAIL, RCPT, 354; the 250 is cut
    async with FaultProxy(loop.postfix.port, Fault("reset_after", after=5)) as proxy:
        sample = await run_probe(loop.target(submit={"port": proxy.port}), probe_ctx,
                                 timeout=10)
    assert (Result.PROTOCOL, Phase.SUBMIT) == (sample.result, sample.phase), sample.detail
    await loop.wait_for(has_ours, "the mail arrives anyway")
    state = probe_ctx.loops["loop-test"]
    assert 1 == len(state.pending)
    assert Result.OK == (await run_probe(loop.target(), probe_ctx, timeout=10)).result
    assert (0, 1) == (len(state.pending), state.late)


async def test_a_connection_lost_on_quit_after_the_250_is_ok(loop, probe_ctx):
    async with FaultProxy(loop.postfix.port, Fault("reset_after", after=6)) as proxy:
        sample = await run_probe(loop.target(submit={"port": proxy.port}), probe_ctx,
                                 timeout=10)
    assert Result.OK == sample.result, sample.detail


@pytest.mark.parametrize("reply", ["451 4.3.0 try again later", "554 5.7.1 rejected"])
async def test_a_refusal_at_data_leaves_nothing_pending(loop, probe_ctx, reply):
    class Refusing:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            return reply

    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(Refusing(), hostname="mx.test"), "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        sample = await run_probe(loop.target(submit={"port": port}), probe_ctx, timeout=3)
    finally:
        server.close()
        await server.wait_closed()
    assert (Result.PROTOCOL, Phase.SUBMIT) == (sample.result, sample.phase), sample.detail
    assert {} == probe_ctx.loops["loop-test"].pending


# -- state across runs ----------------------------------------------------------------------

def test_a_loops_platform_label_follows_a_reload(loop, probe_ctx):
    probe_ctx.loop_state(loop.target(platform="eu"))
    assert "us" == probe_ctx.loop_state(loop.target(platform="us")).platform


def test_the_oldest_pending_age_is_never_negative_after_a_clock_step_back():
    state = mailloop.LoopState()
    state.add_pending("ow1.1.0000000000000000", 10_000.0)
    assert 0.0 == state.oldest_pending_age(now=9_000.0)
    assert 0.0 == mailloop.LoopState().oldest_pending_age(now=9_000.0)


# -- faults in every phase: bounded, classified, no thread left -------------------------------

@pytest.mark.parametrize("fault", [
    Fault("stall_after", after=3),  # greeting, USER, PASS: the first STAT stalls
    Fault("stall_after", after=5),  # STAT, then the first TOP stalls
    Fault("drip", seconds=0.02),
    Fault("reset_after", after=4),
])
async def test_pop3_faults_end_by_the_deadline_without_threads(loop, probe_ctx, fault):
    async with FaultProxy(loop.dovecot.pop3, fault) as proxy:
        loop.hold()
        sample = await run_probe(loop.pop3_target(fetch={"port": proxy.port}), probe_ctx,
                                 timeout=3)
    assert sample.result is not Result.OK
    assert sample.duration <= 3.5  # the deadline, give or take a busy machine's loop lag
    for _ in range(100):
        if probe_ctx.threads.running == 0:
            break
        await asyncio.sleep(0.02)
    assert (0, 0) == (probe_ctx.threads.running, probe_ctx.threads.stuck)


@pytest.mark.parametrize("after", [0, 1, 2, 3, 5, 8])
@pytest.mark.parametrize("kind", ["stall_after", "reset_after"])
async def test_imap_faults_in_each_phase_end_by_the_deadline(loop, probe_ctx, kind, after):
    async with FaultProxy(loop.dovecot.imap, Fault(kind, after=after)) as proxy:
        sample = await run_probe(loop.target(fetch={"port": proxy.port, "junk": "Junk"}),
                                 probe_ctx, timeout=2)
    assert sample.duration <= 2.5  # the deadline, give or take a busy machine's loop lag
    if sample.result is Result.OK:  # the fault hit after the verdict: cleanup
        assert 1 == probe_ctx.loops["loop-test"].cleanup_failures


@pytest.mark.parametrize("fault", [Fault("garbage"), Fault("stall_after", after=4),
                                   Fault("drip", seconds=0.01), Fault("reset_after", after=3),
                                   Fault("endless", payload=b"250-x\r\n")])
async def test_submission_faults_fail_within_the_deadline(loop, probe_ctx, fault):
    async with FaultProxy(loop.postfix.port, fault) as proxy:
        sample = await run_probe(loop.target(submit={"port": proxy.port}), probe_ctx,
                                 timeout=2)
    assert sample.result is not Result.OK
    assert sample.duration <= 2.5  # the deadline, give or take a busy machine's loop lag


@pytest.mark.parametrize("password", ["Pa55-w0rd", 'Pa"5\\5-w0rd', "Pä55wörd"])
async def test_an_echoed_login_never_shows_the_fetch_password(loop, probe_ctx, password):
    """A server that answers every command BAD, echoing it, LOGIN included."""
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                writer.write(tag_of(line) + b" BAD you said: " + line.rstrip() + b"\r\n")
                await writer.drain()

    async with Scripted(echo) as server:
        target = loop.target(fetch={"port": server.port, "password": password})
        sample = await run_probe(target, probe_ctx, timeout=5)
    assert Result.AUTH == sample.result
    assert password not in sample.detail
    assert password.replace("\\", "\\\\").replace('"', '\\"') not in sample.detail
