"""Tokenization with an explicit BOS/EOS policy, and each document's UTF-8 byte count (for bits per byte).

With a chat context (`--chat-context`) each document follows the model's own chat template up to the assistant's
reply, in place of BOS; the prefix is context only, so the scored targets are exactly those of the raw document. With
`--chat-end-of-turn` a whole document ends with the template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`: what
follows the reply) in place of its EOS, so exactly one target per whole document differs from the raw run's.

`--max-tokens` bounds the work as well as the result: documents are read and tokenized only until the cap is reached,
the document that reaches it is cut at the cap, and a long text is tokenized by growing prefixes, never whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..config import TokenizeConfig
from ..errors import ModelError, UsageError
from .chat import render_chat, template_source
from .corpus import Document


@dataclass
class TokenizedDocument:
    doc_id: int
    domain: str
    source: str
    ids: np.ndarray  # int64 token ids, BOS/EOS included per policy
    n_bytes: int  # UTF-8 bytes of the text
    context: int = 0  # ids[context] is the raw document's position 0: what precedes it is a chat prefix, never scored
    prefix: int = 0  # the chat prefix's tokens, ids[:prefix] (the last stands in for BOS when the raw run has one)


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


MARGIN = 64  # tokens a prefix must give past those kept before its tokenization is trusted (leading_tokens)
CHARS_PER_TOKEN = 8  # text first tokenized per token wanted (English runs about 4 characters a token)
CHAT_MARKER = "LOSSGAPDOCUMENT"  # stands for the document while the chat template is rendered


def chat_prefix(tokenizer, user_turn: str, model_name: str) -> list[int]:
    """The token ids the model's chat template puts before the assistant's reply to `user_turn` (the template is
    rendered as untrusted input: chat.py)."""
    before, _ = _around_reply(tokenizer, user_turn, model_name)
    return list(tokenizer(before, add_special_tokens=False)["input_ids"])


def chat_end_of_turn(tokenizer, user_turn: str, model_name: str) -> int:
    """The id of the token the model's chat template puts right after the assistant's reply, its end-of-turn token
    (`<|im_end|>`, `<|eot_id|>`); refused unless what follows the reply begins with a special token."""
    _, after = _around_reply(tokenizer, user_turn, model_name)
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | {
        i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items() if t.special}
    if not ids or ids[0] not in special:
        said = "nothing" if not after else f"{after[:40]!r}, which does not begin with a special token,"
        raise ModelError(f"{template_source(tokenizer, model_name)}: the chat template puts {said} after the "
                         "assistant's reply, so it has no end-of-turn token (such as <|im_end|> or <|eot_id|>) to end "
                         "each document with",
                         "drop --chat-end-of-turn for this model: its chat-formatted documents then end with the EOS, "
                         "as the raw ones do")
    return int(ids[0])


def _around_reply(tokenizer, user_turn: str, model_name: str) -> tuple[str, str]:
    """The rendered chat template before and after the assistant's reply to `user_turn`."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"{model_name} has no chat template, so --chat-context cannot place documents as its replies",
                         "drop --chat-context, or use a model whose tokenizer_config.json has a chat_template")
    messages = [{"role": "user", "content": user_turn}, {"role": "assistant", "content": CHAT_MARKER}]
    text = render_chat(tokenizer, messages, model_name)
    if not isinstance(text, str) or CHAT_MARKER not in text:
        raise ModelError(f"{template_source(tokenizer, model_name)}: the chat template does not show the assistant's "
                         "reply verbatim", "drop --chat-context for this model")
    before, after = text.split(CHAT_MARKER, 1)
    return before, after


def encode_documents(
    docs: Iterable[Document],
    tokenizer,
    special: SpecialTokens,
    vocab_size: int,
    max_tokens: int | None = None,
    batch_docs: int = 64,
    prefix: list[int] | None = None,
    end_of_turn: int | None = None,
) -> Iterator[TokenizedDocument]:
    """Tokenize in small batches (fast tokenizers parallelise a batch). A `prefix` (chat_prefix) replaces BOS as
    the context of every document; positions stay those of the raw document. An `end_of_turn` id (chat_end_of_turn)
    replaces the EOS of every whole document: the same number of tokens, so the same documents are cut, at the same
    token.

    `max_tokens` caps the documents' tokens (BOS, text and EOS; a chat prefix is context, not counted): the document
    that reaches the cap is cut there, without EOS, and nothing after it is read or tokenized (`capped`)."""
    encoder = _Encoder(tokenizer, special, vocab_size, prefix, end_of_turn)
    if max_tokens is not None:
        yield from capped(encoder, iter(docs), max_tokens, batch_docs)
        return
    for chunk in in_chunks(docs, batch_docs):
        for doc, ids in zip(chunk, encoder.tokenize([d.text for d in chunk]), strict=True):
            yield encoder.document(doc, ids, whole=doc.complete)


@dataclass
class _Encoder:
    """Token ids of documents under one BOS/EOS policy (and chat prefix and end-of-turn token), checked against the
    vocabulary."""

    tokenizer: object
    special: SpecialTokens
    vocab_size: int
    prefix: list[int] | None
    end_of_turn: int | None = None  # what a whole document ends with in place of its EOS (--chat-end-of-turn)

    @property
    def start(self) -> list[int]:
        """What precedes each document's text: the chat prefix, else BOS (or nothing)."""
        if self.prefix is not None:
            return list(self.prefix)
        return [] if self.special.bos_id is None else [self.special.bos_id]

    @property
    def counted_start(self) -> int:
        """Tokens of `start` that count as the document's own: its BOS (a chat prefix stands in for it)."""
        return int(self.special.bos_id is not None)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        # verbose=False: whole documents are meant to exceed model_max_length; layouts cut them, not the tokenizer
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []

    def document(self, doc: Document, ids: list[int], whole: bool, n_bytes: int | None = None) -> TokenizedDocument:
        """start + ids (+ EOS, or the end-of-turn token in its place, when `whole`: the ids are all of the
        document's text)."""
        start = self.start
        parts = start + list(ids)
        if whole and self.special.eos_id is not None:
            parts.append(self.special.eos_id if self.end_of_turn is None else self.end_of_turn)
        arr = np.asarray(parts, dtype=np.int64)
        if arr.size and int(arr.max()) >= self.vocab_size:
            raise ModelError(
                f"{doc.source}: token id {int(arr.max())} is outside the model's vocabulary ({self.vocab_size})",
                "the tokenizer does not belong to this model; load both from the same folder",
            )
        n_bytes = len(doc.text.encode("utf-8")) if n_bytes is None else n_bytes
        context = len(start) - self.counted_start
        return TokenizedDocument(doc.doc_id, doc.domain, doc.source, arr, n_bytes, context,
                                 len(start) if self.prefix is not None else 0)

    def leading(self, chunk: list[Document], n: int) -> list[tuple[list[int], bool, int]]:
        """(ids, whole, piece) per document, as leading_tokens: short texts are tokenized together, whole."""
        chars = CHARS_PER_TOKEN * (n + MARGIN)
        short = [i for i, d in enumerate(chunk) if len(d.text) <= chars]
        ids_of = dict(zip(short, self.tokenize([chunk[i].text for i in short]), strict=True))
        out = []
        for i, doc in enumerate(chunk):
            ids, whole, piece = (ids_of[i], True, len(doc.text)) if i in ids_of else \
                leading_tokens(self.tokenizer, doc.text, n, chars)
            out.append((ids, whole and doc.complete, piece))
        return out

    def within(self, doc: Document, ids: list[int], whole: bool, piece: int,
               room: int) -> tuple[TokenizedDocument | None, bool]:
        """(the document, whether it was cut) in `room` tokens: whole with its EOS when that fits, else its first
        tokens without EOS; (None, False) when no token of its text fits."""
        n_eos = int(self.special.eos_id is not None)
        if whole and self.counted_start + len(ids) + n_eos <= room:
            return self.document(doc, ids, whole=True), False
        keep = min(len(ids), room - self.counted_start)
        if keep <= 0:
            return None, False
        n_bytes = None if whole and keep == len(ids) else covered_bytes(self.tokenizer, doc.text[:piece], ids, keep)
        return self.document(doc, ids[:keep], whole=False, n_bytes=n_bytes), True


def capped(encoder: _Encoder, docs: Iterator[Document], cap: int, batch_docs: int) -> Iterator[TokenizedDocument]:
    """Documents until their tokens reach `cap`, the last one cut there (TokenCap in corpus.py says what is kept).

    Documents are pulled from the corpus a batch at a time, a batch ending once it holds CHARS_PER_TOKEN x (tokens
    left + MARGIN) characters, and a text longer than that is tokenized by prefixes (leading_tokens): the text
    tokenized stays within a few times what the cap takes, however long a document is, and no document past the
    batch in which the cap is reached is read."""
    taken = 0
    while taken < cap:
        chunk = _pull(docs, batch_docs, CHARS_PER_TOKEN * (cap - taken + MARGIN))
        if not chunk:
            return
        for doc, (ids, whole, piece) in zip(chunk, encoder.leading(chunk, cap - taken), strict=True):
            out, cut = encoder.within(doc, ids, whole, piece, cap - taken)
            if out is None:  # not one token of its text fits beside its BOS: the cap is reached
                return
            taken += len(out.ids) - out.context
            if doc.cap is not None:
                doc.cap.cap, doc.cap.tokens, doc.cap.last_document_cut = cap, taken, cut
                doc.cap.documents += 1
            yield out
            if cut or taken >= cap:
                return


def leading_tokens(tokenizer, text: str, n: int, chars: int) -> tuple[list[int], bool, int]:
    """The token ids of the beginning of `text`, at least its first n, without tokenizing all of a long text.

    Prefixes of `chars`, 2 x chars, 4 x chars... characters are tokenized until one gives n + MARGIN tokens whose
    first n the next prefix, twice as long, gives too: a tokenizer's merges reach across a cut only near it, so
    those n are the whole text's first n. Returns (ids, whole, piece): whole when the ids are all of the text's,
    piece the number of characters they come from."""
    candidate = None
    while chars < len(text):
        ids = tokenizer(text[:chars], add_special_tokens=False, verbose=False)["input_ids"]
        if candidate is not None and ids[:n] == candidate[0][:n]:
            return candidate[0][:n], False, candidate[1]
        candidate = (ids, chars) if len(ids) >= n + MARGIN else None
        chars *= 2
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], True, len(text)


def covered_bytes(tokenizer, text: str, ids: list[int], keep: int) -> int:
    """UTF-8 bytes of `text` up to the end of its keep-th token: a cut document's bytes, for bits per byte. A
    character split between tokens counts whole once one of its tokens is kept."""
    if keep <= 0:
        return 0
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                            verbose=False)["offset_mapping"]
        return len(text[: max(end for _, end in offsets[:keep])].encode("utf-8"))
    return len(tokenizer.decode(ids[:keep]).encode("utf-8"))  # a slow tokenizer has no offsets


def _pull(docs: Iterator[Document], most: int, chars: int) -> list[Document]:
    """The next documents: `most` of them, or fewer once they hold `chars` characters."""
    chunk, held = [], 0
    for doc in docs:
        chunk.append(doc)
        held += len(doc.text)
        if len(chunk) == most or held >= chars:
            break
    return chunk


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
