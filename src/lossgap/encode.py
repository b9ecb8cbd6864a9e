"""Tokenization with an explicit BOS/EOS policy, and each document's UTF-8 byte count (for bits per byte)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .config import TokenizeConfig
from .corpus import Document
from .errors import ModelError, UsageError


@dataclass
class TokenizedDocument:
    doc_id: int
    domain: str
    source: str
    ids: np.ndarray  # int64 token ids, BOS/EOS included per policy
    n_bytes: int  # UTF-8 bytes of the text


@dataclass(frozen=True)
class SpecialTokens:
    """The BOS/EOS ids actually added to every document (None: not added)."""

    bos_id: int | None
    eos_id: int | None


def resolve_special_tokens(tokenizer, cfg: TokenizeConfig, vocab_size: int) -> SpecialTokens:
    """Apply the policy: BOS when the tokenizer defines one (unless told), EOS appended by default."""
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
        if value is not None and not 0 <= value < vocab_size:
            origin = f"--{name}-id {value}" if given is not None else f"the tokenizer's {name} id {value}"
            raise UsageError(
                f"{origin} is outside the model's vocabulary (size {vocab_size})",
                f"pass --{name}-id with an id below {vocab_size}, or check that tokenizer and model match",
            )
    return special


def encode_documents(
    docs: Iterable[Document],
    tokenizer,
    special: SpecialTokens,
    vocab_size: int,
    max_tokens: int | None = None,
    batch_docs: int = 64,
) -> Iterator[TokenizedDocument]:
    """Tokenize in small batches (fast tokenizers parallelise a batch); stop once max_tokens are taken."""
    taken = 0
    for chunk in _chunks(docs, batch_docs):
        # verbose=False: whole documents are meant to exceed model_max_length; layouts cut them, not the tokenizer
        encoded = tokenizer([d.text for d in chunk], add_special_tokens=False, verbose=False)["input_ids"]
        for doc, ids in zip(chunk, encoded, strict=True):
            if max_tokens is not None and taken >= max_tokens:
                return
            parts = ([special.bos_id] if special.bos_id is not None else []) + list(ids)
            if special.eos_id is not None:
                parts.append(special.eos_id)
            arr = np.asarray(parts, dtype=np.int64)
            if arr.size and int(arr.max()) >= vocab_size:
                top = int(arr.max())
                raise ModelError(
                    f"{doc.source}: token id {top} is outside the model's vocabulary ({vocab_size})",
                    "the tokenizer does not belong to this model; load both from the same folder",
                )
            taken += arr.size
            yield TokenizedDocument(doc.doc_id, doc.domain, doc.source, arr, len(doc.text.encode("utf-8")))
            if max_tokens is not None and taken >= max_tokens:
                return  # do not pull (and tokenize) another batch of documents past the limit


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
