"""How often a killed daemon sends a mail twice, and the window in which it can.

    python -m bench.killstorm [--kills 50]

1. The window, in process: the time from the relay accepting a mail's DATA (its 250) to
   the delivery being durable in the state file (the store on its thread, as the daemon
   runs it), over 200 mails. Only a death inside this window can send a mail again.
2. The storm, end to end: the real daemon in an incident that mails an UPDATE every second;
   the relay kills it with SIGKILL 0-100 ms after accepting a mail (aimed at send time:
   the window above, and the moment before the 250 reaches the daemon, which SMTP cannot
   tell apart from a lost mail), and it is restarted, until --kills kills. Duplicates are
   Message-IDs the relay received twice (the same mail again, which clients can drop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from aiohttp import web
from aiosmtpd.smtp import SMTP
from tests.helpers.daemon import TINY, DaemonProcess, config_text, free_port
from tests.helpers.faultproxy import Fault, FaultProxy

from outagewatch.app import wire
from outagewatch.clock import SystemClock
from outagewatch.config import Settings
from outagewatch.core.render import Message, Thread, ThreadKind
from outagewatch.logs import configure_logging
from outagewatch.metrics import build_metrics
from outagewatch.store import Changes, Envelope, EnvelopeKey
from outagewatch.store.sqlite import SqliteStore


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Relay:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.subjects: list[str] = []
        self.accepted: dict[str, float] = {}
        self.on_accept = lambda: None

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        text = envelope.content.decode("utf-8", "replace")
        ident = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                      if line.lower().startswith("message-id:")), "?")
        subject = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                        if line.lower().startswith("subject:")), "?")
        self.ids.append(ident)
        self.subjects.append(subject)
        self.accepted[ident] = time.monotonic()
        self.on_accept()
        return "250 OK"


async def window(mails: int) -> list[float]:
    """Seconds from the relay's acceptance to the delivery being durable."""
    relay = Relay()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(relay, hostname="relay"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    durable: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as workdir:
        settings = Settings(
            platforms={"eu": {"incident_recipients": ["oncall@example.com"]}},
            targets=[{"name": "w", "platform": "eu", "type": "http", "url": "http://x/"}],
            notify={"smtp": {"host": "127.0.0.1", "port": port, "tls": "none"},
                    "sender": "bench <b@example.com>"},
            state={"path": Path(workdir) / "s.db"})
        store = await SqliteStore.open(settings.state.path)  # on its own thread
        state = await store.load(recent=1)
        clock = SystemClock()
        core = wire(settings, state=state, store=store, clock=clock,
                    metrics=build_metrics(__import__("prometheus_client").CollectorRegistry(),
                                          buckets=(1.0,)))
        writing = asyncio.create_task(core.writer.run())
        original = core.writer._on_written

        def written(changes: Changes) -> None:
            original(changes)
            now = time.monotonic()
            for delivery in changes.deliveries.values():
                if delivery.status == "sent":
                    durable[delivery.payload["message_id"]] = now

        core.writer._on_written = written
        channel = core.composer.channels["smtp"]
        for number in range(mails):
            message = Message(Thread(ThreadKind.INCIDENT, "EU-1"), number, "update",
                              ("oncall@example.com",), f"#{number}", "body")
            now = clock.now().timestamp()
            core.writer.submit(Changes(envelopes=[
                Envelope(EnvelopeKey("smtp", message.thread.key, lane, number), "update",
                         payload, now)
                for lane, payload in channel.payloads(message, created=now).items()]))
            await core.writer.flush()
            await core.drainer.send_due()
            await core.writer.flush()
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing
        await store.close()
    server.close()
    return [durable[i] - relay.accepted[i] for i in relay.accepted if i in durable]


async def _ok() -> web.Response:
    return web.Response(text="ok")


async def storm(kills: int) -> dict[str, object]:
    relay = Relay()
    loop = asyncio.get_running_loop()
    relay_server = await loop.create_server(lambda: SMTP(relay, hostname="relay"),
                                            "127.0.0.1", 0)
    relay_port = relay_server.sockets[0].getsockname()[1]
    done = 0
    rng = random.Random(7)
    web_app = web.Application()
    web_app.router.add_get("/", lambda _request: _ok())
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    web_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as workdir:
        async with FaultProxy(web_port, Fault("stall")) as proxy:
            port = free_port()
            config = Path(workdir) / "c.yaml"
            config.write_text(config_text(
                port, [(f"{{name: web, platform: eu, type: http,"
                        f" url: 'http://127.0.0.1:{proxy.port}/'}}")],
                state=Path(workdir) / "s.db",
                extra=(f"notify: {{smtp: {{host: 127.0.0.1, port: {relay_port}, tls: none}},"
                       " sender: 'N <n@example.com>', update_interval: 1s, coalesce: 0.3s,"
                       " retry_backoff: 0.1s, retry_max: 0.5s}\n"), **TINY))
            while done < kills:
                daemon = await DaemonProcess(config).start(port)
                killed = asyncio.Event()

                def aim(daemon: DaemonProcess = daemon, killed: asyncio.Event = killed) -> None:
                    if killed.is_set() or rng.random() < 0.3:
                        return
                    killed.set()
                    delay = rng.uniform(0.0, 0.1)
                    loop.call_later(delay, os.kill, daemon.process.pid, signal.SIGKILL)

                relay.on_accept = aim
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(killed.wait(), 30)
                await daemon.process.wait()
                await daemon.stop()
                done += 1
                print(f"  kill {done}/{kills}: {len(relay.ids)} mails so far", flush=True)
            relay.on_accept = lambda: None
            proxy.mode = Fault()
            last = await DaemonProcess(config).start(port)
            await asyncio.sleep(4)  # the RESOLVED
            await last.stop()
    relay_server.close()
    await runner.cleanup()
    counts = Counter(relay.ids)
    return {"mails": len(relay.ids), "distinct": len(counts),
            "duplicates": sum(n - 1 for n in counts.values() if n > 1),
            "opens": sum(1 for s in relay.subjects if "[OPEN]" in s),
            "resolved": sum(1 for s in relay.subjects if "[RESOLVED]" in s)}


async def main(args: argparse.Namespace) -> None:
    spans = [s * 1000 for s in await window(200)]
    print(f"window from the relay's 250 to a durable record, {len(spans)} mails:")
    print(f"  p50 {pct(spans, 0.5):.2f} ms  p99 {pct(spans, 0.99):.2f} ms  "
          f"max {max(spans):.2f} ms")
    print(f"\nkill -9 storm, {args.kills} kills 0-100 ms after the relay accepted a mail:")
    result = await storm(args.kills)
    print(f"  {result}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    arguments = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    configure_logging("error", stream=sys.stderr)
    asyncio.run(main(arguments))
