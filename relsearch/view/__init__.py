"""Looking at results: a static HTML page, a PNG contact sheet, and a local browsing server."""

from relsearch.view.html import render_page, write_html
from relsearch.view.sheet import render_sheet, write_sheet

__all__ = ["render_page", "render_sheet", "write_html", "write_sheet"]
