"""The page's view model to HTML: Jinja2 templates shipped in the package, autoescaped."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import jinja2

if TYPE_CHECKING:
    from outagewatch.core.report import Report
    from outagewatch.statuspage.view import Page


@functools.cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("outagewatch.statuspage", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True)


def render_page(page: Page) -> str:
    return environment().get_template("page.html.j2").render(page=page)


def render_report(report: Report, *, title: str) -> str:
    """The availability report as a page that prints cleanly (to PDF from a browser), with
    the status page's daily bars."""
    from outagewatch.core.report import minutes_text as mins  # noqa: PLC0415 - its wording
    from outagewatch.core.report import percent  # noqa: PLC0415
    from outagewatch.statuspage.view import (  # noqa: PLC0415 - the page's charts
        MAX_BARS,
        daily_bars,
    )

    def iso(ts: float) -> str:
        return f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%d %H:%M}Z"

    return environment().get_template("report.html.j2").render(
        report=report, title=title, generated=iso(report.generated_at), percent=percent,
        mins=mins, iso=iso, bars=lambda days: daily_bars(days, most=MAX_BARS))
