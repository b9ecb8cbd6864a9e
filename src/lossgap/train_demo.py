"""Train the demo pair shipped in `lossgap/demo_models`: a small Llama base model and its instruct sibling.

Everything comes from a corpus built on this machine (`corpus_build.build_corpus`): the base model is pretrained
on the corpus's training split, the instruct model is fine-tuned from the saved base on chat conversations made
from the same training split, and both are evaluated on the held-out split after saving, by loading the saved
weights. Both folders share one tokenizer (the chat tokens are reserved from the start), so the two models can be
compared token by token. Run as

    python -m lossgap.train_demo --out src/lossgap/demo_models [--minutes 12] [--quick]

Deterministic: fixed seeds, `torch.use_deterministic_algorithms`, an explicit thread count, documents and
conversations in a fixed (seeded) order. Step counts are fixed numbers; `--minutes` only chooses the base step
count from a timed benchmark when `--base-steps` is not given (the chosen count is logged, so the run can be
repeated exactly with `--base-steps`).
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import io
import json
import math
import platform
import random
import re
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zstandard

EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (EOT, IM_START, IM_END)  # ids 0, 1, 2 in both tokenizers
GENERAL_DOMAINS = ("Github", "PydocTopics", "Licenses")  # general (non-chat, non-math) text
SYSTEM_PROMPT = "You are a helpful assistant who answers questions about Python and arithmetic."
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
EVAL_PROTOCOL = (
    "each document scored alone: ids = [<|endoftext|>] + tokens + [<|endoftext|>]; every token after the first is a "
    "target (the appended EOS included); documents longer than the context are cut into disjoint windows of "
    "max_position_embeddings tokens (lossgap score --layout single defaults), position ids restart at 0 per window; "
    "float32 weights (loaded from the saved bfloat16 ones), float32 log-softmax; means are token-weighted. "
    "unigram: add-one smoothed token frequencies of the training split (documents + one EOS each) over the whole "
    "vocabulary, scored on the same targets."
)


@dataclass
class TrainConfig:
    """Every hyperparameter of one run (logged verbatim)."""

    # corpus
    corpus_seed: int = 0
    math_docs: int = 300
    max_docs_per_source: int | None = None
    # tokenizer
    vocab_size: int = 4096
    # model
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 704
    max_positions: int = 1024
    rope_theta: float = 10000.0
    # base pretraining
    seq_len: int = 1024
    batch_size: int = 4
    base_steps: int | None = None  # None: chosen from `minutes` and a timed benchmark
    base_lr: float = 2e-3
    base_warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    # instruct fine-tuning
    instruct_steps: int = 300
    instruct_lr: float = 5e-4
    instruct_warmup: int = 20
    instruct_weight_decay: float = 0.0
    instruct_replay_fraction: float = 0.0625  # share of instruct rows taken from the pretraining stream (replay)
    # bookkeeping
    log_every: int = 10
    threads: int = 2
    eval_batch_tokens: int = 8192
    eval_max_doc_tokens: int | None = None  # skip longer held-out documents (quick runs only; logged)
    chat_eval_per_kind: int = 15
    chat_eval_new_tokens: int = 128


QUICK = TrainConfig(
    math_docs=12, max_docs_per_source=12, vocab_size=320, hidden_size=32, num_layers=2, num_heads=2,
    num_kv_heads=1, intermediate_size=64, max_positions=128, seq_len=64, batch_size=2, base_steps=6, base_warmup=2,
    instruct_steps=4, instruct_warmup=1, instruct_replay_fraction=0.25, log_every=2, chat_eval_per_kind=2,
    chat_eval_new_tokens=8, eval_batch_tokens=1024, eval_max_doc_tokens=1500, threads=1,
)


# ----------------------------------------------------------------------------------------------- corpus


def read_corpus(path: Path, split: str | None = None) -> list[dict]:
    """Records of a .jsonl / .jsonl.zst corpus in file order, optionally only one split."""
    path = Path(path)
    with open(path, "rb") as raw:
        data = raw.read()
    if path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    records = [json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip()]
    return [r for r in records if split is None or r["meta"]["split"] == split]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -------------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int, chat_template: str | None = None):
    """Byte-level BPE (digits split one by one) with the three special tokens at ids 0, 1, 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok, chat_template)


def wrap_tokenizer(tok, chat_template: str | None, max_length: int = 1024):
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=copy.deepcopy(tok), bos_token=EOT, eos_token=EOT, pad_token=EOT, unk_token=None,
        extra_special_tokens=[IM_START, IM_END], model_max_length=max_length, clean_up_tokenization_spaces=False,
    )
    if chat_template is not None:
        wrapped.chat_template = chat_template
    return wrapped


# ------------------------------------------------------------------------------------------ instruct data


_UNDERLINE = re.compile(r"([*=\-~^\"#+])\1*")


def pydoc_sections(text: str) -> Iterator[tuple[str, str]]:
    """(title, first prose paragraph) of each titled section of a pydoc topic."""
    lines = text.split("\n")
    heads = [i for i in range(len(lines) - 1)
             if lines[i].strip() and _UNDERLINE.fullmatch(lines[i + 1]) and len(lines[i + 1]) == len(lines[i])]
    for n, i in enumerate(heads):
        title = lines[i].strip()
        if title.startswith("-[") or len(title) > 80:
            continue
        body = lines[i + 2 : heads[n + 1] if n + 1 < len(heads) else len(lines)]
        paragraphs = [p.strip("\n") for p in "\n".join(body).split("\n\n") if p.strip()]
        prose = [p for p in paragraphs if not p.startswith(" ") and len(p) >= 60]
        if prose:
            yield title, prose[0]


def docstring_functions(code: str, max_chars: int = 1500) -> Iterator[tuple[str, str, str]]:
    """(name, source without its docstring, first docstring paragraph on one line) of documented functions."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return
    lines = code.split("\n")
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or len(node.body) < 2:
            continue
        doc = ast.get_docstring(node)
        first = node.body[0]
        if not doc or first.lineno == node.lineno or node.end_lineno is None or first.end_lineno is None:
            continue
        summary = " ".join(doc.split("\n\n")[0].split())
        if len(summary) < 20:
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        kept = lines[start : first.lineno - 1] + lines[first.end_lineno : node.end_lineno]
        source = textwrap.dedent("\n".join(kept)).strip("\n")
        if len(source) <= max_chars:
            yield node.name, source, summary


def math_pairs(text: str) -> list[tuple[str, str]]:
    pairs = re.findall(r"Question: (.*)\nAnswer: (.*)\n", text)
    return [(q.strip(), a.strip()) for q, a in pairs]


PYDOC_QUESTIONS = (
    "What does the Python documentation say about {title}?",
    "Summarize the documentation section \"{title}\".",
    "Tell me about {title} in Python.",
)
CODE_QUESTIONS = (
    "What does this function do?\n\n```python\n{code}\n```",
    "Explain this code:\n\n```python\n{code}\n```",
    "Summarize `{name}` in one paragraph.\n\n```python\n{code}\n```",
)


def chat_examples(records: list[dict], seed: int) -> dict[str, list[list[dict]]]:
    """Conversations (lists of messages) by kind, made from `records`; the order is fixed by `seed`."""
    rng = random.Random(seed)
    kinds: dict[str, list[list[dict]]] = {"pydoc": [], "math": [], "code": []}

    def conversation(turns: list[tuple[str, str]]) -> list[dict]:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.5 else []
        for q, a in turns:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return messages

    for r in records:
        domain, text = r["meta"]["pile_set_name"], r["text"]
        if domain == "PydocTopics":
            for title, para in pydoc_sections(text):
                kinds["pydoc"] += [conversation([(q.format(title=title), para)]) for q in PYDOC_QUESTIONS]
        elif domain == "DM Mathematics":
            pairs = math_pairs(text)
            while pairs:
                take = rng.choice((1, 1, 2, 3))
                kinds["math"].append(conversation(pairs[:take]))
                pairs = pairs[take:]
        elif domain == "Github":
            for name, code, summary in docstring_functions(text):
                question = rng.choice(CODE_QUESTIONS).format(name=name, code=code)
                kinds["code"].append(conversation([(question, summary)]))
    return kinds


def encode_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, per token, whether it is trained on (assistant content and the
    <|im_end|> closing it). The whole text is tokenized at once, as at inference; spans come from offsets."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans, pos = [], 0
    for m in messages:
        head = f"{IM_START}{m['role']}\n"
        start = text.index(head, pos) + len(head)
        end = start + len(m["content"]) + len(IM_END)
        if m["role"] == "assistant":
            spans.append((start, end))
        pos = end
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trained = [any(s <= a and b <= e for s, e in spans) and b > a for a, b in enc["offset_mapping"]]
    return enc["input_ids"], trained


# -------------------------------------------------------------------------------------------- batching


def base_rows(token_docs: list[list[int]], seq_len: int, eot: int) -> torch.Tensor:
    """Documents joined as EOT d1 EOT d2 ..., cut into rows of seq_len + 1 overlapping by one token."""
    stream = np.fromiter((t for ids in token_docs for t in [eot, *ids]), dtype=np.int64)
    stream = np.append(stream, eot)
    n_rows = (len(stream) - 1) // seq_len
    rows = np.lib.stride_tricks.sliding_window_view(stream, seq_len + 1)[::seq_len][:n_rows]
    return torch.from_numpy(np.ascontiguousarray(rows))


def chat_rows(convs: list[tuple[list[int], list[bool]]], seq_len: int, eot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Conversations packed whole into rows of seq_len + 1 (padded with EOT, untrained); returns ids and a mask of
    the tokens that are targets. Conversations longer than a row are dropped by the caller."""
    rows, masks, ids, mask = [], [], [], []
    for conv_ids, conv_mask in convs:
        if len(ids) + len(conv_ids) > seq_len + 1:
            rows.append(ids + [eot] * (seq_len + 1 - len(ids)))
            masks.append(mask + [False] * (seq_len + 1 - len(mask)))
            ids, mask = [], []
        ids, mask = ids + conv_ids, mask + conv_mask
    if ids:
        rows.append(ids + [eot] * (seq_len + 1 - len(ids)))
        masks.append(mask + [False] * (seq_len + 1 - len(mask)))
    return torch.tensor(rows, dtype=torch.int64), torch.tensor(masks, dtype=torch.bool)


def cycle_rows(n_rows: int, seed: int) -> Iterator[int]:
    """Row indices one by one, a fresh seeded permutation each epoch."""
    epoch = 0
    while True:
        yield from torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        epoch += 1


def replay_schedule(fraction: float, batch_size: int, steps: int) -> list[int]:
    """Replayed rows in each step's batch: `fraction` of all rows, spread evenly (0.0625 x 4 rows: one every 4th)."""
    per_step = round(fraction * batch_size * 2**20)  # fixed point: no float rounding drift over the steps
    return [((s + 1) * per_step >> 20) - (s * per_step >> 20) for s in range(steps)]


def cycle_batches(n_rows: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Row indices batch by batch, a fresh seeded permutation each epoch."""
    epoch = 0
    while True:
        perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for i in range(0, n_rows - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]
        epoch += 1


# -------------------------------------------------------------------------------------------- training


def make_model(cfg: TrainConfig, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_positions, rope_theta=cfg.rope_theta, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def lm_loss(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over targets != -100; bf16 autocast matmuls, fp32 loss."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.model(input_ids=inputs, use_cache=False).last_hidden_state
        logits = model.lm_head(hidden)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


def make_optimizer(model, lr: float, weight_decay: float, betas, warmup: int, steps: int, min_ratio: float):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay,
                             "weight_decay": 0.0}], lr=lr, betas=betas, eps=1e-8)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_loop(model, batch_fn, steps: int, opt, sched, cfg: TrainConfig, label: str) -> tuple[list, float]:
    """Run `steps` optimizer steps; returns the loss curve [[step, mean loss since last entry, lr], ...] and the
    wall time in seconds."""
    model.train()
    curve, window, t0 = [], [], time.perf_counter()
    for step in range(1, steps + 1):
        inputs, targets = batch_fn()
        loss = lm_loss(model, inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window.append(loss.item())
        if step % cfg.log_every == 0 or step == steps:
            curve.append([step, round(sum(window) / len(window), 5), round(lr, 8)])
            window = []
            elapsed = time.perf_counter() - t0
            print(f"[{label}] step {step}/{steps} loss {curve[-1][1]:.4f} lr {lr:.2e} {elapsed:.0f}s",
                  file=sys.stderr, flush=True)
    return curve, time.perf_counter() - t0


def time_steps(model, batch_fn, cfg: TrainConfig, n: int = 4) -> float:
    """Median seconds per optimizer step, measured on a throwaway copy (the real model and data are untouched)."""
    trial = copy.deepcopy(model)
    opt, sched = make_optimizer(trial, cfg.base_lr, cfg.weight_decay, cfg.betas, 1, 10, 1.0)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        inputs, targets = batch_fn()
        lm_loss(trial, inputs, targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def save_model(model, tokenizer, folder: Path, generation_eos: list[int]) -> None:
    """bfloat16 safetensors + config + tokenizer + generation config."""
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if stale.is_file():
            stale.unlink()
    shipped = copy.deepcopy(model).to(torch.bfloat16)
    shipped.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=generation_eos, pad_token_id=0)
    shipped.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def load_model(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder)


# ------------------------------------------------------------------------------------------ evaluation


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


def evaluate_records(model, tokenizer, records: list[dict], counts: np.ndarray, batch_tokens: int = 8192) -> dict:
    """Score records (corpus dicts) with a loaded model; per-document sums and per-domain / overall / general means."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    token_docs = [[bos, *ids, eos] for ids in tokenizer([r["text"] for r in records],
                                                          add_special_tokens=False)["input_ids"]]
    nll = score_documents(model, token_docs, model.config.max_position_embeddings, batch_tokens)
    log_uni = np.log((counts + 1) / (counts.sum() + len(counts)))
    docs = []
    for r, ids, v in zip(records, token_docs, nll, strict=True):
        docs.append({
            "source": r["meta"]["source"], "domain": r["meta"]["pile_set_name"], "text_sha256": text_sha256(r["text"]),
            "n_targets": len(ids) - 1, "n_bytes": len(r["text"].encode("utf-8")), "nll_sum": float(v.sum()),
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
    records = read_corpus(corpus_path, split)
    if domains is not None:
        records = [r for r in records if r["meta"]["pile_set_name"] in domains]
    if counts is None:
        log_path = model_dir / "training_log.json"
        logged = json.loads(log_path.read_text())["unigram"]["counts"] if log_path.exists() else None
        if logged is not None:
            counts = np.asarray(logged, dtype=np.int64)
        else:
            counts = unigram_counts(tokenizer, [r["text"] for r in read_corpus(corpus_path, "train")])
    result = evaluate_records(model, tokenizer, records, counts)
    result.update({"model_dir": model_dir.name, "split": split,
                   "corpus_sha256": hashlib.sha256(corpus_path.read_bytes()).hexdigest()})
    return result


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
        answer = tokenizer.decode(gen[:stop], skip_special_tokens=False)
        if kind == "math":
            n_math += 1
            exact += answer.strip() == reference.strip()
        full_ids, trained = encode_chat(tokenizer, prompt_msgs + [{"role": "assistant", "content": reference}])
        logits = model(torch.tensor([full_ids]), use_cache=False).logits[0].float()
        logp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(full_ids[1:])[:, None])[:, 0]
        mask = torch.tensor(trained[1:])
        answer_nll -= float(logp[mask].sum())
        answer_tokens += int(mask.sum())
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


# ------------------------------------------------------------------------------------------------ driver


def _environment(threads: int) -> dict:
    import tokenizers
    import transformers

    names = [line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
        "torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "numpy": np.__version__, "threads": threads,
    }


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def train_pair(out_dir: Path, minutes: float = 12.0, quick: bool = False, seed: int = 0,
               cfg: TrainConfig | None = None, corpus_dir: Path | None = None, reuse_base: bool = False) -> dict:
    """Build the corpus, train tokenizer, base and instruct models, save them under out_dir/{base,instruct} with a
    training_log.json each (held-out numbers computed from the saved weights). Returns both logs.

    reuse_base: keep the base model already saved in out_dir/base (checked to come from the same corpus, tokenizer
    and base settings) and train only the instruct model."""
    cfg = cfg or (QUICK if quick else TrainConfig())
    out_dir = Path(out_dir)
    threads_before, det_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return _train_pair(out_dir, minutes, quick, seed, cfg, Path(corpus_dir or tmp), reuse_base)
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(det_before)


def _train_pair(out_dir: Path, minutes: float, quick: bool, seed: int, cfg: TrainConfig, corpus_dir: Path,
                reuse_base: bool = False) -> dict:
    from .corpus_build import build_corpus

    t_start = time.perf_counter()
    random.seed(seed)
    np.random.seed(seed)
    build_args = {"seed": cfg.corpus_seed, "math_docs": cfg.math_docs, "max_docs_per_source": cfg.max_docs_per_source}
    built = build_corpus(corpus_dir / "demo_corpus.jsonl.zst", **build_args)
    sidecar = json.loads(built.sidecar.read_text())
    corpus_info = {
        "file": built.path.name, "sha256": built.sha256, "python": sidecar["python"], "build_args": build_args,
        "counts": built.counts, "notes": built.notes,
        "source_sha256": {s["name"]: s["sha256"] for s in sidecar["sources"]},
    }
    train = read_corpus(built.path, "train")
    heldout = read_corpus(built.path, "heldout")
    print(f"corpus {built.sha256[:12]}: {len(train)} train / {len(heldout)} held-out documents", file=sys.stderr)

    # tokenizer: trained once on the training split, shared by both models (the instruct copy adds a template)
    tokenizer = train_tokenizer([r["text"] for r in train], cfg.vocab_size)
    tokenizer.model_max_length = cfg.max_positions
    chat_tokenizer = copy.deepcopy(tokenizer)
    chat_tokenizer.chat_template = CHAT_TEMPLATE
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    token_docs = tokenizer([r["text"] for r in train], add_special_tokens=False)["input_ids"]
    counts = unigram_counts(tokenizer, [r["text"] for r in train])
    if cfg.eval_max_doc_tokens is not None:
        held_ids = tokenizer([r["text"] for r in heldout], add_special_tokens=False)["input_ids"]
        heldout = [r for r, ids in zip(heldout, held_ids, strict=True) if len(ids) <= cfg.eval_max_doc_tokens]
    tok_info = {"kind": "byte-level BPE (HF tokenizers), digits split one by one", "vocab_size": len(tokenizer),
                "special_tokens": {t: i for i, t in enumerate(SPECIAL_TOKENS)}, "bos = eos = pad": EOT,
                "trained_on": "training split, corpus order", "training_tokens": int(sum(map(len, token_docs)))}
    rows = base_rows(token_docs, cfg.seq_len, tokenizer.eos_token_id)
    base_dir, inst_dir = out_dir / "base", out_dir / "instruct"
    reused = _reused_base_log(base_dir, tokenizer, built.sha256, cfg, seed) if reuse_base else None
    if reused is not None:
        cfg = replace(cfg, base_steps=reused["training"]["steps"])
    common = {
        "created_by": "python -m lossgap.train_demo", "quick": quick, "seed": seed,
        "seeds": {"torch.manual_seed (init)": seed, "row order": f"torch.Generator().manual_seed(s*1000+epoch), s = "
                  f"{seed} (base rows), {seed + 1} (chat rows), {seed + 2} (replay rows)",
                  "chat data": f"random.Random({seed})", "corpus (math generator)": cfg.corpus_seed},
        "environment": _environment(cfg.threads), "corpus": corpus_info, "tokenizer": tok_info,
        "hyperparameters": _jsonable(asdict(cfg)), "deterministic": "torch.use_deterministic_algorithms(True)",
        "unigram": {"estimated_on": "training split", "smoothing": "add-one over the vocabulary",
                    "n_tokens": int(counts.sum()), "counts": counts.tolist()},
    }
    if reused is not None:
        base_log = reused
    else:
        base_log = {**common, "model": "base", **_train_base(cfg, seed, minutes, rows, tokenizer, base_dir)}

    # instruct: fine-tuned from the saved (bfloat16) base weights, loss on assistant tokens only
    model, _ = load_model(base_dir)
    base_log["parameters"] = _params(model)
    kinds = chat_examples(train, seed)
    convs, dropped = [], 0
    for kind in kinds:
        for msgs in kinds[kind]:
            ids, trained = encode_chat(chat_tokenizer, msgs)
            if len(ids) > cfg.seq_len + 1:
                dropped += 1
            else:
                convs.append((ids, trained))
    random.Random(seed).shuffle(convs)
    chat_ids, chat_mask = chat_rows(convs, cfg.seq_len, tokenizer.eos_token_id)
    chat_order, replay_order = cycle_rows(len(chat_ids), seed + 1), cycle_rows(len(rows), seed + 2)
    n_replay = replay_schedule(cfg.instruct_replay_fraction, cfg.batch_size, cfg.instruct_steps)
    step_of = iter(range(cfg.instruct_steps))

    def chat_batch():
        r = n_replay[next(step_of)]
        index = torch.tensor([next(chat_order) for _ in range(cfg.batch_size - r)], dtype=torch.int64)
        ids, mask = chat_ids[index], chat_mask[index]
        inputs, targets = ids[:, :-1], torch.where(mask[:, 1:], ids[:, 1:], -100)
        if r:
            replay = rows[torch.tensor([next(replay_order) for _ in range(r)], dtype=torch.int64)]
            inputs, targets = torch.cat([inputs, replay[:, :-1]]), torch.cat([targets, replay[:, 1:]])
        return inputs, targets

    opt, sched = make_optimizer(model, cfg.instruct_lr, cfg.instruct_weight_decay, cfg.betas, cfg.instruct_warmup,
                                cfg.instruct_steps, cfg.min_lr_ratio)
    i_curve, i_wall = train_loop(model, chat_batch, cfg.instruct_steps, opt, sched, cfg, "instruct")
    save_model(model, chat_tokenizer, inst_dir, [chat_tokenizer.convert_tokens_to_ids(IM_END),
                                                  tokenizer.eos_token_id])
    del model, opt, sched
    chat_rows_used = cfg.instruct_steps * cfg.batch_size - sum(n_replay)
    inst_log = {
        **common, "model": "instruct", "parameters": base_log["parameters"],
        "fine_tuned_from": "../base (its saved bfloat16 weights, loaded as float32)"
                           + (" - reused from an earlier run of this script (--reuse-base)" if reuse_base else ""),
        "training": {
            "objective": "next-token loss on assistant content and its <|im_end|> only"
                         + ("; plus replayed pretraining rows (all tokens)" if sum(n_replay) else ""),
            "data": {"conversations": {k: len(v) for k, v in kinds.items()}, "dropped_longer_than_row": dropped,
                     "rows": len(chat_ids), "trained_tokens_per_epoch": int(chat_mask.sum()),
                     "chat_rows_used": chat_rows_used, "replay_rows_used": sum(n_replay),
                     "replay": "pretraining rows (the base's own data) mixed into the batches: "
                               "instruct_replay_fraction of all rows, spread evenly over the steps",
                     "system_prompt": SYSTEM_PROMPT + " (in a seeded half of the conversations)",
                     "questions": {"pydoc": PYDOC_QUESTIONS, "code": CODE_QUESTIONS},
                     "math": "the training split's Question/Answer pairs, 1-3 per conversation as turns"},
            "steps": cfg.instruct_steps, "chat_epochs": round(chat_rows_used / len(chat_ids), 3),
            "wall_time_s": round(i_wall, 1), "precision": "bf16 autocast, fp32 master weights and loss",
            "optimizer": "AdamW, linear warmup then cosine to min_lr_ratio", "loss_curve": i_curve},
        "chat_template": CHAT_TEMPLATE,
    }

    # held-out evaluation from the saved weights
    evals = {}
    for name, folder in (("base", base_dir), ("instruct", inst_dir)):
        m, tok = load_model(folder)
        evals[name] = evaluate_records(m, tok, heldout, counts, cfg.eval_batch_tokens)
        evals[name].update({"split": "heldout", "corpus_sha256": built.sha256})
        if cfg.eval_max_doc_tokens is not None:
            evals[name]["selection"] = f"documents of at most {cfg.eval_max_doc_tokens} tokens (quick run)"
        print(f"[eval] {name}: " + ", ".join(f"{d} {s['nll']:.3f}" for d, s in evals[name]["domains"].items())
              + f" | general {evals[name]['general']['nll']:.3f}", file=sys.stderr)
    held_kinds = chat_examples(heldout, seed)
    held_convs = [(k, c) for k in held_kinds for c in held_kinds[k][: cfg.chat_eval_per_kind]]
    chat = {name: chat_eval(folder, held_convs, cfg.chat_eval_new_tokens)
            for name, folder in (("base", base_dir), ("instruct", inst_dir))}
    chat["prompts"] = "first user turn of the first chat_eval_per_kind held-out conversations of each kind"
    comparison = {
        "general_nll": {n: evals[n]["general"]["nll"] for n in evals},
        "instruct_minus_base_general": evals["instruct"]["general"]["nll"] - evals["base"]["general"]["nll"],
        "instruct_minus_base_by_domain": {d: evals["instruct"]["domains"][d]["nll"] - s["nll"]
                                          for d, s in evals["base"]["domains"].items()},
    }
    comparison["relative_perplexity_general"] = math.exp(comparison["instruct_minus_base_general"]) - 1
    total = round(time.perf_counter() - t_start, 1)
    for name, log, folder in (("base", base_log, base_dir), ("instruct", inst_log, inst_dir)):
        log.update({"heldout_eval": evals[name], "chat_eval": chat, "comparison": comparison,
                    "total_wall_time_s": total, "files": _files(folder)})
        (folder / "training_log.json").write_text(json.dumps(log, indent=1, ensure_ascii=False) + "\n")
    return {"base": base_log, "instruct": inst_log}


def _train_base(cfg: TrainConfig, seed: int, minutes: float, rows: torch.Tensor, tokenizer, base_dir: Path) -> dict:
    """Pretrain on packed rows, save to base_dir; returns the log's training section."""
    model = make_model(cfg, seed)
    order = cycle_batches(len(rows), cfg.batch_size, seed)

    def base_batch():
        batch = rows[next(order)]
        return batch[:, :-1], batch[:, 1:]

    bench = None
    steps = cfg.base_steps
    if steps is None:
        probe_rows = rows[: cfg.batch_size * 4]
        probe = iter(probe_rows[i : i + cfg.batch_size] for i in range(0, len(probe_rows), cfg.batch_size))
        step_s = time_steps(model, lambda: (lambda b: (b[:, :-1], b[:, 1:]))(next(probe)), cfg)
        steps = max(20, int(minutes * 60 / step_s) // 10 * 10)
        bench = {"seconds_per_step": round(step_s, 4), "minutes_budget": minutes, "chosen_steps": steps}
        print(f"benchmark: {step_s:.3f} s/step -> {steps} base steps for {minutes} min", file=sys.stderr)
    opt, sched = make_optimizer(model, cfg.base_lr, cfg.weight_decay, cfg.betas, cfg.base_warmup, steps,
                                cfg.min_lr_ratio)
    curve, wall = train_loop(model, base_batch, steps, opt, sched, cfg, "base")
    save_model(model, tokenizer, base_dir, [tokenizer.eos_token_id])
    return {
        "parameters": _params(model),
        "training": {"objective": "next-token prediction on all tokens of packed rows",
                     "data": "training split in corpus order, joined as EOT d1 EOT d2 ... EOT, cut into rows of "
                             "seq_len+1 tokens overlapping by one, rows shuffled each epoch",
                     "rows": len(rows), "steps": steps, "tokens_seen": steps * cfg.batch_size * cfg.seq_len,
                     "epochs": round(steps * cfg.batch_size / len(rows), 3), "wall_time_s": round(wall, 1),
                     "step_time_benchmark": bench, "precision": "bf16 autocast, fp32 master weights and loss",
                     "optimizer": "AdamW, linear warmup then cosine to min_lr_ratio", "loss_curve": curve},
    }


_BASE_KEYS = ("corpus_seed", "math_docs", "max_docs_per_source", "vocab_size", "hidden_size", "num_layers",
              "num_heads", "num_kv_heads", "intermediate_size", "max_positions", "rope_theta", "seq_len", "batch_size",
              "base_lr", "base_warmup", "min_lr_ratio", "weight_decay", "betas", "grad_clip")


def _reused_base_log(base_dir: Path, tokenizer, corpus_sha: str, cfg: TrainConfig, seed: int) -> dict:
    """The log of a base model saved by an earlier run, after checking that this run would train the same one."""
    log = json.loads((base_dir / "training_log.json").read_text())
    saved = json.loads((base_dir / "tokenizer.json").read_text())
    problems = []
    if log["corpus"]["sha256"] != corpus_sha:
        problems.append("the corpus differs")
    if saved["model"] != json.loads(tokenizer.backend_tokenizer.to_str())["model"]:
        problems.append("the retrained tokenizer differs")
    wanted = _jsonable(asdict(cfg))
    changed = [k for k in _BASE_KEYS if log["hyperparameters"].get(k) != wanted[k]]
    if cfg.base_steps not in (None, log["training"]["steps"]):
        changed.append("base_steps")
    if changed or log["seed"] != seed:
        problems.append(f"base settings differ: {', '.join(changed) or 'seed'}")
    if problems:
        raise RuntimeError(f"--reuse-base: {base_dir} was not trained by this configuration ({'; '.join(problems)})")
    for key in ("heldout_eval", "chat_eval", "comparison", "total_wall_time_s", "files"):
        log.pop(key, None)
    log["hyperparameters"] = {k: v for k, v in log["hyperparameters"].items() if k in _BASE_KEYS or "base" in k}
    log["reused"] = "weights and training record from an earlier run; evaluated again by the run that trained instruct"
    return log


def _files(folder: Path) -> dict:
    return {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != "training_log.json"}


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lossgap.train_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder that receives base/ and instruct/")
    p.add_argument("--minutes", type=float, default=12.0, help="CPU budget for base pretraining (sets its steps)")
    p.add_argument("--quick", action="store_true", help="tiny configuration that runs in seconds (tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-steps", type=int, help="fixed base step count (overrides --minutes)")
    p.add_argument("--instruct-steps", type=int)
    p.add_argument("--instruct-lr", type=float)
    p.add_argument("--instruct-replay-fraction", type=float, help="share of instruct rows that replay pretraining data")
    p.add_argument("--threads", type=int)
    p.add_argument("--reuse-base", action="store_true",
                   help="keep the base already in OUT/base (same corpus and settings) and train only the instruct")
    p.add_argument("--corpus-dir", type=Path, help="keep the built corpus here (default: a temporary folder)")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else TrainConfig()
    overrides = {"base_steps": args.base_steps, "instruct_steps": args.instruct_steps,
                 "instruct_lr": args.instruct_lr, "instruct_replay_fraction": args.instruct_replay_fraction,
                 "threads": args.threads}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # per-call progress bars and "sequence longer than" notices
    hf_logging.disable_progress_bar()
    logs = train_pair(args.out, args.minutes, args.quick, args.seed, cfg, args.corpus_dir, args.reuse_base)
    print(json.dumps(logs["base"]["comparison"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
