"""The page's HTTP handlers: ``GET /`` and ``/status`` (the page, ``?refresh=N`` optional),
``GET /feed.atom`` (``?platform=eu`` optional).

The internal view needs ``server.read_token`` (or the operator token) as a Bearer token when
one is set, like every read of the API; the public view needs none.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING

from aiohttp import web

from outagewatch.statuspage.feed import render_feed
from outagewatch.statuspage.render import render_page
from outagewatch.statuspage.view import CHART_SPAN, DAY, HISTORY_DAYS, build_page, refresh_of

if TYPE_CHECKING:
    from outagewatch.statuspage.source import StatusSource

MAX_PLATFORM = 100  # characters in ?platform=


class StatusPage:
    def __init__(self, source: StatusSource, *, title: str, public: bool,
                 read_token: str | None = None, token: str | None = None) -> None:
        self.source = source
        self.title = title
        self.public = public
        # as the API's reads: open unless a read token is set; then it or the operator's
        self._tokens = [t for t in (read_token, token) if t is not None] if read_token else []

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self.page), web.get("/status", self.page),
                web.get("/feed.atom", self.feed)]

    def _refused(self, request: web.Request) -> web.Response | None:
        if self.public or not self._tokens:
            return None
        given = request.headers.get("Authorization", "")
        if not given.startswith("Bearer "):
            return _text(401, "missing 'Authorization: Bearer <token>' (the internal status "
                              "page needs server.read_token here)")
        secret = given[7:].encode()
        if not any(hmac.compare_digest(secret, t.encode()) for t in self._tokens):
            return _text(403, "wrong token")
        return None

    async def page(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            refresh = refresh_of(request.query.get("refresh"))
        except ValueError as exc:
            return _text(400, str(exc))
        source = self.source
        now = source.now()
        times, daily, incidents, windows = await asyncio.gather(
            source.response_times(now - CHART_SPAN), source.daily(HISTORY_DAYS),
            source.incidents(now - HISTORY_DAYS * DAY), source.windows(now))
        platforms, services = source.platforms(), source.services()

        def render() -> str:
            return render_page(build_page(
                title=self.title, public=self.public, now=now, platforms=platforms,
                services=services, response_times=times, daily=daily, incidents=incidents,
                windows=windows, refresh=refresh))

        # off the event loop, as /metrics: 1,000 services take a few hundred ms the first
        # time (bench/status_page.py), during which no probe could be timed
        text = await asyncio.to_thread(render)
        response = web.Response(text=text, content_type="text/html",
                                charset="utf-8", headers=_HEADERS)
        response.enable_compression()
        return response

    async def feed(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        platform = request.query.get("platform") or None
        if platform is not None and (len(platform) > MAX_PLATFORM
                                     or platform not in self.source.platforms()):
            known = ", ".join(sorted(self.source.platforms())) or "none"
            return _text(404, f"platform: no platform {platform[:MAX_PLATFORM]!r} "
                              f"(known: {known})")
        now = self.source.now()
        entries = await self.source.mails(now - HISTORY_DAYS * DAY, platform)
        # links relative to the feed's own address: a Host header (which anyone can send)
        # never decides where a reader's links point
        body = render_feed(entries, title=self.title, now=now, platform=platform,
                           base_url="", public=self.public)
        return web.Response(body=body, content_type="application/atom+xml", charset="utf-8",
                            headers=_HEADERS)


# no script runs on the page, nothing is fetched from elsewhere
_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                       "img-src 'self' data:; base-uri 'none'; "
                                       "form-action 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain")
