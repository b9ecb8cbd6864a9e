"""The report section "Where the difference comes from": tables, figures and the token-level view, a pure function of
results.json's `explanation` (analysis/explanation.py builds it)."""

from __future__ import annotations

import html

from ..formats.schema import Results
from .explanation_tables import (
    DIMENSIONS,
    byte_class_table,
    calibration_table,
    chat_domain_table,
    chat_table,
    chat_text,
    contribution_table,
    distribution_table,
    top_documents_table,
    top_spans_table,
    top_tokens_table,
)
from .figures import EXPLANATION, drawn
from .mechanisms import chat_turns_table, mechanism_tables, paired_pass_text, truncation_table, truncation_text
from .render import Section

TOKEN_VIEW_CSS = """
.tokview { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: .85em; line-height: 1.9;
           white-space: pre-wrap; border: 1px solid #d0d7de; padding: .5em .7em; margin: .4em 0 1em; }
.tokview .tok { border-radius: 2px; padding: 0 1px; }
.tokview .ctx { opacity: .45; }
.tokview .special { font-style: italic; color: #8250df; outline: 1px dashed #8250df; outline-offset: -1px; }
.tokview .part { display: inline-block; min-width: 3px; height: 1em; vertical-align: middle; }
.tokview-head { color: #57606a; font-size: .9em; margin-top: .8em; }
"""
SATURATION = 4.0  # |Δ| in nats at which a token's colour is fully saturated


def explanation_section(results: Results, figures: dict) -> Section | None:
    """The section, or None when results.json has no explanation (older comparisons, --no-explain, one model)."""
    explanation = results.get("explanation")
    if not explanation:
        return None
    base = results["baseline"]
    sec = Section("Where the difference comes from", [_intro(explanation, base)])
    for name, entry in explanation["models"].items():
        _add_model(sec, name, entry, base, explanation)
    sec.figures = drawn(EXPLANATION, figures)
    return sec


def _intro(explanation: dict, base: str) -> str:
    return (f"Configuration {explanation['configuration']}. D is the headline difference, the mean over scored "
            f"tokens of Δ = NLL(other) - NLL({base}); each table splits it into buckets whose contributions "
            "(the bucket's summed Δ over all scored tokens) add up to D exactly, with 95% paired bootstrap intervals "
            "over documents. KL and top-1 agreement come from the paired pass: both models on the same batches, "
            "every vocabulary entry compared, without storing logits.")


def _add_model(sec: Section, name: str, entry: dict, base: str, explanation: dict) -> None:
    if entry.get("skipped"):
        sec.paragraphs.append(f"{name}: the distribution statistics are not available: {entry['skipped']}.")
    if entry.get("paired_pass"):
        sec.paragraphs.append(paired_pass_text(name, base, entry["paired_pass"]))
    if entry.get("truncation"):
        sec.paragraphs.append(truncation_text(entry["truncation"]))
        sec.tables.append(truncation_table(name, base, entry["truncation"]))
    if entry.get("distribution"):
        sec.tables.append(distribution_table(name, entry, base))
    attribution = entry.get("attribution")
    if attribution:
        for dimension in DIMENSIONS:
            if dimension in attribution["dimensions"]:
                sec.tables.append(contribution_table(name, dimension, attribution["dimensions"][dimension]))
    if entry.get("bits_per_byte"):
        sec.tables.append(byte_class_table(name, entry["bits_per_byte"]))
    if entry.get("calibration"):
        sec.tables.append(calibration_table(name, entry, base))
    sec.tables.extend(mechanism_tables(name, base, entry.get("mechanisms")))
    if entry.get("chat"):
        _add_chat(sec, name, entry["chat"], base, explanation.get("chat_user_turn"))
    if attribution:
        for direction in ("other_worse", "other_better"):
            sec.tables.append(top_tokens_table(name, attribution["top_tokens"], direction))
            sec.tables.append(top_spans_table(name, attribution["top_spans"], direction))
            sec.tables.append(top_documents_table(name, attribution["top_documents"], direction))
    if entry.get("token_view"):
        sec.html.append(token_view_html(name, base, entry["token_view"]))
        sec.style = TOKEN_VIEW_CSS


def _add_chat(sec: Section, name: str, chat: dict, base: str, turn: str | None) -> None:
    """The chat-formatted run against the raw one: what it is, its final targets, and the change the format makes."""
    sec.paragraphs.append(chat_text(name, turn, chat))
    sec.tables.append(chat_table(name, chat, base))
    if chat.get("per_domain"):
        sec.tables.append(chat_domain_table(name, chat))
    if chat.get("turns"):
        final = chat.get("final_targets") or {}
        over = " (over the tokens each chat-formatted run shares with the raw one)" if final.get("n_differ") else ""
        sec.tables.append(chat_turns_table(name, chat["turns"], over))


def _colour(delta: float) -> str:
    """Red where the other model is worse, blue where it is better; stronger with |Δ|."""
    alpha = min(1.0, abs(delta) / SATURATION) * 0.75
    rgb = "215,48,39" if delta > 0 else "49,130,189"
    return f"rgba({rgb},{alpha:.3f})"


def _token(cell: list, base: str, name: str) -> str:
    """One token of the view: its text (a special token's name, set apart by the class "special"; nothing for a
    token holding only part of a character, which shows on the token where it ends), coloured by Δ, with a tooltip.
    Cells of results.json written before the special flag have seven entries."""
    text, nll_b, nll_o, top_b, top_o, kl, in_span = cell[:7]
    special = len(cell) > 7 and cell[7]
    delta = nll_o - nll_b
    tip = (f"{base} NLL {nll_b:.3f} | {name} NLL {nll_o:.3f} | Δ {delta:+.3f} | top-1 {base} {top_b!r} | top-1 "
           f"{name} {top_o!r} | KL({base} || {name}) {kl:.3f}")
    shown = text.replace("\n", "↵\n").replace("\t", "→\t")
    cls = ["tok"] + ["ctx"] * (not in_span) + ["special"] * bool(special) + ["part"] * (not text)
    return (f'<span class="{" ".join(cls)}" style="background:{_colour(delta)}" '
            f'title="{html.escape(tip, quote=True)}" data-delta="{delta:.4f}">{html.escape(shown)}</span>')


def token_view_html(name: str, base: str, view: dict) -> str:
    """The top spans each way, each token coloured by Δ with both NLLs, both top-1 predictions and KL on hover."""
    e = html.escape
    parts = [f'<h3 id="token-view-{e(name)}">Token view: {e(name)} against {e(base)}</h3>',
             f"<p>Each token is coloured by Δ = NLL({e(name)}) - NLL({e(base)}): red where {e(name)} is worse, blue "
             f"where it is better; hover for both NLLs, both top-1 predictions and KL({e(base)} || {e(name)}). Faded "
             "tokens are context around the span; special tokens are shown by name, in italics and outlined; a "
             "character split over several tokens shows on the token where it ends.</p>"]
    for direction, label in (("other_worse", "worse"), ("other_better", "better")):
        for span in view.get(direction, []):
            parts.append(f'<div class="tokview-head">Span where {html.escape(name)} is {label}: document '
                         f'{span["doc_id"]}, positions {span["first_pos"]}-{span["last_pos"]}, summed Δ '
                         f'{span["delta_sum"]:+.3f}</div>')
            parts.append(_block(span["tokens"], direction, base, name))
    for direction, label in (("other_worse", "worse"), ("other_better", "better")):
        for doc in (view.get("documents") or {}).get(direction, []):
            shown = len(doc["tokens"])
            parts.append(f'<div class="tokview-head">Document where {html.escape(name)} is {label}: document '
                         f'{doc["doc_id"]}, summed Δ {doc["delta_sum"]:+.3f} over {doc["n_tokens"]} tokens'
                         + (f" (the first {shown} shown)" if shown < doc["n_tokens"] else "") + "</div>")
            parts.append(_block(doc["tokens"], direction, base, name))
    return "\n".join(parts)


def _block(cells: list, direction: str, base: str, name: str) -> str:
    return (f'<div class="tokview" data-direction="{direction}">'
            + "".join(_token(cell, base, name) for cell in cells) + "</div>")
