"""Can two models be compared token by token? Compare vocabularies, merges and special tokens, then the ids
they actually produce on the corpus: an instruct model often adds chat tokens, which only matter if they occur."""

from __future__ import annotations

import json
from collections.abc import Iterable

from .encode import in_chunks


def _backend(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else {}


def compare_tokenizers(ref, other, texts: Iterable[str], ref_name: str = "base", other_name: str = "other") -> dict:
    """A report of the differences between two tokenizers and whether they tokenize `texts` identically."""
    differences = []
    v_ref, v_other = ref.get_vocab(), other.get_vocab()
    changed = sorted(t for t in v_ref if t in v_other and v_ref[t] != v_other[t])
    only_other = sorted(set(v_other) - set(v_ref), key=lambda t: v_other[t])
    only_ref = sorted(set(v_ref) - set(v_other), key=lambda t: v_ref[t])
    if changed:
        differences.append(f"{len(changed)} tokens have different ids (e.g. {changed[:3]})")
    if only_other:
        differences.append(f"{other_name} adds {len(only_other)} tokens: {only_other[:8]}")
    if only_ref:
        differences.append(f"{other_name} lacks {len(only_ref)} tokens of {ref_name}: {only_ref[:8]}")
    b_ref, b_other = _backend(ref), _backend(other)
    for part in ("normalizer", "pre_tokenizer"):
        if b_ref.get(part) != b_other.get(part):
            differences.append(f"the {part.replace('_', '-')}s differ")
    if b_ref.get("model", {}).get("merges") != b_other.get("model", {}).get("merges"):
        differences.append("the BPE merges differ")
    specials = {}
    for attr in ("bos_token", "eos_token", "pad_token"):
        a, b = getattr(ref, attr, None), getattr(other, attr, None)
        specials[attr] = {ref_name: a, other_name: b}
        if a != b:
            differences.append(f"{attr.replace('_', ' ')}: {ref_name} {a!r}, {other_name} {b!r}")

    checked = differing = 0
    extra_seen: set[str] = set()
    only_other_ids = {v_other[t] for t in only_other}
    for chunk in in_chunks(texts, 64):
        ids_ref = ref(chunk, add_special_tokens=False, verbose=False)["input_ids"]
        ids_other = other(chunk, add_special_tokens=False, verbose=False)["input_ids"]
        for a, b in zip(ids_ref, ids_other, strict=True):
            checked += 1
            differing += a != b
            extra_seen.update(other.convert_ids_to_tokens(i) for i in set(b) & only_other_ids)
    compatible = not changed and differing == 0
    return {
        "compatible": compatible,
        "differences": differences,
        "special_tokens": specials,
        "vocab_sizes": {ref_name: len(v_ref), other_name: len(v_other)},
        "documents_checked": checked,
        "documents_tokenized_differently": differing,
        "added_tokens_seen_in_corpus": sorted(extra_seen),
        "verdict": _verdict(compatible, only_other, extra_seen, differing, checked, other_name),
    }


def _verdict(compatible, only_other, extra_seen, differing, checked, other_name) -> str:
    if compatible and not only_other:
        return "identical on this corpus: token-level comparison is valid"
    if compatible:
        return (f"{other_name}'s {len(only_other)} extra tokens (e.g. chat tokens) never occur in this corpus and "
                f"all {checked} documents tokenize identically: token-level comparison is valid")
    return (f"{differing} of {checked} documents tokenize differently"
            + (f" (extra tokens seen: {sorted(extra_seen)[:5]})" if extra_seen else "")
            + ": compared in bits per byte only")
