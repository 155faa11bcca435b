"""One self-contained HTML page (figures embedded as data URIs, no scripts) per report."""

from __future__ import annotations

import base64
import html
import math
from html.parser import HTMLParser
from pathlib import Path


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def table(rows: list[dict], columns: list[tuple[str, str]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    body = "".join(
        f"<tr class='{html.escape(str(r.get('status', '')))}'>"
        + "".join(f"<td data-key='{key}'>{fmt(r.get(key))}</td>" for key, _ in columns)
        + "</tr>"
        for r in rows
    )
    return f"<table class='{css}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{html.escape(alt)}</figcaption></figure>"
    )


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
tr.failed { background: #fdd; } tr.running { background: #ffd; }
figure { display: block; margin: 0.5em 0; } img { max-width: 100%; }
.caveat { max-width: 60em; color: #555; }
"""


def page(title: str, sections: list[str]) -> str:
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + "".join(sections)
        + "</body></html>"
    )


class Tables(HTMLParser):
    """Reads a report back: the cells of every <table class=...> by their data-key, and the
    alt text of every image (for tests and for collecting a report's numbers)."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[dict]] = {}
        self.current = self.key = None
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":  # digits' tables come first; later datasets' get "#2", ...
            name = attrs.get("class", "")
            while name in self.tables:
                name += "#2"
            self.current = self.tables.setdefault(name, [])
        elif tag == "tr" and self.current is not None:
            self.current.append({})
        elif tag == "td":
            self.key = attrs.get("data-key")
        elif tag == "img":
            self.images.append(attrs["alt"])

    def handle_data(self, data):
        if self.key and self.current:
            self.current[-1][self.key] = data

    def handle_endtag(self, tag):
        if tag == "tr" and self.current and not self.current[-1]:
            self.current.pop()  # the header row
        if tag == "td":
            self.key = None
        if tag == "table":
            self.current = None
