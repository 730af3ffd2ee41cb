"""Issue 14 end to end: the real daemon's mail loop against Postfix and Dovecot; a queue held
longer than the window opens an incident whose mail names the loop and says mail is
delayed."""

from __future__ import annotations

from tests.helpers.daemon import DaemonProcess, config_text, free_port

NOTIFY = ("notify: {{smtp: {{host: 127.0.0.1, port: {port}, tls: none}},"
          " sender: 'NOC <noc@example.com>', update_interval: 1h, coalesce: 0.3s,"
          " retry_backoff: 0.2s, retry_max: 1s}}\n")


def loop_yaml(loop) -> str:
    d = loop.dovecot
    return ("{name: loop-eu, platform: eu, type: mailloop, from: outagewatch@example.test, "
            f"to: {loop.address}, submit: {{host: 127.0.0.1, port: {loop.postfix.port}, "
            "tls: none, ehlo_hostname: probe.test}, "
            f"fetch: {{host: 127.0.0.1, port: {d.imap}, tls: none, username: {loop.user}, "
            f"password: {loop.password}}}}}")


async def test_a_held_queue_opens_an_incident_naming_the_loop(loop, relay, tmp_path):
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(config_text(
        port, [loop_yaml(loop)], state=tmp_path / "state.db",
        extra=NOTIFY.format(port=relay.port), interval="0.5s", timeout="1.5s",
        threshold="1s", window="2s", loop_timeout="1.5s", loop_threshold="1s"))
    loop.hold()
    daemon = await DaemonProcess(config).start(port)
    try:
        await daemon.wait_for(lambda: "OPEN" in relay.kinds(), timeout=15, what="OPEN mail")
        metrics = await daemon.metrics()
    finally:
        await daemon.stop()
    _, mail = relay.mails[relay.kinds().index("OPEN")]
    body = mail.get_payload(decode=True).decode()
    assert "loop-eu" in str(mail["Subject"])
    assert "loop-eu: mail is delayed or not delivered" in body
    assert "lost in delivery" in body
    assert 'outagewatch_mailloop_lost_total{platform="eu",target="loop-eu",type="mailloop"}' \
        in metrics
