"""The stored incident format: what an operator set by hand survives a restart, and an
incident written before incidents could be opened by hand is read as a probes' one."""

from __future__ import annotations

from dataclasses import replace

import pytest

from outagewatch.core.incidents import Book, Origin, Platform, Service, declared, opened
from outagewatch.store import StoreError
from outagewatch.store.codecs import incident_from_json, incident_to_json

EU = Platform("eu", (Service("imap-eu"),))


def test_an_incident_opened_by_hand_round_trips():
    book, _ = opened(Book(), EU, 1000.0, reported=("imap-eu", "Calendar sync"), severity=1,
                     impact="Invitations are not delivered", ticket="OX-7", etr=9000.0,
                     since=400.0, until_restored=False)
    assert book.open is not None
    incident = book.open
    assert incident_from_json(incident_to_json(incident)) == incident


def test_a_removed_target_round_trips():
    book, _ = declared(Book(), EU, "imap-eu", 0.0, 900.0)
    assert book.open is not None
    incident = replace(book.open, unmonitored={"smtp-eu": 950.0}, severity_set=1)
    assert incident_from_json(incident_to_json(incident)) == incident


def test_format_2_is_read_as_a_probes_incident():
    book, _ = declared(Book(), EU, "imap-eu", 0.0, 900.0)
    assert book.open is not None
    old = {k: v for k, v in incident_to_json(book.open).items()
           if k not in {"origin", "reported", "impact", "ticket", "severity_set",
                        "until_restored", "unmonitored"}} | {"v": 2}
    incident = incident_from_json(old)
    assert (incident.origin, incident.reported, incident.ticket, incident.severity_set) == (
        Origin.PROBES, (), None, None)
    assert incident == book.open


def test_a_newer_format_is_refused():
    book, _ = declared(Book(), EU, "imap-eu", 0.0, 900.0)
    assert book.open is not None
    with pytest.raises(StoreError, match="newer than this outagewatch understands"):
        incident_from_json(incident_to_json(book.open) | {"v": 99})
