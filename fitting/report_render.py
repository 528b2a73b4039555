"""The report's content model (tables, figures, a glossary, sections) and its two renderings,
one self-contained HTML page and one Markdown file: what the report says is built once in
:mod:`fitting.report`, and written here."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

# --------------------------------------------------------------------------- content model


@dataclass
class Table:
    """A table rendered to HTML and Markdown. Cells are plain text; ``bad`` marks cells in red."""

    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    bad: set[tuple[int, int]] = field(default_factory=set)  # (row, column) of failed cells


@dataclass
class Figure:
    name: str  # file stem
    png: bytes
    caption: str
    limits: list[dict[str, tuple[float, float]]] = field(default_factory=list)  # figures.axes_limits


@dataclass
class Glossary:
    """Terms and one-line definitions, rendered as a list."""

    entries: list[tuple[str, str]]
    title: str = "Glossary"


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    blocks: list[Table | Figure | Glossary] = field(default_factory=list)
    level: int = 2
    lead: str = ""  # shown first and in bold: a task's verdict


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    figures: list[Path]


# --------------------------------------------------------------------------- rendering


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.6em}
.banner{background:#fff3cd;border:2px solid #d9822b;color:#7a3e00;padding:.8em 1em;font-weight:600;
border-radius:4px;margin:1em 0}
table{border-collapse:collapse;margin:.6em 0 .2em;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom} td:first-child,th:first-child{text-align:left}
td.bad{color:#b00020;font-weight:600}
.caption{font-size:.82em;color:#555;margin:.2em 0 1em;max-width:60em}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
.prov td{white-space:normal;text-align:left;max-width:48em;word-break:break-word}
.verdict{background:#f6f8fa;border-left:4px solid #555;padding:.5em .8em}
.glossary{font-size:.85em;max-width:60em} .glossary dt{font-weight:600;margin-top:.3em} .glossary dd{margin-left:1.2em}
"""


def render_html(title: str, sections: Sequence[Section], banner: str | None) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    if banner:
        body.append(f'<div class="banner">{html.escape(banner)}</div>')
    for s in sections:
        body.append(f"<h{s.level}>{html.escape(s.title)}</h{s.level}>")
        if s.lead:
            body.append(f'<p class="verdict"><strong>{html.escape(s.lead)}</strong></p>')
        body += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        body += [_html_block(b, provenance=s.title == "Provenance") for b in s.blocks]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _html_block(block: Table | Figure | Glossary, provenance: bool = False) -> str:
    if isinstance(block, Glossary):
        items = "".join(f"<dt>{html.escape(t)}</dt><dd>{html.escape(d)}</dd>" for t, d in block.entries)
        return f'<h4>{html.escape(block.title)}</h4><dl class="glossary">{items}</dl>'
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode()
        return (f'<figure><img alt="{html.escape(block.name)}" src="data:image/png;base64,{data}">'
                f'<figcaption class="caption">{html.escape(block.caption)}</figcaption></figure>')
    cls = ' class="prov"' if provenance else ""
    head = "" if not any(block.headers) else "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block.headers) + "</tr>"
    rows = ["<tr>" + "".join(_td(c, (i, j) in block.bad) for j, c in enumerate(row)) + "</tr>"
            for i, row in enumerate(block.rows)]
    caption = f'<div class="caption">{html.escape(block.caption)}</div>' if block.caption else ""
    return f"<table{cls}>{head}{''.join(rows)}</table>{caption}"


def _td(text: str, bad: bool) -> str:
    return f'<td class="bad">{html.escape(text)}</td>' if bad else f"<td>{html.escape(text)}</td>"


def render_markdown(title: str, sections: Sequence[Section], banner: str | None) -> str:
    out = [f"# {_md_text(title)}", ""]
    if banner:
        out += [f"> **{_md_text(banner)}**", ""]
    for s in sections:
        out += ["#" * s.level + " " + _md_text(s.title), ""]
        if s.lead:
            out += [f"**{_md_text(s.lead)}**", ""]
        for p in s.paragraphs:
            out += [_md_text(p), ""]
        for b in s.blocks:
            out += _md_block(b) + [""]
    return "\n".join(out)


def _md_text(text: str) -> str:
    """Text from the data (task names, notes) made inert: Markdown renders raw HTML (entities
    such as ``&gt;`` render as the character)."""
    return html.escape(text, quote=False)


def _md_block(block: Table | Figure | Glossary) -> list[str]:
    if isinstance(block, Glossary):
        return [f"**{_md_text(block.title)}**", ""] + [f"- **{_md_text(t)}**: {_md_text(d)}" for t, d in block.entries]
    if isinstance(block, Figure):
        return [f"![{_md_text(block.name)}](figures/{block.name}.png)", "", f"*{_md_text(block.caption)}*"]
    esc = lambda text: _md_text(text).replace("|", "\\|")
    headers = [esc(h) or " " for h in block.headers]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for i, row in enumerate(block.rows):
        cells = [f"**{esc(c)}**" if (i, j) in block.bad else esc(c) for j, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + (["", f"*{_md_text(block.caption)}*"] if block.caption else [])


