"""Every probe against every fault of the faulting proxy: each run ends within its deadline,
with the right error class and the phase in which it happened."""

from __future__ import annotations

import time

import pytest
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.smtpd import PASSWORD as SMTP_PASSWORD
from tests.helpers.smtpd import USER as SMTP_USER
from tests.helpers.targets import make_target

from outagewatch.model import Phase, ProbeType, Result
from outagewatch.probes import phases_of, run_probe

DEADLINE = 1.0
SLACK = 0.25  # scheduling noise allowed past the deadline

# (service, fault, result, phase). Services: plain ports speak STARTTLS; "s" = implicit TLS.
MATRIX = [
    # silent after accept: a dead daemon behind a live socket, or a TLS handshake that stalls
    *[(svc, Fault("stall"), Result.TIMEOUT, ph) for svc, ph in [
        ("http", Phase.FIRST_BYTE), ("https", Phase.CONNECT), ("smtp", Phase.GREETING),
        ("smtps", Phase.TLS), ("imap", Phase.GREETING), ("imaps", Phase.TLS),
        ("pop3", Phase.GREETING), ("pop3s", Phase.TLS)]],
    # greeting slower than the deadline
    *[(svc, Fault("delay", seconds=3.0), Result.TIMEOUT, ph) for svc, ph in [
        ("http", Phase.FIRST_BYTE), ("smtp", Phase.GREETING), ("imap", Phase.GREETING),
        ("pop3", Phase.GREETING), ("imaps", Phase.TLS)]],
    # hang after the greeting: the next step times out
    ("smtp", Fault("stall_after", after=1), Result.TIMEOUT, Phase.EHLO),
    ("imap", Fault("stall_after", after=2), Result.TIMEOUT, Phase.STARTTLS),
    ("pop3", Fault("stall_after", after=1), Result.TIMEOUT, Phase.STARTTLS),
    # one byte every 50 ms: each read makes progress, only the total deadline can stop it
    *[(svc, Fault("drip", seconds=0.05), Result.TIMEOUT, ph) for svc, ph in [
        ("http", Phase.FIRST_BYTE), ("smtp", Phase.GREETING), ("imap", Phase.GREETING),
        ("pop3s", Phase.TLS)]],
    # connection closed or reset at once
    *[(svc, Fault(kind), Result.PROTOCOL, ph) for kind in ("close", "reset") for svc, ph in [
        ("http", Phase.FIRST_BYTE), ("smtp", Phase.GREETING), ("imap", Phase.GREETING),
        ("pop3", Phase.GREETING), ("imaps", Phase.TLS), ("pop3s", Phase.TLS)]],
    # reset in the middle of the conversation
    ("smtp", Fault("reset_after", after=1), Result.PROTOCOL, Phase.EHLO),
    ("imap", Fault("reset_after", after=2), Result.PROTOCOL, Phase.STARTTLS),
    ("pop3", Fault("reset_after", after=1), Result.PROTOCOL, Phase.STARTTLS),
    # bytes that are no protocol at all
    *[(svc, Fault("garbage"), res, ph) for svc, res, ph in [
        ("http", Result.PROTOCOL, Phase.FIRST_BYTE), ("https", Result.TLS, Phase.CONNECT),
        ("smtp", Result.PROTOCOL, Phase.GREETING), ("smtps", Result.TLS, Phase.TLS),
        ("imap", Result.PROTOCOL, Phase.GREETING), ("imaps", Result.TLS, Phase.TLS),
        ("pop3", Result.PROTOCOL, Phase.GREETING), ("pop3s", Result.TLS, Phase.TLS)]],
    # endless output, shaped like the protocol but never ending its line or its response
    ("http", Fault("endless", payload=b"HTTP/1.1 200 OK\r\nX: "), Result.PROTOCOL,
     Phase.FIRST_BYTE),
    ("smtp", Fault("endless", payload=b"220-still talking\r\n"), Result.PROTOCOL,
     Phase.GREETING),
    ("imap", Fault("endless", payload=b"* OK "), Result.PROTOCOL, Phase.GREETING),
    ("imap", Fault("endless", payload=b"* OK more\r\n"), Result.PROTOCOL, Phase.GREETING),
    ("pop3", Fault("endless", payload=b"+OK "), Result.PROTOCOL, Phase.GREETING),
]


def _target(service, port, dovecot, ca):
    ca_file = str(ca)
    if service.startswith("http"):
        scheme = "https" if service == "https" else "http"
        return make_target(type="http", url=f"{scheme}://localhost:{port}/", ca_file=ca_file)
    kind = service.rstrip("s") if service != "pop3" else "pop3"
    kind = kind if kind != "pop3s" else "pop3"
    tls = "implicit" if (service.endswith("s") and service != "pop3") or service == "pop3s" else \
        "starttls"
    if kind == "smtp":
        creds = {"username": SMTP_USER, "password": SMTP_PASSWORD}
    else:
        creds = {"username": dovecot.user, "password": dovecot.password}
    return make_target(type=kind, host="localhost", port=port, tls=tls, ca_file=ca_file, **creds)


@pytest.mark.parametrize(
    ("service", "fault", "result", "phase"),
    MATRIX,
    ids=[f"{s}-{f.kind}{f.after or ''}-{f.payload[:4]!r}" if f.kind == "endless"
         else f"{s}-{f.kind}{f.after or ''}" for s, f, _, _ in MATRIX],
)
async def test_fault(service, fault, result, phase, http_server, smtpd, dovecot, probe_ctx,
                     tls_files):
    """The probe ends within its deadline, classifies the fault and names its phase, one of
    the phases its module exports."""
    upstream = {
        "http": http_server.port, "https": http_server.tls_port,
        "smtp": smtpd.port, "smtps": smtpd.implicit_port,
        "imap": dovecot.imap, "imaps": dovecot.imaps,
        "pop3": dovecot.pop3, "pop3s": dovecot.pop3s,
    }[service]
    async with FaultProxy(upstream, fault) as proxy:
        target = _target(service, proxy.port, dovecot, tls_files["ca"])
        started = time.monotonic()
        sample = await run_probe(target, probe_ctx, timeout=DEADLINE)
        elapsed = time.monotonic() - started
    assert (result, phase) == (sample.result, sample.phase), sample.detail
    assert set(sample.phases) <= set(phases_of(ProbeType(target.type)))
    assert elapsed < DEADLINE + SLACK
    assert sample.duration == pytest.approx(elapsed, abs=0.05)
    if result is Result.TIMEOUT:
        assert sample.duration >= DEADLINE
        assert f"{DEADLINE:g}s deadline" in sample.detail


@pytest.mark.parametrize("service", ["http", "smtp", "imap", "pop3", "imaps", "pop3s"])
async def test_slow_answer_is_measured(service, http_server, smtpd, dovecot, probe_ctx,
                                       tls_files):
    """A greeting slower than usual but within the deadline succeeds and the slowness shows
    in the total and in the phase it happened in; every phase timed is one its module
    exports."""
    upstream = {"http": http_server.port, "smtp": smtpd.port, "imap": dovecot.imap,
                "pop3": dovecot.pop3, "imaps": dovecot.imaps, "pop3s": dovecot.pop3s}[service]
    async with FaultProxy(upstream, Fault("delay", seconds=0.4)) as proxy:
        target = _target(service, proxy.port, dovecot, tls_files["ca"])
        sample = await run_probe(target, probe_ctx, timeout=3)
    assert Result.OK == sample.result, sample.detail
    assert set(sample.phases) <= set(phases_of(ProbeType(target.type)))
    assert 0.4 <= sample.duration < 0.9
    slow_phase = {"http": Phase.FIRST_BYTE, "imaps": Phase.TLS, "pop3s": Phase.TLS}.get(
        service, Phase.GREETING)
    assert sample.phases[slow_phase] >= 0.39


@pytest.mark.parametrize("kind", ["http", "smtp", "imap", "pop3"])
async def test_refused(kind, probe_ctx, dovecot):
    """Nothing listening: 'refused' in the connect phase, at once."""
    from tests.helpers.ports import free_port

    port = free_port()
    target = (make_target(type="http", url=f"http://127.0.0.1:{port}/") if kind == "http"
              else make_target(type=kind, host="127.0.0.1", port=port, tls="none",
                               username="u", password="p"))
    sample = await run_probe(target, probe_ctx, timeout=2)
    assert (Result.REFUSED, Phase.CONNECT) == (sample.result, sample.phase)
    assert sample.duration < 0.5


@pytest.mark.parametrize("kind", ["http", "smtp", "imap", "pop3"])
async def test_unknown_host(kind, probe_ctx):
    """A name that does not resolve: 'dns' in the dns phase."""
    target = (make_target(type="http", url="http://no-such-host.invalid/") if kind == "http"
              else make_target(type=kind, host="no-such-host.invalid", port=10, tls="none",
                               username="u", password="p"))
    sample = await run_probe(target, probe_ctx, timeout=5)
    assert (Result.DNS, Phase.DNS) == (sample.result, sample.phase), sample.detail
