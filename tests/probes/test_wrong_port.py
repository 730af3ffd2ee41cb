"""Issue 12: a wrong port that answers another protocol says so, as a protocol failure in the
greeting, not as "no answer" at the deadline."""

from __future__ import annotations

import pytest
from tests.helpers.scripted import Scripted
from tests.helpers.targets import make_target

from outagewatch.model import Phase, Result
from outagewatch.probes import run_probe


def mail_target(kind, port, **fields):
    if kind != "smtp":
        fields.setdefault("username", "probe")
        fields.setdefault("password", "not-used")
    return make_target(type=kind, host="localhost", port=port, tls="none", **fields)


async def probe(target, probe_ctx):
    sample = await run_probe(target, probe_ctx, timeout=5)
    assert (Result.PROTOCOL, Phase.GREETING) == (sample.result, sample.phase), sample.detail
    assert sample.duration < 2, "answered at once, not at the deadline"
    return sample.detail


class TestDovecotOnTheWrongPort:
    async def test_imap_probe_on_the_pop3_port(self, dovecot, probe_ctx):
        detail = await probe(mail_target("imap", dovecot.pop3), probe_ctx)
        assert detail.startswith("expected an IMAP greeting, got '+OK ")
        assert detail.endswith(": a POP3 server?")

    async def test_pop3_probe_on_the_imap_port(self, dovecot, probe_ctx):
        detail = await probe(mail_target("pop3", dovecot.imap), probe_ctx)
        assert detail.startswith("expected a POP3 greeting, got '* OK ")
        assert detail.endswith(": an IMAP server?")

    @pytest.mark.parametrize(("port", "server"), [("imap", "an IMAP server?"),
                                                  ("pop3", "a POP3 server?")])
    async def test_smtp_probe_on_a_dovecot_port(self, dovecot, probe_ctx, port, server):
        detail = await probe(mail_target("smtp", getattr(dovecot, port)), probe_ctx)
        assert detail.startswith("expected an SMTP greeting, got '")
        assert detail.endswith(server)


class TestSmtpOnTheWrongPort:
    @pytest.mark.parametrize(("kind", "expected"), [("imap", "an IMAP greeting"),
                                                    ("pop3", "a POP3 greeting")])
    async def test_imap_and_pop3_probes_on_aiosmtpd(self, smtpd, probe_ctx, kind, expected):
        detail = await probe(mail_target(kind, smtpd.port), probe_ctx)
        assert detail.startswith(f"expected {expected}, got '220 mx.test ")
        assert detail.endswith(": an SMTP server?")


async def test_http_probe_on_the_imap_port(dovecot, probe_ctx):
    target = make_target(type="http", url=f"http://127.0.0.1:{dovecot.imap}/")
    sample = await run_probe(target, probe_ctx, timeout=5)
    assert Result.PROTOCOL == sample.result
    assert sample.detail.startswith("expected an HTTP response, got '* OK ")
    assert sample.detail.endswith(": an IMAP server?")


@pytest.mark.parametrize("kind", ["imap", "pop3", "smtp"])
async def test_a_server_that_speaks_http(kind, probe_ctx):
    """A server that answers with an HTTP status line (some proxies do, unasked)."""

    async def http_first(_reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await _reader.read()

    async with Scripted(http_first) as server:
        detail = await probe(mail_target(kind, server.port), probe_ctx)
    assert detail.endswith("got 'HTTP/1.1 400 Bad Request': an HTTP server?")


async def test_a_silent_server_is_a_timeout_with_a_hint(http_server, probe_ctx):
    """An HTTP port waits for the client: no greeting, so a timeout, but one that says what
    may be going on."""
    sample = await run_probe(mail_target("imap", http_server.port), probe_ctx, timeout=0.5)
    assert (Result.TIMEOUT, Phase.GREETING) == (sample.result, sample.phase)
    assert "no greeting came" in sample.detail
    assert "HTTP" in sample.detail
