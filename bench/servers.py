"""Load-test servers in their own process, so that their CPU is not counted as ours.

HTTP (aiohttp): ``/`` answers at once, ``/hold`` after exactly ``--hold`` seconds.
SMTP (aiosmtpd): banner, EHLO, QUIT. Prints the two ports as JSON when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from aiohttp import web
from aiosmtpd.smtp import SMTP


class _Sink:
    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        return "250 OK"


async def main(hold: float) -> None:
    async def page(_request: web.Request) -> web.Response:
        return web.Response(text="<title>App Suite</title>", content_type="text/html")

    held_log: dict[str, tuple[float, float]] = {}

    async def held(request: web.Request) -> web.Response:
        # CLOCK_MONOTONIC is one clock for every process on the machine: the benchmark
        # compares these stamps with its own measurements.
        entered = time.monotonic()
        await asyncio.sleep(hold)
        held_log[request.query.get("id", "")] = (entered, time.monotonic())
        return web.Response(text="held")

    async def log(_request: web.Request) -> web.Response:
        return web.json_response(held_log)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/hold", held)
    app.router.add_get("/held", log)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    http_port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: SMTP(_Sink(), hostname="bench.invalid"),
                                    "127.0.0.1", 0, backlog=4096)
    smtp_port = smtp.sockets[0].getsockname()[1]
    print(json.dumps({"http": http_port, "smtp": smtp_port}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--hold", type=float, default=2.0)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.hold))
    except KeyboardInterrupt:
        sys.exit(0)
