"""The Atom 1.0 feed (RFC 4287): one entry per incident mail and maintenance mail, newest
first. Built with ElementTree, so every text is escaped and the XML is well formed. The
public feed carries only each mail's thread, kind and platform: incident mails quote probe
details, and subjects may carry tickets."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote
from xml.etree import ElementTree as ET

from outagewatch.model import iso_utc

if TYPE_CHECKING:
    from collections.abc import Sequence

    from outagewatch.statuspage.source import FeedEntry

ATOM = "http://www.w3.org/2005/Atom"
MAX_ENTRIES = 200
# characters XML 1.0 cannot carry at all (a mail body could hold them)
_NOT_XML = dict.fromkeys([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0xFFFE, 0xFFFF])


def _clean(text: str) -> str:
    return text.translate(_NOT_XML)


def _public_title(entry: FeedEntry) -> str:
    """What the public feed says of a mail: its thread, kind and platform, never its subject
    (an operator's template may put a ticket or anything else in it)."""
    kind, _, ident = entry.thread.partition(":")
    what = "Maintenance" if kind == "maintenance" else "Incident"
    where = f" on {entry.platform}" if entry.platform else ""
    return f"{what} {ident}{where}: {entry.kind.upper()}"


def entry_id(entry: FeedEntry) -> str:
    """A stable URN per mail: ``urn:outagewatch:mail:incident:EU-20261129-1423/2``."""
    return "urn:outagewatch:mail:" + quote(entry.id, safe=":/")


def render_feed(entries: Sequence[FeedEntry], *, title: str, now: float, base_url: str,
                platform: str | None = None, public: bool = False) -> bytes:
    """The feed as UTF-8 XML: ``base_url`` is the page's absolute URL without a trailing
    slash (entries link to their incident or window on the page)."""
    ET.register_namespace("", ATOM)

    def sub(parent: ET.Element, tag: str, text: str | None = None,
            **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{ATOM}}}{tag}", attrs)
        if text is not None:
            element.text = _clean(text)
        return element

    newest = sorted(entries, key=lambda e: (e.created, e.thread, e.number),
                    reverse=True)[:MAX_ENTRIES]
    feed = ET.Element(f"{{{ATOM}}}feed")
    suffix = f" ({platform})" if platform else ""
    sub(feed, "title", f"{title}: incidents and maintenance{suffix}")
    sub(feed, "id", "urn:outagewatch:feed" + (f":{quote(platform, safe='')}" if platform
                                              else ""))
    sub(feed, "updated", iso_utc(newest[0].created if newest else now))
    query = f"?platform={quote(platform, safe='')}" if platform else ""
    sub(feed, "link", rel="self", type="application/atom+xml",
        href=f"{base_url}/feed.atom{query}")
    sub(feed, "link", rel="alternate", type="text/html", href=f"{base_url}/")
    author = sub(feed, "author")
    sub(author, "name", title)
    sub(feed, "generator", "outagewatch")
    for item in newest:
        entry = sub(feed, "entry")
        sub(entry, "title", _public_title(item) if public else item.subject)
        sub(entry, "id", entry_id(item))
        sub(entry, "updated", iso_utc(item.created))
        sub(entry, "published", iso_utc(item.created))
        kind, _, ident = item.thread.partition(":")
        anchor = "maintenance" if kind == "maintenance" else "incident"
        sub(entry, "link", rel="alternate", type="text/html",
            href=f"{base_url}/#{anchor}-{quote(ident, safe='')}")
        sub(entry, "category", term=item.kind)
        if public:
            sub(entry, "summary", _public_title(item), type="text")
        else:
            sub(entry, "content", item.body, type="text")
    xml: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return xml
