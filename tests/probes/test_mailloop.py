"""Issue 14: the mail-loop probe, against a real Postfix delivering to a real Dovecot.

Every test has its own mailbox (the ``loop`` fixture, tests/helpers/loopbox.py): what one
test holds, releases or leaves behind never reaches another.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from email.message import EmailMessage

import aiosmtplib
import pytest
from prometheus_client import CollectorRegistry
from tests.helpers.lineproxy import CUT, LineProxy, Rule, tag_of

from outagewatch.app import loop_counts
from outagewatch.metrics import build_metrics
from outagewatch.model import Phase, Result
from outagewatch.probes import mailloop, run_probe

NO_MAIL = "no probe mail"


def ours(mails: dict[int, str | None]) -> list[str]:
    """The probe headers that are the probe's tokens."""
    return [h for h in mails.values() if h is not None and mailloop.token_time(h) is not None]


def has_ours(mails: dict[int, str | None]) -> bool:
    return bool(ours(mails))


async def test_the_fixture_delivers_submitted_mail_to_dovecot(loop):
    """Postfix accepts a mail on its port and hands it to Dovecot over LMTP: it is then
    found over IMAP, in this test's mailbox only."""
    token = uuid.uuid4().hex
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.test", loop.address, "hi"
    message[mailloop.HEADER] = token
    message.set_content("hello")
    await aiosmtplib.send(message, hostname="127.0.0.1", port=loop.postfix.port,
                          start_tls=False, local_hostname="client.test")
    mails = await loop.wait_for(lambda m: token in m.values(), "the mail arrives")
    assert [token] == list(mails.values())


class TestLoop:
    async def test_a_normal_loop(self, loop, probe_ctx):
        """Submitted, seen in INBOX, deleted: ok, with the SMTP phases, delivery and the
        IMAP phases; no probe mail stays behind, the foreign mail does."""
        await loop.deliver(None)
        sample = await run_probe(loop.target(), probe_ctx, timeout=10)
        assert Result.OK == sample.result, sample.detail
        for phase in (Phase.GREETING, Phase.EHLO, Phase.SUBMIT, Phase.SELECT, Phase.DELIVERY,
                      Phase.CLEANUP, Phase.LOGOUT):
            assert phase in sample.phases, phase
        left = await loop.inbox()
        assert [None] == list(left.values())
        assert probe_ctx.loops["loop-test"].pending == {}

    async def test_its_duration_ends_when_the_mail_is_seen(self, loop, probe_ctx):
        """From the start of submission until the mail is seen: the cleanup after it (here
        the headers of 200 mails of another daemon read) is a phase, not part of the
        duration."""
        await loop.drop(200, mailloop.new_token(time.time()))
        began = time.monotonic()
        sample = await run_probe(loop.target(), probe_ctx, timeout=10)
        run = time.monotonic() - began
        assert Result.OK == sample.result, sample.detail
        # the cleanup phase lies between the moment the mail was seen and the run's end
        assert run - sample.duration >= sample.phases[Phase.CLEANUP]

    async def test_the_mail_carries_token_and_auto_submitted(self, loop):
        target = loop.target()
        token = mailloop.new_token(time.time())
        message = mailloop.build_message(target, token)
        assert token == message[mailloop.HEADER]
        assert token in message["Subject"]
        assert "auto-generated" == message["Auto-Submitted"]
        assert message["Message-ID"].endswith("@example.test>")

    async def test_submission_refused(self, loop, probe_ctx):
        """A recipient the MTA refuses fails in submit, not as a lost mail."""
        sample = await run_probe(loop.target(to="nobody@example.test"), probe_ctx, timeout=10)
        assert (Result.PROTOCOL, Phase.SUBMIT) == (sample.result, sample.phase)
        assert "nobody@example.test" in sample.detail
        assert probe_ctx.loops["loop-test"].pending == {}

    async def test_imap_login_failing_after_submission(self, loop, probe_ctx):
        """The mail went in; the mailbox refused the login: auth, in login, and the mail
        waits as pending (late when a later run finds it), never a secret in the detail."""
        sample = await run_probe(loop.target(fetch={"password": "wrong-Pa55word"}), probe_ctx,
                                 timeout=10)
        assert (Result.AUTH, Phase.LOGIN) == (sample.result, sample.phase)
        assert Phase.SUBMIT in sample.phases
        assert "wrong-Pa55word" not in sample.detail
        assert 1 == len(probe_ctx.loops["loop-test"].pending)
        await loop.wait_for(has_ours, "the first mail arrives")
        sample = await run_probe(loop.target(), probe_ctx, timeout=10)
        assert Result.OK == sample.result, sample.detail
        state = probe_ctx.loops["loop-test"]
        assert (0, 1) == (len(state.pending), state.late)
        assert [] == ours(await loop.inbox())

    async def test_pending_mails_are_forgotten_while_the_login_keeps_failing(self, loop,
                                                                             probe_ctx):
        """Runs that never open the mailbox still forget mails older than cleanup_after:
        memory stays bounded through an outage of hours."""
        target = loop.target(fetch={"password": "wrong-Pa55word"}, cleanup_after="1s")
        await run_probe(target, probe_ctx, timeout=10)
        await asyncio.sleep(1.1)
        await run_probe(target, probe_ctx, timeout=10)
        assert 1 == len(probe_ctx.loops["loop-test"].pending)

    async def test_junk_delivery_is_spam(self, loop, probe_ctx):
        """Filed in Junk by the MTA: spam (BAD), and the mail is deleted from Junk."""
        loop.junk()
        sample = await run_probe(loop.target(fetch={"junk": "Junk"}), probe_ctx, timeout=10)
        assert (Result.SPAM, Phase.DELIVERY) == (sample.result, sample.phase), sample.detail
        assert "Junk" in sample.detail
        assert [] == ours(await loop.inbox("Junk"))

    async def test_junk_delivery_is_ok_when_spam_is_not_bad(self, loop, probe_ctx):
        """``spam_is_bad: false``: filed in Junk, the mail still arrived."""
        loop.junk()
        target = loop.target(fetch={"junk": "Junk", "spam_is_bad": False})
        sample = await run_probe(target, probe_ctx, timeout=10)
        assert Result.OK == sample.result, sample.detail
        assert [] == ours(await loop.inbox("Junk"))

    async def test_a_mail_that_only_contains_the_token_is_neither_found_nor_deleted(
            self, loop, probe_ctx, monkeypatch):
        """SEARCH HEADER matches substrings: a foreign mail whose header merely contains
        this run's token is not the probe's mail (the run, its own mail held, is lost) and
        stays."""
        token = mailloop.new_token(time.time())
        monkeypatch.setattr(mailloop, "new_token", lambda _now: token)
        loop.hold()
        await loop.drop(1, token + ".zz-not-ours")
        sample = await run_probe(loop.target(), probe_ctx, timeout=3)
        assert Result.LOST == sample.result, sample.detail
        assert [token + ".zz-not-ours"] == [v.strip() for v in (await loop.inbox()).values()]

    @pytest.mark.parametrize("junk", [None, "Junk"])
    async def test_a_long_wait_stays_within_each_looks_budget(self, loop, probe_ctx,
                                                              monkeypatch, junk):
        """One IMAP session polls for the whole wait: the byte budget bounds each look, not
        the session's life (with no pause between looks, thousands of them end as lost,
        not as ``protocol``)."""
        monkeypatch.setattr(mailloop, "FIRST_POLL", 0.0)
        monkeypatch.setattr(mailloop, "POLL_MAX", 0.0)
        loop.hold()
        fetch = {"junk": junk} if junk else {}
        sample = await run_probe(loop.target(fetch=fetch), probe_ctx, timeout=8)
        assert (Result.LOST, Phase.DELIVERY) == (sample.result, sample.phase), sample.detail


@pytest.mark.parametrize("fetch_type", ["imap", "pop3"])
async def test_thousands_of_probe_mails_cost_each_run_a_bounded_sweep(loop, probe_ctx,
                                                                       fetch_type):
    """A mailbox with 3,000 old probe mails (a loop that could not clean up for days): each
    run is ok and looks at only ``SWEPT`` mails: IMAP the oldest of those with our header,
    POP3 the newest of the maildrop (there the foreign mail and the run's own are among
    them); foreign mails stay."""
    await loop.drop(3000, mailloop.new_token(time.time() - 7200))
    await loop.drop(1, None)
    target = loop.pop3_target() if fetch_type == "pop3" else loop.target()
    swept = mailloop.SWEPT - (2 if fetch_type == "pop3" else 0)
    for runs in (1, 2):
        sample = await run_probe(target, probe_ctx, timeout=30)
        assert Result.OK == sample.result, sample.detail
        left = await loop.inbox()
        assert 3000 - runs * swept == len(ours(left))
        assert None in left.values()


@pytest.mark.parametrize("fetch_type", ["imap", "pop3"])
async def test_held_queue_is_lost_then_late(loop, probe_ctx, fetch_type):
    """The MTA holds the mail: the run gives up before its deadline (lost, in delivery;
    over POP3 each look a new session); released, the mail arrives and the next run counts
    it late, deletes it, and is ok itself."""
    target = loop.pop3_target() if fetch_type == "pop3" else loop.target()
    loop.hold()
    sample = await run_probe(target, probe_ctx, timeout=2)
    loop.release()
    assert (Result.LOST, Phase.DELIVERY) == (sample.result, sample.phase), sample.detail
    assert 1.5 < sample.duration < 2
    state = probe_ctx.loops["loop-test"]
    assert (1, 1, 0) == (len(state.pending), state.lost, state.late)
    await loop.wait_for(has_ours, "the released mail arrives")
    sample = await run_probe(target, probe_ctx, timeout=10)
    assert Result.OK == sample.result, sample.detail
    assert (0, 1, 1) == (len(state.pending), state.lost, state.late)
    assert [] == ours(await loop.inbox())
    assert 0 == probe_ctx.threads.running


@pytest.mark.parametrize("fetch_type", ["imap", "pop3"])
async def test_leftovers_cleaned_and_foreign_mail_never_touched(loop, probe_ctx, fetch_type):
    """Probe mails of earlier runs (another daemon's, a restart ago) older than
    cleanup_after are deleted; a young one stays; mails without our token, or with a header
    that is no token of ours, are never touched."""
    old = mailloop.new_token(time.time() - 7200)
    young = mailloop.new_token(time.time() - 60)
    for header in (None, "not-a-token", old, young):
        await loop.deliver(header)
    before = await loop.inbox()
    target = loop.pop3_target() if fetch_type == "pop3" else loop.target()
    sample = await run_probe(target, probe_ctx, timeout=10)
    assert Result.OK == sample.result, sample.detail
    after = await loop.inbox()
    assert {old} == {before[uid] for uid in set(before) - set(after)}
    assert {None, "not-a-token", young} == set(after.values())


async def test_metrics_late_lost_and_oldest_pending(loop, probe_ctx):
    """The scrape shows the loop's lost and late counts and the oldest pending mail's age."""
    registry = CollectorRegistry()
    build_metrics(registry, buckets=(1.0,), loops=lambda: loop_counts(probe_ctx))
    labels = {"target": "loop-test", "type": "mailloop", "platform": "eu"}
    loop.hold()
    sample = await run_probe(loop.target(), probe_ctx, timeout=1)
    assert Result.LOST == sample.result, sample.detail
    await asyncio.sleep(0.2)
    assert 1 == registry.get_sample_value("outagewatch_mailloop_lost_total", labels)
    assert 0 == registry.get_sample_value("outagewatch_mailloop_late_total", labels)
    age = registry.get_sample_value("outagewatch_mailloop_oldest_pending_age_seconds", labels)
    assert age is not None
    assert age > 0.2
    loop.release()
    await loop.wait_for(has_ours, "the released mail arrives")
    sample = await run_probe(loop.target(), probe_ctx, timeout=10)
    assert Result.OK == sample.result, sample.detail
    assert 1 == registry.get_sample_value("outagewatch_mailloop_late_total", labels)
    assert 0 == registry.get_sample_value("outagewatch_mailloop_oldest_pending_age_seconds",
                                          labels)


class TestPop3Loop:
    async def test_a_normal_loop(self, loop, probe_ctx):
        """Submitted, found by its header (TOP n 0), DELE'd: ok with the SMTP phases, the
        POP3 login, delivery, cleanup and logout; the foreign mail stays."""
        await loop.deliver(None)
        sample = await run_probe(loop.pop3_target(), probe_ctx, timeout=10)
        assert Result.OK == sample.result, sample.detail
        for phase in (Phase.EHLO, Phase.SUBMIT, Phase.LOGIN, Phase.DELIVERY, Phase.CLEANUP,
                      Phase.LOGOUT):
            assert phase in sample.phases, phase
        assert Phase.SELECT not in sample.phases
        assert [None] == list((await loop.inbox()).values())
        assert probe_ctx.loops["loop-test"].pending == {}
        assert 0 == probe_ctx.threads.running


def secure_submit(loop, tls_files, tmp_path, tls: str, password: str | None = None) -> dict:
    """``submit`` keys for the fixture's submission (starttls) or smtps (implicit) port,
    authenticating through Dovecot with a password file."""
    secret = tmp_path / "submit-secret"
    secret.write_text((password or loop.password) + "\n")
    port = loop.postfix.submission if tls == "starttls" else loop.postfix.smtps
    return {"port": port, "tls": tls, "ca_file": str(tls_files["ca"]),
            "username": loop.user, "password_file": str(secret)}


class TestSecureSubmission:
    @pytest.mark.parametrize("tls", ["starttls", "implicit"])
    async def test_a_loop_with_tls_and_auth(self, loop, probe_ctx, tls_files, tmp_path, tls):
        """Submission with STARTTLS then AUTH, and SMTPS (implicit TLS) then AUTH: ok, with
        the TLS step of each and the SMTP login in the phases."""
        submit = secure_submit(loop, tls_files, tmp_path, tls)
        sample = await run_probe(loop.target(submit=submit), probe_ctx, timeout=10)
        assert Result.OK == sample.result, sample.detail
        tls_phase = Phase.STARTTLS if tls == "starttls" else Phase.TLS
        assert {tls_phase, Phase.LOGIN, Phase.SUBMIT, Phase.DELIVERY} <= set(sample.phases)
        assert [] == ours(await loop.inbox())

    @pytest.mark.parametrize("tls", ["starttls", "implicit"])
    async def test_unauthenticated_submission_is_refused(self, loop, probe_ctx, tls_files,
                                                         tmp_path, tls):
        """The fixture really requires AUTH there: without it the submission is refused."""
        submit = secure_submit(loop, tls_files, tmp_path, tls)
        del submit["username"], submit["password_file"]
        sample = await run_probe(loop.target(submit=submit), probe_ctx, timeout=10)
        assert (Result.PROTOCOL, Phase.SUBMIT) == (sample.result, sample.phase), sample.detail

    async def test_wrong_password_is_auth_at_submission(self, loop, probe_ctx, tls_files,
                                                        tmp_path):
        """A wrong password: auth in the SMTP login, nothing pending (no mail went in), and
        the password nowhere in the detail."""
        submit = secure_submit(loop, tls_files, tmp_path, "starttls",
                               password="Wr0ng-subm1t-Pa55")
        sample = await run_probe(loop.target(submit=submit), probe_ctx, timeout=10)
        assert (Result.AUTH, Phase.LOGIN) == (sample.result, sample.phase), sample.detail
        assert Phase.SUBMIT not in sample.phases
        assert "Wr0ng-subm1t-Pa55" not in sample.detail
        assert loop.password not in sample.detail
        assert probe_ctx.loops["loop-test"].pending == {}

    async def test_many_starttls_loops_in_a_row_reuse_no_live_descriptor(
            self, loop, probe_ctx, tls_files, tmp_path):
        """The SMTP session once closed its socket under the TLS transport still shutting
        it down: the next connection got the same descriptor and failed with "File
        descriptor N is used by transport"."""
        submit = secure_submit(loop, tls_files, tmp_path, "starttls")
        target = loop.target(submit=submit)
        results = [await run_probe(target, probe_ctx, timeout=10) for _ in range(15)]
        assert [Result.OK] * 15 == [s.result for s in results], [s.detail for s in results]


@pytest.mark.parametrize("fetch_type", ["imap", "pop3"])
async def test_a_lost_run_sweeps_late_and_old_mails(loop, probe_ctx, fetch_type):
    """A run that loses its own mail still deletes, once the mailbox is open, an earlier
    run's late mail (counted late) and an old leftover; foreign mails stay."""
    target = loop.pop3_target() if fetch_type == "pop3" else loop.target()
    old = mailloop.new_token(time.time() - 7200)
    await loop.deliver(old)
    await loop.deliver(None)
    loop.hold()
    sample = await run_probe(target, probe_ctx, timeout=1.5)
    loop.release()
    assert Result.LOST == sample.result, sample.detail
    state = probe_ctx.loops["loop-test"]
    assert (1, 1, 0) == (len(state.pending), state.lost, state.late)
    assert Phase.CLEANUP in sample.phases
    assert old not in (await loop.inbox()).values()
    first = next(iter(state.pending))
    before = await loop.wait_for(lambda m: first in m.values(), "the first run's mail, late")
    loop.hold()
    sample = await run_probe(target, probe_ctx, timeout=1.5)
    assert (Result.LOST, Phase.DELIVERY) == (sample.result, sample.phase), sample.detail
    assert Phase.CLEANUP in sample.phases
    assert (2, 1) == (state.lost, state.late)
    after = await loop.inbox()
    assert {first} == {before[uid] for uid in set(before) - set(after)}
    assert [None] == list(after.values())


def refusing(pattern: str, *, cut: bool = False) -> Rule:
    """Commands matching ``pattern`` answered BAD (a server without header search), or with
    ``cut`` the connection dropped on them (a network fault, not a refusal)."""
    found = re.compile(pattern.encode())

    def rule(line: bytes) -> bytes | None:
        if not found.search(line):
            return None
        return CUT if cut else tag_of(line) + b" BAD Error in IMAP command: unknown key\r\n"
    return rule


class TestWithoutHeaderSearch:
    async def test_a_server_refusing_header_search_is_searched_by_subject(self, loop,
                                                                          probe_ctx):
        """Refused (BAD): the loop finds its mail by subject, checks its header, and sweeps
        old mails by subject too; from then on it does not ask again."""
        old = mailloop.new_token(time.time() - 7200)
        await loop.deliver(old, subject=f"{mailloop.SUBJECT} {old}")
        async with LineProxy(loop.dovecot.imap, refusing(r"UID SEARCH HEADER")) as proxy:
            target = loop.target(fetch={"port": proxy.port})
            sample = await run_probe(target, probe_ctx, timeout=10)
            assert Result.OK == sample.result, sample.detail
            assert 1 == proxy.answered
            assert probe_ctx.loops["loop-test"].header_search is False
            assert Result.OK == (await run_probe(target, probe_ctx, timeout=10)).result
            assert 1 == proxy.answered
        assert [] == ours(await loop.inbox())

    async def test_a_connection_lost_during_the_search_does_not_switch_it_off(self, loop,
                                                                            probe_ctx):
        """A dropped connection is a failed run (the network), not a server without header
        search: the next run searches by header again."""
        async with LineProxy(loop.dovecot.imap, refusing(r"UID SEARCH HEADER", cut=True)) \
                as proxy:
            sample = await run_probe(loop.target(fetch={"port": proxy.port}), probe_ctx,
                                     timeout=10)
        assert Result.OK != sample.result
        assert probe_ctx.loops["loop-test"].header_search is True

    async def test_a_search_answered_no_does_not_switch_it_off(self, loop, probe_ctx):
        """NO is "not now" (a busy index), BAD "not known": only BAD switches to subject
        search for good."""
        def busy(line: bytes) -> bytes | None:
            if b"UID SEARCH HEADER" not in line:
                return None
            return tag_of(line) + b" NO [UNAVAILABLE] index busy\r\n"
        async with LineProxy(loop.dovecot.imap, busy) as proxy:
            sample = await run_probe(loop.target(fetch={"port": proxy.port}), probe_ctx,
                                     timeout=10)
        assert Result.PROTOCOL == sample.result, sample.detail
        assert probe_ctx.loops["loop-test"].header_search is True
