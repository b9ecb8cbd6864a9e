"""Held-out and chat numbers of the demo pair, computed from the saved weights.

Deliberately independent of lossgap's scoring (the model's own forward + log-softmax), so its numbers cross-check it.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from .data import CHAT_TEMPLATE, IM_END, Record, chat_examples, encode_chat, read_records
from .train import TrainConfig, load_model

GENERAL_DOMAINS = ("Github", "PydocTopics", "Licenses")  # general (non-chat, non-math) text
EVAL_PROTOCOL = (
    "each document scored alone: ids = [<|endoftext|>] + tokens + [<|endoftext|>]; every token after the first is a "
    "target (the appended EOS included); documents longer than the context are cut into disjoint windows of "
    "max_position_embeddings tokens (lossgap score --layout single defaults), position ids restart at 0 per window; "
    "float32 weights (loaded from the saved bfloat16 ones), float32 log-softmax; means are token-weighted. "
    "unigram: add-one smoothed token frequencies of the training split (documents + one EOS each) over the whole "
    "vocabulary, scored on the same targets."
)


def text_sha256(text: str) -> str:
    """How the logs name a document: its text's hash is the same on every machine that builds it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@torch.no_grad()
def score_documents(model, token_docs: list[list[int]], window: int, batch_tokens: int = 8192) -> list[np.ndarray]:
    """Per-target NLL (float64 array, fp32 log-softmax) of each document [BOS, ..., EOS] scored alone, in disjoint
    windows of `window` tokens; a window's last position predicts the first token of the next window."""
    pieces = []  # (doc index, first target index, input ids of the window, number of targets)
    for d, ids in enumerate(token_docs):
        for begin in range(0, len(ids) - 1, window):
            chunk = ids[begin : begin + window]
            pieces.append((d, begin, chunk, min(len(chunk), len(ids) - 1 - begin)))
    out = [np.zeros(len(ids) - 1) for ids in token_docs]
    order = sorted(range(len(pieces)), key=lambda i: (-len(pieces[i][2]), i))
    i = 0
    while i < len(order):
        length = len(pieces[order[i]][2])
        group = order[i : i + max(1, batch_tokens // length)]
        i += len(group)
        inputs = torch.zeros(len(group), length, dtype=torch.int64)  # right padding: causal, so never attended
        for b, p in enumerate(group):
            chunk = pieces[p][2]
            inputs[b, : len(chunk)] = torch.tensor(chunk)
        hidden = model.model(input_ids=inputs, use_cache=False).last_hidden_state.float()
        for b, p in enumerate(group):
            d, begin, _, n = pieces[p]
            logp = torch.log_softmax(model.lm_head(hidden[b, :n]).float(), dim=-1)
            targets = torch.tensor(token_docs[d][begin + 1 : begin + 1 + n])
            out[d][begin : begin + n] = -logp.gather(1, targets[:, None])[:, 0].double().numpy()
    return out


def unigram_counts(tokenizer, texts: list[str]) -> np.ndarray:
    """Token counts over the training texts, one EOS per document (the targets that scoring appends)."""
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        np.add.at(counts, np.asarray(ids, dtype=np.int64), 1)
    counts[tokenizer.eos_token_id] += len(texts)
    return counts


def _summary(docs: list[dict]) -> dict:
    n = sum(d["n_targets"] for d in docs)
    nll, uni = sum(d["nll_sum"] for d in docs), sum(d["unigram_nll_sum"] for d in docs)
    n_bytes = sum(d["n_bytes"] for d in docs)
    return {
        "n_docs": len(docs), "n_targets": n, "n_bytes": n_bytes,
        "nll": nll / n, "unigram_nll": uni / n, "unigram_minus_model": (uni - nll) / n,
        "perplexity": math.exp(nll / n), "bits_per_byte": nll / (math.log(2) * n_bytes),
    }


def evaluate_records(model, tokenizer, records: list[Record], counts: np.ndarray, batch_tokens: int = 8192) -> dict:
    """Score records with a loaded model; per-document sums and per-domain / overall / general means."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    token_docs = [[bos, *ids, eos] for ids in tokenizer([r.text for r in records],
                                                          add_special_tokens=False)["input_ids"]]
    nll = score_documents(model, token_docs, model.config.max_position_embeddings, batch_tokens)
    log_uni = np.log((counts + 1) / (counts.sum() + len(counts)))
    docs = []
    for r, ids, v in zip(records, token_docs, nll, strict=True):
        docs.append({
            "source": r.source, "domain": r.domain, "text_sha256": text_sha256(r.text),
            "n_targets": len(ids) - 1, "n_bytes": len(r.text.encode("utf-8")), "nll_sum": float(v.sum()),
            "unigram_nll_sum": float(-log_uni[np.asarray(ids[1:])].sum()),
        })
    domains = {d: _summary([x for x in docs if x["domain"] == d]) for d in dict.fromkeys(x["domain"] for x in docs)}
    general = [x for x in docs if x["domain"] in GENERAL_DOMAINS]
    return {
        "protocol": EVAL_PROTOCOL, "window": model.config.max_position_embeddings, "domains": domains,
        "general": _summary(general) if general else None, "overall": _summary(docs) if docs else None,
        "documents": docs,
    }


def evaluate(model_dir: Path, corpus_path: Path, split: str = "heldout", domains: tuple[str, ...] | None = None,
             counts: np.ndarray | None = None) -> dict:
    """Held-out NLL of the saved model in `model_dir` on `corpus_path`'s `split`, with the unigram baseline.

    The unigram counts come from `counts`, else from the model folder's training_log.json, else from the corpus's
    training split tokenized with the model's tokenizer."""
    model_dir, corpus_path = Path(model_dir), Path(corpus_path)
    model, tokenizer = load_model(model_dir)
    records = read_records(corpus_path, split)
    if domains is not None:
        records = [r for r in records if r.domain in domains]
    if counts is None:
        log_path = model_dir / "training_log.json"
        logged = json.loads(log_path.read_text())["unigram"]["counts"] if log_path.exists() else None
        if logged is not None:
            counts = np.asarray(logged, dtype=np.int64)
        else:
            counts = unigram_counts(tokenizer, [r.text for r in read_records(corpus_path, "train")])
    result = evaluate_records(model, tokenizer, records, counts)
    result.update({"model_dir": model_dir.name, "split": split,
                   "corpus_sha256": hashlib.sha256(corpus_path.read_bytes()).hexdigest()})
    return result


def _answer_nll(model, tokenizer, prompt_msgs: list[dict], reference: str) -> tuple[float, int]:
    """Teacher-forced NLL summed over the reference answer's trained tokens, and their count."""
    full_ids, trained = encode_chat(tokenizer, prompt_msgs + [{"role": "assistant", "content": reference}])
    logits = model(torch.tensor([full_ids]), use_cache=False).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(full_ids[1:])[:, None])[:, 0]
    mask = torch.tensor(trained[1:])
    return -float(logp[mask].sum()), int(mask.sum())


@torch.no_grad()
def chat_eval(folder: Path, conversations: list[tuple[str, list[dict]]], new_tokens: int) -> dict:
    """Greedy answers to the first user turn of held-out conversations, from the saved model.

    Both models get the same ChatML rendering (the base never saw chat tokens). Also the teacher-forced NLL of the
    reference answers."""
    model, tokenizer = load_model(folder)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    ended = exact = n_math = 0
    answer_nll, answer_tokens, samples = 0.0, 0, []
    for kind, conv in conversations:
        prompt_msgs = [m for m in conv if m["role"] == "system"] + [next(m for m in conv if m["role"] == "user")]
        reference = next(m for m in conv if m["role"] == "assistant")["content"]
        prompt = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                             eos_token_id=[im_end, tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
        gen = out[0, len(ids):].tolist()
        stop = gen.index(im_end) if im_end in gen else None
        ended += stop is not None
        if kind == "math":
            n_math += 1
            exact += tokenizer.decode(gen[:stop], skip_special_tokens=False).strip() == reference.strip()
        nll, n_tokens = _answer_nll(model, tokenizer, prompt_msgs, reference)
        answer_nll, answer_tokens = answer_nll + nll, answer_tokens + n_tokens
        if sum(x["kind"] == kind for x in samples) < 2:
            samples.append({"kind": kind, "prompt": prompt_msgs[-1]["content"][:300], "reference": reference[:300],
                            "generated": tokenizer.decode(gen, skip_special_tokens=False)[:300]})
    n = len(conversations)
    return {
        "prompts": n, "ended_turn_with_im_end": ended / n if n else None,
        "math_exact_match": exact / n_math if n_math else None, "math_prompts": n_math,
        "reference_answer_nll": answer_nll / answer_tokens if answer_tokens else None,
        "reference_answer_tokens": answer_tokens, "max_new_tokens": new_tokens, "samples": samples,
    }


def evaluate_pair(folders: dict[str, Path], heldout: list[Record], counts: np.ndarray, corpus_sha256: str,
                  cfg: TrainConfig, seed: int) -> tuple[dict, dict, dict]:
    """Held-out evaluation and chat evaluation of both saved models, and the instruct-minus-base comparison."""
    evals = {}
    for name, folder in folders.items():
        model, tokenizer = load_model(folder)
        evals[name] = evaluate_records(model, tokenizer, heldout, counts, cfg.eval_batch_tokens)
        evals[name].update({"split": "heldout", "corpus_sha256": corpus_sha256})
        if cfg.eval_max_doc_tokens is not None:
            evals[name]["selection"] = f"documents of at most {cfg.eval_max_doc_tokens} tokens (quick run)"
        print(f"[eval] {name}: " + ", ".join(f"{d} {s['nll']:.3f}" for d, s in evals[name]["domains"].items())
              + f" | general {evals[name]['general']['nll']:.3f}", file=sys.stderr)
    held_kinds = chat_examples(heldout, seed)
    held_convs = [(k, c) for k in held_kinds for c in held_kinds[k][: cfg.chat_eval_per_kind]]
    chat = {name: chat_eval(folder, held_convs, cfg.chat_eval_new_tokens) for name, folder in folders.items()}
    chat["prompts"] = "first user turn of the first chat_eval_per_kind held-out conversations of each kind"
    comparison = {
        "general_nll": {n: evals[n]["general"]["nll"] for n in evals},
        "instruct_minus_base_general": evals["instruct"]["general"]["nll"] - evals["base"]["general"]["nll"],
        "instruct_minus_base_by_domain": {d: evals["instruct"]["domains"][d]["nll"] - s["nll"]
                                          for d, s in evals["base"]["domains"].items()},
    }
    comparison["relative_perplexity_general"] = math.exp(comparison["instruct_minus_base_general"]) - 1
    return evals, chat, comparison
