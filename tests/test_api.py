"""The API in process, on the engine and a fake clock: hostile and mistaken input gets a
400/413/422 naming the field, never a 500, and never half-applied state (issue 10.12, 10.13
and the low items)."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from tests.helpers.engine import EngineHarness
from tests.helpers.fakeclock import FakeClock

from outagewatch.api import Api, Leading
from outagewatch.config import Settings

TOKEN = "0123456789abcdef0123"


def settings(tmp_path):
    return Settings(
        platforms={"eu": {"incident_recipients": ["oncall@example.com"],
                          "info_recipients": ["info@example.com"]}},
        targets=[{"name": "imap-eu", "platform": "eu", "type": "http", "url": "http://x/"}],
        notify={"smtp": {"host": "127.0.0.1"}, "sender": "NOC <noc@example.com>"},
        state={"path": tmp_path / "state.db"})


@pytest.fixture(name="api")
async def _api(tmp_path):
    async with EngineHarness(settings(tmp_path), FakeClock()) as h:
        leading = Leading(h.maintenance, h.desk, h.writer)
        api = Api(engine=h.engine, leading=lambda: leading, store=h.store,
                  last={}, clock=h.clock, token=TOKEN)
        app = web.Application()
        app.router.add_routes(api.routes())
        async with TestClient(TestServer(app)) as client:
            client.harness = h  # type: ignore[attr-defined]
            yield client


async def call(client, method, path, body=None, *, raw=None):
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    data = raw if raw is not None else (None if body is None else json.dumps(body))
    response = await client.request(method, path, data=data, headers=headers)
    return response.status, await response.json()


WINDOW = {"id": "db", "platform": "eu", "kind": "emergency",
          "start": "2026-03-02T10:00:00+00:00", "end": "2026-03-02T11:00:00+00:00"}


class TestHostileInput:
    @pytest.mark.parametrize(("field", "value"), [
        ("end", "9999-12-31T23:59:59-14:00"),
        ("start", "0001-01-01T00:00:00+00:00"),
        ("end", "2200-01-01T00:00:00+00:00"),
    ])
    async def test_a_window_out_of_range_is_refused_and_nothing_is_registered(
            self, api, field, value):
        """Issue 10.12: it answered 500 and stayed active, suppressing outages."""
        status, body = await call(api, "POST", "/api/v1/maintenance", {**WINDOW, field: value})
        assert (422, field) == (status, body["field"])
        status, listing = await call(api, "GET", "/api/v1/maintenance")
        assert (200, []) == (status, listing["windows"])
        assert [] == api.harness.maintenance.windows()

    async def test_moving_a_window_out_of_range_is_refused(self, api):
        assert 201 == (await call(api, "POST", "/api/v1/maintenance", WINDOW))[0]
        status, body = await call(api, "PATCH", "/api/v1/maintenance/db",
                                  {"start": WINDOW["start"], "end": "9999-01-01T00:00:00Z"})
        assert (422, "end") == (status, body["field"])
        assert "2026-03-02T11:00:00Z" == (await call(api, "GET", "/api/v1/maintenance/db")
                                                )[1]["end"]

    @pytest.mark.parametrize(("body", "field"), [
        ({"update_interval": True}, "update_interval"),  # was taken as 1 s
        ({"update_interval": "999999999999999999d"}, "update_interval"),  # was a 500
        ({"update_interval": "10ms"}, "update_interval"),  # 388 mails in 5 s
        ({"update_interval": "30d"}, "update_interval"),
        ({"etr": "9999-12-31T23:59:59Z"}, "etr"),
        ({"etr": "0001-01-01T00:00:00Z"}, "etr"),
        ({"note": ""}, "note"),
    ])
    async def test_incident_changes_out_of_range_are_refused_naming_the_field(
            self, api, body, field):
        status, answer = await call(api, "PATCH", "/api/v1/incidents/EU-1", body)
        assert (422, field) == (status, answer.get("field"))

    async def test_deep_nesting_is_a_400_not_a_500(self, api):
        deep = '{"a":' * 100_000 + "1" + "}" * 100_000
        status, body = await call(api, "POST", "/api/v1/maintenance", raw=deep[:60_000])
        assert 400 == status
        assert "nests deeper than" in body["error"]

    async def test_a_huge_body_is_a_413(self, api):
        status, _ = await call(api, "POST", "/api/v1/maintenance",
                               raw=json.dumps({**WINDOW, "description": "x" * 100_000}))
        assert 413 == status

    async def test_not_json_is_a_400(self, api):
        assert 400 == (await call(api, "POST", "/api/v1/maintenance", raw=b"{not json"))[0]
        assert 400 == (await call(api, "POST", "/api/v1/maintenance", raw=b"\xff\xfe"))[0]


class TestReadToken:
    async def test_reads_need_the_read_token_when_one_is_set(self, tmp_path):
        """For a listen address others can reach: every read needs server.read_token (or
        the operator token), so the status and incidents are not public."""
        reader = "r3ader-token-0123456789"
        async with EngineHarness(settings(tmp_path), FakeClock()) as h:
            leading = Leading(h.maintenance, h.desk, h.writer)
            api = Api(engine=h.engine, leading=lambda: leading, store=h.store, last={},
                      clock=h.clock, token=TOKEN, read_token=reader)
            app = web.Application()
            app.router.add_routes(api.routes())
            async with TestClient(TestServer(app)) as client:
                statuses = []
                for given in (None, "wrong-token-0123456789", reader, TOKEN):
                    headers = {"Authorization": f"Bearer {given}"} if given else {}
                    response = await client.get("/api/v1/status", headers=headers)
                    statuses.append(response.status)
        assert [401, 403, 200, 200] == statuses



OPENING = {"platform": "eu", "severity": 2, "components": ["Calendar sync"],
           "impact": "Invitations are not delivered", "ticket": "OX-1"}


class TestIncidentsByHand:
    @pytest.mark.parametrize(("over", "field", "said"), [
        ({"ticket": " \t "}, "ticket", "must not be blank"),
        ({"impact": "   "}, "impact", "must not be blank"),
        ({"components": ["\u2028"]}, "components", "must not be blank"),
        ({"severity": "2"}, "severity", "whole number"),
        ({"severity": True}, "severity", ""),
        ({"severity": 0}, "severity", ""),
        ({"platform": "us"}, "platform", "no platform 'us' (known: eu)"),
        ({"services": ["nope"]}, "services", "not a service of platform eu"),
        ({"components": []}, "services", "name at least one service or component"),
        ({"etr": "+99999999999d"}, "etr", ""),
        ({"etr": "2020-01-01T00:00:00Z"}, "etr", "is in the past"),
        ({"since": "+1h"}, "since", "is in the future"),
        ({"ticket": "x" * 101}, "ticket", ""),
        ({"colour": "red"}, "colour", "unknown key"),
    ])
    async def test_bad_openings_are_422_naming_the_field_and_open_nothing(
            self, api, over, field, said):
        body = {**OPENING, **over}
        status, answer = await call(api, "POST", "/api/v1/incidents", body)
        assert (422, field) == (status, answer.get("field")), answer
        assert said in answer["error"]
        assert "Input should" not in answer["error"]
        assert "Python int" not in answer["error"]
        assert api.harness.desk.book("eu").open is None

    async def test_line_breaks_in_a_ticket_become_spaces_and_mail_goes(self, api):
        """A ticket with U+2028 (or \\x85, \\v, ...) was accepted and then made every mail of
        the incident unsendable: it ends in a mail header."""
        status, answer = await call(api, "POST", "/api/v1/incidents",
                                    {**OPENING, "ticket": "OX-1\u2028\x85\x0bB\x1b[0m"})
        assert 201 == status, answer
        assert answer["ticket"] == "OX-1 B [0m"
        status, answer = await call(api, "PATCH", f"/api/v1/incidents/{answer['id']}",
                                    {"severity": 1, "reason": "security:\u2029exposure"})
        assert 200 == status, answer

    async def test_resolve_takes_an_empty_body(self, api):
        status, answer = await call(api, "POST", "/api/v1/incidents", OPENING)
        assert 201 == status
        response = await api.post(f"/api/v1/incidents/{answer['id'].lower()}/resolve",
                                  headers={"Authorization": f"Bearer {TOKEN}"})
        assert 200 == response.status, await response.text()
        assert (await response.json())["resolved_at"] is not None
