"""Issue 14: the mail-loop probe, against a real Postfix delivering to a real Dovecot."""

from __future__ import annotations

import asyncio
import time
import uuid
from email.message import EmailMessage

import aiosmtplib
import pytest
from prometheus_client import CollectorRegistry
from tests.helpers.postfix import MAILBOX
from tests.helpers.targets import make_target

from outagewatch.app import loop_counts
from outagewatch.metrics import build_metrics
from outagewatch.model import Phase, Result
from outagewatch.probes import mailloop, run_probe
from outagewatch.probes._common import PhaseTimer
from outagewatch.probes.imap import ImapSession
from outagewatch.probes.mailloop import HEADER


async def _find(dovecot, token: str, *, within: float = 10.0) -> list[int]:
    """The UIDs of INBOX mails whose probe header is ``token``, once there are any."""
    session = await ImapSession.connect("127.0.0.1", dovecot.imap, "none", timer=PhaseTimer(),
                                        tls=None)
    try:
        await session.login(dovecot.user, dovecot.password)
        await session.select("INBOX")
        for _ in range(int(within / 0.05)):
            uids = await session.uid_search(f'HEADER X-Outagewatch-Probe "{token}"')
            if uids:
                return uids
            await asyncio.sleep(0.05)
            await session.select("INBOX")
        return []
    finally:
        await session.close()


async def test_the_fixture_delivers_submitted_mail_to_dovecot(mailloop_servers):
    """Postfix accepts a mail on its port and hands it to Dovecot over LMTP: it is then
    found over IMAP."""
    token = uuid.uuid4().hex
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.test", MAILBOX, "hi"
    message["X-Outagewatch-Probe"] = token
    message.set_content("hello")
    await aiosmtplib.send(message, hostname="127.0.0.1", port=mailloop_servers.postfix.port,
                          start_tls=False, local_hostname="client.test")
    assert len(await _find(mailloop_servers.dovecot, token)) == 1


def loop_target(servers, **fields):
    """A loop target on the fixture's Postfix and Dovecot, plain connections."""
    fetch = {"host": "127.0.0.1", "port": servers.dovecot.imap, "tls": "none",
             "username": servers.dovecot.user, "password": servers.dovecot.password,
             **fields.pop("fetch", {})}
    submit = {"host": "127.0.0.1", "port": servers.postfix.port, "tls": "none",
              "ehlo_hostname": "probe.test", **fields.pop("submit", {})}
    fields = {"name": "loop-test", "type": "mailloop", "submit": submit, "fetch": fetch,
              "from": "outagewatch@example.test", "to": MAILBOX, **fields}
    return make_target(**fields)


def ours(mails: dict[int, str | None]) -> list[str]:
    """The probe headers that are the probe's tokens."""
    return [h for h in mails.values() if h is not None and mailloop.token_time(h) is not None]


async def _inbox(dovecot, folder: str = "INBOX") -> dict[int, str | None]:
    """UID -> probe header of every mail in ``folder`` now."""
    session = await ImapSession.connect("127.0.0.1", dovecot.imap, "none", timer=PhaseTimer(),
                                        tls=None)
    try:
        await session.login(dovecot.user, dovecot.password)
        await session.select(folder)
        uids = await session.uid_search("ALL")
        return {uid: await session.uid_fetch_header(uid, HEADER) for uid in uids}
    finally:
        await session.close()


async def _deliver(servers, header: str | None, folder: str = "INBOX") -> None:
    """Put a mail straight into the mailbox (over Postfix), with ``header`` as its probe
    header (None: a foreign mail without one)."""
    message = EmailMessage()
    message["From"], message["To"] = "someone@example.org", MAILBOX
    message["Subject"] = f"foreign {uuid.uuid4().hex}"
    if header is not None:
        message[HEADER] = header
    message.set_content("not the probe's")
    before = len(await _inbox(servers.dovecot, folder))
    await aiosmtplib.send(message, hostname="127.0.0.1", port=servers.postfix.port,
                          start_tls=False, local_hostname="client.test")
    for _ in range(200):
        if len(await _inbox(servers.dovecot, folder)) > before:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the mail did not arrive")


class TestLoop:
    async def test_a_normal_loop(self, mailloop_servers, probe_ctx):
        """Submitted, seen in INBOX, deleted: ok, with the SMTP phases, delivery and the
        IMAP phases; no probe mail stays behind, the foreign mail does."""
        sample = await run_probe(loop_target(mailloop_servers), probe_ctx, timeout=10)
        assert Result.OK == sample.result, sample.detail
        for phase in (Phase.GREETING, Phase.EHLO, Phase.SUBMIT, Phase.SELECT, Phase.DELIVERY,
                      Phase.CLEANUP, Phase.LOGOUT):
            assert phase in sample.phases, phase
        assert sample.duration < 5
        left = await _inbox(mailloop_servers.dovecot)
        assert [] == ours(left)
        assert probe_ctx.loops["loop-test"].pending == {}

    async def test_the_mail_carries_token_and_auto_submitted(self, mailloop_servers):
        target = loop_target(mailloop_servers)
        token = mailloop.new_token(time.time())
        message = mailloop.build_message(target, token)
        assert token == message[HEADER]
        assert token in message["Subject"]
        assert "auto-generated" == message["Auto-Submitted"]
        assert message["Message-ID"].endswith("@example.test>")

    async def test_submission_refused(self, mailloop_servers, probe_ctx):
        """A recipient the MTA refuses fails in submit, not as a lost mail."""
        target = loop_target(mailloop_servers, to="nobody@example.test")
        sample = await run_probe(target, probe_ctx, timeout=10)
        assert (Result.PROTOCOL, Phase.SUBMIT) == (sample.result, sample.phase)
        assert "nobody@example.test" in sample.detail
        assert probe_ctx.loops["loop-test"].pending == {}

    async def test_imap_login_failing_after_submission(self, mailloop_servers, probe_ctx):
        """The mail went in; the mailbox refused the login: auth, in login, and the mail
        waits as pending (late when a later run finds it), never a secret in the detail."""
        target = loop_target(mailloop_servers, fetch={"password": "wrong-Pa55word"})
        sample = await run_probe(target, probe_ctx, timeout=10)
        assert (Result.AUTH, Phase.LOGIN) == (sample.result, sample.phase)
        assert Phase.SUBMIT in sample.phases
        assert "wrong-Pa55word" not in sample.detail
        assert 1 == len(probe_ctx.loops["loop-test"].pending)
        # the next good run cleans it up and counts it late
        sample = await run_probe(loop_target(mailloop_servers), probe_ctx, timeout=10)
        assert Result.OK == sample.result, sample.detail
        state = probe_ctx.loops["loop-test"]
        assert (0, 1) == (len(state.pending), state.late)
        left = await _inbox(mailloop_servers.dovecot)
        assert [] == ours(left)

    async def test_held_queue_is_lost_then_late(self, mailloop_servers, probe_ctx):
        """The MTA holds the mail: the run gives up before its deadline (lost, in
        delivery); released, the mail arrives and the next run counts it late, deletes it,
        and is ok itself."""
        postfix = mailloop_servers.postfix
        postfix.hold()
        try:
            sample = await run_probe(loop_target(mailloop_servers), probe_ctx, timeout=2)
        finally:
            postfix.release()
        assert (Result.LOST, Phase.DELIVERY) == (sample.result, sample.phase), sample.detail
        assert 1.5 < sample.duration < 2
        state = probe_ctx.loops["loop-test"]
        assert (1, 1, 0) == (len(state.pending), state.lost, state.late)
        for _ in range(100):  # the released mail arrives
            if any(h for h in (await _inbox(mailloop_servers.dovecot)).values()):
                break
            await asyncio.sleep(0.05)
        sample = await run_probe(loop_target(mailloop_servers), probe_ctx, timeout=10)
        assert Result.OK == sample.result, sample.detail
        assert (0, 1, 1) == (len(state.pending), state.lost, state.late)
        left = await _inbox(mailloop_servers.dovecot)
        assert [] == ours(left)

    async def test_junk_delivery_is_spam(self, mailloop_servers, probe_ctx):
        """Filed in Junk by the MTA: spam (BAD), and the mail is deleted from Junk."""
        target = loop_target(mailloop_servers, fetch={"junk": "Junk"})
        mailloop_servers.postfix.junk()
        try:
            sample = await run_probe(target, probe_ctx, timeout=10)
        finally:
            mailloop_servers.postfix.normal()
        assert (Result.SPAM, Phase.DELIVERY) == (sample.result, sample.phase), sample.detail
        assert "Junk" in sample.detail
        junk = await _inbox(mailloop_servers.dovecot, "Junk")
        assert [] == ours(junk)

    async def test_junk_delivery_is_ok_when_spam_is_not_bad(self, mailloop_servers,
                                                            probe_ctx):
        """``spam_is_bad: false``: filed in Junk, the mail still arrived."""
        target = loop_target(mailloop_servers, fetch={"junk": "Junk", "spam_is_bad": False})
        mailloop_servers.postfix.junk()
        try:
            sample = await run_probe(target, probe_ctx, timeout=10)
        finally:
            mailloop_servers.postfix.normal()
        assert Result.OK == sample.result, sample.detail
        assert [] == ours(await _inbox(mailloop_servers.dovecot, "Junk"))

    async def test_leftovers_cleaned_and_foreign_mail_never_touched(
        self, mailloop_servers, probe_ctx,
    ):
        """Probe mails of earlier runs (another daemon's, a restart ago) older than
        cleanup_after are deleted; a young one stays; mails without our token, or with a
        header that is no token of ours, are never touched."""
        old = mailloop.new_token(time.time() - 7200)
        young = mailloop.new_token(time.time() - 60)
        await _deliver(mailloop_servers, None)
        await _deliver(mailloop_servers, "not-a-token")
        await _deliver(mailloop_servers, old)
        await _deliver(mailloop_servers, young)
        before = await _inbox(mailloop_servers.dovecot)
        sample = await run_probe(loop_target(mailloop_servers), probe_ctx, timeout=10)
        assert Result.OK == sample.result, sample.detail
        after = await _inbox(mailloop_servers.dovecot)
        gone = {before[uid] for uid in set(before) - set(after)}
        assert {old} == gone
        assert young in after.values()
        assert None in after.values()  # the foreign mails (and the fixture's seeded one)
        assert "not-a-token" in after.values()
        # tidy for the other tests: a run with a short cleanup_after removes the young one
        await run_probe(loop_target(mailloop_servers, cleanup_after="1s"), probe_ctx,
                        timeout=10)
        assert young not in (await _inbox(mailloop_servers.dovecot)).values()


async def test_metrics_late_lost_and_oldest_pending(mailloop_servers, probe_ctx):
    """The scrape shows the loop's lost and late counts and the oldest pending mail's age."""
    registry = CollectorRegistry()
    build_metrics(registry, buckets=(1.0,), loops=lambda: loop_counts(probe_ctx))
    labels = {"target": "loop-test", "type": "mailloop", "platform": "eu"}
    mailloop_servers.postfix.hold()
    try:
        sample = await run_probe(loop_target(mailloop_servers), probe_ctx, timeout=1)
        assert Result.LOST == sample.result, sample.detail
        await asyncio.sleep(0.2)
        assert 1 == registry.get_sample_value("outagewatch_mailloop_lost_total", labels)
        assert 0 == registry.get_sample_value("outagewatch_mailloop_late_total", labels)
        age = registry.get_sample_value("outagewatch_mailloop_oldest_pending_age_seconds",
                                        labels)
        assert age is not None
        assert age > 0.2
    finally:
        mailloop_servers.postfix.release()
    for _ in range(100):
        if ours(await _inbox(mailloop_servers.dovecot)):
            break
        await asyncio.sleep(0.05)
    sample = await run_probe(loop_target(mailloop_servers), probe_ctx, timeout=10)
    assert Result.OK == sample.result, sample.detail
    assert 1 == registry.get_sample_value("outagewatch_mailloop_late_total", labels)
    assert 0 == registry.get_sample_value("outagewatch_mailloop_oldest_pending_age_seconds",
                                          labels)


def pop3_loop(servers, **fields):
    """A loop target that fetches over POP3 (plain), from the same mailbox."""
    fetch = {"type": "pop3", "port": servers.dovecot.pop3, **fields.pop("fetch", {})}
    return loop_target(servers, fetch=fetch, **fields)


class TestPop3Loop:
    async def test_a_normal_loop(self, mailloop_servers, probe_ctx):
        """Submitted, found by its header (TOP n 0), DELE'd: ok with the SMTP phases, the
        POP3 login, delivery, cleanup and logout; the foreign mails stay."""
        before = await _inbox(mailloop_servers.dovecot)
        sample = await run_probe(pop3_loop(mailloop_servers), probe_ctx, timeout=10)
        assert Result.OK == sample.result, sample.detail
        for phase in (Phase.EHLO, Phase.SUBMIT, Phase.LOGIN, Phase.DELIVERY, Phase.CLEANUP,
                      Phase.LOGOUT):
            assert phase in sample.phases, phase
        assert Phase.SELECT not in sample.phases
        after = await _inbox(mailloop_servers.dovecot)
        assert [] == ours(after)
        assert sorted(before.values(), key=str) == sorted(after.values(), key=str)
        assert probe_ctx.loops["loop-test"].pending == {}
        assert 0 == probe_ctx.threads.running

    async def test_leftovers_cleaned_and_foreign_mail_kept(self, mailloop_servers, probe_ctx):
        """Over POP3 too: an old probe mail goes, a young one and foreign mails stay."""
        old = mailloop.new_token(time.time() - 7200)
        young = mailloop.new_token(time.time() - 60)
        await _deliver(mailloop_servers, None)
        await _deliver(mailloop_servers, "not-a-token")
        await _deliver(mailloop_servers, old)
        await _deliver(mailloop_servers, young)
        before = await _inbox(mailloop_servers.dovecot)
        sample = await run_probe(pop3_loop(mailloop_servers), probe_ctx, timeout=10)
        assert Result.OK == sample.result, sample.detail
        after = await _inbox(mailloop_servers.dovecot)
        assert {old} == {before[uid] for uid in set(before) - set(after)}
        assert young in after.values()
        assert None in after.values()
        assert "not-a-token" in after.values()
        await run_probe(pop3_loop(mailloop_servers, cleanup_after="1s"), probe_ctx,
                        timeout=10)
        assert young not in (await _inbox(mailloop_servers.dovecot)).values()

    async def test_held_queue_is_lost_then_late(self, mailloop_servers, probe_ctx):
        """Held by the MTA: lost in delivery (each look a new POP3 session); released, the
        next run counts it late and deletes it."""
        postfix = mailloop_servers.postfix
        postfix.hold()
        try:
            sample = await run_probe(pop3_loop(mailloop_servers), probe_ctx, timeout=2)
        finally:
            postfix.release()
        assert (Result.LOST, Phase.DELIVERY) == (sample.result, sample.phase), sample.detail
        assert 1.5 < sample.duration < 2
        state = probe_ctx.loops["loop-test"]
        assert (1, 1, 0) == (len(state.pending), state.lost, state.late)
        for _ in range(100):
            if ours(await _inbox(mailloop_servers.dovecot)):
                break
            await asyncio.sleep(0.05)
        sample = await run_probe(pop3_loop(mailloop_servers), probe_ctx, timeout=10)
        assert Result.OK == sample.result, sample.detail
        assert (0, 1, 1) == (len(state.pending), state.lost, state.late)
        assert [] == ours(await _inbox(mailloop_servers.dovecot))
        assert 0 == probe_ctx.threads.running


def secure_submit(servers, tls_files, tmp_path, tls: str, password: str | None = None) -> dict:
    """``submit`` keys for the fixture's submission (starttls) or smtps (implicit) port,
    authenticating through Dovecot with a password file."""
    secret = tmp_path / "submit-secret"
    secret.write_text((password or servers.dovecot.password) + "\n")
    port = servers.postfix.submission if tls == "starttls" else servers.postfix.smtps
    return {"port": port, "tls": tls, "ca_file": str(tls_files["ca"]),
            "username": servers.dovecot.user, "password_file": str(secret)}


class TestSecureSubmission:
    @pytest.mark.parametrize("tls", ["starttls", "implicit"])
    async def test_a_loop_with_tls_and_auth(self, mailloop_servers, probe_ctx, tls_files,
                                            tmp_path, tls):
        """Submission with STARTTLS then AUTH, and SMTPS (implicit TLS) then AUTH: ok, with
        the TLS step of each and the SMTP login in the phases."""
        submit = secure_submit(mailloop_servers, tls_files, tmp_path, tls)
        sample = await run_probe(loop_target(mailloop_servers, submit=submit), probe_ctx,
                                 timeout=10)
        assert Result.OK == sample.result, sample.detail
        tls_phase = Phase.STARTTLS if tls == "starttls" else Phase.TLS
        assert {tls_phase, Phase.LOGIN, Phase.SUBMIT, Phase.DELIVERY} <= set(sample.phases)
        assert [] == ours(await _inbox(mailloop_servers.dovecot))

    @pytest.mark.parametrize("tls", ["starttls", "implicit"])
    async def test_unauthenticated_submission_is_refused(self, mailloop_servers, probe_ctx,
                                                         tls_files, tmp_path, tls):
        """The fixture really requires AUTH there: without it the submission is refused."""
        submit = secure_submit(mailloop_servers, tls_files, tmp_path, tls)
        del submit["username"], submit["password_file"]
        sample = await run_probe(loop_target(mailloop_servers, submit=submit), probe_ctx,
                                 timeout=10)
        assert (Result.PROTOCOL, Phase.SUBMIT) == (sample.result, sample.phase), sample.detail

    async def test_wrong_password_is_auth_at_submission(self, mailloop_servers, probe_ctx,
                                                        tls_files, tmp_path):
        """A wrong password: auth in the SMTP login, nothing pending (no mail went in), and
        the password nowhere in the detail."""
        submit = secure_submit(mailloop_servers, tls_files, tmp_path, "starttls",
                               password="Wr0ng-subm1t-Pa55")
        sample = await run_probe(loop_target(mailloop_servers, submit=submit), probe_ctx,
                                 timeout=10)
        assert (Result.AUTH, Phase.LOGIN) == (sample.result, sample.phase), sample.detail
        assert Phase.SUBMIT not in sample.phases
        assert "Wr0ng-subm1t-Pa55" not in sample.detail
        assert mailloop_servers.dovecot.password not in sample.detail
        assert probe_ctx.loops["loop-test"].pending == {}


@pytest.mark.parametrize("fetch_type", ["imap", "pop3"])
async def test_a_lost_run_sweeps_late_and_old_mails(mailloop_servers, probe_ctx, fetch_type):
    """A run that loses its own mail still deletes, once the mailbox is open, an earlier
    run's late mail (counted late) and an old leftover; foreign mails stay."""
    target = (pop3_loop if fetch_type == "pop3" else loop_target)(mailloop_servers)
    postfix = mailloop_servers.postfix
    old = mailloop.new_token(time.time() - 7200)
    await _deliver(mailloop_servers, old)
    postfix.hold()
    try:
        sample = await run_probe(target, probe_ctx, timeout=1.5)
    finally:
        postfix.release()
    assert Result.LOST == sample.result, sample.detail
    state = probe_ctx.loops["loop-test"]
    assert (1, 1, 0) == (len(state.pending), state.lost, state.late)
    assert Phase.CLEANUP in sample.phases
    assert old not in (await _inbox(mailloop_servers.dovecot)).values()
    first = next(iter(state.pending))
    for _ in range(100):  # the first run's mail arrives, late
        if first in (await _inbox(mailloop_servers.dovecot)).values():
            break
        await asyncio.sleep(0.05)
    before = await _inbox(mailloop_servers.dovecot)
    assert first in before.values()
    postfix.hold()
    try:
        sample = await run_probe(target, probe_ctx, timeout=1.5)
    finally:
        postfix.release()
    assert (Result.LOST, Phase.DELIVERY) == (sample.result, sample.phase), sample.detail
    assert Phase.CLEANUP in sample.phases
    assert (2, 1) == (state.lost, state.late)
    after = await _inbox(mailloop_servers.dovecot)
    assert {first} == {before[uid] for uid in set(before) - set(after)}
    assert None in after.values()
    # tidy: the second run's mail arrives and a normal run takes it
    for _ in range(100):
        if ours(await _inbox(mailloop_servers.dovecot)):
            break
        await asyncio.sleep(0.05)
    assert Result.OK == (await run_probe(target, probe_ctx, timeout=10)).result
    assert [] == ours(await _inbox(mailloop_servers.dovecot))
