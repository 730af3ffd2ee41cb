"""The page's handlers on a real aiohttp server: routes, tokens, refresh, the feed filter."""

from __future__ import annotations

import threading
from xml.etree import ElementTree as ET

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from tests.helpers.statusdata import NOW, FakeSource, synthetic

from outagewatch.statuspage.source import FeedEntry
from outagewatch.statuspage.web import StatusPage
from outagewatch.web import build_app

READ = "read-token-0123456789abcdef"
OPERATOR = "operator-token-0123456789abc"
A = "{http://www.w3.org/2005/Atom}"


def source() -> FakeSource:
    data = synthetic(4, platforms=2)
    data.feed = [FeedEntry(id=f"incident:X-{p}/0", thread=f"incident:X-{p}", number=0,
                           kind="open", subject=f"Incident X-{p}", body="b", created=NOW,
                           platform=p) for p in ("p0", "p1")]
    return data


def client(page: StatusPage) -> TestClient:
    app = build_app(registry=CollectorRegistry(), readiness=lambda: None,
                    routes=page.routes())
    return TestClient(TestServer(app))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_page_at_root_and_status_and_its_headers():
    async with client(StatusPage(source(), title="Status", public=False)) as http:
        for path in ("/", "/status"):
            response = await http.get(path)
            assert 200 == response.status
            assert response.headers["Content-Type"].startswith("text/html")
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
            assert "svc-0000" in await response.text()
        response = await http.get("/?refresh=5")
        assert '<meta http-equiv="refresh" content="10">' in await response.text()
        response = await http.get("/?refresh=soon")
        assert 400 == response.status
        assert "refresh: expected whole seconds (10..3600), e.g. refresh=60\n" == (
            await response.text())


async def test_with_a_read_token_the_internal_view_needs_it_the_public_one_does_not():
    internal = StatusPage(source(), title="S", public=False, read_token=READ, token=OPERATOR)
    async with client(internal) as http:
        for path in ("/", "/status", "/feed.atom"):
            assert 401 == (await http.get(path)).status
            assert 403 == (await http.get(path, headers=auth("wrong-token-000000"))).status
            assert 200 == (await http.get(path, headers=auth(READ))).status
            assert 200 == (await http.get(path, headers=auth(OPERATOR))).status
    operator_only = StatusPage(source(), title="S", public=False, token=OPERATOR)
    async with client(operator_only) as http:  # reads are open without a read token
        assert 200 == (await http.get("/")).status
    public = StatusPage(source(), title="S", public=True, read_token=READ, token=OPERATOR)
    async with client(public) as http:
        for path in ("/", "/feed.atom"):
            assert 200 == (await http.get(path)).status
        assert "host-0.example.net" not in await (await http.get("/")).text()


async def test_the_feed_and_its_platform_filter():
    async with client(StatusPage(source(), title="S", public=False)) as http:
        response = await http.get("/feed.atom", headers={"Host": "evil.example"})
        assert response.headers["Content-Type"].startswith("application/atom+xml")
        feed = ET.fromstring(await response.read())
        assert 2 == len(feed.findall(f"{A}entry"))
        links = [link.get("href") or "" for link in feed.iter(f"{A}link")]
        assert links
        assert not any("evil" in link for link in links)  # relative: never the Host header's
        assert all(link.startswith("/") for link in links)
        feed = ET.fromstring(await (await http.get("/feed.atom?platform=p1")).read())
        assert ["Incident X-p1"] == [e.findtext(f"{A}title")
                                     for e in feed.findall(f"{A}entry")]
        response = await http.get("/feed.atom?platform=nope")
        assert 404 == response.status
        assert "platform: no platform 'nope' (known: p0, p1)\n" == await response.text()


async def test_the_page_is_rendered_off_the_event_loop(monkeypatch):
    """1,000 services take a few hundred ms to draw the first time: not on the probes' loop."""
    from outagewatch.statuspage import render
    from outagewatch.statuspage import web as page_web

    where: list[threading.Thread] = []
    real = render.render_page

    def noting(page):
        where.append(threading.current_thread())
        return real(page)

    monkeypatch.setattr(page_web, "render_page", noting)
    async with client(StatusPage(source(), title="S", public=True)) as http:
        assert 200 == (await http.get("/")).status
    assert where
    assert threading.current_thread() not in where
