"""What is monitored, as the core sees it: platforms, their services, each target's rules,
business-day calendars, recipients and templates. Built once per configuration (at start
and on each reload) by ``app.py``, frozen, and handed to the engine; "today" is passed in,
never read from the wall clock here.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from typing import TYPE_CHECKING

import holidays

from outagewatch.core.evaluator import OutageRule
from outagewatch.core.incidents import Platform, Service
from outagewatch.core.maintenance import Calendar, Window, WindowKind
from outagewatch.core.quorum import QuorumRule
from outagewatch.core.render import DEFAULT_TEMPLATES
from outagewatch.model import DEFAULT_UPDATE_INTERVAL, ProbeType, Rule

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import date

    from outagewatch.config import CalendarConfig, Settings


# A location is blind for a target when its latest run is older than 2 x interval + timeout
# (DESIGN 4.3a), as the leader sees it: plus the time a view takes to reach the leader (the
# node's write, the leader's poll every 0.5 s), so that no location looks blind in transit.
VIEW_TRANSIT = 1.0


@dataclass(frozen=True, slots=True)
class TargetInfo:
    name: str
    type: ProbeType
    platform: str
    rule: Rule
    outage: OutageRule
    quorum: QuorumRule | None = None  # a cluster: who probes it, how many must agree


@dataclass(frozen=True, slots=True)
class Topology:
    platforms: Mapping[str, Platform]
    targets: Mapping[str, TargetInfo]
    calendars: Mapping[str, Calendar]
    incident_recipients: Mapping[str, tuple[str, ...]]
    info_recipients: Mapping[str, tuple[str, ...]]
    templates: Mapping[str, str]
    notice_days: int
    windows: tuple[Window, ...]  # the configuration file's windows, not yet registered

    def services_of(self, platform: str) -> tuple[str, ...]:
        known = self.platforms.get(platform)
        return tuple(s.name for s in known.services) if known is not None else ()


def outage_rule(rule: Rule) -> OutageRule:
    return OutageRule.of(interval=rule.interval, timeout=rule.timeout,
                         threshold=rule.threshold, window=rule.window,
                         recover_after=rule.recover_after)


def build_topology(settings: Settings, *, today: date) -> Topology:
    interval = (settings.notify.update_interval.total_seconds() if settings.notify
                else DEFAULT_UPDATE_INTERVAL)
    coalesce = settings.notify.coalesce.total_seconds() if settings.notify else 0.0
    targets = {}
    for target in settings.targets:
        rule = settings.rule_for(target)
        quorum = None
        if settings.cluster is not None:
            quorum = QuorumRule(settings.locations_of(target), settings.quorum_for(target),
                                blind_after=2 * rule.interval + rule.timeout + VIEW_TRANSIT)
        targets[target.name] = TargetInfo(target.name, ProbeType(target.type), target.platform,
                                          rule, outage_rule(rule), quorum)
    platforms = {
        name: Platform(name, tuple(Service(t.name, t.critical, t.impact)
                                   for t in settings.targets if t.platform == name),
                       update_interval=interval, coalesce=coalesce,
                       zone=zoneinfo.ZoneInfo(config.calendar.timezone))
        for name, config in settings.platforms.items()
    }
    custom = settings.notify.template_texts() if settings.notify else {}
    windows = tuple(
        Window(id=spec.id, platform=spec.platform,
               targets=tuple(spec.targets) or tuple(
                   t.name for t in settings.targets if t.platform == spec.platform),
               start=spec.start.timestamp(), end=spec.end.timestamp(),
               kind=WindowKind(spec.kind), description=spec.description, impact=spec.impact,
               registered_at=0.0)
        for spec in settings.maintenance.windows)
    return Topology(
        platforms=platforms,
        targets=targets,
        calendars={name: calendar_of(p.calendar, year=today.year)
                   for name, p in settings.platforms.items()},
        incident_recipients={name: tuple(p.incident_recipients)
                             for name, p in settings.platforms.items()},
        info_recipients={name: tuple(p.info_recipients) for name, p in settings.platforms.items()},
        templates={**DEFAULT_TEMPLATES, **custom},
        notice_days=settings.maintenance.notice_days,
        windows=windows,
    )


def calendar_of(config: CalendarConfig, *, year: int) -> Calendar:
    """A platform's business-day calendar: public holidays from the ``holidays`` package for
    the years around ``year``, plus the configured closure days."""
    zone = zoneinfo.ZoneInfo(config.timezone)
    days: frozenset[date] = frozenset()
    if config.country is not None:
        days = frozenset(holidays.country_holidays(config.country, subdiv=config.subdivision,
                                                   years=range(year - 1, year + 3)))
    return Calendar(zone=zone, holidays=days, closures=frozenset(config.closures))
