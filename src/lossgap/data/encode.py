"""Tokenization with an explicit BOS/EOS policy, and each document's UTF-8 byte count (for bits per byte).

With a chat context (`--chat-context`) each document follows the model's own chat template up to the assistant's
reply, in place of BOS; the prefix is context only, so the scored targets are exactly those of the raw document.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..config import TokenizeConfig
from ..errors import ModelError, UsageError
from .corpus import Document


@dataclass
class TokenizedDocument:
    doc_id: int
    domain: str
    source: str
    ids: np.ndarray  # int64 token ids, BOS/EOS included per policy
    n_bytes: int  # UTF-8 bytes of the text
    context: int = 0  # ids[context] is the raw document's position 0: what precedes it is a chat prefix, never scored


@dataclass(frozen=True)
class SpecialTokens:
    """The BOS/EOS ids actually added to every document (None: not added)."""

    bos_id: int | None
    eos_id: int | None


def resolve_special_tokens(tokenizer, cfg: TokenizeConfig, vocab_size: int | None = None) -> SpecialTokens:
    """Apply the policy: BOS when the tokenizer defines one (unless told), EOS appended by default; with a
    `vocab_size`, refuse ids outside the model's vocabulary."""
    bos = cfg.bos_id if cfg.bos_id is not None else tokenizer.bos_token_id
    eos = cfg.eos_id if cfg.eos_id is not None else tokenizer.eos_token_id
    if cfg.add_bos is True and bos is None:
        raise UsageError(
            "--bos: the tokenizer defines no BOS token", "name one with --bos-id N, or pass --no-bos"
        )
    add_bos = bos is not None if cfg.add_bos is None else cfg.add_bos
    add_eos = cfg.add_eos and eos is not None  # a tokenizer without EOS gets none appended
    special = SpecialTokens(bos if add_bos else None, eos if add_eos else None)
    for name, value, given in (("bos", special.bos_id, cfg.bos_id), ("eos", special.eos_id, cfg.eos_id)):
        if value is not None and vocab_size is not None and not 0 <= value < vocab_size:
            origin = f"--{name}-id {value}" if given is not None else f"the tokenizer's {name} id {value}"
            raise UsageError(
                f"{origin} is outside the model's vocabulary (size {vocab_size})",
                f"pass --{name}-id with an id below {vocab_size}, or check that tokenizer and model match",
            )
    return special


CHAT_MARKER = "LOSSGAPDOCUMENT"  # stands for the document while the chat template is rendered


def chat_prefix(tokenizer, user_turn: str, model_name: str) -> list[int]:
    """The token ids the model's chat template puts before the assistant's reply to `user_turn`."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"{model_name} has no chat template, so --chat-context cannot place documents as its replies",
                         "drop --chat-context, or use a model whose tokenizer_config.json has a chat_template")
    messages = [{"role": "user", "content": user_turn}, {"role": "assistant", "content": CHAT_MARKER}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if CHAT_MARKER not in text:
        raise ModelError(f"{model_name}'s chat template does not show the assistant's reply verbatim",
                         "drop --chat-context for this model")
    return list(tokenizer(text[: text.index(CHAT_MARKER)], add_special_tokens=False)["input_ids"])


def encode_documents(
    docs: Iterable[Document],
    tokenizer,
    special: SpecialTokens,
    vocab_size: int,
    max_tokens: int | None = None,
    batch_docs: int = 64,
    prefix: list[int] | None = None,
) -> Iterator[TokenizedDocument]:
    """Tokenize in small batches (fast tokenizers parallelise a batch); stop once max_tokens are taken. A `prefix`
    (chat_prefix) replaces BOS as the context of every document; positions stay those of the raw document."""
    taken = 0
    head = [] if prefix is None else list(prefix)
    context = 0 if prefix is None else len(head) - (special.bos_id is not None)
    for chunk in in_chunks(docs, batch_docs):
        # verbose=False: whole documents are meant to exceed model_max_length; layouts cut them, not the tokenizer
        encoded = tokenizer([d.text for d in chunk], add_special_tokens=False, verbose=False)["input_ids"]
        for doc, ids in zip(chunk, encoded, strict=True):
            if max_tokens is not None and taken >= max_tokens:
                return
            start = head if prefix is not None else [special.bos_id] if special.bos_id is not None else []
            parts = start + list(ids)
            if special.eos_id is not None:
                parts.append(special.eos_id)
            arr = np.asarray(parts, dtype=np.int64)
            if arr.size and int(arr.max()) >= vocab_size:
                top = int(arr.max())
                raise ModelError(
                    f"{doc.source}: token id {top} is outside the model's vocabulary ({vocab_size})",
                    "the tokenizer does not belong to this model; load both from the same folder",
                )
            taken += arr.size - context  # the raw document's tokens: --max-tokens takes the same documents
            yield TokenizedDocument(doc.doc_id, doc.domain, doc.source, arr, len(doc.text.encode("utf-8")), context)
            if max_tokens is not None and taken >= max_tokens:
                return  # do not pull (and tokenize) another batch of documents past the limit


def in_chunks(items: Iterable, size: int) -> Iterator[list]:
    """Items in lists of `size` (the last shorter): a fast tokenizer parallelises a list of texts."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
