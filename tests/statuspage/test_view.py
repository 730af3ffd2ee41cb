"""The status page's view model and its HTML, from plain data (no daemon)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from tests.helpers.statusdata import NOW, FakeSource, day_list

from outagewatch.statuspage.render import render_page
from outagewatch.statuspage.source import IncidentView, ServiceState, WindowView
from outagewatch.statuspage.view import build_page, daily_bars, refresh_of, response_chart

HOST = "imap-backend-7.internal.example.net"
DETAIL = "auth_failed in login: NO [AUTHENTICATIONFAILED] secret-ish detail"
NOTE = "Storage vendor engaged; call Bob on +49 555 0199"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def service(name: str, state: str, **over) -> ServiceState:
    fields = {"name": name, "platform": "eu", "type": "imap", "state": state,
              "threshold_s": 0.5, "host": HOST if name == "imap-eu" else "", "detail": ""}
    return ServiceState(**{**fields, **over})


def scenario() -> FakeSource:
    source = FakeSource()
    source.states = [
        service("webmail-eu", "operational"),
        service("imap-eu", "outage", detail=DETAIL),
        service("smtp-eu", "degraded"),
        service("pop3-eu", "maintenance"),
        service("new-eu", "unknown"),
    ]
    source.times = {"imap-eu": [(NOW - 600, 0.9, True), (NOW - 300, None, True)],
                    "webmail-eu": [(NOW - 7200 + i * 300, 0.2, False) for i in range(24)]}
    source.days = {"webmail-eu": day_list(90), "imap-eu": day_list(90, value=None)}
    source.incident_list = [
        IncidentView(
            id="EU-20261130-1100", platform="eu", severity=1, state="open", start=NOW - 3600,
            end=None, services=("imap-eu",), ticket="CUST-4711", etr=NOW + 3600,
            timeline=((NOW - 3600, "open", f"We have detected an outage ({HOST})"),
                      (NOW - 1800, "update", "Update: disks being replaced"),
                      (NOW - 1700, "note", NOTE))),
        IncidentView(
            id="EU-20261101-0900", platform="eu", severity=3, state="resolved",
            start=NOW - 29 * 86400, end=NOW - 29 * 86400 + 600, services=("smtp-eu",),
            timeline=((NOW - 29 * 86400, "open", HOSTILE),)),
        IncidentView(  # older than 90 days: not shown
            id="EU-20260701-0900", platform="eu", severity=3, state="resolved",
            start=NOW - 150 * 86400, end=NOW - 150 * 86400 + 60, services=("smtp-eu",),
            timeline=()),
    ]
    source.window_list = [
        WindowView(id="db-upgrade", platform="eu", services=("pop3-eu",), start=NOW - 60,
                   end=NOW + 3600, kind="emergency", state="active",
                   description="Database upgrade"),
        WindowView(id="later", platform="eu", services=("smtp-eu",), start=NOW + 86400,
                   end=NOW + 90000, kind="planned", state="scheduled"),
        WindowView(id="gone", platform="eu", services=("smtp-eu",), start=NOW - 9000,
                   end=NOW - 8000, kind="planned", state="finished"),
    ]
    return source


async def page_of(source: FakeSource, *, public: bool, refresh: int | None = None):
    return build_page(
        title="Example Mail status", public=public, now=source.now(),
        platforms=source.platforms(), services=source.services(),
        response_times=await source.response_times(NOW - 86400),
        daily=await source.daily(90), incidents=await source.incidents(NOW - 90 * 86400),
        windows=await source.windows(NOW), refresh=refresh)


class Structure(HTMLParser):
    """What a reader and a screen reader get: headings, lang, elements by tag."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parsed(text: str) -> Structure:
    structure = Structure()
    structure.feed(text)
    return structure


async def test_states_in_the_words_operators_know():
    page = await page_of(scenario(), public=False)
    labels = {s.name: s.label for p in page.platforms for s in p.services}
    assert {"webmail-eu": "Operational", "imap-eu": "Major outage",
            "smtp-eu": "Degraded performance", "pop3-eu": "Under maintenance",
            "new-eu": "No data yet"} == labels
    assert ("outage", "Partial outage") == (page.platforms[0].state, page.platforms[0].label)
    assert "Some systems have a major outage" == page.label
    assert ["Identified"] == [i.label for i in page.open_incidents]  # an ETR was given
    assert ["EU-20261101-0900"] == [i.id for i in page.resolved_incidents]
    assert ["db-upgrade", "later"] == [w.id for w in page.windows]  # running first
    assert ["In progress", "Scheduled"] == [w.label for w in page.windows]
    html = render_page(page)
    for words in ("Operational", "Major outage", "Degraded performance", "Under maintenance",
                  "Emergency maintenance: db-upgrade", "Incident EU-20261130-1100"):
        assert words in html


async def test_the_internal_view_shows_hosts_details_notes_and_api_links():
    html = render_page(await page_of(scenario(), public=False))
    for text in (HOST, DETAIL, NOTE, "CUST-4711", "/api/v1/incidents/EU-20261130-1100"):
        assert text in html, text


async def test_the_public_view_hides_hosts_details_notes_tickets_and_the_api():
    page = await page_of(scenario(), public=True)
    html = render_page(page)
    for secret in (HOST, "AUTHENTICATIONFAILED", "Storage vendor", "CUST-4711", "/api/v1"):
        assert secret not in html, secret
    assert "We are investigating an outage of the services named above." in html
    assert "disks being replaced" not in html  # the operators' words stay internal
    assert "internal view" not in html


async def test_charts_are_inline_svg_with_text_alternatives():
    html = render_page(await page_of(scenario(), public=False))
    structure = parsed(html)
    svgs = [a for tag, a in structure.tags if tag == "svg"]
    assert 10 == len(svgs)  # a chart and bars per service
    assert all(a.get("aria-label") for a in svgs)
    # two services with 90 days each; the others have no history at all yet
    assert 2 * 90 == html.count("</title></rect>")  # a bar, its date and figure
    assert 3 == html.count('aria-label="Daily availability: no data"')
    assert "2026-11-30: 100.00 %</title>" in html
    assert "2026-11-30: no data</title>" in html  # imap-eu's days, and every service without
    assert "Response time over the last 24 hours: no data" in html  # smtp-eu: nothing yet
    assert "highest 900 ms, threshold 500 ms, 1 of 96 quarter-hours" in html
    assert "<script" not in html
    assert not re.search(r"(src|href)=\"https?://", html)  # nothing fetched from elsewhere


async def test_the_page_is_accessible_and_fits_a_phone():
    html = render_page(await page_of(scenario(), public=True, refresh=60))
    structure = parsed(html)
    assert ("html", {"lang": "en"}) == structure.tags[0]
    headings = [t for t, _ in structure.tags if re.fullmatch(r"h[1-6]", t)]
    assert "h1" == headings[0]
    assert 1 == headings.count("h1")
    assert {"h2", "h3"} <= set(headings)
    assert ("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}) \
        in structure.tags
    assert ("meta", {"http-equiv": "refresh", "content": "60"}) in structure.tags
    assert "@media (max-width: 40rem)" in html
    assert "refresh" not in render_page(await page_of(scenario(), public=True)).split(
        "<style>")[0]


async def test_hostile_text_is_escaped():
    source = scenario()
    source.window_list[0] = WindowView(
        id="w", platform="eu", services=("pop3-eu",), start=NOW - 60, end=NOW + 60,
        kind="planned", state="active", description=HOSTILE, impact=HOSTILE)
    source.days["smtp-eu"] = [(HOSTILE, 0.5)]
    for public in (True, False):
        html = render_page(await page_of(source, public=public))
        assert "<script>" not in html
        assert "<img" not in html
        assert "&lt;script&gt;alert(" in html


async def test_a_service_without_history_renders_no_data():
    bars = daily_bars(day_list(90, value=None))
    assert 90 == bars.count("no data</title>")
    assert 'aria-label="Daily availability, last 90 days: no data"' in bars
    assert "no data" in response_chart([], threshold=1.0, now=NOW)
    assert "<path" not in response_chart([], threshold=1.0, now=NOW)


def test_a_small_loss_is_never_rounded_to_a_full_hundred():
    assert "99.99 %</title>" in daily_bars([("2026-11-30", 0.999999)])


@pytest.mark.parametrize(("given", "expected"), [
    (None, None), ("", None), ("60", 60), ("1", 10), ("999999", 3600)])
def test_refresh_is_held_within_bounds(given, expected):
    assert expected == refresh_of(given)


def test_refresh_that_is_no_number_is_one_clear_line():
    with pytest.raises(ValueError, match=r"^refresh: expected whole seconds \(10..3600\)"):
        refresh_of("soon")
