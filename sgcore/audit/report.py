"""A self-contained HTML report: ``index.html`` with its PNG figures beside it,
plus ``summary.json`` with every number the page shows.

Encode first, write after (STYLE.md): :meth:`Report.render` returns the page
and :meth:`Report.files` every file's bytes; :func:`write_report` writes them
to any fsspec URL.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from sgcore.io import join, write_bytes
from sgcore.redact import redact_text, redact_value

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; }
.meta { font-size: .85em; color: #555; }
.warn { background: #fff3cd; border: 1px solid #e0c36b; padding: .5em .8em; }
table.overview th { text-align: left; background: #f7f7f7; width: 14em; }
table.overview td { text-align: left; }
ul.findings li { margin: .3em 0; }
"""


@dataclass
class Section:
    """A titled part of the page: paragraphs, tables and figures in order.

    ``id`` is the anchor the first screen links to; ``findings`` are the
    section's conclusions in sentences, shown on the first screen (and in
    ``summary.json["findings"]``) with a link to the section.
    """

    title: str
    id: str = ""
    blocks: list[str] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    def finding(self, sentence: str) -> None:
        """A conclusion for the first screen, linked to this section."""
        self.findings.append(sentence)

    def text(self, content: str) -> None:
        """A paragraph (escaped)."""
        self.blocks.append(f"<p>{html.escape(content)}</p>")

    def table(self, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
        """A table of dict rows; floats get 3 decimals."""
        if not rows:
            self.text("(no rows)")
            return
        cols = columns or list(rows[0])
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows
        )
        self.blocks.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, name: str, png: bytes, caption: str) -> None:
        """A PNG figure saved as ``img/<name>.png`` beside the page."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"figure name must be letters, digits, '_', '.' or '-'; got {name!r}")
        if not png.startswith(b"\x89PNG"):
            raise ValueError(f"figure {name!r} must be PNG bytes; got {png[:8]!r}")
        path = f"img/{name}.png"
        self.figures[path] = png
        self.blocks.append(
            f'<figure><img src="{path}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )


@dataclass
class Report:
    """The whole page.

    Its first screen: the title, ``overview`` (what was audited: a list of
    (name, value) rows), ``warnings`` (things that change how to read the
    page, e.g. random weights), then every section's findings linked to
    their sections. Other modules add a section with :meth:`section` and its
    findings with :meth:`Section.finding`; the first screen follows.
    """

    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)
    attachments: dict[str, bytes] = field(default_factory=dict)
    overview: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def attach(self, name: str, data: bytes) -> None:
        """A data file written beside the page (e.g. per-image CSV) and linked from it."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in ("index.html", "summary.json"):
            raise ValueError(f"attachment name must be a plain file name; got {name!r}")
        self.attachments[name] = data

    def section(self, title: str, id: str | None = None) -> Section:  # noqa: A002 - the HTML word
        """A new section; ``id`` (letters, digits, ``-``/``_``) defaults to one made from the title."""
        anchor = id or re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or f"s{len(self.sections)}"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", anchor):
            raise ValueError(f"section id must be letters, digits, '_' or '-'; got {anchor!r}")
        if any(x.id == anchor for x in self.sections):
            raise ValueError(f"section id {anchor!r} is used twice")
        s = Section(title, id=anchor)
        self.sections.append(s)
        return s

    def findings(self) -> list[dict[str, str]]:
        """Every section's findings in page order: ``{"section": id, "title": ..., "text": ...}``."""
        return [{"section": s.id, "title": s.title, "text": f} for s in self.sections for f in s.findings]

    def render(self) -> str:
        """The HTML page."""
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        if self.subtitle:
            parts.append(f'<p class="meta">{html.escape(self.subtitle)}</p>')
        for w in self.warnings:
            parts.append(f'<p class="warn">{html.escape(w)}</p>')
        if self.overview:
            rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in self.overview)
            parts.append(f'<h2 id="audited">What was audited</h2><table class="overview">{rows}</table>')
        found = self.findings()
        if found:
            items = "".join(
                f'<li>{html.escape(f["text"])} <a href="#{f["section"]}">{html.escape(f["title"])} &rarr;</a></li>'
                for f in found
            )
            parts.append(f'<h2 id="findings">Findings</h2><ul class="findings">{items}</ul>')
        if self.attachments:
            files = " · ".join(f'<a href="{html.escape(n)}">{html.escape(n)}</a>' for n in self.attachments)
            parts.append(f'<p class="meta">Data: <a href="summary.json">summary.json</a> · {files}</p>')
        if self.sections:
            links = "".join(f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in self.sections)
            parts.append(f'<p class="meta">Sections:</p><ul>{links}</ul>')
        for s in self.sections:
            parts.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>')
            parts.extend(s.blocks)
            parts.append("</section>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def files(self, summary: dict[str, Any]) -> dict[str, bytes]:
        """Every file of the report by relative path: page, summary, figures.

        The page and the summary are shared: URLs in them have their credentials redacted.
        """
        out = {"index.html": redact_text(self.render()).encode("utf-8")}
        out["summary.json"] = json.dumps(_jsonable(redact_value(summary)), indent=2, sort_keys=False,
                                         allow_nan=False).encode()
        for s in self.sections:
            out.update(s.figures)
        out.update(self.attachments)
        return out


def write_report(url: str, report: Report, summary: dict[str, Any], storage_options: dict[str, Any] | None = None) -> list[str]:
    """Writes the report's files under ``url``; returns their URLs (page first)."""
    written = []
    for rel, data in report.files(summary).items():
        target = join(url, rel)
        write_bytes(target, data, storage_options)
        written.append(target)
    return written


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def _jsonable(v: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN/inf to None."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
