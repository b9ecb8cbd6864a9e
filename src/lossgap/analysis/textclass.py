"""What text each token id stands for, and its class: the vocabulary side of "where the difference comes from".

Text classes of a token (the first rule that matches wins):

1. special: a special or added control token of the tokenizer (<|endoftext|>, <|im_start|>, ...), or an id the
   tokenizer does not define; it stands for no text bytes.
2. newline: only whitespace bytes (space, tab, newline, carriage return, vertical tab, form feed), at least one of
   them a newline or carriage return.
3. whitespace: only whitespace bytes, none a newline or carriage return.
4. non_ascii: any byte >= 0x80, including a byte-level token that holds only part of a multi-byte character.
5. digits: ASCII digits 0-9, optionally after one leading space.
6. punctuation: ASCII punctuation or symbol characters (!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~), optionally after one
   leading space.
7. word_start: one leading space followed by ASCII letters.
8. word_continuation: ASCII letters with no leading space (also a word right after a newline or punctuation, which
   the token alone cannot tell apart).
9. mixed: anything else (e.g. "x2", "a.b", "\\tif", control characters).

Byte classes (for bits-per-byte attribution; every byte of a token is in exactly one, special tokens have none):
newline (\\n, \\r); whitespace (space, \\t, vertical tab, form feed); punctuation (every other ASCII byte below
0x80 that is not a digit or letter: punctuation, symbols, control characters); digits (0-9); letters (A-Z, a-z);
non_ascii (bytes >= 0x80).

A token's bytes are what it stands for inside a text, so the concatenated bytes of a text's tokens are the text's
UTF-8 bytes. Byte-level BPE (GPT-2, Llama 3, SmolLM2) writes bytes as printable characters (bytes_to_unicode) and
is inverted exactly; SentencePiece writes a space as "▁" and unknown bytes as "<0xHH>". A tokenizer that prepends a
space to every text (SentencePiece's dummy prefix, add_prefix_space) gives the first token a space the text lacks;
a special token's text written in a document ("<|endoftext|>") becomes that token, with no bytes, unless the text
is tokenized with split_special_tokens=True.

For display a token with no bytes is shown by its name ("<|im_end|>"; "<id N>" for an id the tokenizer does not
define), and a run of tokens is decoded as a whole (TokenTexts.span): a character split over several byte-level
tokens appears on the token where it ends, the tokens before show nothing of it.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..formats.files import atomic_path
from ..formats.paths import ComparisonFolder

TEXT_CLASSES = ("special", "newline", "whitespace", "non_ascii", "digits", "punctuation", "word_start",
                "word_continuation", "mixed")
BYTE_CLASSES = ("newline", "whitespace", "punctuation", "digits", "letters", "non_ascii")

_WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")
_DIGITS = re.compile(rb" ?[0-9]+")
_PUNCTUATION = re.compile(rb" ?[!-/:-@\[-`{-~]+")
_WORD_START = re.compile(rb" [A-Za-z]+")
_WORD_CONTINUATION = re.compile(rb"[A-Za-z]+")
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # a byte that did not decode, under errors="surrogateescape"


def _byte_class_of_each_byte() -> np.ndarray:
    """Index into BYTE_CLASSES for each of the 256 byte values."""
    table = np.full(256, BYTE_CLASSES.index("punctuation"), dtype=np.int8)
    table[[0x0A, 0x0D]] = BYTE_CLASSES.index("newline")
    table[[0x20, 0x09, 0x0B, 0x0C]] = BYTE_CLASSES.index("whitespace")
    table[ord("0"):ord("9") + 1] = BYTE_CLASSES.index("digits")
    table[ord("A"):ord("Z") + 1] = BYTE_CLASSES.index("letters")
    table[ord("a"):ord("z") + 1] = BYTE_CLASSES.index("letters")
    table[0x80:] = BYTE_CLASSES.index("non_ascii")
    return table


BYTE_CLASS_OF = _byte_class_of_each_byte()


def text_class(data: bytes, special: bool = False) -> str:
    """The text class of a token standing for `data` (rules in the module docstring)."""
    if special or not data:
        return "special"
    if all(b in _WHITESPACE for b in data):
        return "newline" if (b"\n" in data or b"\r" in data) else "whitespace"
    if any(b >= 0x80 for b in data):
        return "non_ascii"
    for name, pattern in (("digits", _DIGITS), ("punctuation", _PUNCTUATION), ("word_start", _WORD_START),
                          ("word_continuation", _WORD_CONTINUATION)):
        if pattern.fullmatch(data):
            return name
    return "mixed"


def byte_level_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode inverted: the printable character byte-level BPE writes for each byte -> the byte.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are written as chr(256), chr(257), ... in
    byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    decoder, shifted = {}, 0
    for b in range(256):
        if b in printable:
            decoder[chr(b)] = b
        else:
            decoder[chr(256 + shifted)] = b
            shifted += 1
    return decoder


def special_ids(tokenizer) -> set[int]:
    """Ids of the special tokens and of the added tokens marked special (chat and control tokens)."""
    ids = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    for i, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(i))
    return ids


def tokenizer_style(tokenizer) -> str:
    """"byte_level", "sentencepiece" or "other", from the backend's decoder and pre-tokenizer (or a slow
    tokenizer's attributes)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        parts = " ".join(repr(getattr(backend, name, None)) for name in ("decoder", "pre_tokenizer", "normalizer"))
        if "ByteLevel" in parts:
            return "byte_level"
        if "\u2581" in parts or "Metaspace" in parts or "ByteFallback" in parts:
            return "sentencepiece"
    if hasattr(tokenizer, "byte_decoder") or hasattr(tokenizer, "byte_encoder"):
        return "byte_level"
    if hasattr(tokenizer, "sp_model"):
        return "sentencepiece"
    return "other"


def _piece_bytes(piece: str, style: str, decoder: dict[str, int], tokenizer) -> bytes:
    if style == "byte_level" and all(c in decoder for c in piece):
        return bytes(decoder[c] for c in piece)
    if style == "sentencepiece":
        fallback = _BYTE_FALLBACK.fullmatch(piece)
        return bytes([int(fallback.group(1), 16)]) if fallback else piece.replace("\u2581", " ").encode("utf-8")
    if style == "other":  # e.g. WordPiece: the tokenizer's own rendering of the piece alone, an approximation
        return tokenizer.convert_tokens_to_string([piece]).encode("utf-8")
    return piece.encode("utf-8")


def token_bytes(tokenizer, vocab_size: int | None = None) -> list[bytes]:
    """The exact UTF-8 bytes each token id stands for inside a text; b"" for special tokens and undefined ids.

    `vocab_size` (e.g. the model's, often padded above the tokenizer's) sets the length of the list."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    n = max([len(tokenizer), *(int(i) + 1 for i in added)])
    n = max(n, vocab_size or 0)
    specials = special_ids(tokenizer)
    style = tokenizer_style(tokenizer)
    decoder = byte_level_decoder()
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    out = []
    for i, piece in enumerate(pieces):
        if i in specials or piece is None:
            out.append(b"")
        elif i in added:  # a non-special added token matches its content literally in the text
            out.append(str(added[i].content).encode("utf-8"))
        else:
            out.append(_piece_bytes(piece, style, decoder, tokenizer))
    return out


def shown_alone(data: bytes) -> str:
    """A token's bytes as text when shown alone: a byte that is no whole UTF-8 character alone (part of one split over
    several tokens) as <0xHH>, so that the parts of different characters do not all read U+FFFD."""
    text = data.decode("utf-8", errors="surrogateescape")
    return _ESCAPED_BYTE.sub(lambda m: f"<0x{ord(m.group()) - 0xDC00:02X}>", text)


def undefined_name(token_id: int) -> str:
    """What an id the tokenizer does not define is shown as."""
    return f"<id {token_id}>"


def token_names(tokenizer, n: int) -> list[str]:
    """Each id's name in the tokenizer's vocabulary ("<|im_end|>", "Ġthe"), the name of a special token being the
    only way to show it; undefined_name for an id the tokenizer does not define."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    return [str(p) if p else undefined_name(i) for i, p in enumerate(pieces)]


def vocab_table(tokenizer, vocab_size: int | None = None) -> pa.Table:
    """One row per token id: id, bytes, text (for display: shown_alone of the bytes, or the token's name where it
    stands for no bytes), special (text class special: shown by name), n_bytes, text_class and bytes_<class> for
    each byte class. Row i is token id i, so a column indexed by target ids gives per-token values."""
    data = token_bytes(tokenizer, vocab_size)
    specials = special_ids(tokenizer)
    classes = [text_class(b, i in specials) for i, b in enumerate(data)]
    names = token_names(tokenizer, len(data))
    n_bytes = np.fromiter((len(b) for b in data), dtype=np.int64, count=len(data))
    flat = np.frombuffer(b"".join(data), dtype=np.uint8)
    owner = np.repeat(np.arange(len(data)), n_bytes)
    k = len(BYTE_CLASSES)
    counts = np.bincount(owner * k + BYTE_CLASS_OF[flat], minlength=len(data) * k).reshape(len(data), k)
    columns = {
        "id": pa.array(np.arange(len(data), dtype=np.int32)),
        "bytes": pa.array(data, type=pa.binary()),
        "text": pa.array([name if c == "special" else shown_alone(b)
                          for b, c, name in zip(data, classes, names, strict=True)], type=pa.string()),
        "special": pa.array([c == "special" for c in classes], type=pa.bool_()),
        "n_bytes": pa.array(n_bytes.astype(np.int32)),
        "text_class": pa.array(classes, type=pa.string()),
    }
    for j, name in enumerate(BYTE_CLASSES):
        columns[f"bytes_{name}"] = pa.array(counts[:, j].astype(np.int32))
    return pa.table(columns)


_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))


@dataclass(frozen=True)
class TokenTexts:
    """How the report shows token ids, from a vocabulary table: one token alone, or a run of tokens decoded as a whole
    so that no character is cut into U+FFFD halves. Special tokens (and ids outside the table) are shown by name."""

    data: list[bytes]
    names: list[str]  # each id alone: its decoded bytes, or its name where it stands for no bytes
    special: list[bool]

    @classmethod
    def of(cls, vocab: pa.Table) -> TokenTexts:
        """From vocab_table's columns; a table written before the special column had one stored "" as the text of
        a special token, which is shown as undefined_name then."""
        classes = vocab.column("text_class").to_pylist()
        special = (vocab.column("special").to_pylist() if "special" in vocab.column_names
                   else [c == "special" for c in classes])
        names = [undefined_name(i) if s and not text else text
                 for i, (text, s) in enumerate(zip(vocab.column("text").to_pylist(), special, strict=True))]
        return cls(vocab.column("bytes").to_pylist(), names, special)

    def is_special(self, token_id: int) -> bool:
        return not 0 <= token_id < len(self.data) or self.special[token_id]

    def alone(self, token_id: int) -> str:
        return self.names[token_id] if 0 <= token_id < len(self.names) else undefined_name(token_id)

    def bytes_of(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.data[i] for i in ids if not self.is_special(i))

    def span(self, ids: Sequence[int], before: Sequence[int] = ()) -> list[str]:
        """Each token's part of the run `ids` decoded as a whole: a character appears on the token holding its last
        byte. `before` are the tokens preceding the run (a few are enough): a character they begin ends in the run
        and is shown there; without them the bytes of a character begun before the run are left out, and so are the
        bytes of a character that ends after it. Special tokens are shown by name."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        decoder.decode(self.bytes_of(before)[-3:])  # an unfinished character holds at most 3 bytes
        orphans = not decoder.getstate()[0]  # leading continuation bytes belong to a character not in view
        out = []
        for i in (int(x) for x in ids):
            if self.is_special(i):
                out.append(self.alone(i))
                continue
            data = self.data[i]
            if orphans:
                data = data.lstrip(_CONTINUATION_BYTES)
                orphans = not data
            out.append(decoder.decode(data))
        return out


def class_codes(vocab: pa.Table, column: str = "text_class", classes: tuple[str, ...] = TEXT_CLASSES) -> np.ndarray:
    """Index into `classes` of each token id's class: codes[target] classifies targets without a Python loop."""
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[c] for c in vocab.column(column).to_pylist()], dtype=np.int64)


def write_vocab_tables(folder: ComparisonFolder, tokenizers: dict, model_info: dict[str, dict]) -> dict[str, str]:
    """vocab/<model>.parquet for every model of a comparison (its tokens' bytes and classes, for the explanation, which
    is built from the stored files alone); returns the paths relative to the comparison folder."""
    paths = {}
    for name, tokenizer in tokenizers.items():
        if name not in model_info:
            continue
        path = folder.vocab(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            pq.write_table(vocab_table(tokenizer, model_info[name]["vocab_size"]), tmp, compression="zstd")
        paths[name] = folder.relative(path)
    return paths
