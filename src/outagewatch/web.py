"""The HTTP surface: /metrics, /healthz (loop responsive), /readyz (config and scheduler up),
and the routes of the API (``api.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

Readiness = Callable[[], str | None]  # None when ready, else the reason
Faults = Callable[[], dict[str, str]]  # every fault of the daemon's own: name -> cause


def build_app(*, registry: CollectorRegistry, readiness: Readiness,
              faults: Faults = dict, routes: list[web.RouteDef] | None = None
              ) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        """503 while the daemon cannot do its job; faults that only degrade it are listed
        with a 200."""
        reason, active = readiness(), faults()
        if reason is None:
            return web.json_response({"status": "degraded" if active else "ready",
                                      "faults": active})
        return web.json_response({"status": "not ready", "reason": reason, "faults": active},
                                 status=503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_routes(routes or [])
    return app


def metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request],
                                                              Awaitable[web.Response]]:
    """/metrics, rendered off the event loop: with 10,000 targets one exposition took 10 s,
    during which no probe could be timed and no timer fire (the bench/overload.py run of
    issue 10). The metrics' own locks make a read from a thread safe."""
    async def handler(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(",".join(request.headers.getall("Accept", [])))
        body = await asyncio.to_thread(encoder, registry)
        response = web.Response(body=body, headers={"Content-Type": content_type})
        response.enable_compression()
        return response

    return handler


class WebServer:
    def __init__(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, shutdown_timeout=2, access_log=None)
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        server = site._server  # noqa: SLF001 - the only way to learn the port when 0 was asked
        if isinstance(server, asyncio.Server) and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()
