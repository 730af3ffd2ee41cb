"""The page's view model to HTML: Jinja2 templates shipped in the package, autoescaped."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jinja2

if TYPE_CHECKING:
    from outagewatch.statuspage.view import Page


@functools.cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("outagewatch.statuspage", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True)


def render_page(page: Page) -> str:
    return environment().get_template("page.html.j2").render(page=page)
