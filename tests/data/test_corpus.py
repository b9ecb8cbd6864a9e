"""Corpus readers: every format yields the same Documents, options select by doc_id, bad input explained."""

from __future__ import annotations

import gzip
import io
import json
import random
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from lossgap.config import CorpusConfig
from lossgap.data.corpus import Corpus, Document, _deterministic_sample
from lossgap.data.readers import ZstdFrames
from lossgap.errors import CorpusError, UsageError
from tests.helpers import read_summary, run_cli, write_jsonl

# Pile format; record 2 has no domain (falls back to the file name), record 4 has non-ASCII text.
RECORDS = [
    {"text": "def add(a, b):\n    return a + b\n", "meta": {"pile_set_name": "Github"}},
    {"text": "The quick brown fox jumps over the lazy dog.", "meta": {"pile_set_name": "Pile-CC"}},
    {"text": "A record without a domain field."},
    {"text": "Second Github record\nwith two lines.", "meta": {"pile_set_name": "Github"}},
    {"text": "Überprüfung: naïve café, 日本語のテキスト, 🙂.", "meta": {"pile_set_name": "Wikipedia (en)"}},
    {"text": "  leading and trailing spaces are kept  ", "meta": {"pile_set_name": "Pile-CC"}},
    {"text": "x = [i * i for i in range(10)]", "meta": {"pile_set_name": "Github"}},
]


def expected(records=RECORDS, fallback="pile", first_id=0) -> list[tuple[int, str, str]]:
    return [
        (first_id + i, r["text"], r.get("meta", {}).get("pile_set_name", fallback))
        for i, r in enumerate(records)
    ]


def read(path, **options) -> tuple[Corpus, list[tuple[int, str, str]]]:
    corpus = Corpus(CorpusConfig(str(path), **options))
    return corpus, [(d.doc_id, d.text, d.domain) for d in corpus]


def jsonl_bytes(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def zst_frames(data: bytes, frame_lines: int) -> bytes:
    """One zstd frame per `frame_lines` lines, written with a streaming compressor (no content size)."""
    lines = data.splitlines(keepends=True)
    out = io.BytesIO()
    writer = zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False)
    for start in range(0, len(lines), frame_lines):
        writer.write(b"".join(lines[start : start + frame_lines]))
        writer.flush(zstandard.FLUSH_FRAME)
    writer.close()
    return out.getvalue()


# --- writers: each puts RECORDS on disk in one format and returns (path, fallback domain of record 2) ---


def _jsonl(tmp: Path):
    return write_jsonl(tmp / "pile.jsonl", RECORDS), "pile"


def _jsonl_crlf_blank_lines(tmp: Path):
    # Windows line ends, a byte order mark and blank lines do not change the records.
    lines = [json.dumps(r) for r in RECORDS]
    data = "\ufeff" + "\r\n".join(lines[:3]) + "\r\n\r\n   \r\n" + "\r\n".join(lines[3:])  # no final newline
    (tmp / "pile.jsonl").write_bytes(data.encode("utf-8"))
    return tmp / "pile.jsonl", "pile"


def _gz(tmp: Path):
    (tmp / "pile.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(RECORDS)))
    return tmp / "pile.jsonl.gz", "pile"


def _zst(tmp: Path):
    (tmp / "pile.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(RECORDS)))
    return tmp / "pile.jsonl.zst", "pile"


def _zst_multi_frame(tmp: Path):
    data = jsonl_bytes(RECORDS)
    frames = zst_frames(data, 2)
    assert frames.count(b"\x28\xb5\x2f\xfd") >= 4  # really several frames (zstd magic number)
    (tmp / "pile.jsonl.zst").write_bytes(frames)
    return tmp / "pile.jsonl.zst", "pile"


def _parquet(tmp: Path):
    table = pa.Table.from_pylist(RECORDS)
    assert pa.types.is_struct(table.schema.field("meta").type)  # meta.pile_set_name is a nested column
    pq.write_table(table, tmp / "pile.parquet", row_group_size=3)
    return tmp / "pile.parquet", "pile"


def _parquet_folder(tmp: Path):
    folder = tmp / "pile"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(RECORDS[:4]), folder / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(RECORDS[4:]), folder / "part-1.parquet")
    (folder / "README.md").write_text("not part of the corpus: parquet files take precedence")
    return folder, "part-0"


def _datasets(tmp: Path):
    import datasets

    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp / "pile"))
    return tmp / "pile", "pile"


def _datasets_dict_one_split(tmp: Path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS)}).save_to_disk(str(tmp / "pile"))
    return tmp / "pile", "pile"


WRITERS = [_jsonl, _jsonl_crlf_blank_lines, _gz, _zst, _zst_multi_frame, _parquet, _parquet_folder, _datasets,
           _datasets_dict_one_split]


@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.__name__.strip("_"))
def test_every_format_yields_the_same_documents(tmp_path, writer):
    path, fallback = writer(tmp_path)
    corpus, docs = read(path)
    assert docs == expected(fallback=fallback)
    assert corpus.records_read == len(RECORDS)
    assert corpus.bad_records == []


def test_documents_carry_their_source(tmp_path):
    path, _ = _jsonl(tmp_path)
    docs = list(Corpus(CorpusConfig(str(path))))
    assert all(isinstance(d, Document) for d in docs)
    assert [d.source for d in docs] == [f"{path}:{n}" for n in range(1, len(RECORDS) + 1)]
    path, _ = _parquet(tmp_path)
    sources = [d.source for d in Corpus(CorpusConfig(str(path)))]
    assert sources == [f"{path}#row{n}" for n in range(len(RECORDS))]


def test_jsonl_folder_numbers_records_across_files(tmp_path):
    """Files are read in sorted order; doc_ids continue across files; each file is its own fallback domain."""
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "b.jsonl", [{"text": "b0"}, {"text": "b1", "meta": {"pile_set_name": "Set"}}])
    (folder / "a.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes([{"text": "a0"}])))
    c0 = zstandard.ZstdCompressor().compress(jsonl_bytes([{"text": "c0"}]))
    (folder / "sub" / "c.jsonl.zst").write_bytes(c0)
    (folder / "notes.txt").write_text("ignored: the folder holds JSONL files")
    _, docs = read(folder)
    assert docs == [(0, "a0", "a"), (1, "b0", "b"), (2, "b1", "Set"), (3, "c0", "c")]


def test_datasets_dict_split_handling(tmp_path):
    import datasets

    train = [{"text": f"train {i}", "meta": {"pile_set_name": "T"}} for i in range(3)]
    test = [{"text": f"test {i}", "meta": {"pile_set_name": "V"}} for i in range(2)]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}
    ).save_to_disk(str(tmp_path / "dd"))

    with pytest.raises(CorpusError) as err:
        read(tmp_path / "dd")
    message = str(err.value)
    assert "dd" in message and "train" in message and "test" in message and "--split" in message

    _, docs = read(tmp_path / "dd", split="test")
    assert docs == [(0, "test 0", "V"), (1, "test 1", "V")]
    _, docs = read(tmp_path / "dd", split="train", skip=1)
    assert docs == [(1, "train 1", "T"), (2, "train 2", "T")]

    with pytest.raises(CorpusError, match="'validation'") as err:
        read(tmp_path / "dd", split="validation")
    assert "train" in str(err.value) and "fix:" in str(err.value)


def test_text_folder_domains(tmp_path):
    """Top-level files take the folder's name as domain, files in sub-folders the first sub-folder's name."""
    root = tmp_path / "books"
    (root / "code" / "deep").mkdir(parents=True)
    (root / "prose").mkdir()
    (root / "top.txt").write_text("top level text\n")
    (root / "code" / "a.md").write_text("# heading\n\nmarkdown body")
    (root / "code" / "deep" / "b.txt").write_text("deeply nested")
    (root / "prose" / "p.txt").write_bytes("Grüße aus Köln".encode())
    (root / "prose" / "skip.py").write_text("print('not a text file')")
    corpus, docs = read(root)
    assert docs == [
        (0, "# heading\n\nmarkdown body", "code"),
        (1, "deeply nested", "code"),
        (2, "Grüße aus Köln", "prose"),
        (3, "top level text\n", "books"),
    ]
    assert corpus.fraction_read == 1.0


def test_single_text_file_domain_is_its_stem(tmp_path):
    (tmp_path / "licence.md").write_text("Permission is hereby granted, free of charge.")
    _, docs = read(tmp_path / "licence.md")
    assert docs == [(0, "Permission is hereby granted, free of charge.", "licence")]


# --- options ---


def many_records(n=40):
    return [{"text": f"document number {i}", "meta": {"pile_set_name": "AB"[i % 2]}} for i in range(n)]


def test_skip_keeps_record_ordinals(tmp_path):
    path = write_jsonl(tmp_path / "pile.jsonl", RECORDS)
    corpus, docs = read(path, skip=3)
    assert docs == expected()[3:]
    assert corpus.records_read == len(RECORDS)  # skipped records are read, not returned
    _, docs = read(path, skip=len(RECORDS) + 5)
    assert docs == []


def test_skip_does_not_validate_skipped_records(tmp_path):
    """Resuming past a known bad record works without --on-bad-line skip."""
    path = write_jsonl(tmp_path / "pile.jsonl", [RECORDS[0], "{broken", RECORDS[1]])
    _, docs = read(path, skip=2)
    assert docs == [(2, RECORDS[1]["text"], "Pile-CC")]


def test_max_docs_stops_before_reading_further(tmp_path):
    records = many_records(6)
    path = write_jsonl(tmp_path / "pile.jsonl", [*records[:3], "{not json", *records[3:]])
    corpus, docs = read(path, max_docs=3)
    assert [d[0] for d in docs] == [0, 1, 2]
    assert corpus.records_read == 3  # the bad line 4 was never pulled, so no error
    assert corpus.fraction_read < 1.0
    _, docs = read(path, max_docs=2, skip=1)
    assert [d[0] for d in docs] == [1, 2]
    _, docs = read(path, max_docs=100, on_bad_line="skip")
    assert [d[0] for d in docs] == [0, 1, 2, 4, 5, 6]


def test_sample_is_deterministic_sorted_and_seeded(tmp_path):
    records = many_records(40)
    path = write_jsonl(tmp_path / "pile.jsonl", records)
    _, first = read(path, sample=8, seed=3)
    _, again = read(path, sample=8, seed=3)
    assert first == again
    ids = [d[0] for d in first]
    assert len(ids) == 8 == len(set(ids))
    assert ids == sorted(ids)
    assert all(text == records[i]["text"] for i, text, _ in first)

    samples = {tuple(d[0] for d in read(path, sample=8, seed=seed)[1]) for seed in range(6)}
    assert len(samples) > 1  # different seeds pick different documents

    _, everything = read(path, sample=100, seed=3)
    assert everything == [(i, r["text"], r["meta"]["pile_set_name"]) for i, r in enumerate(records)]

    _, head = read(path, sample=8, seed=3, max_docs=3)
    assert head == first[:3]

    _, after_skip = read(path, sample=5, seed=3, skip=20)
    assert len(after_skip) == 5 and all(d[0] >= 20 for d in after_skip)


def test_sample_is_order_independent():
    docs = [Document(i, f"text {i}", "d", f"src:{i}") for i in range(60)]
    reference = [d.doc_id for d in _deterministic_sample(iter(docs), 10, seed=7)]
    for trial in range(5):
        shuffled = docs[:]
        random.Random(trial).shuffle(shuffled)
        assert [d.doc_id for d in _deterministic_sample(iter(shuffled), 10, seed=7)] == reference
    assert [d.doc_id for d in _deterministic_sample(iter(docs), 10, seed=8)] != reference
    # A document in the sample of a corpus stays in the sample of any sub-corpus that contains it.
    kept = set(reference)
    subset = [d for d in docs if d.doc_id % 2 == 0]
    sub_sample = {d.doc_id for d in _deterministic_sample(iter(subset), 10, seed=7)}
    assert {i for i in kept if i % 2 == 0} <= sub_sample


def test_sample_ignores_bad_records_without_shifting_ids(tmp_path):
    records = many_records(30)
    good = write_jsonl(tmp_path / "good.jsonl", records)
    lines = [json.dumps(r) for r in records]
    lines[5] = '{"text": ""}'
    bad = write_jsonl(tmp_path / "bad.jsonl", lines)
    _, from_good = read(good, sample=30)
    corpus, from_bad = read(bad, sample=30, on_bad_line="skip")
    assert [d for d in from_good if d[0] != 5] == from_bad
    assert len(corpus.bad_records) == 1


def test_text_and_domain_fields_with_dotted_paths(tmp_path):
    records = [
        {"body": {"content": "nested text one"}, "info": {"src": {"name": "Books"}}},
        {"body": {"content": "nested text two"}, "info": {"src": {"name": 7}}},  # a number is made a string
        {"body": {"content": "nested text three"}, "info": {"src": None}},  # falls back to the file name
        {"body": {"content": "nested text four"}, "info": {"src": {"name": None}}},
        {"body.content": "a flat dotted key", "info.src.name": "Flat"},
    ]
    path = write_jsonl(tmp_path / "custom.jsonl", records)
    _, docs = read(path, text_field="body.content", domain_field="info.src.name")
    assert docs == [
        (0, "nested text one", "Books"),
        (1, "nested text two", "7"),
        (2, "nested text three", "custom"),
        (3, "nested text four", "custom"),
        (4, "a flat dotted key", "Flat"),
    ]
    pq.write_table(pa.Table.from_pylist(records[:1] + records[2:4]), tmp_path / "custom.parquet")
    _, docs = read(tmp_path / "custom.parquet", text_field="body.content", domain_field="info.src.name")
    assert docs == [(0, "nested text one", "Books"), (1, "nested text three", "custom"),
                    (2, "nested text four", "custom")]


def test_plain_text_field(tmp_path):
    path = write_jsonl(tmp_path / "web.jsonl", [{"content": "hello", "source": "cc"}, {"content": "world"}])
    _, docs = read(path, text_field="content", domain_field="source")
    assert docs == [(0, "hello", "cc"), (1, "world", "web")]


def test_invalid_options_are_usage_errors(tmp_path):
    path = write_jsonl(tmp_path / "pile.jsonl", RECORDS)
    for options in ({"skip": -1}, {"sample": 0}, {"max_docs": 0}, {"on_bad_line": "ignore"}):
        with pytest.raises(UsageError):
            Corpus(CorpusConfig(str(path), **options))


def test_iterating_twice_gives_the_same_documents_and_counts(tmp_path):
    path = write_jsonl(tmp_path / "pile.jsonl", [RECORDS[0], "{bad", RECORDS[1]])
    corpus = Corpus(CorpusConfig(str(path), on_bad_line="skip"))
    first = list(corpus)
    assert (len(corpus.bad_records), corpus.records_read) == (1, 3)
    assert list(corpus) == first
    assert (len(corpus.bad_records), corpus.records_read) == (1, 3)


# --- bad input ---

BAD_LINES = {
    "corrupt_json": ('{"text": "unterminated', "not valid JSON"),
    "missing_text": ('{"body": "x", "meta": {}}', "no field 'text' (fields: body, meta)"),
    "number_text": ('{"text": 42}', "field 'text' is a int, not a string"),
    "null_text": ('{"text": null}', "field 'text' is a NoneType, not a string"),
    "list_text": ('{"text": ["a", "b"]}', "field 'text' is a list, not a string"),
    "not_an_object": ('["text", "abc"]', "expected a JSON object, got list"),
    "empty_text": ('{"text": ""}', "empty document"),
    "whitespace_text": ('{"text": " \\n\\t  "}', "empty document"),
    "lone_surrogate": ('{"text": "abc \\ud800 def"}', "lone surrogate"),
    "huge_integer": ('{"text": "a", "n": ' + "9" * 5000 + "}", "not readable JSON"),
    "deep_nesting": ('{"text": "a", "n": ' + "[" * 200_000 + "]" * 200_000 + "}", "not readable JSON"),
}


def write_with_bad_line(path: Path, bad: bytes) -> Path:
    """Lines 1, 2, 4, 5 are good records; line 3 is `bad`."""
    good = [json.dumps(r).encode() for r in RECORDS[:4]]
    path.write_bytes(b"\n".join([good[0], good[1], bad, good[2], good[3]]) + b"\n")
    return path


BAD_CASES = {name: (line.encode(), reason) for name, (line, reason) in BAD_LINES.items()}
BAD_CASES["invalid_utf8"] = (b'{"text": "caf\xe9 \xff"}', "invalid UTF-8 at byte 13")


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_line_fails_with_file_line_and_fix(tmp_path, case):
    bad, reason = BAD_CASES[case]
    path = write_with_bad_line(tmp_path / "pile.jsonl", bad)
    corpus = Corpus(CorpusConfig(str(path)))
    seen = []
    with pytest.raises(CorpusError) as err:
        for doc in corpus:
            seen.append(doc.doc_id)
    message = str(err.value)
    assert "pile.jsonl:3: " in message
    assert reason in message
    assert "fix:" in message and "--on-bad-line skip" in message
    assert seen == [0, 1]  # records before the bad one were yielded first


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_line_skipped_keeps_doc_ids(tmp_path, case):
    bad, reason = BAD_CASES[case]
    path = write_with_bad_line(tmp_path / "pile.jsonl", bad)
    corpus, docs = read(path, on_bad_line="skip")
    assert docs == expected(RECORDS[:2]) + expected(RECORDS[2:4], first_id=3)
    assert [d[0] for d in docs] == [0, 1, 3, 4]
    assert len(corpus.bad_records) == 1
    assert corpus.bad_records[0].source == f"{path}:3"
    assert reason in corpus.bad_records[0].reason
    assert corpus.records_read == 5


def test_several_bad_lines_skipped(tmp_path):
    lines = [json.dumps(RECORDS[0]), "{", '{"text": 1}', json.dumps(RECORDS[1]), '{"nope": "x"}']
    path = write_jsonl(tmp_path / "pile.jsonl", lines)
    corpus, docs = read(path, on_bad_line="skip")
    assert [d[0] for d in docs] == [0, 3]
    assert [b.source.rsplit(":", 1)[1] for b in corpus.bad_records] == ["2", "3", "5"]
    assert all(b.reason for b in corpus.bad_records)


def test_bad_text_files(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("good text")
    (folder / "b.txt").write_bytes(b"bad \xff\xfe bytes")
    (folder / "c.txt").write_text("   \n")
    (folder / "d.md").write_text("more good text")
    with pytest.raises(CorpusError) as err:
        read(folder)
    assert_explained(err, "b.txt", "invalid UTF-8 at byte 4")
    corpus, docs = read(folder, on_bad_line="skip")
    assert docs == [(0, "good text", "texts"), (3, "more good text", "texts")]
    assert [(Path(b.source).name, b.reason) for b in corpus.bad_records] == [
        ("b.txt", "invalid UTF-8 at byte 4"),
        ("c.txt", "empty document"),
    ]


def test_bad_parquet_rows(tmp_path):
    rows = [{"text": "fine"}, {"text": None}, {"text": "  "}, {"text": "also fine"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    with pytest.raises(CorpusError, match="#row1: field 'text' is a NoneType"):
        read(tmp_path / "t.parquet")
    corpus, docs = read(tmp_path / "t.parquet", on_bad_line="skip")
    assert docs == [(0, "fine", "t"), (3, "also fine", "t")]
    assert [b.source.rsplit("#", 1)[1] for b in corpus.bad_records] == ["row1", "row2"]


def assert_explained(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    for part in parts:
        assert part in message, (part, message)
    assert "fix:" in message and err.value.fix


def test_missing_file(tmp_path):
    with pytest.raises(CorpusError) as err:
        Corpus(CorpusConfig(str(tmp_path / "nowhere.jsonl")))
    assert_explained(err, "nowhere.jsonl", "not found")


def test_unknown_extension(tmp_path):
    (tmp_path / "data.csv").write_text("text\nhello\n")
    with pytest.raises(CorpusError) as err:
        Corpus(CorpusConfig(str(tmp_path / "data.csv")))
    assert_explained(err, "data.csv", "unknown corpus format", ".jsonl")


@pytest.mark.parametrize(
    "content", [{}, {"data.csv": "a,b", "sub/x.py": "print(1)"}], ids=["empty", "unsupported"]
)
def test_folder_without_corpus_files(tmp_path, content):
    folder = tmp_path / "empty"
    folder.mkdir()
    for name, text in content.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    with pytest.raises(CorpusError) as err:
        Corpus(CorpusConfig(str(folder)))
    assert_explained(err, "empty", "no .jsonl")


def test_unreadable_parquet_file(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(CorpusError) as err:
        read(tmp_path / "broken.parquet")
    assert "broken.parquet" in str(err.value) and "not a readable Parquet file" in str(err.value)


def many_lines(n=300) -> list[dict]:
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    return [{"text": " ".join(rng.choice(words) for _ in range(30)) + f" #{i}"} for i in range(n)]


def collect_until_error(path: Path, **options) -> tuple[list[tuple[int, str, str]], CorpusError]:
    docs = []
    corpus = Corpus(CorpusConfig(str(path), **options))
    with pytest.raises(CorpusError) as err:
        for d in corpus:
            docs.append((d.doc_id, d.text, d.domain))
    return docs, err.value


@pytest.mark.parametrize("on_bad_line", ["fail", "skip"])
def test_truncated_zst_yields_earlier_records_then_fails(tmp_path, on_bad_line):
    records = many_lines(300)
    frames = zst_frames(jsonl_bytes(records), 50)  # six frames of 50 lines
    starts = [i for i in range(len(frames)) if frames.startswith(b"\x28\xb5\x2f\xfd", i)]
    assert len(starts) >= 6  # six frames of data (closing the writer may add an empty one)
    path = tmp_path / "pile.jsonl.zst"
    path.write_bytes(frames[: (starts[3] + starts[4]) // 2])  # cut inside the fourth frame
    docs, err = collect_until_error(path, on_bad_line=on_bad_line)
    assert docs == expected(records, fallback="pile")[:150]
    message = str(err)
    assert "pile.jsonl.zst:151" in message and "truncated" in message
    assert "fix:" in message and "re-download" in message


def test_truncated_single_frame_zst_is_not_silently_short(tmp_path):
    """zstandard's stream_reader reports a clean end of file here; the reader must not."""
    records = many_lines(50)
    data = zstandard.ZstdCompressor().compress(jsonl_bytes(records))
    path = tmp_path / "pile.jsonl.zst"
    for cut in (len(data) - 1, len(data) // 2, 6):
        path.write_bytes(data[:cut])
        docs, err = collect_until_error(path)
        assert docs == expected(records)[: len(docs)]
        assert f"pile.jsonl.zst:{len(docs) + 1}" in str(err)


def test_corrupt_zst(tmp_path):
    path = tmp_path / "pile.jsonl.zst"
    path.write_bytes(b"this was never compressed\n")
    docs, err = collect_until_error(path)
    assert docs == [] and "pile.jsonl.zst:1" in str(err) and "corrupt" in str(err)


def test_truncated_gz_yields_earlier_records_then_fails(tmp_path):
    records = many_lines(3000)
    data = gzip.compress(jsonl_bytes(records))
    path = tmp_path / "pile.jsonl.gz"
    path.write_bytes(data[: len(data) * 6 // 10])
    docs, err = collect_until_error(path)
    assert 0 < len(docs) < len(records)
    assert docs == expected(records)[: len(docs)]
    message = str(err)
    assert f"pile.jsonl.gz:{len(docs) + 1}" in message and "truncated" in message and "fix:" in message
    # the last few bytes (CRC and length) missing are detected too
    path.write_bytes(data[:-4])
    docs, err = collect_until_error(path, on_bad_line="skip")
    assert docs == expected(records)[: len(docs)]
    assert "pile.jsonl.gz" in str(err)


def test_not_gzip(tmp_path):
    path = tmp_path / "pile.jsonl.gz"
    path.write_bytes(jsonl_bytes(RECORDS))
    docs, err = collect_until_error(path)
    assert docs == [] and "pile.jsonl.gz:1" in str(err)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1 << 16])
def test_zstd_frames_reader_across_chunk_and_frame_boundaries(chunk_size):
    data = jsonl_bytes(many_lines(40))
    frames = zst_frames(data, 3) + zstandard.ZstdCompressor().compress(b"")  # an empty last frame is fine
    reader = io.BufferedReader(ZstdFrames(io.BytesIO(frames), chunk_size=chunk_size), buffer_size=256)
    assert reader.read() == data
    reader = io.BufferedReader(ZstdFrames(io.BytesIO(frames[:-20]), chunk_size=chunk_size))
    with pytest.raises(EOFError):
        reader.read()


# --- progress ---


def test_fraction_read_tracks_bytes_of_a_jsonl_file(tmp_path):
    path = write_jsonl(tmp_path / "pile.jsonl", RECORDS)
    size = path.stat().st_size
    ends = []
    total = 0
    for r in RECORDS:
        total += len((json.dumps(r) + "\n").encode())
        ends.append(total / size)
    corpus = Corpus(CorpusConfig(str(path)))
    assert corpus.fraction_read == 0.0
    seen = [corpus.fraction_read for _ in corpus]
    assert seen == pytest.approx(ends[:-1] + [1.0])
    assert corpus.fraction_read == 1.0


@pytest.mark.parametrize("writer", WRITERS + [lambda tmp: (tmp_path_text(tmp), None)],
                         ids=[w.__name__.strip("_") for w in WRITERS] + ["text_folder"])
def test_fraction_read_goes_from_zero_to_one(tmp_path, writer):
    path, _ = writer(tmp_path)
    corpus = Corpus(CorpusConfig(str(path)))
    assert corpus.fraction_read == 0.0
    seen = [corpus.fraction_read for _ in corpus]
    assert seen == sorted(seen)
    assert all(0.0 <= f <= 1.0 for f in seen)
    assert corpus.fraction_read == 1.0


def tmp_path_text(tmp: Path) -> Path:
    folder = tmp / "texts"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.txt").write_text(f"text file {i} " * (i + 1))
    return folder


def test_fraction_read_of_a_large_compressed_file_is_gradual(tmp_path):
    records = many_lines(20_000)  # 3.8 MB of JSON, 0.7 MB compressed
    path = tmp_path / "pile.jsonl.zst"
    path.write_bytes(zst_frames(jsonl_bytes(records), 100))
    corpus = Corpus(CorpusConfig(str(path)))
    seen = [corpus.fraction_read for _ in corpus]
    assert len(seen) == len(records)
    assert seen == sorted(seen) and corpus.fraction_read == 1.0
    assert seen[0] < 0.2 and len(set(seen)) >= 5  # compressed bytes consumed, a chunk at a time


# --- fuzz: any bytes either read or raise CorpusError ---

json_line = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["text", "meta", "x"]), inner,
                                                                  max_size=3),
    max_leaves=8,
).map(json.dumps).map(str.encode)
line = json_line | st.binary(max_size=40) | st.just(b'{"text": "ok"}')
content = st.binary(max_size=300) | st.lists(line, max_size=8).map(b"\n".join)


@given(data=content, suffix=st.sampled_from([".jsonl", ".jsonl.gz", ".jsonl.zst"]), compress=st.booleans())
def test_any_bytes_read_or_raise_corpus_error(data, suffix, compress):
    if compress and suffix == ".jsonl.gz":
        data = gzip.compress(data)
    elif compress and suffix == ".jsonl.zst":
        data = zstandard.ZstdCompressor().compress(data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(data)
        for on_bad_line in ("fail", "skip"):
            corpus = Corpus(CorpusConfig(str(path), on_bad_line=on_bad_line))
            try:
                docs = list(corpus)
            except CorpusError as e:
                assert "fuzz" in str(e) and e.fix
                if on_bad_line == "skip":
                    assert suffix != ".jsonl"  # a plain file has no file-level failure to raise
                continue
            assert all(isinstance(d.text, str) and d.text.strip() for d in docs)
            assert all(d.text.encode("utf-8") for d in docs)
            assert [d.doc_id for d in docs] == sorted({d.doc_id for d in docs})


# --- through the command line ---


def score_cli(capsys, llama_dir, corpus, out, *extra) -> tuple[int, str]:
    code, _, err = run_cli(capsys, "--model", llama_dir, "--corpus", corpus, "--out", out, "--seq-len", 64, *extra)
    return code, err


def test_cli_a_folder_of_mixed_formats_is_read_whole_and_names_what_it_does_not_read(tmp_path, llama_dir,
                                                                                    pile_records, capsys):
    """Before: a folder with a .jsonl (24 documents) and a .parquet (3) scored the 3 only, silently."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", pile_records)
    pq.write_table(pa.Table.from_pylist(RECORDS[:3]), folder / "b.parquet")
    (folder / "notes.csv").write_text("a,b\n")
    (folder / "README.md").write_text("# about this corpus\n")
    code, err = score_cli(capsys, llama_dir, folder, tmp_path / "o")
    assert code == 0, err
    documents = pq.read_table(tmp_path / "o" / "documents.parquet").to_pylist()
    assert len(documents) == 27 and read_summary(tmp_path / "o")["n_documents"] == 27
    sources = [d["source"] for d in documents]  # sorted by path, whatever the format; ids run on across files
    assert sources == [f"{folder / 'a.jsonl'}:{i}" for i in range(1, 25)] + [f"{folder / 'b.parquet'}#row{i}"
                                                                             for i in range(3)]
    warning = next(line for line in err.splitlines() if "not read" in line)
    assert str(folder) in warning and "notes.csv (not a corpus format)" in warning
    assert "README.md (.txt/.md files are documents only in a folder without .jsonl or .parquet files)" in warning


def test_cli_domains_are_names_refused_when_not_scalar(tmp_path, llama_dir, capsys):
    """7 and "7" name one domain (an integer is written in decimal); an object is refused, naming the record (before:
    its Python repr became a domain)."""
    records = [{"text": f"def f{i}(x):\n    return x + {i}\n", "meta": {"pile_set_name": d}}
               for i, d in enumerate([7, "7", "Github", {"name": "Github"}])]
    path = write_jsonl(tmp_path / "domains.jsonl", records)
    code, err = score_cli(capsys, llama_dir, path, tmp_path / "fail")
    assert code == 1 and f"{path}:4: field 'meta.pile_set_name' is a dict" in err and "not a string or an integer" \
        in err and "internal error" not in err
    code, err = score_cli(capsys, llama_dir, path, tmp_path / "skip", "--on-bad-line", "skip")
    assert code == 0, err
    summary = read_summary(tmp_path / "skip")
    assert {k: v["n_documents"] for k, v in summary["per_domain"].items()} == {"7": 2, "Github": 1}
    assert summary["corpus"]["bad_records_skipped"] == 1


def test_cli_a_file_damaged_on_its_first_line_says_nothing_was_read(tmp_path, llama_dir, capsys):
    """Before: 'the records on lines 1-0 were read'."""
    data = gzip.compress(jsonl_bytes([{"text": "x" * 100_000}]))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    code, err = score_cli(capsys, llama_dir, path, tmp_path / "o")
    assert code == 1 and f"{path}:1: compressed data is corrupt or truncated" in err
    assert "none of its lines could be read" in err and "1-0" not in err


def test_a_long_text_file_is_read_only_as_far_as_the_cap_needs(tmp_path):
    """Under --max-tokens a .txt file past max_tokens x 1024 bytes is read that far (a character cut at the end is
    left out), and the document says it is not complete; without the cap it is read whole."""
    from lossgap.data.corpus import TEXT_BYTES_PER_TOKEN

    path = tmp_path / "long.txt"
    path.write_bytes(("naïve café 🙂 " * 200_000).encode("utf-8"))
    (doc,) = Corpus(CorpusConfig(str(path), max_tokens=10))
    assert not doc.complete and 0 < len(doc.text.encode("utf-8")) <= 10 * TEXT_BYTES_PER_TOKEN
    assert ("naïve café 🙂 " * 200_000).startswith(doc.text)
    (whole,) = Corpus(CorpusConfig(str(path)))
    assert whole.complete and whole.text == "naïve café 🙂 " * 200_000


def test_cli_a_long_text_file_under_a_cap(tmp_path, llama_dir, capsys):
    path = tmp_path / "long.txt"
    path.write_text("def f(x):\n    return x * 2\n" * 100_000)
    code, err = score_cli(capsys, llama_dir, path, tmp_path / "o", "--max-tokens", 300)
    assert code == 0, err
    summary = read_summary(tmp_path / "o")
    assert summary["max_tokens"] == {"cap": 300, "tokens": 300, "documents": 1, "last_document_cut": True}
    assert summary["n_tokens"] == 299
