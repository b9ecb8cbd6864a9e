"""Where the difference comes from, in words: each sentence computed from results.json's `explanation`."""

from __future__ import annotations

from ..formats.schema import Results

SPREAD = 0.25  # a median KL at least this share of the mean: the divergence is spread over most tokens


def explanation_findings(results: Results) -> list[str]:
    explanation = results.get("explanation") or {}
    base = results["baseline"]
    out = []
    for name, entry in (explanation.get("models") or {}).items():
        attribution = entry.get("attribution")
        if attribution:
            out.append(_where(name, attribution, explanation["configuration"]))
        if entry.get("distribution"):
            out.append(_spread(name, base, entry))
        if entry.get("calibration") and attribution:
            out.append(_confidence(name, base, entry))
        if entry.get("chat"):
            out.append(_chat(name, entry["chat"]))
        if entry.get("bits_per_byte"):
            out.append(_byte_classes(name, entry["bits_per_byte"]))
    return out


def _largest(dimension: dict, k: int = 2) -> list[dict]:
    """The buckets carrying the most of D, by the sign of D (the largest positive contributions when D > 0)."""
    sign = 1.0 if dimension["diff"] >= 0 else -1.0
    return sorted(dimension["buckets"], key=lambda b: -sign * b["contribution"])[:k]


def _parts(dimension: dict) -> str:
    return " and ".join(f"{b['bucket']} ({b['contribution']:+.4f}, {b['share_of_diff']:.0%} of D, on "
                        f"{b['share_tokens']:.0%} of tokens)" for b in _largest(dimension))


def _where(name: str, attribution: dict, configuration: str) -> str:
    dims = attribution["dimensions"]
    any_dim = next(iter(dims.values()))
    text = f"Where {name}'s difference D = {any_dim['diff']:+.4f} nats/token ({configuration}) comes from: "
    parts = [f"by {label}, {_parts(dims[key])}" for key, label in
             (("text_class", "text class"), ("domain", "domain"), ("frequency", "frequency of the target"))
             if key in dims and dims[key]["buckets"]]
    text += "; ".join(parts) + "."
    spans = attribution.get("top_spans", {}).get("other_worse") or []
    if spans:
        s = spans[0]
        snippet = " ".join(s.get("text", "").split())[:60]
        text += (f" The span where {name} loses most is in document {s['doc_id']} (positions {s['first_pos']}-"
                 f"{s['last_pos']}, summed Δ {s['delta_sum']:+.2f} nats): {snippet!r}.")
    return text


def _spread(name: str, base: str, entry: dict) -> str:
    d = entry["distribution"]["overall"]
    kl, top = d["kl_bo"], d["same_top"]
    agreement = (entry.get("attribution") or {}).get("dimensions", {}).get("agreement")
    spread = ("on most tokens, not on a few" if kl["median"] >= SPREAD * kl["mean"] else
              "mostly on a minority of tokens (the median is far below the mean)")
    text = (f"The two distributions differ {spread}: mean KL({base} || {name}) = {kl['mean']:.3f} nats (median "
            f"{kl['median']:.3f}, 99th percentile {kl['p99']:.3f}, max {kl['max']:.2f}); the top-1 predictions agree "
            f"on {top['share']:.1%} of tokens")
    if agreement:
        differ = next((b for b in agreement["buckets"] if b["bucket"] == "differ"), None)
        if differ:
            text += f", and the tokens where they differ carry {differ['share_of_diff']:.0%} of D"
    return text + "."


def _confidence(name: str, base: str, entry: dict) -> str:
    wrong = entry["calibration"]["other_confident_wrong"]
    conf = entry["attribution"]["dimensions"].get("confidence")
    text = (f"Confident mistakes: tokens where {name} put more than 90% on a wrong top-1 prediction are "
            f"{wrong['share_tokens']:.1%} of tokens and carry {wrong['share_of_diff']:.0%} of D")
    if conf:
        sure = [b for b in conf["buckets"] if b["bucket"] in ("0.9-0.99", ">=0.99")]
        if sure:
            share = sum(b["share_of_diff"] for b in sure)
            text += (f"; where {base} was sure of the target (p >= 0.9, {sum(b['share_tokens'] for b in sure):.0%} "
                     f"of tokens) {name} loses {share:.0%} of D, and most of D comes from tokens {base} gave "
                     f"{_largest(conf, 1)[0]['bucket']} probability")
    return text + "."


def _chat(name: str, chat: dict) -> str:
    lo, hi = chat["reduction_ci"]
    change, low, high = -chat["reduction"], -hi, -lo  # chat-formatted minus raw, and its interval
    text = (f"Chat format: with each document as its reply in its own chat template, {name}'s difference is "
            f"{chat['chat_diff']:+.4f} instead of {chat['raw_diff']:+.4f} nats/token, a change of {change:+.4f} "
            f"(95% CI {low:+.4f} to {high:+.4f})")
    if low <= 0 <= high:
        return text + ": no effect of the format is shown at the 95% level."
    if change < 0:
        return text + f": the format explains {chat['share_of_raw_explained']:.0%} of the raw gap."
    return text + ": the chat format makes the gap larger, so it is not explained by the raw text's format."


def _byte_classes(name: str, result: dict) -> str:
    parts = _largest({"diff": result["diff"], "buckets": result["classes"]})
    return (f"By byte class (bits per byte, the tokenizers differ), {name}'s difference D = {result['diff']:+.4f} "
            "comes mostly from " + " and ".join(f"{c['bucket']} bytes ({c['contribution']:+.4f}, "
                                                f"{c['share_of_diff']:.0%} of D)" for c in parts) + ".")
