"""Issue 14 end to end: the real daemon's mail loop against Postfix and Dovecot; a queue held
longer than the window opens an incident whose mail names the loop and says mail is
delayed."""

from __future__ import annotations

import asyncio

from tests.helpers.daemon import DaemonProcess, config_text, free_port
from tests.helpers.postfix import MAILBOX
from tests.helpers.targets import make_target

from outagewatch.clock import SystemClock
from outagewatch.model import Result
from outagewatch.probes import ProbeContext, new_http_session, run_probe

NOTIFY = ("notify: {{smtp: {{host: 127.0.0.1, port: {port}, tls: none}},"
          " sender: 'NOC <noc@example.com>', update_interval: 1h, coalesce: 0.3s,"
          " retry_backoff: 0.2s, retry_max: 1s}}\n")


def loop_yaml(servers) -> str:
    d = servers.dovecot
    return ("{name: loop-eu, platform: eu, type: mailloop, from: outagewatch@example.test, "
            f"to: {MAILBOX}, submit: {{host: 127.0.0.1, port: {servers.postfix.port}, "
            "tls: none, ehlo_hostname: probe.test}, "
            f"fetch: {{host: 127.0.0.1, port: {d.imap}, tls: none, username: {d.user}, "
            f"password: {d.password}}}}}")


async def _sweep(servers) -> None:
    """Delete the probe mails the daemon left (they are young: cleanup_after of 0.1 s)."""
    d = servers.dovecot
    target = make_target(
        name="sweep", type="mailloop", to=MAILBOX, cleanup_after="0.1s",
        submit={"host": "127.0.0.1", "port": servers.postfix.port, "tls": "none"},
        fetch={"host": "127.0.0.1", "port": d.imap, "tls": "none", "username": d.user,
               "password": d.password}, **{"from": "outagewatch@example.test"})
    session = new_http_session()
    try:
        sample = await run_probe(target, ProbeContext(clock=SystemClock(), session=session),
                                 timeout=10)
    finally:
        await session.close()
    assert Result.OK == sample.result, sample.detail


async def test_a_held_queue_opens_an_incident_naming_the_loop(mailloop_servers, relay,
                                                                tmp_path):
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(config_text(
        port, [loop_yaml(mailloop_servers)], state=tmp_path / "state.db",
        extra=NOTIFY.format(port=relay.port), interval="0.5s", timeout="1.5s",
        threshold="1s", window="2s", loop_timeout="1.5s", loop_threshold="1s"))
    postfix = mailloop_servers.postfix
    postfix.hold()
    daemon = await DaemonProcess(config).start(port)
    try:
        await daemon.wait_for(lambda: "OPEN" in relay.kinds(), timeout=15, what="OPEN mail")
        metrics = await daemon.metrics()
    finally:
        await daemon.stop()
        postfix.release()
    _, mail = relay.mails[relay.kinds().index("OPEN")]
    body = mail.get_payload(decode=True).decode()
    assert "loop-eu" in str(mail["Subject"])
    assert "loop-eu: mail is delayed or not delivered" in body
    assert "lost in delivery" in body
    assert 'outagewatch_mailloop_lost_total{platform="eu",target="loop-eu",type="mailloop"}' \
        in metrics
    await asyncio.sleep(0.5)  # the released mails arrive
    await _sweep(mailloop_servers)
