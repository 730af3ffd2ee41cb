"""The HTTP API under /api/v1/: status, incidents (opened, changed and resolved by hand too),
maintenance windows.

Reads are open (the endpoint listens on loopback by default) unless ``server.read_token``
is set, for a listen address others can reach: then every read needs it (or the operator
token). Every mutation needs ``Authorization: Bearer <token>``, compared in constant time,
and is answered once it is durable. Errors are JSON: ``{"error": "...", "field": "..."}``
with 400 (not JSON, or nested too deeply), 401 (no token), 403 (wrong token or API
disabled), 404 (unknown id), 409 (refused by a rule), 413 (too large) or 422 (a field is
wrong, or out of range), or 503 (a cluster without a leader right now).

In a cluster any node answers: reads of incidents come from the shared store; maintenance
and incident changes are the leader's, so another node forwards them to the leader (a
request already forwarded once is never forwarded again) and answers what it answered.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from aiohttp import web
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from outagewatch.config import WindowConfig, WindowTimes
from outagewatch.configerrors import describe
from outagewatch.core import availability, incidents
from outagewatch.core.maintenance import Refused, Window, WindowKind
from outagewatch.core.render import Thread, ThreadKind
from outagewatch.core.report import report_csv, report_json, report_text
from outagewatch.durations import parse_duration, parse_moment
from outagewatch.errors import UnknownIncident, UnknownWindow
from outagewatch.model import iso_utc, one_line, sample_json
from outagewatch.statuspage.render import render_report

if TYPE_CHECKING:
    from typing import Protocol

    from outagewatch.clock import Clock
    from outagewatch.core.availability import Period
    from outagewatch.core.incidents import Incident
    from outagewatch.core.report import Report
    from outagewatch.engine import Engine, Maintenance, Writer
    from outagewatch.history import History
    from outagewatch.model import Sample
    from outagewatch.notify import Drainer
    from outagewatch.store import StateStore, StoredMessage

    class IncidentDesk(Protocol):
        def change_incident(self, incident_id: str, *, etr: float | None = None,
                            interval: float | None = None, note: str | None = None,
                            ticket: str | None = None,
                            reported: tuple[str, ...] = ()) -> Incident: ...

        def open_incident(self, platform: str, *, reported: tuple[str, ...], severity: int,
                          impact: str, since: float | None = None, ticket: str | None = None,
                          etr: float | None = None,
                          until_restored: bool = False) -> Incident: ...

        def resolve_incident(self, incident_id: str, *,
                             note: str | None = None) -> Incident: ...

        def set_severity(self, incident_id: str, level: int, reason: str) -> Incident: ...

Handler = Callable[[web.Request], Awaitable[web.Response]]
FORWARDED = "X-Outagewatch-Forwarded"  # set by the node that forwarded a request


@dataclass(frozen=True, slots=True)
class Leading:
    """What changes go to: the maintenance unit, the incident desk, their writer and the
    drainer that sends the mails (one node: always there; a cluster: on the leader only)."""

    maintenance: Maintenance
    desk: IncidentDesk
    writer: Writer
    drainer: Drainer | None = None


LEADING = web.RequestKey("leading", Leading)
BodyT = TypeVar("BodyT", bound=BaseModel)


MAX_COMPONENT = 100  # characters in a component's name


def _line(value: str | None) -> str | None:
    """One line of text (see ``model.one_line``), never blank."""
    if value is None:
        return None
    text = one_line(value)
    if not text:
        raise ValueError("must not be blank")
    return text


Line = Annotated[StrictStr, AfterValidator(_line)]


class IncidentRequest(BaseModel):
    """A change to an open incident. ``etr``: ISO 8601 with a zone, or relative (+2h)."""

    model_config = ConfigDict(extra="forbid")

    etr: StrictStr | None = Field(None, max_length=64)
    update_interval: StrictStr | StrictInt | StrictFloat | None = None  # never true or false
    note: str | None = Field(None, min_length=1, max_length=2000)
    severity: StrictInt | None = Field(None, ge=1, le=3)
    reason: Line | None = Field(None, min_length=1, max_length=500)
    ticket: Line | None = Field(None, min_length=1, max_length=100)
    services: list[StrictStr] = Field(default_factory=list, max_length=100)
    components: list[Annotated[Line, Field(max_length=MAX_COMPONENT)]] = Field(
        default_factory=list, max_length=20)


class IncidentOpening(BaseModel):
    """An incident opened by hand: a customer's report through the ticket process."""

    model_config = ConfigDict(extra="forbid")

    platform: StrictStr = Field(max_length=100)
    severity: StrictInt = Field(ge=1, le=3)
    services: list[StrictStr] = Field(default_factory=list, max_length=100)
    components: list[Annotated[Line, Field(max_length=MAX_COMPONENT)]] = Field(
        default_factory=list, max_length=20)
    impact: Line = Field(min_length=1, max_length=2000)
    ticket: Line | None = Field(None, min_length=1, max_length=100)
    etr: StrictStr | None = Field(None, max_length=64)
    since: StrictStr | None = Field(None, max_length=64)
    until_restored: StrictBool = False


class IncidentResolution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(None, min_length=1, max_length=2000)

class ResendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: StrictStr = Field(min_length=3, max_length=300)  # THREAD/NUMBER: EU-20261129-1423/2
    recipient: StrictStr | None = Field(None, min_length=1, max_length=320)


_MAIL_ID = re.compile(r"^(?:(incident|maintenance):)?([A-Za-z0-9_.-]+)/(\d{1,6})$",
                      re.IGNORECASE)


def mail_threads(mail_id: str) -> tuple[list[Thread], int] | None:
    """``EU-20261129-1423/2`` (any case; ``incident:`` or ``maintenance:`` in front when a
    window and an incident share a name): the threads it may name, and the number."""
    match = _MAIL_ID.match(mail_id.strip())
    if match is None:
        return None
    kind, ident, number = match.groups()
    kinds = [ThreadKind(kind.lower())] if kind else list(ThreadKind)
    names = dict.fromkeys((ident, ident.upper(), ident.lower()))
    return [Thread(k, name) for k in kinds for name in names], int(number)


# Dates an operator can mean: anything outside is a typo (0001, 9999) that would otherwise
# travel into timers, mails and the state file.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
MIN_INTERVAL, MAX_INTERVAL = 60.0, 7 * 86400.0  # an operator's update interval
MAX_BODY = 64 * 1024
FIND_AMONG = 500  # incidents searched for one asked for by id
MAX_DEPTH = 20


def error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


def window_json(window: Window) -> dict[str, Any]:
    return {
        "id": window.id, "platform": window.platform, "targets": list(window.targets),
        "start": iso_utc(window.start), "end": iso_utc(window.end), "kind": window.kind.value,
        "state": window.state.value, "description": window.description,
        "impact": window.impact, "problems": list(window.problems),
    }


def message_json(message: StoredMessage) -> dict[str, Any]:
    payload = message.payload
    return {
        "number": message.number, "kind": message.kind, "channel": message.channel,
        "lane": message.lane, "status": message.status, "created": iso_utc(message.created),
        "sent_at": iso_utc(message.sent_at), "attempts": message.attempts,
        "recipient": message.lane,
        "last_error": message.last_error, "subject": payload.get("subject"),
        "message_id": payload.get("message_id"), "recipients": payload.get("to"),
        "body": payload.get("body"),
    }


def incident_json(incident: Incident, messages: list[StoredMessage]) -> dict[str, Any]:
    return {
        "id": incident.id, "platform": incident.platform, "severity": incident.severity,
        "origin": incident.origin.value, "ticket": incident.ticket,
        "reported": list(incident.reported), "impact": incident.impact,
        "severity_set": incident.severity_set, "until_restored": incident.until_restored,
        "unmonitored": sorted(incident.unmonitored), "services": incident.services,
        "affected": sorted(incident.affected), "involved": incident.involved,
        "started_at": iso_utc(incident.started_at), "opened_at": iso_utc(incident.opened_at),
        "resolved_at": iso_utc(incident.resolved_at),
        "restored_at": iso_utc(incident.restored_at), "etr": iso_utc(incident.etr),
        "update_interval_s": incident.update_interval,
        "notes": [{"at": iso_utc(at), "text": text} for at, text in incident.notes],
        "mails": [message_json(m) for m in messages],
    }


class Api:
    def __init__(self, *, engine: Engine, leading: Callable[[], Leading | None],
                 store: StateStore, last: Mapping[str, Sample], clock: Clock,
                 token: str | None, read_token: str | None = None,
                 forward: Handler | None = None,
                 cluster: Callable[[], Awaitable[dict[str, Any]]] | None = None,
                 locations: Callable[[str], Mapping[str, str]] | None = None,
                 location_results: Callable[[str], Mapping[str, Any]] | None = None,
                 history: History | None = None, title: str = "outagewatch") -> None:
        self._engine = engine
        self._leading = leading
        self._store = store
        self._last = last
        self._clock = clock
        self._token = token
        self._read_token = read_token
        self._forward = forward  # a cluster node that does not lead: to the leader
        self._cluster = cluster
        self._locations = locations
        self._location_results = location_results
        self._history = history  # reports from the ledger
        self._title = title

    def routes(self) -> list[web.RouteDef]:
        guard, read = self._guarded, self._readable
        routes = [
            web.get("/api/v1/status", read(self.status)),
            web.get("/api/v1/report", read(self.report)),
            web.get("/api/v1/incidents", read(self.incidents)),
            web.get("/api/v1/maintenance", read(self._led(self.list_windows))),
            web.get("/api/v1/maintenance/{id}", read(self._led(self.get_window))),
            web.post("/api/v1/maintenance", guard(self.create_window)),
            web.patch("/api/v1/maintenance/{id}", guard(self.move_window)),
            web.delete("/api/v1/maintenance/{id}", guard(self.cancel_window)),
            web.get("/api/v1/incidents/{id}", read(self.get_incident)),
            web.post("/api/v1/incidents", guard(self.open_incident)),
            web.patch("/api/v1/incidents/{id}", guard(self.change_incident)),
            web.post("/api/v1/incidents/{id}/resolve", guard(self.resolve_incident)),
            web.post("/api/v1/mails/resend", guard(self.resend_mail)),
        ]
        if self._cluster is not None:
            routes.append(web.get("/api/v1/cluster", read(self.cluster)))
        return routes

    def _led(self, handler: Handler) -> Handler:
        """Run ``handler`` where the leading parts are: here, or forwarded to the leader."""
        async def lead(request: web.Request) -> web.Response:
            leading = self._leading()
            if leading is not None:
                request[LEADING] = leading
                return await handler(request)
            if self._forward is not None and FORWARDED not in request.headers:
                return await self._forward(request)
            return error(503, "no leader right now: the cluster is electing one; try again "
                              "in a few seconds")

        return lead

    def _readable(self, handler: Handler) -> Handler:
        async def check(request: web.Request) -> web.Response:
            if self._read_token is not None:
                given = _bearer(request)
                if given is None:
                    return error(401, "missing 'Authorization: Bearer <token>' (reads need "
                                      "server.read_token here)")
                if not any(token is not None and hmac.compare_digest(given, token.encode())
                           for token in (self._read_token, self._token)):
                    return error(403, "wrong token")
            return await handler(request)

        return check

    def _guarded(self, handler: Handler) -> Handler:
        led = self._led(self._durable(handler))

        async def check(request: web.Request) -> web.Response:
            if self._token is None:
                return error(403, "the operator API is disabled: set server.token_file or "
                                  "server.token_env")
            given = _bearer(request)
            if given is None:
                return error(401, "missing 'Authorization: Bearer <token>'")
            if not hmac.compare_digest(given, self._token.encode()):
                return error(403, "wrong token")
            return await led(request)

        return check

    def _durable(self, handler: Handler) -> Handler:
        async def change(request: web.Request) -> web.Response:
            try:
                response = await handler(request)
            except (UnknownWindow, UnknownIncident) as exc:
                return error(404, str(exc))
            except (Refused, incidents.Refused) as exc:
                return error(409, str(exc))
            await request[LEADING].writer.flush()  # answer once the change is durable
            return response

        return change

    # -- reads --------------------------------------------------------------------------------

    async def status(self, _request: web.Request) -> web.Response:
        """Every target's state, last run and streak."""
        targets = []
        for name, target in self._engine.topology.targets.items():
            verdict = self._engine.verdict(name)
            sample = self._last.get(name)
            state = "unknown" if sample is None and verdict.last_start is None else (
                verdict.health.value)
            entry = {
                "name": name, "type": target.type.value, "platform": target.platform,
                "state": state,
                "streak_start": iso_utc(verdict.streak_start),
                "outage_start": iso_utc(verdict.outage_start),
                "last_sample": None if sample is None else sample_json(sample),
            }
            if self._locations is not None:  # a cluster: each location's view
                entry["locations"] = dict(self._locations(name))
            if self._location_results is not None:  # ...and its latest result
                entry["location_results"] = dict(self._location_results(name))
            targets.append(entry)
        return web.json_response({"generated_at": iso_utc(self._clock.now().timestamp()),
                                  "targets": targets})

    async def incidents(self, _request: web.Request) -> web.Response:
        """Open and recent incidents, each with its mails."""
        items = [incident_json(i, await self._store.thread(
                     Thread(ThreadKind.INCIDENT, i.id).key))
                 for i in await self._store.incidents()]
        return web.json_response({"open": [i for i in items if i["resolved_at"] is None],
                                  "recent": [i for i in items if i["resolved_at"] is not None]})

    async def report(self, request: web.Request) -> web.Response:
        """The availability report: ``period`` (2026-11, 2026-Q4, 2026) or ``from`` and
        ``to`` (dates, ``to`` exclusive); ``platform`` (default every one); ``format`` json
        (default), csv, html or text."""
        if self._history is None:
            return error(404, "no history here")
        query = request.query
        fmt = query.get("format", "json")
        platforms = self._engine.topology.platforms
        wanted = list(dict.fromkeys(query.getall("platform", []))) or sorted(platforms)
        unknown = [p for p in wanted if p not in platforms]
        if fmt not in REPORT_FORMATS or unknown:
            return (error(422, f"format must be one of {', '.join(REPORT_FORMATS)}", "format")
                    if fmt not in REPORT_FORMATS else
                    error(422, f"no platform {', '.join(map(repr, unknown))} (known: "
                               f"{', '.join(sorted(platforms))})", "platform"))
        period_in = _period_spec(query)
        if isinstance(period_in, web.Response):
            return period_in
        found = await self._history.report(period_in, wanted,
                                           now=self._clock.now().timestamp(),
                                           daily=fmt == "html")
        return await self._report_as(found, fmt)

    async def _report_as(self, found: Report, fmt: str) -> web.Response:
        match fmt:
            case "csv":
                return web.Response(text=report_csv(found), content_type="text/csv")
            case "text":
                return web.Response(text=report_text(found), content_type="text/plain")
            case "html":
                html = await asyncio.to_thread(render_report, found,
                                               title=f"{self._title}: availability "
                                                     f"{found.label}")
                return web.Response(text=html, content_type="text/html")
        return web.json_response(report_json(found))

    async def get_incident(self, request: web.Request) -> web.Response:
        """One incident with its mails (ids are case-insensitive)."""
        wanted = request.match_info["id"].lower()
        for incident in await self._store.incidents(limit=FIND_AMONG):
            if incident.id.lower() == wanted:
                return web.json_response(incident_json(incident, await self._store.thread(
                    Thread(ThreadKind.INCIDENT, incident.id).key)))
        return error(404, f"no incident {request.match_info['id']!r} among the latest "
                          f"{FIND_AMONG}")

    async def cluster(self, _request: web.Request) -> web.Response:
        """Nodes, their locations and heartbeats, the leader and its epoch."""
        assert self._cluster is not None
        return web.json_response(await self._cluster())

    async def list_windows(self, request: web.Request) -> web.Response:
        return web.json_response({"windows": [window_json(w) for w in
                                              request[LEADING].maintenance.windows()]})

    async def get_window(self, request: web.Request) -> web.Response:
        try:
            window = request[LEADING].maintenance.get(request.match_info["id"])
        except UnknownWindow as exc:
            return error(404, str(exc))
        messages = await self._store.thread(Thread(ThreadKind.MAINTENANCE, window.id).key)
        return web.json_response({**window_json(window),
                                  "mails": [message_json(m) for m in messages]})

    # -- changes ------------------------------------------------------------------------------

    async def create_window(self, request: web.Request) -> web.Response:
        body = await _parse(request, WindowConfig)
        if not isinstance(body, WindowConfig):
            return body
        refused = _out_of_range(start=body.start, end=body.end)
        if refused is not None:
            return refused
        window = Window(id=body.id, platform=body.platform, targets=tuple(body.targets),
                        start=body.start.timestamp(), end=body.end.timestamp(),
                        kind=WindowKind(body.kind), description=body.description,
                        impact=body.impact, registered_at=0.0)
        return web.json_response(window_json(request[LEADING].maintenance.add(window)),
                                 status=201)

    async def move_window(self, request: web.Request) -> web.Response:
        body = await _parse(request, WindowTimes)
        if not isinstance(body, WindowTimes):
            return body
        given = {name: value for name, value in (("start", body.start), ("end", body.end))
                 if value is not None}
        refused = _out_of_range(**given)
        if refused is not None:
            return refused
        maintenance = request[LEADING].maintenance
        window = maintenance.get(request.match_info["id"])  # what is not given stays
        moved = maintenance.move(window.id,
                                 body.start.timestamp() if body.start else window.start,
                                 body.end.timestamp() if body.end else window.end)
        return web.json_response(window_json(moved))

    async def cancel_window(self, request: web.Request) -> web.Response:
        return web.json_response(window_json(request[LEADING].maintenance.cancel(
            request.match_info["id"])))

    async def open_incident(self, request: web.Request) -> web.Response:
        body = await _parse(request, IncidentOpening)
        if not isinstance(body, IncidentOpening):
            return body
        topology = self._engine.topology
        if body.platform not in topology.platforms:
            return error(422, f"no platform {body.platform!r} (known: "
                              f"{', '.join(sorted(topology.platforms))})", "platform")
        known = [s.name for s in topology.platforms[body.platform].services]
        unknown = [name for name in body.services if name not in known]
        if unknown:
            return error(422, f"{', '.join(unknown)}: not a service of platform "
                              f"{body.platform} (its services: {', '.join(known) or 'none'}; "
                              "name anything else as a component)", "services")
        if not body.services and not body.components:
            return error(422, "name at least one service or component", "services")
        now = self._clock.now()
        moments: dict[str, float | None] = {}
        for name, text, future in (("etr", body.etr, True), ("since", body.since, False)):
            moment = _moment(name, text, now, future=future)
            if isinstance(moment, web.Response):
                return moment
            moments[name] = moment
        incident = request[LEADING].desk.open_incident(
            body.platform, reported=(*body.services, *body.components), severity=body.severity,
            impact=body.impact, since=moments["since"], ticket=body.ticket,
            etr=moments["etr"], until_restored=body.until_restored)
        return web.json_response(incident_json(incident, []), status=201)

    async def resolve_incident(self, request: web.Request) -> web.Response:
        body = await _parse(request, IncidentResolution)
        if not isinstance(body, IncidentResolution):
            return body
        incident = request[LEADING].desk.resolve_incident(request.match_info["id"],
                                                          note=body.note)
        return web.json_response(incident_json(incident, []))

    def _set_severity(self, request: web.Request, body: IncidentRequest) -> web.Response:
        if body.severity is None or body.reason is None:
            return error(422, "a severity needs its reason, and a reason its severity",
                         "severity" if body.severity is None else "reason")
        if body.etr is not None or body.update_interval is not None or body.note:
            return error(422, "set the severity on its own (one mail says why)", "severity")
        return web.json_response(incident_json(request[LEADING].desk.set_severity(
            request.match_info["id"], body.severity, body.reason), []))

    def _change_refused(self, body: IncidentRequest) -> web.Response | None:
        unknown = [name for name in body.services if name not in self._engine.topology.targets]
        if unknown:
            return error(422, f"{', '.join(unknown)}: not a monitored service (name anything "
                              "else as a component)", "services")
        if body.etr is None and body.update_interval is None and body.note is None and \
                body.ticket is None and not body.services and not body.components:
            return error(422, "give etr, update_interval, note, ticket, services or "
                              "components, or severity with reason")
        return None

    async def change_incident(self, request: web.Request) -> web.Response:
        body = await _parse(request, IncidentRequest)
        if not isinstance(body, IncidentRequest):
            return body
        if body.severity is not None or body.reason is not None:
            return self._set_severity(request, body)
        refused = self._change_refused(body)
        if refused is not None:
            return refused
        interval = _interval(body.update_interval)
        if isinstance(interval, web.Response):
            return interval
        etr = _moment("etr", body.etr, self._clock.now(), future=True)
        if isinstance(etr, web.Response):
            return etr
        incident = request[LEADING].desk.change_incident(
            request.match_info["id"], etr=etr, interval=interval, note=body.note,
            ticket=body.ticket, reported=(*body.services, *body.components))
        return web.json_response(incident_json(incident, []))


    async def resend_mail(self, request: web.Request) -> web.Response:
        """Send a failed mail again (``mail resend``): its failed deliveries back to pending,
        with the same Message-ID; 409 when it is not failed."""
        body = await _parse(request, ResendRequest)
        if not isinstance(body, ResendRequest):
            return body
        named = mail_threads(body.id)
        if named is None:
            return error(422, "expected THREAD/NUMBER, e.g. EU-20261129-1423/2 (the "
                              "incident or maintenance id, then the mail's number)", "id")
        threads, number = named
        drainer = request[LEADING].drainer
        if drainer is None:
            return error(503, "this daemon sends no mail (no notify section)")
        for thread in threads:
            letters = drainer.resend(thread.key, number, lane=body.recipient)
            if letters:
                return web.json_response({
                    "id": f"{thread.id}/{number}", "thread": thread.key, "number": number,
                    "recipients": [letter.key.lane for letter in letters],
                    "status": "pending"})
        return await self._not_resent(body, threads, number)

    async def _not_resent(self, body: ResendRequest, threads: list[Thread],
                          number: int) -> web.Response:
        messages = [m for thread in threads for m in await self._store.thread(thread.key)
                    if m.number == number]
        if body.recipient is not None:
            messages = [m for m in messages if m.lane.lower() == body.recipient.lower()]
        if not messages:
            whom = f" to {body.recipient}" if body.recipient else ""
            return error(404, f"no mail {body.id}{whom}")
        states = ", ".join(sorted({m.status for m in messages}))
        return error(409, f"mail {body.id} is not failed ({states}): nothing to resend")


_KEY_PREFIX = re.compile(r"^(?:Value error, )?([a-z_]+): (.+)$", re.DOTALL)


def _bearer(request: web.Request) -> bytes | None:
    given = request.headers.get("Authorization", "")
    return given[7:].encode() if given.startswith("Bearer ") else None


REPORT_FORMATS = ("json", "csv", "html", "text")
MAX_REPORT_DAYS = 400  # a custom range's length: its figures are computed day by day


def _period_spec(query: Mapping[str, str]) -> Callable[[tzinfo], Period] | web.Response:
    """The report's period from the query, checked once (in UTC) so that a mistake is one
    422 naming the field; each platform then gets it in its own zone."""
    text, first, last = query.get("period"), query.get("from"), query.get("to")
    if text is not None and (first or last):
        return error(422, "give period, or from and to, not both", "period")
    if text is None and not (first and last):
        return error(422, "give period (2026-11, 2026-Q4, 2026) or from and to "
                          "(2026-11-03 and 2026-11-10, to exclusive)", "period")
    if text is not None:
        try:
            availability.parse_period(text, UTC)
        except ValueError as exc:
            return error(422, str(exc), "period")
        return functools.partial(availability.parse_period, text)
    assert first is not None
    assert last is not None
    return _range_spec(first, last)


def _range_spec(first: str, last: str) -> Callable[[tzinfo], Period] | web.Response:
    days: list[date] = []
    for name, given in (("from", first), ("to", last)):
        try:
            days.append(date.fromisoformat(given))
        except ValueError:
            return error(422, f"{given[:40]!r} is not a date such as 2026-11-03", name)
    start, end = days
    if (end - start).days > MAX_REPORT_DAYS:
        return error(422, f"a range of at most {MAX_REPORT_DAYS} days (a year: period=2026)",
                     "to")
    try:
        availability.custom_period(start, end, UTC)
    except ValueError as exc:
        return error(422, str(exc), "from")
    return functools.partial(availability.custom_period, start, end)


def _interval(value: str | float | None) -> float | web.Response | None:
    if value is None:
        return None
    try:
        interval = parse_duration(value).total_seconds()
    except (ValueError, OverflowError) as exc:
        return error(422, str(exc), "update_interval")
    if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        return error(422, "must be between 1m and 7d", "update_interval")
    return interval


def _moment(name: str, text: str | None, now: datetime, *,
            future: bool) -> float | web.Response | None:
    """An operator's time (ISO 8601 with a zone, or relative: +2h), or the 422 saying why."""
    if text is None:
        return None
    try:
        moment = parse_moment(text, now=now, future=future)
    except (ValueError, OverflowError) as exc:
        return error(422, str(exc), name)
    return _out_of_range(**{name: moment}) or moment.timestamp()


def _out_of_range(**dates: datetime) -> web.Response | None:
    for name, value in dates.items():
        if not EARLIEST <= value < LATEST:
            return error(422, f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}",
                         name)
    return None


def _depth(text: str) -> int:
    """How deeply a JSON text nests (outside strings), without parsing it."""
    deepest = depth = 0
    quoted = escaped = False
    for char in text:
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


async def _read_json(request: web.Request) -> Any:  # noqa: PLR0911 - one answer per fault
    """The body as JSON data, or the error response: bounded in size and in depth."""
    too_large = error(413, f"the body is larger than {MAX_BODY} bytes")
    if request.content_length is not None and request.content_length > MAX_BODY:
        return too_large
    data = await request.read()
    if len(data) > MAX_BODY:
        return too_large
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return error(400, "the body is not JSON")
    if not text.strip():  # no body: no fields (a request whose fields are all optional)
        return {}
    if _depth(text) > MAX_DEPTH:
        return error(400, f"the body nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return error(400, "the body is not JSON")


async def _parse(request: web.Request, model: type[BodyT]) -> BodyT | web.Response:
    data = await _read_json(request)
    if isinstance(data, web.Response):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else None  # the field, not its type
        message = describe(first, root=model, tags=frozenset())
        named = _KEY_PREFIX.match(message)
        if field is None and named is not None:  # a model-level check naming its field
            field, message = named.group(1), named.group(2)
        return error(422, message, field)
