"""The report's document model (cells, tables, sections) and its Markdown, HTML and CSV renderings.

A cell keeps its value and prints it only when rendered: numbers are formatted then and right-aligned by their
kind, so no rendering has to guess from a string whether it holds a number. Each table also carries the
full-precision records of its CSV, built in the same loop as its cells, so the renderings cannot disagree.
"""

from __future__ import annotations

import base64
import csv
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..formats.files import atomic_path
from ..formats.schema import number

NA = "n/a"


# ---------------------------------------------------------------- number formats and cells


@dataclass(frozen=True)
class NumberFormat:
    """How a number prints: a format spec, a scale and a suffix (("+.1f", 100, "%") prints 0.1549 as +15.5%).
    Calling it on a value makes a number cell."""

    spec: str
    scale: float = 1
    suffix: str = ""

    def text(self, x: float) -> str:
        return f"{self.scale * x:{self.spec}}{self.suffix}"

    def __call__(self, value) -> Number:
        return Number(value, self)


loss = NumberFormat(".4f")  # a loss, or any mean: 2.5140
signed = NumberFormat("+.4f")  # a difference: +0.1440
change = NumberFormat("+.1f", 100, "%")  # a relative change as a signed percentage: 0.1549 -> +15.5%
share = NumberFormat(".1f", 100, "%")  # a share as a percentage: 0.25 -> 25.0%
count = NumberFormat(",.0f")  # a count with thousands separators: 9,000
pvalue = NumberFormat(".2g")  # a p-value, two significant digits: 0.012, 6.7e-10
plain = NumberFormat("")  # as Python prints it: a seed, a version number


@dataclass(frozen=True)
class Text:
    """Words, printed as given and left-aligned."""

    value: str
    numeric: ClassVar[bool] = False
    missing: ClassVar[bool] = False

    @property
    def display(self) -> str:
        return self.value


@dataclass(frozen=True)
class Position(Text):
    """A position bucket such as "1" or "5-8": a range of numbers, aligned like one."""

    numeric: ClassVar[bool] = True


@dataclass(frozen=True)
class Number:
    """A number; `absent` is printed when the value is None or NaN. An overflowing perplexity (inf, or schema.INF as
    JSON holds it) prints as inf in the cell's format: "+inf%"."""

    value: float | int | str | None
    fmt: NumberFormat
    absent: str = NA
    numeric: ClassVar[bool] = True

    @property
    def missing(self) -> bool:
        return number(self.value) is None

    @property
    def display(self) -> str:
        v = number(self.value)
        return self.absent if v is None else self.fmt.text(v)


@dataclass(frozen=True)
class Interval:
    """Two numbers printed as "low to high"; `absent` when either is missing."""

    low: float | str | None
    high: float | str | None
    fmt: NumberFormat = signed
    absent: str = NA
    numeric: ClassVar[bool] = True

    @property
    def missing(self) -> bool:
        return number(self.low) is None or number(self.high) is None

    @property
    def display(self) -> str:
        if self.missing:
            return self.absent
        return f"{self.fmt.text(number(self.low))} to {self.fmt.text(number(self.high))}"


Cell = Text | Number | Interval


# ---------------------------------------------------------------- the document model


@dataclass
class Table:
    """Rows of cells (a str row is a group heading across the table) and the CSV records behind them."""

    headers: list[str]
    rows: list[list[Cell] | str]
    records: list[dict]
    csv: str | None = None  # file name; tables sharing a name share the file
    title: str = ""
    strong: frozenset[int] = frozenset()  # columns whose numbers are shown in bold, like the seed's differences


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (png file name, alt text)
    html: list[str] = field(default_factory=list)  # ready-made HTML blocks (the token view); Markdown points to them
    style: str = ""  # CSS the blocks need, added to the page's head only when a section has some


def _bold(table: Table, column: int, cell: Cell) -> bool:
    return column in table.strong and not cell.missing


# ---------------------------------------------------------------- Markdown


# Markdown punctuation that changes the rendering: code, emphasis, links, table cells, strikethrough, math (GitHub),
# headings; "_" only where it can start or end emphasis (not inside a word such as input_ids).
MD_SPECIAL = re.compile(r"[\\`*\[\]|~$#]|(?<![^\W_])_|_(?![^\W_])")
LIST_MARKER = re.compile(r"^[-+]|^(\d{1,9})(?=[.)])")  # "- x", "+ x", "1. x", "1) x" where a line starts


def md_text(text: str) -> str:
    """Any text inside Markdown as the same text on one line: Markdown and HTML in it are shown, not interpreted (every
    string of the report passes here, so names, paths and document text from the input cannot add markup)."""
    one_line = re.sub(r"[\r\n]+", " ", str(text))
    return html.escape(MD_SPECIAL.sub(lambda m: "\\" + m.group(), one_line), quote=False)


def md_line(text: str) -> str:
    """md_text for text that starts a line of its own (a paragraph, a list item): no list, code block or heading."""
    line = md_text(text).lstrip()
    return LIST_MARKER.sub(lambda m: m.group() + "\\" if m.group(1) else "\\" + m.group(), line)


def md_table(table: Table) -> str:
    lines = ["| " + " | ".join(md_text(h) for h in table.headers) + " |",
             "|" + "|".join("-" * (len(h) + 2) for h in table.headers) + "|"]
    for row in table.rows:
        if isinstance(row, str):
            lines.append(f"| **{md_text(row).strip()}** |")  # "** x**" would not be bold
            continue
        cells = [f"**{md_text(c.display)}**" if _bold(table, i, c) else md_text(c.display)
                 for i, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(title: str, subtitle: str, secs: list[Section]) -> str:
    parts = [f"# {md_text(title)}", md_line(subtitle)]
    for s in secs:
        parts.append(f"## {md_text(s.title)}")
        parts += [md_line(p) for p in s.paragraphs]
        if s.bullets:
            parts.append("\n".join(f"- {md_line(b)}" for b in s.bullets))
        for t in s.tables:
            if t.title:
                parts.append(f"### {md_text(t.title)}")
            parts.append(md_table(t) if t.rows else "_(no rows)_")
        parts += [f"![{md_text(alt)}]({name})" for name, alt in s.figures]
        if s.html:
            parts.append("_The token-level view of this section is in report.html._")
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- HTML

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 2em auto;
       max-width: 1250px; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.7em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0 1.2em; font-size: .88em; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; vertical-align: top; }
th { background: #f0f3f6; text-align: left; }
tr:nth-child(even) td { background: #f8f9fa; }
tr.group th { background: #e7ecf2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1em 0; } figcaption { color: #57606a; font-size: .9em; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
nav a { margin-right: 1em; }
"""


def html_cell(cell: Cell, strong: bool = False) -> str:
    text = html.escape(cell.display)
    if strong:
        text = f"<strong>{text}</strong>"
    return f'<td class="num">{text}</td>' if cell.numeric else f"<td>{text}</td>"


def html_table(table: Table) -> str:
    e = html.escape
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in table.headers) + "</tr></thead>", "<tbody>"]
    for row in table.rows:
        if isinstance(row, str):
            out.append(f'<tr class="group"><th colspan="{len(table.headers)}">{e(row)}</th></tr>')
        else:
            out.append("<tr>" + "".join(html_cell(c, _bold(table, i, c)) for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _anchor(title: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in title.lower()).strip("-")


def render_html(title: str, subtitle: str, secs: list[Section], out: Path) -> str:
    """One self-contained page: the figures in `out` are embedded as data URIs."""
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", f"<p>{e(subtitle)}</p>",
            "<nav>" + "".join(f'<a href="#{_anchor(s.title)}">{e(s.title)}</a>' for s in secs) + "</nav>"]
    for s in secs:
        body.append(f'<h2 id="{_anchor(s.title)}">{e(s.title)}</h2>')
        body += [f"<p>{e(p)}</p>" for p in s.paragraphs]
        if s.bullets:
            body.append("<ul>" + "".join(f"<li>{e(b)}</li>" for b in s.bullets) + "</ul>")
        for t in s.tables:
            if t.title:
                body.append(f"<h3>{e(t.title)}</h3>")
            body.append(html_table(t) if t.rows else "<p><em>(no rows)</em></p>")
        for name, alt in s.figures:
            data = base64.b64encode((out / name).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(alt)}">'
                        f"<figcaption>{e(alt)} ({e(name)})</figcaption></figure>")
        body += s.html
    style = CSS + "".join(dict.fromkeys(s.style for s in secs if s.style))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{e(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


# ---------------------------------------------------------------- CSV


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula


def csv_text(value):
    """A text cell that a spreadsheet would run as a formula gets a leading ' (as spreadsheet exporters do), so a
    domain named =HYPERLINK(...) is shown, not run; numbers stay numbers (-0.5 is written as -0.5)."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def write_csvs(out: Path, secs: list[Section]) -> list[Path]:
    """One CSV per table name, full precision (floats as repr), None as an empty field, no text cell a formula."""
    grouped: dict[str, list[dict]] = {}
    for s in secs:
        for t in s.tables:
            if t.csv:
                grouped.setdefault(t.csv, []).extend(t.records)
    paths = []
    for name, records in grouped.items():
        fields = list(dict.fromkeys(k for r in records for k in r))
        path = out / name
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            rows = [{k: k for k in fields}, *records]  # the header first: column names hold model names
            _write_rows(f, fields, [{k: csv_text(v) for k, v in r.items()} for r in rows])
        paths.append(path)
    return paths


def _write_rows(f, fields: list[str], rows: list[dict]) -> None:
    """Rows ending in a line feed; a row holding a carriage return is quoted whole, since the csv module quotes only
    the line terminator's characters and a bare CR in a text would end the row for every reader."""
    plain = csv.DictWriter(f, fieldnames=fields, restval="", lineterminator="\n")
    quoted = csv.DictWriter(f, fieldnames=fields, restval="", lineterminator="\n", quoting=csv.QUOTE_ALL)
    for row in rows:
        has_cr = any(isinstance(v, str) and "\r" in v for v in row.values())
        (quoted if has_cr else plain).writerow(row)
