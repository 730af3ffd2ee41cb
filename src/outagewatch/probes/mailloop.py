"""Mail-loop probe: submit a mail over SMTP, then see it arrive over IMAP or POP3 (issue 14).

Composed of the SMTP probe's ``SmtpSession`` and the IMAP probe's ``ImapSession``: the SMTP
steps (then ``submit``: MAIL, RCPT, DATA), the IMAP steps up to SELECT, then ``delivery``:
polling the mailbox (and the junk folder, when configured and present) with a short backoff
until the mail is seen or the run's delivery deadline passes, then ``cleanup`` and LOGOUT. A
phase both sessions have (dns, connect, tls, greeting, starttls, login, logout) adds their
times. Over POP3 (``fetch.type: pop3``, the POP3 probe's ``Pop3Session``) a session sees the
maildrop as it was at login, so each look in ``delivery`` is a new session (its connect and
login counted as delivery); mails are recognised by their headers (``TOP n 0``, newest
first, each read with its own byte budget) and deleted with DELE, which takes effect at QUIT.

Each run's mail carries a unique token in ``X-Outagewatch-Probe`` and in its subject; the
token also says when it was made (``ow1.<unix seconds>.<random>``). A mail is the probe's
only when that header, as sent and given once, is exactly a token. The probe deletes only
such mails: its own, those of earlier runs that arrived after their run gave up (counted as
late), and leftovers older than ``cleanup_after``; never another mail, and it expunges only
what it flagged. The verdict (ok, lost, spam) is the delivery's: cleanup runs after it,
within what is left of the deadline, and its failures are counted, never the verdict. The
sweep of late and old mails runs after every run that got the mailbox open, a lost one too,
and reads at most ``SWEPT`` headers.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import secrets
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING

import aiosmtplib

from outagewatch.model import Phase, Result
from outagewatch.probes import imap, pop3, smtp
from outagewatch.probes._common import PhaseTimer, ProbeFailure
from outagewatch.probes.imap import CommandRefused

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from outagewatch.config import MailLoopTarget
    from outagewatch.probes import ProbeRun
    from outagewatch.probes.imap import ImapSession
    from outagewatch.probes.pop3 import Pop3Session

PHASES: tuple[Phase, ...] = (
    Phase.DNS, Phase.CONNECT, Phase.TLS, Phase.GREETING, Phase.EHLO, Phase.STARTTLS,
    Phase.LOGIN, Phase.SUBMIT, Phase.SELECT, Phase.DELIVERY, Phase.CLEANUP, Phase.LOGOUT,
)

HEADER = "X-Outagewatch-Probe"
SUBJECT = "outagewatch mail loop"  # then the token
TOKEN_PREFIX = "ow1."  # noqa: S105 - the start of every token, no secret
_TOKEN = re.compile(r"^ow1\.(\d{1,12})\.([0-9a-f]{16})$")
FIRST_POLL = 0.05  # seconds before the first look again; doubles up to POLL_MAX
POLL_MAX = 1.0
CANDIDATES = 20  # of a search's answer, the UIDs whose header is read (ours is among them)
SWEPT = 100  # mails a run reads the header of to clean up (IMAP: oldest; POP3: newest)
# Of the run's deadline, kept back from the wait for delivery for cleanup and LOGOUT.
CLEANUP_SHARE, CLEANUP_MAX = 0.1, 5.0
GRACE = 0.05  # seconds of the run's deadline never used by cleanup: the verdict's
# What one POP3 header read (``TOP n 0``) may bring: a header block of a mail of any sender.
POP3_MAX_RECEIVED = 1024 * 1024
SEARCH_LIMIT = 4 * 1024 * 1024  # what a sweep's search may answer: some 600,000 UIDs


def new_token(now: float) -> str:
    return f"ow1.{int(now)}.{secrets.token_hex(8)}"


def token_time(token: str) -> float | None:
    """When a token was made (Unix seconds), None when it is no token of ours."""
    match = _TOKEN.match(token.strip())
    return float(match.group(1)) if match else None


@dataclass
class LoopState:
    """A loop target's memory across runs: mails submitted and not yet seen, and counts."""

    platform: str = ""
    pending: dict[str, float] = field(default_factory=dict)  # token -> submitted, Unix s
    late: int = 0
    lost: int = 0
    cleanup_failures: int = 0  # runs whose cleanup failed after their verdict
    header_search: bool = True  # False once the server answered SEARCH HEADER with BAD
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def oldest_pending_age(self, now: float) -> float:
        """Never below 0, even after the wall clock stepped back."""
        with self._lock:
            return max(0.0, max((now - t for t in self.pending.values()), default=0.0))

    def add_pending(self, token: str, submitted: float) -> None:
        with self._lock:
            self.pending[token] = submitted

    def forget(self, token: str) -> None:
        """This run's mail was seen in time, or refused at submission: neither pending nor
        late."""
        with self._lock:
            self.pending.pop(token, None)

    def seen(self, token: str) -> bool:
        """Forget a pending token; True when it was pending (its mail is late)."""
        with self._lock:
            was = self.pending.pop(token, None) is not None
            if was:
                self.late += 1
            return was

    def expire(self, older_than: float) -> None:
        """Forget mails submitted before ``older_than`` (counted as lost already)."""
        with self._lock:
            self.pending = {t: at for t, at in self.pending.items() if at >= older_than}


@dataclass(frozen=True)
class _Loop:
    """One run of a loop target: what each of its steps needs."""

    target: MailLoopTarget
    run: ProbeRun
    state: LoopState
    token: str
    until: float  # monotonic: the wait for delivery gives up here
    deadline: float  # monotonic: the run's own deadline


def build_message(target: MailLoopTarget, token: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = target.sender
    message["To"] = target.to
    message["Subject"] = f"{SUBJECT} {token}"
    message["Date"] = email.utils.formatdate(localtime=False)
    domain = target.sender.rpartition("@")[2]
    message["Message-ID"] = email.utils.make_msgid(idstring=token, domain=domain)
    message[HEADER] = token
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: autoresponders stay quiet
    message.set_content("A test mail of outagewatch's mail-loop probe; it deletes it.\n")
    return message


async def _submit(target: MailLoopTarget, run: ProbeRun, message: EmailMessage,
                  state: LoopState, token: str) -> None:
    submit = target.submit
    session = await smtp.open_session(
        submit.host, submit.effective_port, submit.tls, ehlo_hostname=submit.ehlo_hostname,
        timer=run.timer, tls=run.ctx.tls_part(target.name, "submit", submit),
    )
    try:
        await session.ehlo_and_starttls()
        if submit.username:
            await session.login(submit.username, submit.secret() or "")
        run.timer.enter(Phase.SUBMIT)
        # pending from here: a connection lost after the final dot leaves the mail's fate
        # unknown (it may well arrive); only a refusal says it never went in
        state.add_pending(token, run.ctx.clock.now().timestamp())
        try:
            await session.send(message, sender=target.sender, recipients=[target.to])
        except (ProbeFailure, aiosmtplib.SMTPRecipientsRefused):
            state.forget(token)
            raise
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 400:  # a reply refused it (-1: no reply the client understood)
                state.forget(token)
            raise
        await session.quit()
    finally:
        session.abort()


async def _search(session: ImapSession, state: LoopState, token: str) -> list[int]:
    """The UIDs of this run's mail: a search (by header, or by subject on a server that
    does not know header searches) finds candidates by substring; only a mail whose header
    *is* the token counts, so a mail that merely contains it is neither found nor deleted."""
    session.fresh_budget()
    if state.header_search:
        try:
            uids = await session.uid_search(f'HEADER {HEADER} "{token}"')
        except CommandRefused as exc:
            if exc.answer != "BAD":  # NO: it could not now (a busy index); not "never"
                raise
            state.header_search = False
            uids = await session.uid_search(f'SUBJECT "{token}"')
    else:
        uids = await session.uid_search(f'SUBJECT "{token}"')
    mine = []
    for uid in uids[-CANDIDATES:]:  # the newest: this run's mail came last
        value = await session.uid_fetch_header(uid, HEADER)
        if value is not None and value.strip() == token:
            mine.append(uid)
    return mine


async def _enter(session: ImapSession, folder: str) -> bool:
    """SELECT ``folder``; False when the server has no such folder (a junk folder many
    servers create with the first spam)."""
    try:
        await session.reselect(folder)
    except CommandRefused:
        return False
    return True


async def _wait_for(session: ImapSession, loop: _Loop,
                    folders: list[str]) -> tuple[str, list[int]]:
    """Poll the mailbox (and the junk folder) until the mail is there: (folder, UIDs).
    ``folders`` loses the junk folder when it does not exist."""
    fetch, state, token = loop.target.fetch, loop.state, loop.token
    delay = FIRST_POLL
    while True:
        uids = await _search(session, state, token)
        if uids:
            return fetch.mailbox, uids
        if fetch.junk in folders:
            if await _enter(session, fetch.junk):
                uids = await _search(session, state, token)
                if uids:
                    return fetch.junk, uids
            else:
                folders.remove(fetch.junk)
            await session.reselect(fetch.mailbox)
        if loop.run.ctx.clock.monotonic() + delay > loop.until:
            raise ProbeFailure(Result.LOST, f"the mail ({token}) did not arrive in "
                               f"{fetch.mailbox} within the deadline", phase=Phase.DELIVERY)
        await asyncio.sleep(delay)
        delay = min(delay * 2, POLL_MAX)
        await session.noop()


async def _delete(session: ImapSession, uids: list[int]) -> None:
    if uids:
        await session.uid_store_deleted(uids)
        await session.uid_expunge(uids)  # these only: never another's \\Deleted mail


async def _sweep(
    session: ImapSession, target: MailLoopTarget, state: LoopState, now: float,
) -> None:
    """Delete, in the selected folder, the mails carrying a token of ours that arrived late
    or are older than ``cleanup_after``; nothing else. At most ``SWEPT`` a run, oldest
    first: a mailbox full of them is emptied over several runs, each run bounded."""
    session.fresh_budget(SEARCH_LIMIT)
    uids = await session.uid_search(f'HEADER {HEADER} "{TOKEN_PREFIX}"' if state.header_search
                                    else f'SUBJECT "{SUBJECT} {TOKEN_PREFIX}"')
    headers = {}
    for uid in uids[:SWEPT]:
        session.fresh_budget()
        headers[uid] = await session.uid_fetch_header(uid, HEADER)
    await _delete(session, _doomed(headers, target, state, now))


def _doomed(
    headers: dict[int, str | None], target: MailLoopTarget, state: LoopState, now: float,
) -> list[int]:
    """Of mails (by UID or number -> their probe header), those to delete: a token of ours
    that arrived late or is older than ``cleanup_after``; never a mail without one."""
    doomed = []
    for key, value in headers.items():
        made = token_time(value) if value is not None else None
        if made is None or value is None:
            continue  # not our header: never touched
        token = value.strip()
        if state.seen(token) or now - made > target.cleanup_after.total_seconds():
            doomed.append(key)
    return doomed


async def _tidy(loop: _Loop, work: Awaitable[None]) -> None:
    """Cleanup and LOGOUT once the verdict is known: within what is left of the run's
    deadline, and never changing the verdict. A failure is counted
    (``outagewatch_mailloop_cleanup_failures_total``); what was left waits for the next
    run's sweep."""
    loop.run.timer.enter(Phase.CLEANUP)
    left = loop.deadline - loop.run.ctx.clock.monotonic() - GRACE
    try:
        async with asyncio.timeout(max(0.0, left)):
            await work
    except (ProbeFailure, OSError, TimeoutError):
        loop.state.cleanup_failures += 1
    finally:
        if asyncio.iscoroutine(work):
            work.close()  # never started: no "coroutine was never awaited"


async def probe(target: MailLoopTarget, run: ProbeRun) -> None:
    state = run.ctx.loop_state(target)
    clock = run.ctx.clock
    deadline = clock.monotonic() + run.timeout
    until = deadline - min(CLEANUP_MAX, run.timeout * CLEANUP_SHARE)
    now = clock.now().timestamp()
    state.expire(now - target.cleanup_after.total_seconds())  # bounded, even while the
    token = new_token(now)  # mailbox cannot be opened for hours
    await _submit(target, run, build_message(target, token), state, token)
    loop = _Loop(target, run, state, token, until, deadline)
    await (_fetch_pop3(loop) if target.fetch.type == "pop3" else _fetch_imap(loop))


async def _fetch_imap(loop: _Loop) -> None:
    target, run, state = loop.target, loop.run, loop.state
    fetch = target.fetch
    session = await imap.ImapSession.connect(
        fetch.host, fetch.effective_port, fetch.tls, timer=run.timer,
        tls=run.ctx.tls_part(target.name, "fetch", fetch),
    )
    folders = [fetch.mailbox, *([fetch.junk] if fetch.junk is not None else [])]

    async def cleanup(selected: str, mine: list[int]) -> None:
        await _delete(session, mine)
        now = run.ctx.clock.now().timestamp()
        for folder in [selected, *(f for f in folders if f != selected)]:
            if folder == selected or await _enter(session, folder):
                await _sweep(session, target, state, now)
        await session.logout()

    try:
        await session.login(fetch.username, fetch.secret() or "")
        await session.select(fetch.mailbox)
        run.timer.enter(Phase.DELIVERY)
        try:
            found_in, uids = await _wait_for(session, loop, folders)
        except ProbeFailure as exc:
            if exc.result is Result.LOST:
                state.lost += 1
                # lost or not, the mailbox is open: late and old mails still go
                await _tidy(loop, cleanup(fetch.mailbox, []))
            raise
        run.seen.append(run.ctx.clock.monotonic())  # the loop's duration ends here
        state.forget(loop.token)
        await _tidy(loop, cleanup(found_in, uids))
        if found_in != fetch.mailbox and fetch.spam_is_bad:  # else: it arrived, ok
            raise ProbeFailure(Result.SPAM, f"the mail arrived in {found_in}, not in "
                               f"{fetch.mailbox}", phase=Phase.DELIVERY)
    finally:
        await session.close()


async def _pop3_connect(target: MailLoopTarget, run: ProbeRun, timer: PhaseTimer) -> Pop3Session:
    fetch = target.fetch
    session = await pop3.Pop3Session.connect(
        fetch.host, fetch.effective_port, fetch.tls, timer=timer,
        tls=run.ctx.tls_part(target.name, "fetch", fetch), threads=run.ctx.threads,
        limiter=run.ctx.pop3_worker(target.name), per_read=run.timeout,
        max_received=POP3_MAX_RECEIVED,
    )
    try:
        await session.login(fetch.username, fetch.secret() or "")
    except BaseException:
        await session.close()
        raise
    return session


async def _pop3_headers(session: Pop3Session, headers: dict[int, str | None],
                        token: str | None = None) -> int | None:
    """Read into ``headers`` the probe header (``TOP n 0``) of the newest ``SWEPT`` mails of
    the maildrop, newest first, each read with its own byte budget; with ``token``, stop at
    the mail that carries it and return its number."""
    count = await session.stat(phase=None)
    for number in range(count, max(0, count - SWEPT), -1):
        if number not in headers:
            session.fresh_budget()
            headers[number] = await session.top_header(number, HEADER)
        value = headers[number]
        if token is not None and value is not None and value.strip() == token:
            return number
    return None


async def _fetch_pop3(loop: _Loop) -> None:
    """Look for the mail over POP3. A POP3 session sees the maildrop as it was at login, so
    each look is a new session; those after the first run inside ``delivery``."""
    target, run, state, token = loop.target, loop.run, loop.state, loop.token
    session = await _pop3_connect(target, run, run.timer)

    async def cleanup(headers: dict[int, str | None], mine: list[int]) -> None:
        await _pop3_headers(session, headers)  # the rest of the window
        now = run.ctx.clock.now().timestamp()
        others = {n: value for n, value in headers.items() if n not in mine}
        await session.dele(mine + _doomed(others, target, state, now))
        await session.quit()  # the deletions happen here (POP3's UPDATE state)

    try:
        run.timer.enter(Phase.DELIVERY)
        delay = FIRST_POLL
        while True:
            headers: dict[int, str | None] = {}
            number = await _pop3_headers(session, headers, token)
            if number is not None:
                run.seen.append(run.ctx.clock.monotonic())  # the loop's duration ends here
                state.forget(token)
                await _tidy(loop, cleanup(headers, [number]))
                return
            if run.ctx.clock.monotonic() + delay > loop.until:
                state.lost += 1
                # lost or not, the maildrop is open: late and old mails still go
                await _tidy(loop, cleanup(headers, []))
                raise ProbeFailure(Result.LOST, f"the mail ({token}) did not arrive in the "
                                   "POP3 mailbox within the deadline", phase=Phase.DELIVERY)
            await session.quit(phase=None)
            await session.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)
            session = await _pop3_connect(target, run, PhaseTimer())
    finally:
        await session.close()
