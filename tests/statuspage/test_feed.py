"""The Atom feed, parsed back: entries, ids, order, the platform filter, escaping."""

from __future__ import annotations

from dataclasses import replace
from xml.etree import ElementTree as ET

from tests.helpers.statusdata import NOW

from outagewatch.statuspage.feed import render_feed
from outagewatch.statuspage.source import FeedEntry

A = "{http://www.w3.org/2005/Atom}"
HOSTILE = '<b>&"x"</b> \x00\x1b]]>'


def mail(thread: str, number: int, minutes: float, *, kind: str = "update",
         platform: str = "eu", body: str = "body") -> FeedEntry:
    return FeedEntry(id=f"{thread}/{number}", thread=thread, number=number, kind=kind,
                     subject=f"{thread} #{number}", body=body, created=NOW + minutes * 60,
                     platform=platform)


ENTRIES = [
    mail("incident:EU-20261130-1100", 0, 0, kind="open"),
    mail("maintenance:db-upgrade", 0, -600, kind="announcement"),
    mail("incident:EU-20261130-1100", 1, 30, body=HOSTILE),
    mail("incident:US-20261130-1200", 0, 10, kind="open", platform="us"),
]


def parse(body: bytes) -> ET.Element:
    assert body.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    return ET.fromstring(body)


def test_one_entry_per_mail_newest_first_with_stable_ids():
    feed = parse(render_feed(ENTRIES, title="Example status", now=NOW,
                             base_url="http://status.test"))
    assert f"{A}feed" == feed.tag
    assert "Example status: incidents and maintenance" == feed.findtext(f"{A}title")
    assert "urn:outagewatch:feed" == feed.findtext(f"{A}id")
    entries = feed.findall(f"{A}entry")
    assert ["urn:outagewatch:mail:incident:EU-20261130-1100/1",
            "urn:outagewatch:mail:incident:US-20261130-1200/0",
            "urn:outagewatch:mail:incident:EU-20261130-1100/0",
            "urn:outagewatch:mail:maintenance:db-upgrade/0"] == [
        e.findtext(f"{A}id") for e in entries]
    assert "2026-11-30T12:30:00Z" == feed.findtext(f"{A}updated")
    assert "2026-11-30T12:30:00Z" == entries[0].findtext(f"{A}updated")
    assert ["update", "open", "open", "announcement"] == [
        e.find(f"{A}category").get("term") for e in entries]  # type: ignore[union-attr]
    links = [e.find(f"{A}link").get("href") for e in entries]  # type: ignore[union-attr]
    assert "http://status.test/#incident-EU-20261130-1100" == links[0]
    assert "http://status.test/#maintenance-db-upgrade" == links[3]
    assert feed.find(f"{A}author/{A}name") is not None


def test_text_survives_escaping_and_characters_xml_cannot_carry_are_dropped():
    feed = parse(render_feed(ENTRIES, title='Status <&">', now=NOW, base_url="http://s"))
    assert 'Status <&">: incidents and maintenance' == feed.findtext(f"{A}title")
    content = feed.find(f"{A}entry/{A}content")
    assert content is not None
    assert ("text", '<b>&"x"</b> ]]>') == (content.get("type"), content.text)


def test_the_platform_feed_names_itself_and_links_to_itself():
    eu = [e for e in ENTRIES if e.platform == "eu"]
    feed = parse(render_feed(eu, title="S", now=NOW, base_url="http://s", platform="eu"))
    assert "urn:outagewatch:feed:eu" == feed.findtext(f"{A}id")
    self_link = [link.get("href") for link in feed.findall(f"{A}link")
                 if link.get("rel") == "self"]
    assert ["http://s/feed.atom?platform=eu"] == self_link
    assert 3 == len(feed.findall(f"{A}entry"))


def test_the_public_feed_carries_no_subject_and_no_body():
    """A subject may carry a ticket (the default template ends with it) or whatever an
    operator's template puts in it: the public feed names the thread and kind only."""
    secret = replace(ENTRIES[0], subject="Incident EU-20261130-1100 [UPDATE] (ticket CUST-1)")
    feed = parse(render_feed([secret, *ENTRIES[1:]], title="S", now=NOW, base_url="http://s",
                             public=True))
    assert feed.find(f"{A}entry/{A}content") is None
    entries = feed.findall(f"{A}entry")
    titles = [(e.findtext(f"{A}title"), e.findtext(f"{A}summary")) for e in entries]
    assert all("CUST-1" not in f"{t}{s}" for t, s in titles)
    assert all(t == s and t is not None and t.startswith(("Incident ", "Maintenance "))
               for t, s in titles)


def test_an_empty_feed_is_valid():
    feed = parse(render_feed([], title="S", now=NOW, base_url="http://s"))
    assert [] == feed.findall(f"{A}entry")
    assert "2026-11-30T12:00:00Z" == feed.findtext(f"{A}updated")
