"""The operator API under /api/v1/: maintenance windows and incident changes.

Reads are open (the endpoint listens on loopback by default); every mutation needs
``Authorization: Bearer <token>``, compared in constant time. Errors are JSON:
``{"error": "...", "field": "..."}`` with 400 (not JSON), 401 (no token), 403 (wrong token
or API disabled), 404, 409 (refused by a rule) or 422 (a field is wrong).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from outagewatch.core.maintenance import Refused, Window, WindowKind
from outagewatch.durations import parse_duration
from outagewatch.model import iso_utc

if TYPE_CHECKING:
    from outagewatch.core.incidents import Incident
    from outagewatch.monitor import Monitor

Handler = Callable[[web.Request], Awaitable[web.Response]]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


BodyT = TypeVar("BodyT", bound=_Body)


class WindowRequest(_Body):
    id: str = Field(pattern=r"^[a-z0-9_.-]+$")
    platform: str
    targets: list[str] = Field(default_factory=list)
    start: AwareDatetime
    end: AwareDatetime
    kind: Literal["planned", "emergency"] = "planned"
    description: str = ""
    impact: str = ""


class MoveRequest(_Body):
    start: AwareDatetime
    end: AwareDatetime


class IncidentRequest(_Body):
    etr: AwareDatetime | None = None
    update_interval: str | float | None = None
    note: str | None = Field(None, min_length=1, max_length=2000)


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


def incident_json(incident: Incident, mails: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": incident.id, "platform": incident.platform, "severity": incident.severity,
        "affected": sorted(incident.affected), "involved": sorted(incident.outage_starts),
        "started_at": iso_utc(incident.started_at), "opened_at": iso_utc(incident.opened_at),
        "resolved_at": iso_utc(incident.resolved_at),
        "restored_at": iso_utc(incident.restored_at), "etr": iso_utc(incident.etr),
        "update_interval": incident.update_interval,
        "notes": [{"at": iso_utc(at), "text": text} for at, text in incident.notes],
        "mails": [{**m, "created": iso_utc(m["created"]), "sent_at": iso_utc(m["sent_at"])}
                  for m in mails],
    }


class OperatorApi:
    def __init__(self, monitor: Monitor, token: str | None) -> None:
        self._monitor = monitor
        self._token = token

    def routes(self) -> list[web.RouteDef]:
        guard = self._guarded
        return [
            web.get("/api/v1/maintenance", self.list_windows),
            web.get("/api/v1/maintenance/{id}", self.get_window),
            web.post("/api/v1/maintenance", guard(self.create_window)),
            web.patch("/api/v1/maintenance/{id}", guard(self.move_window)),
            web.delete("/api/v1/maintenance/{id}", guard(self.cancel_window)),
            web.patch("/api/v1/incidents/{id}", guard(self.change_incident)),
        ]

    def _guarded(self, handler: Handler) -> Handler:
        async def check(request: web.Request) -> web.Response:
            if self._token is None:
                return error(403, "the operator API is disabled: set server.token_file or "
                                  "server.token_env")
            given = request.headers.get("Authorization", "")
            if not given.startswith("Bearer "):
                return error(401, "missing 'Authorization: Bearer <token>'")
            if not hmac.compare_digest(given[7:].encode(), self._token.encode()):
                return error(403, "wrong token")
            return await handler(request)

        return check

    async def list_windows(self, _request: web.Request) -> web.Response:
        return web.json_response({"windows": [window_json(w) for w in self._monitor.windows()]})

    async def get_window(self, request: web.Request) -> web.Response:
        wanted = request.match_info["id"]
        found = [w for w in self._monitor.windows() if w.id == wanted]
        return web.json_response(window_json(found[0])) if found else _missing(wanted)

    async def create_window(self, request: web.Request) -> web.Response:
        body = await _parse(request, WindowRequest)
        if not isinstance(body, WindowRequest):
            return body
        if body.end <= body.start:
            return error(422, "must be after start", "end")
        window = Window(id=body.id, platform=body.platform, targets=tuple(body.targets),
                        start=body.start.timestamp(), end=body.end.timestamp(),
                        kind=WindowKind(body.kind), description=body.description,
                        impact=body.impact, registered_at=0.0)
        try:
            created = self._monitor.add_window(window)
        except Refused as exc:
            return error(409, str(exc))
        return web.json_response(window_json(created), status=201)

    async def move_window(self, request: web.Request) -> web.Response:
        body = await _parse(request, MoveRequest)
        if not isinstance(body, MoveRequest):
            return body
        wanted = request.match_info["id"]
        try:
            moved = self._monitor.move_window(wanted, body.start.timestamp(),
                                              body.end.timestamp())
        except KeyError:
            return _missing(wanted)
        except Refused as exc:
            return error(409, str(exc))
        return web.json_response(window_json(moved))

    async def cancel_window(self, request: web.Request) -> web.Response:
        wanted = request.match_info["id"]
        try:
            cancelled = self._monitor.cancel_window(wanted)
        except KeyError:
            return _missing(wanted)
        except Refused as exc:
            return error(409, str(exc))
        return web.json_response(window_json(cancelled))

    async def change_incident(self, request: web.Request) -> web.Response:
        body = await _parse(request, IncidentRequest)
        if not isinstance(body, IncidentRequest):
            return body
        interval = None
        if body.update_interval is not None:
            try:
                interval = parse_duration(body.update_interval).total_seconds()
            except ValueError as exc:
                return error(422, str(exc), "update_interval")
        if body.etr is None and interval is None and body.note is None:
            return error(422, "give etr, update_interval and/or note")
        wanted = request.match_info["id"]
        try:
            incident = self._monitor.change_incident(
                wanted, etr=body.etr.timestamp() if body.etr else None, interval=interval,
                note=body.note)
        except KeyError:
            return error(404, f"no open incident {wanted!r}")
        return web.json_response(incident_json(incident, []))


def _missing(window_id: str) -> web.Response:
    return error(404, f"no maintenance {window_id!r}")


async def _parse(request: web.Request, model: type[BodyT]) -> BodyT | web.Response:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error(400, "the body is not JSON")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        return error(422, first["msg"], field)
