"""The chat-format finding: how D changes when the other model reads each document as its reply in its own chat
template, worded for every sign of the raw and the chat-formatted D, and from the per-domain changes, so that a
conclusion never rests on one domain unsaid."""

from __future__ import annotations

import math

from .wording import LOSS_DIGITS, interval_text, shown_as_zero


def chat_finding(name: str, base: str, chat: dict, attribution: dict | None = None) -> str:
    """The overall change with its interval, what it does to the gap, on how many domains the format helps, and,
    where the runs' final targets differ (--chat-end-of-turn), what ending with the end-of-turn token does."""
    raw, formatted = chat["raw_diff"], chat["chat_diff"]
    change = formatted - raw
    lo, hi = (math.nan if v is None else v for v in chat["reduction_ci"])  # None: NaN read back from results.json
    dims = (chat.get("attribution") or {}).get("dimensions") or {}
    any_dim = next(iter(dims.values()), {})
    ci = interval_text(any_dim, -hi, -lo)  # chat-formatted minus raw: the reduction's interval, negated
    final = chat.get("final_targets") or {}
    over = f" over the {final['n_shared']:,} tokens both runs share" if final.get("n_differ") else ""
    text = (f"Chat format: with each document as its reply in its own chat template, {name}'s difference is "
            f"{formatted:+.4f} instead of {raw:+.4f} nats/token{over}, a change of {change:+.4f} ({ci})")
    domains = per_domain_changes(chat, attribution)
    one = any_dim.get("n_documents") == 1
    effect = change_effect(name, base, raw, formatted, (-hi, -lo), one)
    if _worded_by_gap(change, (-hi, -lo), one):
        effect += _conclusion(raw, formatted, domains)
    return (text + ": " + effect + "." + domain_sentence(name, change, domains) + turns_sentence(chat.get("turns"))
            + final_target_sentence(name, base, final))


def change_effect(name: str, base: str, raw: float, formatted: float, change_ci: tuple[float, float],
                  one_document: bool = False) -> str:
    """What the format does to D in words, from the numbers alone: no effect shown where the change's 95% interval
    (chat - raw) holds zero, the same loss where the change prints as zero, else gap_effect."""
    low, high = change_ci
    if not one_document and low <= 0 <= high:
        return "no effect of the format is shown at the 95% level"
    if shown_as_zero(formatted - raw):
        return f"the format leaves {name}'s loss the same to {LOSS_DIGITS} decimals"
    return gap_effect(name, base, raw, formatted)


def _worded_by_gap(change: float, change_ci: tuple[float, float], one_document: bool) -> bool:
    """Whether change_effect words the change by what it does to the gap (gap_effect)."""
    low, high = change_ci
    return (one_document or not low <= 0 <= high) and not shown_as_zero(change)


def final_target_sentence(name: str, base: str, final: dict) -> str:
    """Under --chat-end-of-turn: the final target of each whole document in each run, how many targets differ, and
    the change on them and over all tokens."""
    if not final.get("end_of_turn"):
        return ""
    raw, chat = (final.get(k) or {} for k in ("raw", "chat"))
    if raw.get("id") == chat.get("id"):
        return (f" {name}'s chat template ends a reply with {chat.get('text')}, the EOS itself: both runs end each "
                "whole document with it, and every target is the same.")
    if not final.get("n_differ"):
        return (f" Its chat-formatted run would end each whole document with {chat.get('text')} where the raw run "
                f"has {raw.get('text')}, but no document was scored whole: every target is the same.")
    raw, chat = raw.get("text"), chat.get("text")
    last, every = final["final"], final["all_tokens"]
    return (f" Its chat-formatted run ends each whole document with {chat}, its end-of-turn token, where the raw run "
            f"has {raw}: {final['n_differ']:,} of {final['n_tokens']:,} targets differ, one per whole document. On "
            f"those final targets {name}'s difference is {last['chat_diff']:+.4f} ({chat} after its chat template) "
            f"instead of {last['raw_diff']:+.4f} ({raw} after the raw text), a change of {-last['reduction']:+.4f}; "
            f"over all {final['n_tokens']:,} tokens, each run with its own final target, it is "
            f"{every['chat_diff']:+.4f} instead of {every['raw_diff']:+.4f}, a change of {-every['reduction']:+.4f}.")


def turns_sentence(turns: dict | None) -> str:
    """The spread of the change over the sampled user turns: one turn is one sample of a prompt distribution."""
    if not turns or len(turns["per_turn"]) < 2:
        return ""
    n = len(turns["per_turn"])
    changes = [-p["reduction"] for p in turns["per_turn"]]
    up = sum(c > 0 and not shown_as_zero(c) for c in changes)
    down = sum(c < 0 and not shown_as_zero(c) for c in changes)
    if up and down:
        agree = "in opposite directions depending on the turn: the sign of the change is not settled"
    elif not (up or down):
        agree = f"unchanged to {LOSS_DIGITS} decimals after every one"
    elif up + down == n:
        agree = "in the same direction after every one"
    else:
        agree = f"in the same direction after {up + down} of them and unchanged after the others"
    return (f" Over {n} neutral user turns the change ranges from {turns['change_min']:+.4f} to "
            f"{turns['change_max']:+.4f} nats/token (mean {turns['change_mean']:+.4f}), {agree}.")


def gap_effect(name: str, base: str, raw: float, formatted: float) -> str:
    """What the format does to the raw difference, for every sign of the raw and the chat-formatted D."""
    moved = f"the format {'lowers' if formatted < raw else 'raises'} {name}'s loss"
    if shown_as_zero(raw):
        if shown_as_zero(formatted):
            return f"{moved}, but the models give the same loss to {LOSS_DIGITS} decimals on the raw text and formatted"
        side = "worse" if formatted > 0 else "better"
        return (f"{moved}: the models give the same loss on the raw text, and {name} is {side} than {base} in its "
                "own format")
    gap = "gap" if raw > 0 else f"advantage of {name}"
    if shown_as_zero(formatted):
        return f"{moved} and closes the raw {gap}"
    if (formatted > 0) != (raw > 0):
        side = "better" if formatted < 0 else "worse"
        return f"{moved} past {base}'s: the raw {gap} reverses, and formatted {name} is {side} than {base}"
    share = abs(formatted - raw) / abs(raw)
    if abs(formatted) < abs(raw):
        return f"{moved}, narrowing the raw {gap} by {share:.0%}"
    return f"{moved}, widening the raw {gap} by {share:.0%}"


def _conclusion(raw: float, formatted: float, domains: list[dict]) -> str:
    """What the raw text's format explains of a gap (raw D > 0): said only when most domains change the way the
    whole does; "part of" only where the gap narrows, "all of" where it closes or reverses."""
    change = formatted - raw
    if not domains or len(_moving(domains, change)) * 2 <= len(domains) or shown_as_zero(raw) or raw < 0:
        return ""
    if change > 0:
        return ", so the gap is not explained by the raw text's format"
    if shown_as_zero(formatted) or formatted < 0:
        return ", so all of the gap is the raw text's format"
    return ", so part of the gap is the raw text's format"


def per_domain_changes(chat: dict, attribution: dict | None) -> list[dict]:
    """Per domain: tokens, raw and chat-formatted D and their change; from the chat result's `per_domain` when it
    has one, else from the raw and chat-formatted attributions' domain buckets (the same tokens)."""
    if chat.get("per_domain"):  # analysis/explanation.py chat_change per domain: reduction = raw - chat
        return [{"domain": d, "tokens": v["n_tokens"], "d_raw": v["raw_diff"], "d_chat": v["chat_diff"],
                 "change": -v["reduction"]} for d, v in sorted(chat["per_domain"].items())]
    raw = ((attribution or {}).get("dimensions") or {}).get("domain")
    formatted = ((chat.get("attribution") or {}).get("dimensions") or {}).get("domain")
    if not (raw and formatted):
        return []
    chat_by = {b["bucket"]: b for b in formatted["buckets"]}
    return [{"domain": b["bucket"], "tokens": b["n_tokens"], "d_raw": b["mean_delta"],
             "d_chat": chat_by[b["bucket"]]["mean_delta"],
             "change": chat_by[b["bucket"]]["mean_delta"] - b["mean_delta"]}
            for b in raw["buckets"] if b["bucket"] in chat_by]


def _moving(domains: list[dict], change: float) -> list[dict]:
    """The domains whose change has the sign of the overall change."""
    return [d for d in domains if not shown_as_zero(d["change"]) and (d["change"] > 0) == (change > 0)]


def _on(domains: list[dict], n: int) -> str:
    """ "on 3 of 4 domains (A -0.0143, ...)", or "on none of the 4 domains"."""
    if not domains:
        return f"on none of the {n} domains"
    return f"on {len(domains)} of {n} domains (" + ", ".join(f"{d['domain']} {d['change']:+.4f}" for d in domains) + ")"


def domain_sentence(name: str, change: float, domains: list[dict]) -> str:
    """On how many domains the format lowers and raises the loss, and the domain that drives the overall change."""
    if len(domains) < 2:
        return ""
    total = sum(d["tokens"] for d in domains)
    lower = [d for d in domains if d["change"] < 0 and not shown_as_zero(d["change"])]
    higher = [d for d in domains if d["change"] > 0 and not shown_as_zero(d["change"])]
    text = (f" By domain, the format lowers {name}'s loss {_on(lower, len(domains))} and raises it "
            f"{_on(higher, len(domains))}")
    unchanged = len(domains) - len(lower) - len(higher)
    if unchanged:
        text += f"; {unchanged} unchanged"
    moving = _moving(domains, change)
    if shown_as_zero(change) or not moving or not total:
        return text + "."
    driver = max(moving, key=lambda d: abs(d["tokens"] * d["change"]))
    weighted = driver["tokens"] * driver["change"] / total
    text += (f"; {driver['domain']} drives the overall change ({weighted:+.4f} of the {change:+.4f}, weighted by its "
             f"{driver['tokens'] / total:.0%} of tokens)")
    if len(moving) * 2 < len(domains):
        alone = "alone" if len(moving) == 1 else f"and {len(moving) - 1} more"
        text += (f", so the overall {'rise' if change > 0 else 'fall'} rests on {driver['domain']} {alone}: "
                 f"{len(domains) - len(moving)} of {len(domains)} domains do not change that way")
    return text + "."
