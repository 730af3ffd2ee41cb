"""The password never reaches a sample's detail (shown by the unauthenticated status API, the
logs and ``outagewatch probe``), in whatever form a hostile server echoes it."""

from __future__ import annotations

import base64

import pytest
from tests.helpers.scripted import Scripted, line
from tests.helpers.targets import make_target

from outagewatch.model import Result
from outagewatch.probes import run_probe
from outagewatch.probes._scrub import MASK, scrub, secret_forms

USER = "probe"
PASSWORD = 'pa"ss\\word-7Zq'  # a quote and a backslash: IMAP escapes both, repr the second


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _flip(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data)


def _target(kind: str, port: int):
    return make_target(type=kind, host="127.0.0.1", port=port, tls="none", username=USER,
                       password=PASSWORD)


def _pop3_server(echo_at: bytes, reply: bytes):
    """Greets; answers the command ``echo_at`` with ``reply`` and every other with +OK."""

    async def handler(reader, writer):
        writer.write(b"+OK ready\r\n")
        while request := await line(reader):
            writer.write(reply if request.startswith(echo_at) else b"+OK 0 0\r\n")
            await writer.drain()

    return handler


async def _imap_echo(reader, writer):
    """Refuses LOGIN quoting the command back, as sent: the password IMAP-quoted."""
    writer.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
    while request := await line(reader):
        tag, _, rest = request.partition(b" ")
        writer.write(tag + b" NO [AUTHENTICATIONFAILED] rejected: " + rest + b"\r\n")
        await writer.drain()


def _smtp_echo(mechanism: bytes):
    """Offers one AUTH mechanism and refuses it quoting the client's last line back."""

    async def handler(reader, writer):
        writer.write(b"220 ready\r\n")
        while request := await line(reader):
            if request.upper().startswith(b"EHLO"):
                writer.write(b"250-hello\r\n250 AUTH " + mechanism + b"\r\n")
            elif request.upper().startswith(b"AUTH LOGIN"):
                writer.write(b"334 UGFzc3dvcmQ6\r\n")
            elif request.upper().startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
            else:
                writer.write(b"535 5.7.8 rejected: " + request + b"\r\n")
            await writer.drain()

    return handler


PW = PASSWORD.encode()
ECHOES = [
    # (kind, server, what it echoes)
    ("pop3", _pop3_server(b"PASS", b"-ERR rejected: " + PW + b"\r\n"), PASSWORD),
    ("pop3", _pop3_server(b"PASS", b"-ERR rejected: " + b64(PW) + b"\r\n"), b64(PW).decode()),
    # an error's text shows the reply as Python bytes: the backslash doubled
    ("pop3", _pop3_server(b"STAT", b"-ERR you said " + PW + b"\r\n"), repr(PW)[2:-1]),
    ("imap", _imap_echo, 'pa\\"ss\\\\word-7Zq'),
    ("smtp", _smtp_echo(b"PLAIN"), b64(b"\0" + USER.encode() + b"\0" + PW).decode()),
    ("smtp", _smtp_echo(b"LOGIN"), b64(PW).decode()),
]


class TestEchoingServers:
    @pytest.mark.parametrize(("kind", "server", "echoed"), ECHOES,
                             ids=["pop3-literal", "pop3-base64", "pop3-repr", "imap-quoted",
                                  "smtp-plain", "smtp-login"])
    async def test_echo_is_masked(self, probe_ctx, kind, server, echoed):
        """The server's refusal quotes the password as the client sent it (or as an error
        shows it); the detail keeps the refusal and masks the password. Only the literal
        form was masked before."""
        async with Scripted(server) as scripted:
            sample = await run_probe(_target(kind, scripted.port), probe_ctx, timeout=3)
        assert Result.OK != sample.result
        assert echoed not in sample.detail, sample.detail
        assert MASK in sample.detail, sample.detail

    async def test_cut_short_is_masked(self, probe_ctx):
        """A reply cut to 200 characters in the middle of the password shows none of it
        (its first six characters were left before)."""
        reply = b"-ERR " + b"x" * 189 + PW + b"\r\n"  # the cut falls after 6 characters
        async with Scripted(_pop3_server(b"PASS", reply)) as scripted:
            sample = await run_probe(_target("pop3", scripted.port), probe_ctx, timeout=3)
        assert Result.AUTH == sample.result
        assert sample.detail.endswith("x" + MASK), sample.detail


class TestSecretForms:
    def test_short_password_is_left(self):
        """A password shorter than MIN_SCRUBBED is not masked: it would mangle words."""
        assert () == secret_forms("abc", username=USER)

    def test_ordinary_text_is_left(self):
        text = "login refused: -ERR [AUTH] invalid user name or password"
        assert text == scrub(text, secret_forms(PASSWORD, username=USER))

    @pytest.mark.parametrize("prefix", [b"", b"\0", b"\0\0", b"admin\0probe\0", b"x" * 7])
    def test_base64_at_any_alignment(self, prefix):
        """The password inside any base64 string (a PLAIN string with any authorisation id,
        whatever precedes it) is masked: no character that comes from the password alone
        survives."""
        tail = b"\0tail"
        encoded = b64(prefix + PW + tail).decode()
        masked = scrub(f"535 {encoded} rejected", secret_forms(PASSWORD))
        # found by trial: the characters that change with the password and with nothing else
        other_password = b64(prefix + _flip(PW) + tail).decode()
        other_rest = b64(_flip(prefix) + PW + _flip(tail)).decode()
        own = "".join(c for c, p, r in zip(encoded, other_password, other_rest, strict=True)
                      if c != p and c == r)
        assert len(own) >= 4
        assert not any(own[i:i + 4] in masked for i in range(len(own) - 3)), masked

    @pytest.mark.parametrize("shown", [repr(PASSWORD), repr(PW), str((535, PASSWORD))])
    def test_python_escaped(self, shown):
        """An exception's text shows the password through repr."""
        assert MASK in scrub(f"SMTPException: {shown}", secret_forms(PASSWORD))
        assert "word-7Zq" not in scrub(f"SMTPException: {shown}", secret_forms(PASSWORD))

    def test_quote_in_password_escaped_by_repr(self):
        """repr escapes a single quote when the text around it holds both kinds."""
        secret = "it's-a-secret"
        shown = repr('say "' + secret)
        assert "\\'" in shown
        assert "secret" not in scrub(shown, secret_forms(secret))
