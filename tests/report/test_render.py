"""The renderings of the report's document model with text from the input: Markdown that shows names and document text
as written (checked by a CommonMark renderer with raw HTML on, as viewers have it), CSV cells that never run as a
formula, and numbers that stay numbers, an overflowing perplexity included."""

from __future__ import annotations

import csv
import html
import math
import re

from markdown_it import MarkdownIt  # present wherever transformers is (transformers -> typer -> rich)

from lossgap.formats.schema import INF
from lossgap.report.render import (
    Interval,
    Section,
    Table,
    Text,
    change,
    loss,
    md_table,
    render_markdown,
    signed,
    write_csvs,
)

HOSTILE = [
    "<img src=x onerror=alert(1)>", "<script>alert('x')</script> & friends", "<!-- hidden -->", "a|b|c",
    "`code` and ``more``", "*em* **strong** ***both***", "_em_ __strong__ snake_case_name", "[link](http://x)",
    "![img](x.png)", "line one\nline two\r\nline three", r"$\undefinedmacro{x}$", "~~struck~~", "&lt;b&gt; &amp; &#60;",
    r"back\slash \* \_", "# heading", "- item", "+ item", "1. item", "2) item", "> quote", "    code block", "---",
    "=HYPERLINK(\"http://x\",\"y\")", "tab\there", "trailing #", "Price: $5 - $10",
]
RENDERER = MarkdownIt("commonmark").enable(["table", "strikethrough"])  # raw HTML passes through, as on GitHub


def _as_shown(text: str) -> str:
    """What a reader must see: the same characters on one line (Markdown ignores leading blanks)."""
    return re.sub(r"[\r\n]+", " ", text).strip()


def _only_text(rendered: str, tag: str) -> list[str]:
    """The text of every <tag> element, asserting it holds no markup of its own."""
    inner = re.findall(rf"<{tag}>(.*?)</{tag}>", rendered, flags=re.S)
    for part in inner:
        assert "<" not in part, f"markup inside <{tag}>: {part!r}"
    return [html.unescape(part).strip() for part in inner]


def test_markdown_shows_every_input_string_as_written():
    table = Table(["Domain", *HOSTILE[:3]], [[Text(h), Text(h), Text("x"), Text("y")] for h in HOSTILE] + HOSTILE,
                  [], title=HOSTILE[0])
    sec = Section(HOSTILE[1], paragraphs=list(HOSTILE), bullets=list(HOSTILE), tables=[table])
    rendered = RENDERER.render(render_markdown(HOSTILE[6], HOSTILE[9], [sec]))
    assert "<img" not in rendered and "<script" not in rendered and "<!--" not in rendered
    for tag in ("em", "strong>[^<]*<em", "a ", "code", "del", "pre", "blockquote", "hr", "ol", "h4"):
        assert f"<{tag}" not in rendered, tag
    expected = [_as_shown(h) for h in HOSTILE]
    assert _only_text(rendered, "p") == [_as_shown(HOSTILE[9]), *expected]
    (bullets,) = re.findall(r"<ul>(.*?)</ul>", rendered, flags=re.S)
    assert _only_text(bullets, "li") == expected
    assert _only_text(rendered, "th") == ["Domain", *expected[:3]]
    rows = re.findall(r"<tr>(.*?)</tr>", rendered, flags=re.S)[1:]  # after the header
    groups = [re.fullmatch(r"\s*<td><strong>(.*?)</strong></td>.*", r, flags=re.S) for r in rows]
    assert [html.unescape(g.group(1)) for g in groups if g] == expected  # a group heading: lossgap's own bold
    cells = [_only_text(r, "td") for r, g in zip(rows, groups, strict=True) if not g]
    assert cells == [[e, e, "x", "y"] for e in expected]
    assert _only_text(rendered, "h1") == [_as_shown(HOSTILE[6])]
    assert _only_text(rendered, "h2") == [HOSTILE[1]] and _only_text(rendered, "h3") == [HOSTILE[0]]


def test_numbers_and_lossgaps_own_markup_stay_as_they_are():
    table = Table(["Diff", "Loss", "Change", "CI", "Name"],
                  [[signed(-0.5), loss(2.25), change(0.155), Interval(-0.1, 0.2), Text("snake_case")], "GROUP"], [],
                  strong=frozenset({0}))
    assert md_table(table).splitlines()[2:] == ["| **-0.5000** | 2.2500 | +15.5% | -0.1000 to +0.2000 | snake_case |",
                                                "| **GROUP** |"]


def test_an_overflowing_perplexity_prints_as_inf():
    assert change(math.inf).display == change(INF).display == "+inf%"
    assert loss(INF).display == "inf" and not change(INF).missing
    assert Interval(1.0, INF, change).display == "+100.0% to +inf%"
    assert loss(float("nan")).display == loss(None).display == loss("text").display == "n/a"


def test_csv_text_cells_never_start_a_formula(tmp_path):
    texts = {"eq": '=HYPERLINK("http://x","y")', "plus": "+1+1", "minus": "-2+3", "at": "@SUM(A1:A2)",
             "tab": "\t=1", "cr": "\r=1", "plain": "Github", "inner": "a=b", "inf": INF}
    numbers = {"negative": -0.5, "count": -3, "zero": 0.0, "flag": True}
    record = {**texts, **numbers, "=cmd_mean_nll": 1.25}  # a model named =cmd gives a column named after it
    (path,) = write_csvs(tmp_path, [Section("s", tables=[Table(["x"], [], [record], "t.csv")])])
    with open(path, newline="", encoding="utf-8") as f:
        (header, row) = list(csv.reader(f))
    assert header == [*texts, *numbers, "'=cmd_mean_nll"]
    got = dict(zip(header, row, strict=True))
    for key, text in texts.items():
        assert got[key] == ("'" + text if text[0] in "=+-@\t\r" else text), key
    assert float(got["negative"]) == -0.5 and got["count"] == "-3" and got["zero"] == "0.0" and got["flag"] == "True"
    assert float(got["'=cmd_mean_nll"]) == 1.25
