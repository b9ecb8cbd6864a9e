"""What the demo pair learns from: the corpus's records, the shared tokenizer, chat conversations, packed rows."""

from __future__ import annotations

import ast
import random
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lossgap.config import CorpusConfig
from lossgap.data.corpus import Corpus

EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (EOT, IM_START, IM_END)  # ids 0, 1, 2 in both tokenizers
SYSTEM_PROMPT = "You are a helpful assistant who answers questions about Python and arithmetic."
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
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


# ----------------------------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Record:
    """One document of a corpus written by `lossgap.data.corpus_build.build_corpus`: its text and meta fields."""

    text: str
    domain: str  # meta.pile_set_name
    split: str  # meta.split: "train" or "heldout"
    source: str  # meta.source, e.g. "stdlib:os.py"


def read_records(path: Path, split: str | None = None) -> list[Record]:
    """Records in file order, optionally only one split, read with lossgap's corpus reader.

    A Document carries one record field besides its text (as its domain), so meta.split and meta.source each take
    one more pass over the file, matched to the documents by doc_id."""
    docs = list(Corpus(CorpusConfig(str(path))))
    splits, sources = (_meta_field(path, name) for name in ("split", "source"))
    records = [Record(d.text, d.domain, splits[d.doc_id], sources[d.doc_id]) for d in docs]
    return [r for r in records if split in (None, r.split)]


def _meta_field(path: Path, name: str) -> dict[int, str]:
    """meta.<name> of every record, by doc_id."""
    return {d.doc_id: d.domain for d in Corpus(CorpusConfig(str(path), domain_field=f"meta.{name}"))}


# -------------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    """Byte-level BPE (digits split one by one) with the three special tokens at ids 0, 1, 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

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
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT, unk_token=None,
        extra_special_tokens=[IM_START, IM_END], model_max_length=max_length, clean_up_tokenization_spaces=False,
    )


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
    """(question, answer) pairs of a DM Mathematics document."""
    pairs = re.findall(r"Question: (.*)\nAnswer: (.*)\n", text)
    return [(q.strip(), a.strip()) for q, a in pairs]


def chat_examples(records: list[Record], seed: int) -> dict[str, list[list[dict]]]:
    """Conversations (lists of messages) by kind, made from `records`; the order is fixed by `seed`."""
    rng = random.Random(seed)
    kinds: dict[str, list[list[dict]]] = {"pydoc": [], "math": [], "code": []}

    def conversation(turns: list[tuple[str, str]]) -> list[dict]:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.5 else []
        for q, a in turns:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return messages

    for r in records:
        if r.domain == "PydocTopics":
            for title, para in pydoc_sections(r.text):
                kinds["pydoc"] += [conversation([(q.format(title=title), para)]) for q in PYDOC_QUESTIONS]
        elif r.domain == "DM Mathematics":
            pairs = math_pairs(r.text)
            while pairs:
                take = rng.choice((1, 1, 2, 3))
                kinds["math"].append(conversation(pairs[:take]))
                pairs = pairs[take:]
        elif r.domain == "Github":
            for name, code, summary in docstring_functions(r.text):
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


def encode_conversations(tokenizer, kinds: dict[str, list[list[dict]]], max_tokens: int,
                         seed: int) -> tuple[list[tuple[list[int], list[bool]]], int]:
    """Encoded conversations of every kind that fit in `max_tokens`, in a seeded order, and how many did not."""
    encoded, dropped = [], 0
    for conversations in kinds.values():
        for messages in conversations:
            ids, trained = encode_chat(tokenizer, messages)
            if len(ids) > max_tokens:
                dropped += 1
            else:
                encoded.append((ids, trained))
    random.Random(seed).shuffle(encoded)
    return encoded, dropped


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
