"""The HTTP surface: /metrics is rendered off the event loop."""

from __future__ import annotations

import threading

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from outagewatch.web import build_app


class WhereCollected:
    """A collector that notes the thread it is read from."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def collect(self):
        self.threads.append(threading.current_thread())
        yield GaugeMetricFamily("outagewatch_probe_seen", "a test gauge", value=1)


async def test_the_exposition_is_rendered_off_the_event_loop():
    """10,000 targets took 10 s to render on the loop, stalling every probe's timing."""
    registry = CollectorRegistry()
    where = WhereCollected()
    registry.register(where)
    app = build_app(registry=registry, readiness=lambda: None)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics")
        assert 200 == response.status
        assert "outagewatch_probe_seen 1.0" in await response.text()
        assert response.headers["Content-Type"].startswith("text/plain")
    assert where.threads
    assert threading.current_thread() not in where.threads
