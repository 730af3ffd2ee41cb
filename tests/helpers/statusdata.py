"""A StatusSource of plain data, for the page's tests and bench/status_page.py."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

from outagewatch.statuspage.source import (
    FeedEntry,
    IncidentView,
    ServiceState,
    ServiceStateName,
    WindowView,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()


@dataclass
class FakeSource:
    at: float = NOW
    zones: dict[str, tzinfo] = field(default_factory=lambda: {"eu": UTC})
    states: list[ServiceState] = field(default_factory=list)
    times: dict[str, list[tuple[float, float | None, bool]]] = field(default_factory=dict)
    days: dict[str, list[tuple[str, float | None]]] = field(default_factory=dict)
    incident_list: list[IncidentView] = field(default_factory=list)
    window_list: list[WindowView] = field(default_factory=list)
    feed: list[FeedEntry] = field(default_factory=list)

    def now(self) -> float:
        return self.at

    def platforms(self):
        return self.zones

    def services(self):
        return list(self.states)

    async def response_times(self, since):
        return {k: [t for t in v if t[0] >= since] for k, v in self.times.items()}

    async def daily(self, days):
        return {k: v[-days:] for k, v in self.days.items()}

    async def incidents(self, since):
        return [i for i in self.incident_list if i.end is None or i.end >= since]

    async def windows(self, since):
        return [w for w in self.window_list if w.end >= since]

    async def mails(self, since, platform):
        return [m for m in self.feed if m.created >= since
                and (platform is None or m.platform == platform)]


def day_list(days: int, now: float = NOW, value: float | None = 1.0):
    today = datetime.fromtimestamp(now, UTC).date()
    return [((today - timedelta(days=back)).isoformat(), value)
            for back in range(days - 1, -1, -1)]


def synthetic(targets: int, *, platforms: int = 10, days: int = 90, seed: int = 13,
              now: float = NOW) -> FakeSource:
    """``targets`` services over ``platforms`` platforms, with 24 h of 5-minute buckets and
    ``days`` daily figures each (some missing, some bad), two open incidents and a window."""
    rng = random.Random(seed)
    source = FakeSource(at=now, zones={f"p{i}": UTC for i in range(platforms)})
    common: list[ServiceStateName] = ["operational"] * 17
    rare: list[ServiceStateName] = ["degraded", "outage", "maintenance"]
    states = common + rare
    for index in range(targets):
        name = f"svc-{index:04d}"
        source.states.append(ServiceState(
            name=name, platform=f"p{index % platforms}", type="imap",
            state=rng.choice(states), threshold_s=0.5, host=f"host-{index}.example.net",
            detail="timeout in login: no answer"))
        buckets = []
        for step in range(288):
            value = rng.uniform(0.05, 0.7) if rng.random() > 0.02 else None
            buckets.append((now - 86400 + step * 300, value, bool(value and value > 0.5)))
        source.times[name] = buckets
        source.days[name] = [(d, None if rng.random() < 0.05 else 1 - rng.random() ** 8 * 0.05)
                             for d, _ in day_list(days, now)]
    for number in range(2):
        source.incident_list.append(IncidentView(
            id=f"P{number}-20261130-1100", platform=f"p{number}", severity=2, state="open",
            start=now - 3600, end=None, services=(f"svc-{number:04d}",),
            timeline=((now - 3600, "open", "We have detected an outage"),
                      (now - 1800, "update", "Update: storage being replaced")),
            ticket="T-1"))
    source.window_list.append(WindowView(
        id="db-upgrade", platform="p0", services=("svc-0000",), start=now + 3600,
        end=now + 7200, kind="planned", state="scheduled", description="Database upgrade"))
    return source
