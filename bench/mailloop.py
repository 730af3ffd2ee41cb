"""Mail-loop bench (issue 14): our CPU per loop run, and our delivery time against the MTA's.

A private Postfix delivers to a private Dovecot over LMTP (the test helpers' servers, run as
root, in their own processes: their CPU is not ours). The loop probe runs ``--loops`` times
in a row. For each run: our process CPU (``time.process_time``), the run's duration (start of
submission until the mail is seen over IMAP) and its ``delivery`` phase, and the MTA's own
``delay=`` for that mail from its log (queue arrival to the LMTP server's 250, to 10 ms).
Our figure minus the MTA's is the cost and error of measuring from outside: the SMTP and
IMAP sessions and the polling step.

    python -m bench.mailloop [--loops 200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path

import trustme
from tests.helpers.dovecot import Dovecot
from tests.helpers.postfix import MAILBOX, Postfix
from tests.helpers.targets import make_target

from outagewatch.clock import SystemClock
from outagewatch.model import Phase, Result
from outagewatch.probes import ProbeContext, new_http_session, run_probe


def _tls_files() -> tuple[Path, Path]:
    base = Path(tempfile.mkdtemp(prefix="ow-bench-tls-"))
    base.chmod(0o755)
    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    files = (base / "cert.pem", base / "key.pem")
    cert.cert_chain_pems[0].write_to_path(str(files[0]))
    cert.private_key_pem.write_to_path(str(files[1]))
    for path in files:
        path.chmod(0o644)
    return files


def _mta_delays(postfix: Postfix) -> list[float]:
    """The MTA's delay of each loop mail, in the order they were delivered."""
    text = postfix.maillog.read_text()
    ours = {q for q, mid in re.findall(r" ([0-9A-F]+): message-id=(<[^>]*>)", text)
            if ".ow1." in mid}
    return [float(d) for q, d in re.findall(
        r" ([0-9A-F]+): to=<[^>]*>, .*?delay=([0-9.]+), .*status=sent", text) if q in ours]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(dovecot: Dovecot, postfix: Postfix, loops: int) -> None:
    target = make_target(
        name="loop-bench", type="mailloop", to=MAILBOX,
        submit={"host": "127.0.0.1", "port": postfix.port, "tls": "none",
                "ehlo_hostname": "bench.test"},
        fetch={"host": "127.0.0.1", "port": dovecot.imap, "tls": "none",
               "username": dovecot.user, "password": dovecot.password},
        **{"from": "outagewatch@example.test"})
    session = new_http_session()
    ctx = ProbeContext(clock=SystemClock(), session=session)
    cpu, durations, deliveries = [], [], []
    try:
        for _ in range(3):  # warm-up: imports, first connections
            await run_probe(target, ctx, timeout=10)
        warm = len(_mta_delays(postfix))
        for _ in range(loops):
            before = time.process_time()
            sample = await run_probe(target, ctx, timeout=10)
            cpu.append(time.process_time() - before)
            if sample.result is not Result.OK:
                raise SystemExit(f"a loop failed: {sample.result} {sample.detail}")
            durations.append(sample.duration)
            deliveries.append(sample.phases.get(Phase.DELIVERY, 0.0))
    finally:
        await session.close()
    mta = _mta_delays(postfix)[warm:warm + loops]
    if len(mta) != loops:
        raise SystemExit(f"found {len(mta)} MTA log lines for {loops} loops")
    error = [d - m for d, m in zip(durations, mta, strict=True)]
    print(f"loops: {loops} in a row, plain SMTP and IMAP on loopback")
    print(f"our CPU per loop run: mean {statistics.mean(cpu) * 1e3:.2f} ms, "
          f"p95 {_pct(cpu, 0.95) * 1e3:.2f} ms")
    print("| figure | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|")
    for name, values in (("our loop duration (submit start to seen)", durations),
                         ("our delivery phase (mailbox open to seen)", deliveries),
                         ("MTA delay= (queue arrival to LMTP 250)", mta),
                         ("ours minus MTA's", error)):
        print(f"| {name} | {_pct(values, 0.5) * 1e3:.1f} | {_pct(values, 0.95) * 1e3:.1f} | "
              f"{max(values) * 1e3:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 loops")
    args = parser.parse_args()
    cert, key = _tls_files()
    dovecot = Dovecot.start(cert, key, lmtp=True)
    try:
        postfix = Postfix.start(dovecot.lmtp)
        try:
            asyncio.run(_run(dovecot, postfix, 20 if args.quick else args.loops))
        finally:
            postfix.stop()
    finally:
        dovecot.stop()


if __name__ == "__main__":
    main()
