"""Mail-loop probe: submit a mail over SMTP, then see it arrive over IMAP or POP3 (issue 14).

Composed of the SMTP probe's ``SmtpSession`` and the IMAP probe's ``ImapSession``: the SMTP
steps (then ``submit``: MAIL, RCPT, DATA), the IMAP steps up to SELECT, then ``delivery``:
polling the mailbox (and the junk folder, when configured) with a short backoff until the
mail is seen or the run's delivery deadline passes, then ``cleanup`` and LOGOUT. A phase
both sessions have (dns, connect, tls, greeting, starttls, login, logout) adds their times.
Over POP3 (``fetch.type: pop3``, the POP3 probe's ``Pop3Session``) a session sees the
maildrop as it was at login, so each look in ``delivery`` is a new session (its connect and
login counted as delivery); mails are recognised by their headers (``TOP n 0``) and deleted
with DELE, which takes effect at QUIT.

Each run's mail carries a unique token in ``X-Outagewatch-Probe`` and in its subject; the
token also says when it was made (``ow1.<unix seconds>.<random>``). The probe deletes only
mails whose header is such a token: its own, those of earlier runs that arrived after their
run gave up (counted as late), and leftovers older than ``cleanup_after``; never another
mail. The sweep of late and old mails runs after every run that got the mailbox open, a
lost one too. A run that does not see its mail in time is ``lost``; one that finds it in the
junk folder is ``spam``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import re
import secrets
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING

from outagewatch.model import Phase, Result
from outagewatch.probes import imap, pop3, smtp
from outagewatch.probes._common import PhaseTimer, ProbeFailure

if TYPE_CHECKING:
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
_TOKEN = re.compile(r"^ow1\.(\d{1,12})\.([0-9a-f]{16})$")
FIRST_POLL = 0.05  # seconds before the first look again; doubles up to POLL_MAX
POLL_MAX = 1.0
CANDIDATES = 20  # of a search's answer, the UIDs whose header is read (ours is among them)
SWEPT = 100  # mails a run reads the header of to clean up (IMAP: oldest; POP3: newest)
# Of the run's deadline, kept back from the wait for delivery for cleanup and LOGOUT.
CLEANUP_SHARE, CLEANUP_MAX = 0.1, 5.0
# A POP3 session of the loop reads the headers of every mail in the mailbox (``TOP n 0``):
# a dedicated mailbox holds a few, a few KiB each.
POP3_MAX_RECEIVED = 1024 * 1024


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
    header_search: bool = True  # False once the server refused SEARCH HEADER
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def oldest_pending_age(self, now: float) -> float:
        with self._lock:
            return max((now - t for t in self.pending.values()), default=0.0)

    def add_pending(self, token: str, submitted: float) -> None:
        with self._lock:
            self.pending[token] = submitted

    def found(self, token: str) -> None:
        """This run's mail was seen in time: neither pending nor late."""
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


async def _submit(target: MailLoopTarget, run: ProbeRun, message: EmailMessage) -> None:
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
        await session.send(message, sender=target.sender, recipients=[target.to])
        await session.quit()
    finally:
        session.abort()


async def _search(session: ImapSession, state: LoopState, token: str) -> list[int]:
    """The UIDs of this run's mail: a search (by header, or by subject on a server that
    refuses header searches) finds candidates by substring; only a mail whose header *is*
    the token counts, so a mail that merely contains it is neither found nor deleted."""
    session.fresh_budget()
    if state.header_search:
        try:
            uids = await session.uid_search(f'HEADER {HEADER} "{token}"')
        except imap.CommandRefused:  # NO/BAD: the server cannot search headers
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


async def _wait_for(
    session: ImapSession, target: MailLoopTarget, run: ProbeRun, token: str, until: float,
) -> tuple[str, list[int]]:
    """Poll the mailbox (and the junk folder) until the mail is there: (folder, UIDs)."""
    fetch, state = target.fetch, run.ctx.loop_state(target)
    delay = FIRST_POLL
    while True:
        uids = await _search(session, state, token)
        if uids:
            return fetch.mailbox, uids
        if fetch.junk is not None:
            await session.reselect(fetch.junk)
            uids = await _search(session, state, token)
            if uids:
                return fetch.junk, uids
            await session.reselect(fetch.mailbox)
        if run.ctx.clock.monotonic() + delay > until:
            raise ProbeFailure(Result.LOST, f"the mail ({token}) did not arrive in "
                               f"{fetch.mailbox} within the deadline", phase=Phase.DELIVERY)
        await asyncio.sleep(delay)
        delay = min(delay * 2, POLL_MAX)
        await session.noop()


async def _delete(session: ImapSession, uids: list[int]) -> None:
    if uids:
        await session.uid_store_deleted(uids)
        await session.expunge()


async def _sweep(
    session: ImapSession, target: MailLoopTarget, state: LoopState, now: float,
) -> None:
    """Delete, in the selected folder, the mails carrying a token of ours that arrived late
    or are older than ``cleanup_after``; nothing else. At most ``SWEPT`` a run, oldest
    first: a mailbox full of them is emptied over several runs, each run bounded."""
    session.fresh_budget()
    uids = await session.uid_search(f'HEADER {HEADER} ""' if state.header_search
                                    else f'SUBJECT "{SUBJECT} ow1."')
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


async def _sweep_all(
    session: ImapSession, target: MailLoopTarget, state: LoopState, run: ProbeRun,
    selected: str,
) -> None:
    """Sweep the mailbox and the junk folder; ``selected`` is the folder selected now."""
    fetch = target.fetch
    now = run.ctx.clock.now().timestamp()
    state.expire(now - target.cleanup_after.total_seconds())
    for name in (fetch.mailbox, fetch.junk):
        if name is not None:
            if name != selected:
                await session.reselect(name)
                selected = name
            await _sweep(session, target, state, now)


async def probe(target: MailLoopTarget, run: ProbeRun) -> None:
    state = run.ctx.loop_state(target)
    started = run.ctx.clock.monotonic()
    until = started + run.timeout - min(CLEANUP_MAX, run.timeout * CLEANUP_SHARE)
    now = run.ctx.clock.now().timestamp()
    state.expire(now - target.cleanup_after.total_seconds())  # bounded, even while the
    token = new_token(now)  # mailbox cannot be opened for hours
    await _submit(target, run, build_message(target, token))
    submitted_at = run.ctx.clock.now().timestamp()
    state.add_pending(token, submitted_at)  # until it is seen: late, if seen after this run
    if target.fetch.type == "pop3":
        await _fetch_pop3(target, run, state, token, until)
    else:
        await _fetch_imap(target, run, state, token, until)


async def _fetch_imap(
    target: MailLoopTarget, run: ProbeRun, state: LoopState, token: str, until: float,
) -> None:
    fetch = target.fetch
    session = await imap.ImapSession.connect(
        fetch.host, fetch.effective_port, fetch.tls, timer=run.timer,
        tls=run.ctx.tls_part(target.name, "fetch", fetch),
    )
    try:
        await session.login(fetch.username, fetch.secret() or "")
        await session.select(fetch.mailbox)
        run.timer.enter(Phase.DELIVERY)
        try:
            found_in, uids = await _wait_for(session, target, run, token, until)
            run.seen.append(run.ctx.clock.monotonic())  # the loop's duration ends here
        except ProbeFailure as exc:
            if exc.result is Result.LOST:
                state.lost += 1
                # lost or not, the mailbox is open: late and old mails still go
                with contextlib.suppress(ProbeFailure, OSError):
                    run.timer.enter(Phase.CLEANUP)
                    await _sweep_all(session, target, state, run, fetch.mailbox)
                    await session.logout()
            raise
        state.found(token)
        run.timer.enter(Phase.CLEANUP)
        await _delete(session, uids)
        await _sweep_all(session, target, state, run, found_in)
        await session.logout()
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


async def _pop3_headers(session: Pop3Session) -> dict[int, str | None]:
    """Message number -> its probe header (``TOP n 0``), for the newest ``SWEPT`` mails of
    the maildrop (new mail comes last): each look bounded, however full the maildrop."""
    count = await session.stat(phase=None)
    return {n: await session.top_header(n, HEADER)
            for n in range(max(1, count - SWEPT + 1), count + 1)}


async def _fetch_pop3(
    target: MailLoopTarget, run: ProbeRun, state: LoopState, token: str, until: float,
) -> None:
    """Look for the mail over POP3. A POP3 session sees the maildrop as it was at login, so
    each look is a new session; those after the first run inside ``delivery``."""
    session = await _pop3_connect(target, run, run.timer)
    try:
        run.timer.enter(Phase.DELIVERY)
        delay = FIRST_POLL
        while True:
            headers = await _pop3_headers(session)
            mine = [n for n, value in headers.items()
                    if value is not None and value.strip() == token]
            if mine:
                run.seen.append(run.ctx.clock.monotonic())  # the loop's duration ends here
                break
            if run.ctx.clock.monotonic() + delay > until:
                state.lost += 1
                # lost or not, the maildrop is open: late and old mails still go
                with contextlib.suppress(ProbeFailure, OSError):
                    run.timer.enter(Phase.CLEANUP)
                    now = run.ctx.clock.now().timestamp()
                    await session.dele(_doomed(headers, target, state, now))
                    state.expire(now - target.cleanup_after.total_seconds())
                    await session.quit()
                raise ProbeFailure(Result.LOST, f"the mail ({token}) did not arrive in the "
                                   "POP3 mailbox within the deadline", phase=Phase.DELIVERY)
            await session.quit(phase=None)
            await session.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)
            session = await _pop3_connect(target, run, PhaseTimer())
        state.found(token)
        run.timer.enter(Phase.CLEANUP)
        now = run.ctx.clock.now().timestamp()
        others = {n: value for n, value in headers.items() if n not in mine}
        await session.dele(mine + _doomed(others, target, state, now))
        state.expire(now - target.cleanup_after.total_seconds())
        await session.quit()  # the deletions happen here (POP3's UPDATE state)
    finally:
        await session.close()
