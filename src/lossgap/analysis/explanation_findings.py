"""Where the difference comes from, in words: each sentence from results.json's `explanation` (attribution.py's
buckets, divergence.py's statistics, calibration.py, the chat-formatted run), worded by wording.py's rules."""

from __future__ import annotations

import math

from .attribution import confidence_labels_from
from .calibration import CONFIDENT
from .chat_findings import chat_finding
from .mechanisms import mechanism_findings
from .wording import KL_DIGITS, MOST, interval_text, portion_of_d, shown_as_zero

SPREAD = 0.25  # a median KL at least this share of the mean: the divergence is spread over the tokens
MIN_SHARE_TOKENS = 0.02  # a bucket named for its lift holds at least this share of the tokens ...
MIN_DOCUMENTS = 2  # ... from at least this many documents: a smaller bucket's lift is an anecdote
NAMED_BUCKETS = 2  # buckets named per dimension
FEW_TYPES = 2  # a frequency bucket whose FEW_TYPES largest types carry ...
DOMINATED = 0.5  # ... at least this share of its Δ is "dominated by" them
WHERE_DIMENSIONS = (("text_class", "text class"), ("domain", "domain"), ("frequency", "frequency of the target"))


def explanation_sentences(results: dict) -> list[str]:
    """The explanation's findings, per other model."""
    explanation = results.get("explanation") or {}
    base = results["baseline"]
    out = []
    for name, entry in (explanation.get("models") or {}).items():
        attribution = entry.get("attribution")
        if attribution:
            out.append(where_finding(name, attribution, explanation["configuration"]))
        if entry.get("distribution"):
            out.append(spread_finding(name, base, entry))
        if entry.get("calibration") and attribution:
            out.append(confidence_finding(name, base, entry))
        if entry.get("truncation") and entry["truncation"]["truncated_tokens"]:
            out.append(truncation_finding(name, entry["truncation"]))
        out.extend(mechanism_findings(name, base, entry.get("mechanisms")))
        if entry.get("layers"):
            out.extend(f"By layer ({name} against {base}): {f}" for f in entry["layers"]["findings"][:3])
        if entry.get("chat"):
            out.append(chat_finding(name, base, entry["chat"], attribution))
        if entry.get("bits_per_byte"):
            out.append(byte_class_finding(name, entry["bits_per_byte"]))
    return out


def _diff(attribution: dict) -> float:
    return next(iter(attribution["dimensions"].values()))["diff"]


def lift(bucket: dict) -> float:
    """A bucket's share of D over its share of tokens: how much more of D it carries per token than the average."""
    return bucket["share_of_diff"] / bucket["share_tokens"]


def supported(bucket: dict) -> bool:
    """Enough tokens and documents for a bucket's lift to say something (buckets stored before their document count
    was recorded are judged by their tokens alone)."""
    return (bucket["share_tokens"] >= MIN_SHARE_TOKENS and bucket.get("n_documents", MIN_DOCUMENTS) >= MIN_DOCUMENTS
            and bucket.get("share_of_diff") is not None)


def standouts(dimension: dict, k: int = NAMED_BUCKETS) -> list[dict]:
    """The supported buckets that carry more of D than their share of tokens, highest lift first."""
    above = [b for b in dimension["buckets"] if supported(b) and lift(b) > 1]
    return sorted(above, key=lambda b: (-lift(b), b["bucket"]))[:k]


def _finite(x: float | None) -> float | None:
    """x, or None when it is missing or NaN (a bucket whose Δ sums to zero has no shares of it)."""
    return x if x is not None and math.isfinite(x) else None


def types_note(bucket: dict) -> str:
    """A frequency bucket's types: how many, which carry most of its Δ, and whether a few dominate it."""
    top = bucket.get("top_types") or []
    if not top:
        return ""
    n = bucket.get("n_types", len(top))
    shares = [_finite(t.get("share_of_bucket")) for t in top]
    named = [f"{t.get('text', t['token_id'])!r}" + (f" {s:.0%}" if s is not None else "")
             for t, s in zip(top, shares, strict=True)]
    if n <= FEW_TYPES:
        return f"; {n} type{'s' if n > 1 else ''}: {' and '.join(named)}"
    few = shares[:FEW_TYPES]
    if None not in few and sum(few) >= DOMINATED:
        names = " and ".join(f"{t.get('text', t['token_id'])!r}" for t in top[:FEW_TYPES])
        return f"; {n} types, dominated by {names} ({sum(few):.0%} of its Δ)"
    return f"; {n} types, the largest {', '.join(named)} of its Δ"


def _bucket_words(b: dict) -> str:
    return (f"{b['bucket']} ({b['share_of_diff']:.1%} of D on {b['share_tokens']:.1%} of tokens, "
            f"{lift(b):.1f} times its share{types_note(b)})")


def where_finding(name: str, attribution: dict, configuration: str) -> str:
    """The buckets that carry D out of proportion to their tokens, along text class, domain and frequency."""
    dims = attribution["dimensions"]
    diff = _diff(attribution)
    text = f"Where {name}'s difference D = {diff:+.4f} nats/token ({configuration}) comes from"
    if shown_as_zero(diff):
        return text + ": D is zero to the precision shown, so there is no difference to attribute."
    parts = []
    for key, label in WHERE_DIMENSIONS:
        if key in dims and dims[key]["buckets"]:
            named = standouts(dims[key])
            parts.append(f"by {label}, " + (" and ".join(_bucket_words(b) for b in named) if named
                                            else "no bucket carries more than its share"))
    text += (f", by the buckets that carry more of D than their share of tokens (each with at least "
             f"{MIN_SHARE_TOKENS:.0%} of tokens from {MIN_DOCUMENTS} documents or more): " + "; ".join(parts) + ".")
    return text + _span(name, attribution)


def _span(name: str, attribution: dict) -> str:
    spans = attribution.get("top_spans", {}).get("other_worse") or []
    if not spans:
        return ""
    s = spans[0]
    snippet = " ".join(s.get("text", "").split())[:60]
    return (f" The span where {name} loses most is in document {s['doc_id']} (positions {s['first_pos']}-"
            f"{s['last_pos']}, summed Δ {s['delta_sum']:+.2f} nats): {snippet!r}.")


def spread_finding(name: str, base: str, entry: dict) -> str:
    """Whether the two predictive distributions differ on every token or on a few."""
    d = entry["distribution"]["overall"]
    kl, top = d["kl_bo"], d["same_top"]
    agreement = (entry.get("attribution") or {}).get("dimensions", {}).get("agreement")
    if shown_as_zero(kl["mean"], KL_DIGITS):
        text = (f"The two distributions are the same to the precision shown: mean KL({base} || {name}) = "
                f"{kl['mean']:.2g} nats (max {kl['max']:.2g}); the top-1 predictions agree on {top['share']:.1%} of "
                "tokens")
    else:
        spread = ("over the tokens, not on a few" if kl["median"] >= SPREAD * kl["mean"] else
                  f"mostly on a minority of tokens (the median is below {SPREAD:.0%} of the mean)")
        text = (f"The two distributions differ {spread}: mean KL({base} || {name}) = {kl['mean']:.3f} nats (median "
                f"{kl['median']:.3f}, 99th percentile {kl['p99']:.3f}, max {kl['max']:.2f}); the top-1 predictions "
                f"agree on {top['share']:.1%} of tokens")
    differ = next((b for b in (agreement or {}).get("buckets", []) if b["bucket"] == "differ"), None)
    if differ and not shown_as_zero(agreement["diff"]) and differ.get("share_of_diff") is not None:
        text += f", and the tokens where they differ carry {differ['share_of_diff']:.0%} of D"
    return text + "."


def _largest(dimension: dict, k: int = 2) -> list[dict]:
    """The buckets carrying the most of D, by the sign of D (the largest positive contributions when D > 0)."""
    sign = 1.0 if dimension["diff"] >= 0 else -1.0
    return sorted(dimension["buckets"], key=lambda b: -sign * b["contribution"])[:k]


def confidence_finding(name: str, base: str, entry: dict) -> str:
    """Confident mistakes, and which of the baseline's confidence levels D comes from."""
    wrong = entry["calibration"]["other_confident_wrong"]
    conf = entry["attribution"]["dimensions"].get("confidence")
    text = (f"Confident mistakes: tokens where {name} put more than {wrong['threshold']:.0%} on a wrong top-1 "
            f"prediction are {wrong['share_tokens']:.1%} of tokens")
    if shown_as_zero(_diff(entry["attribution"])):
        return text + "; D is zero to the precision shown, so no shares of it are given."
    text += f" and carry {wrong['share_of_diff']:.0%} of D"
    sure = [b for b in (conf or {}).get("buckets", []) if b["bucket"] in confidence_labels_from(CONFIDENT)]
    if sure:
        text += (f"; tokens where {base} was sure of the target (p >= {CONFIDENT:g}, "
                 f"{sum(b['share_tokens'] for b in sure):.0%} of tokens) carry "
                 f"{sum(b['share_of_diff'] for b in sure):.0%} of D")
    if conf and conf["buckets"]:
        top = _largest(conf, 1)[0]
        text += (f"; {portion_of_d(top['share_of_diff'])} comes from tokens {base} gave {top['bucket']} probability "
                 f"({top['share_tokens']:.0%} of tokens)")
    return text + "."


def byte_class_finding(name: str, result: dict) -> str:
    """Models with different tokenizers: the byte classes D comes from."""
    if shown_as_zero(result["diff"]):
        return (f"By byte class (bits per byte, the tokenizers differ), {name}'s difference D = {result['diff']:+.4f} "
                "is zero to the precision shown, so there is no difference to attribute.")
    parts = _largest({"diff": result["diff"], "buckets": result["classes"]})
    together = sum(c["share_of_diff"] for c in parts)
    how = "mostly" if together > MOST else "in its largest parts"
    return (f"By byte class (bits per byte, the tokenizers differ), {name}'s difference D = {result['diff']:+.4f} "
            f"comes {how} from " + " and ".join(f"{c['bucket']} bytes ({c['contribution']:+.4f}, "
                                                f"{c['share_of_diff']:.0%} of D)" for c in parts) + ".")


def truncation_finding(name: str, tr: dict) -> str:
    """How many tokens lost their document's beginning at a row edge, and D over each kind apart."""
    whole, cut = tr["whole_context"], tr["truncated"]

    def d(f: dict) -> str:
        interval = interval_text({"n_documents": f["n_documents"], **f["d"]})
        return f"{f['d']['value']:+.4f} nats/token ({f['n_tokens']:,} tokens, {interval})"

    text = (f"Truncated context: {tr['share_truncated']:.0%} of the scored tokens were predicted without their whole "
            f"document (cut at a row edge); {name}'s difference is {d(whole)} over the tokens with their whole "
            f"document as context")
    if cut["n_tokens"]:
        text += f" and {d(cut)} over the truncated ones"
    return text + "."
