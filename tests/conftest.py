from __future__ import annotations

import asyncio
import gc
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import structlog
import trustme
from aiohttp import web
from aiosmtpd.smtp import SMTP
from tests.helpers.dovecot import Dovecot, dovecot_binary, lmtp_installed
from tests.helpers.loopbox import BOXES, LoopBox
from tests.helpers.postfix import Postfix, postfix_binary
from tests.helpers.postgres import postgres_for_tests
from tests.helpers.relay import Relay
from tests.helpers.smtpd import start_smtpd

from outagewatch.clock import SystemClock
from outagewatch.probes import ProbeContext, new_http_session

IN_CI = os.environ.get("CI", "").lower() == "true"
# Threads that outlive a test by design: pools that end with the event loop (its default
# executor) or idle for a while (anyio's workers; a POP3 probe's thread that is really stuck
# is counted by the probe, and tested there).
POOLED_THREADS = ("AnyIO worker thread", "asyncio_")


@pytest.fixture(autouse=True)
def _no_threads_left():
    """A test that leaves a thread of its own running fails (aiohappyeyeballs' guard)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()
                and not t.name.startswith(POOLED_THREADS)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert [] == [t.name for t in left], "threads left running"


@pytest.fixture(autouse=True)
async def _no_tasks_left():
    """An async test that leaves tasks pending in its loop fails: they would be destroyed
    with the loop, silently doing half their work."""
    yield
    current = asyncio.current_task()
    for _ in range(50):  # let tasks that are finishing finish
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not left:
            return
        await asyncio.sleep(0.01)
    assert [] == [t.get_name() + ": " + repr(t.get_coro()) for t in left], "tasks left"


@pytest.fixture(autouse=True)
def _collect_leaks():
    """Collect garbage after each test, so that an unclosed socket or file is reported (as an
    error, by filterwarnings) against the test that leaked it, not a later one."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def _reset_structlog():
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session", name="ca")
def _ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session", name="tls_files")
def _tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """CA bundle, server certificate and key as files (Dovecot and ca_file need paths)."""
    base = tmp_path_factory.mktemp("tls")
    base.chmod(0o755)
    cert = ca.issue_cert("localhost", "127.0.0.1")
    files = {"ca": base / "ca.pem", "cert": base / "cert.pem", "key": base / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    for path in files.values():
        path.chmod(0o644)
    return files


@pytest.fixture(scope="session", name="server_tls")
def _server_tls(tls_files: dict[str, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_files["cert"], tls_files["key"])
    return ctx


@pytest.fixture(scope="session", name="dovecot")
def _dovecot(tls_files: dict[str, Path]):
    if dovecot_binary() is None:
        message = "Dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)"
        if IN_CI:
            pytest.fail(message + "; under CI=true this is a failure, not a skip")
        pytest.skip(message)
    server = Dovecot.start(tls_files["cert"], tls_files["key"])
    yield server
    server.stop()


@pytest.fixture(name="smtpd")
async def _smtpd(server_tls: ssl.SSLContext):
    server = await start_smtpd(server_tls)
    yield server
    await server.stop()


async def _slow(request: web.Request) -> web.Response:
    await anyio.sleep(float(request.query.get("s", "1")))
    return web.Response(text="App Suite (slow)")


async def _status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="status page")


async def _redirect(request: web.Request) -> web.Response:
    hops = int(request.match_info["n"])
    raise web.HTTPFound("/" if hops <= 1 else f"/redirect/{hops - 1}")


async def _big(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    chunk = b"x" * 65536
    for _ in range(int(request.query.get("chunks", "64"))):
        await response.write(chunk)
    await response.write_eof()
    return response


def http_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", _ok)
    app.router.add_get("/slow", _slow)
    app.router.add_get("/status/{code}", _status)
    app.router.add_get("/redirect/{n}", _redirect)
    app.router.add_get("/big", _big)
    return app


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(text="<html><title>OX App Suite</title></html>", content_type="text/html")


class HttpServers:
    def __init__(self) -> None:
        self.runner = web.AppRunner(http_app(), shutdown_timeout=0.5)
        self.port = 0
        self.tls_port = 0

    async def start(self, tls: ssl.SSLContext) -> None:
        await self.runner.setup()
        plain = web.TCPSite(self.runner, "127.0.0.1", 0)
        secure = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=tls)
        await plain.start()
        await secure.start()
        self.port = plain._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.tls_port = secure._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.fixture(name="http_server")
async def _http_server(server_tls: ssl.SSLContext):
    servers = HttpServers()
    await servers.start(server_tls)
    yield servers
    await servers.runner.cleanup()


@pytest.fixture(name="probe_ctx")
async def _probe_ctx():
    session = new_http_session()
    ctx = ProbeContext(
        clock=SystemClock(), session=session
    )
    yield ctx
    await session.close()


@pytest.fixture(name="relay")
async def _relay():
    sink = Relay()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, hostname="relay.test"),
                                      "127.0.0.1", 0)
    sink.port = server.sockets[0].getsockname()[1]
    yield sink
    server.close()
    await server.wait_closed()


# One private PostgreSQL server for the session (tests/helpers/postgres.py), for the store's
# and the cluster's tests; under CI=true a missing PostgreSQL fails, never skips.
postgres = pytest.fixture(scope="session", name="postgres")(postgres_for_tests)


@dataclass
class MailLoopServers:
    """Postfix (submission and MTA) delivering to Dovecot over LMTP (tests/helpers/postfix)."""

    dovecot: Dovecot
    postfix: Postfix


@pytest.fixture(scope="session", name="mailloop_servers")
def _mailloop_servers(tls_files: dict[str, Path]):
    missing = [what for what, there in (
        ("dovecot-imapd", dovecot_binary() is not None), ("dovecot-lmtpd", lmtp_installed()),
        ("postfix", postfix_binary() is not None)) if not there]
    if missing:
        message = f"the mail-loop tests need {', '.join(missing)} (apt-get install)"
        if IN_CI:
            pytest.fail(message + "; under CI=true this is a failure, not a skip")
        pytest.skip(message)
    dovecot = Dovecot.start(tls_files["cert"], tls_files["key"], lmtp=True, others=BOXES)
    try:
        postfix = Postfix.start(dovecot.lmtp, cert=tls_files["cert"], key=tls_files["key"],
                                sasl=dovecot.sasl)
    except BaseException:
        dovecot.stop()
        raise
    yield MailLoopServers(dovecot, postfix)
    postfix.stop()
    dovecot.stop()


@pytest.fixture(name="loop")
def _loop(mailloop_servers: MailLoopServers):
    """A fresh mailbox on the session's Postfix and Dovecot (tests/helpers/loopbox.py); what
    a test held is released after it, to this mailbox only."""
    box = LoopBox.new(mailloop_servers.dovecot, mailloop_servers.postfix)
    yield box
    if box.address in box.postfix.rules or box.postfix.held():
        box.release()
