"""The run-time corpus builder: byte-identical output, a hash split, an honest sidecar, right math answers."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import sysconfig
from fractions import Fraction
from pathlib import Path

import pytest
import zstandard

from lossgap.cli import main
from lossgap.config import CorpusConfig
from lossgap.data.corpus import Corpus
from lossgap.data.corpus_build import SOURCES, _licenses, _stdlib, build_corpus
from lossgap.errors import UsageError

SMALL = 6  # documents per source: enough for every code path, quick to build


def _records(path: Path) -> list[dict]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().stream_reader(data).read()
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def _expected_split(text: str) -> str:
    return "heldout" if int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % 10 == 0 else "train"


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("corpus") / "small.jsonl"
    return out, build_corpus(out, max_docs_per_source=SMALL)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_two_builds_give_identical_bytes(tmp_path, small, suffix):
    a, b = tmp_path / f"a{suffix}", tmp_path / f"other_name{suffix}"
    ra = build_corpus(a, max_docs_per_source=SMALL)
    rb = build_corpus(b, max_docs_per_source=SMALL)
    assert a.read_bytes() == b.read_bytes()  # no file name or timestamp inside gzip or zstd either
    assert ra.sha256 == rb.sha256 == hashlib.sha256(a.read_bytes()).hexdigest()
    assert _records(a) == _records(small[0])  # compression changes the bytes on disk, not the records
    assert not list(tmp_path.glob("*.tmp"))


def test_every_record_is_read_by_lossgap_with_its_domain(small):
    path, result = small
    records = _records(path)
    docs = list(Corpus(CorpusConfig(str(path))))
    assert len(docs) == len(records) == SMALL * len(SOURCES)
    assert [d.domain for d in docs] == [r["meta"]["pile_set_name"] for r in records]
    assert [d.text for d in docs] == [r["text"] for r in records]
    assert {d.domain for d in docs} == set(SOURCES.values())
    for r in records:
        assert list(r) == ["text", "meta"] and list(r["meta"]) == ["pile_set_name", "split", "source"]


def test_split_is_by_text_hash_and_stable(tmp_path, small):
    records = _records(small[0])
    assert all(r["meta"]["split"] == _expected_split(r["text"]) for r in records)
    # a different selection puts the same texts in the same splits
    other = _records(build_corpus(tmp_path / "math.jsonl", ("math",), max_docs_per_source=40).path)
    math_records = [r for r in records if r["meta"]["pile_set_name"] == "DM Mathematics"]
    assert {r["text"]: r["meta"]["split"] for r in other}.items() >= {
        r["text"]: r["meta"]["split"] for r in math_records
    }.items()
    assert 0 < sum(r["meta"]["split"] == "heldout" for r in other) < len(other)
    for split in ("train", "heldout"):
        only = build_corpus(tmp_path / f"{split}.jsonl", ("math",), max_docs_per_source=40, only_split=split)
        assert _records(only.path) == [r for r in other if r["meta"]["split"] == split]
        assert only.counts["DM Mathematics"]["heldout" if split == "train" else "train"] == 0


def test_sidecar_matches_the_file(small):
    path, result = small
    records = _records(path)
    side = json.loads(result.sidecar.read_text())
    assert result.sidecar == path.with_name(path.name + ".sources.json")
    assert side["output_sha256"] == result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert side["output_bytes"] == path.stat().st_size and re.fullmatch(r"3\.\d+\.\d+\S*", side["python"])
    assert [s["name"] for s in side["sources"]] == list(SOURCES)
    for entry in side["sources"]:
        mine = [r for r in records if r["meta"]["pile_set_name"] == entry["domain"]]
        assert entry["documents"] == len(mine) == sum(entry["splits"].values())
        for split, n in entry["splits"].items():
            assert n == sum(r["meta"]["split"] == split for r in mine)
            assert n == result.counts[entry["domain"]][split] == side["counts"][entry["domain"]][split]
        digest = hashlib.sha256(b"".join(hashlib.sha256(r["text"].encode()).digest() for r in mine))
        assert entry["sha256"] == digest.hexdigest()
        assert entry["paths"] and isinstance(entry["notes"], list)


def test_missing_licenses_folder_is_skipped_with_a_note(tmp_path):
    missing = tmp_path / "no-such-licenses"
    result = build_corpus(tmp_path / "c.jsonl", ("licenses", "math"), 3, licenses_dir=missing)
    assert "Licenses" not in result.counts and result.counts["DM Mathematics"]
    assert any(str(missing) in note and "skipped" in note for note in result.notes)
    entry = json.loads(result.sidecar.read_text())["sources"][0]
    assert entry["name"] == "licenses" and entry["documents"] == 0 and entry["notes"]


def test_licenses_read_each_regular_utf8_file_once(tmp_path):
    folder = tmp_path / "licenses"
    folder.mkdir()
    (folder / "MIT").write_text("Permission is hereby granted, free of charge...\n")
    (folder / "AAA").symlink_to("MIT")  # sorts first, but must not name the document
    (folder / "Latin1").write_bytes("Copyright \xa9 1999".encode("latin-1"))
    (folder / "sub").mkdir()
    src = _licenses(folder)
    assert [name for name, _ in src.docs] == ["licenses:MIT"]
    assert "Latin1" in src.notes[0]


def test_unknown_source_and_bad_options_are_usage_errors(tmp_path):
    for kwargs in (
        {"sources": ("stdlib", "wikipedia")}, {"sources": ()}, {"sources": ("math", "math")},
        {"only_split": "test"}, {"max_docs_per_source": 0},
    ):
        with pytest.raises(UsageError):
            build_corpus(tmp_path / "c.jsonl", **kwargs)
    with pytest.raises(UsageError):
        build_corpus(tmp_path / "c.parquet", ("math",))
    assert not list(tmp_path.iterdir())


def test_stdlib_excludes_site_packages_tests_and_tools(tmp_path):
    body = "x = 1\n" * 100
    for rel in ("b.py", "a/z.py", "a/tests/t.py", "test/test_os.py", "site-packages/pkg/m.py",
                "dist-packages/m.py", "idlelib/e.py", "lib2to3/f.py", "turtledemo/d.py",
                "config-3.11-x86_64-linux-gnu/python-config.py", "_sysconfigdata__linux.py", "data.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body)
    (tmp_path / "tiny.py").write_text("x = 1\n")
    (tmp_path / "huge.py").write_text("x = 1\n" * 40_000)
    (tmp_path / "latin.py").write_bytes(b"# \xe9\n" + body.encode())
    src = _stdlib(tmp_path)
    assert [name for name, _ in src.docs] == ["stdlib:a/z.py", "stdlib:b.py"]
    assert "skipped 2 files" in src.notes[0] and "1 not UTF-8" in src.notes[0]


def test_real_stdlib_has_no_site_packages_or_test_files():
    root = Path(sysconfig.get_paths()["stdlib"])
    names = [name.removeprefix("stdlib:") for name, _ in _stdlib(root).docs]
    assert "argparse.py" in names and "json/decoder.py" in names and names == sorted(names)
    for name in names:
        parts = set(Path(name).parts)
        assert not parts & {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib"}, name


def _math_pairs(tmp_path: Path, n_docs: int = 40) -> list[tuple[str, str]]:
    result = build_corpus(tmp_path / "m.jsonl", ("math",), math_docs=n_docs, seed=7)
    pairs = []
    for r in _records(result.path):
        found = re.findall(r"Question: (.*)\nAnswer: (.*)\n", r["text"])
        assert "".join(f"Question: {q}\nAnswer: {a}\n" for q, a in found) == r["text"]
        pairs += found
    assert len(pairs) == 10 * n_docs
    return pairs


def _poly(expr: str, x):
    return eval(expr, {"__builtins__": {}}, {"x": x})  # our own generated text: integers, x, + - * **


class _Dual:
    """a + b*eps with eps**2 = 0: evaluating a polynomial at Dual(x, 1) gives its derivative at x exactly."""

    def __init__(self, a, b=0):
        self.a, self.b = a, b

    def _lift(self, o):
        return o if isinstance(o, _Dual) else _Dual(o)

    def __add__(self, o):
        o = self._lift(o)
        return _Dual(self.a + o.a, self.b + o.b)

    def __mul__(self, o):
        o = self._lift(o)
        return _Dual(self.a * o.a, self.a * o.b + self.b * o.a)

    def __pow__(self, n):
        return _Dual(self.a**n, n * self.a ** (n - 1) * self.b)

    def __neg__(self):
        return _Dual(-self.a, -self.b)

    def __sub__(self, o):
        return self + -self._lift(o)

    __radd__, __rmul__ = __add__, __mul__

    def __rsub__(self, o):
        return self._lift(o) - self


def _check(question: str, answer: str) -> str:
    """Recompute the answer from the question text alone; return the template's name."""
    points = range(-5, 6)
    if m := re.fullmatch(r"Solve (.+) = (-?\d+) for x\.", question):
        assert _poly(m[1], int(answer)) == int(m[2])
        return "solve"
    if m := re.fullmatch(r"(?:Calculate (-?\d+(?: [+-] \d+)+)\.|What is (-?\d+(?: [+-] \d+)+)\?)", question):
        assert eval(m[1] or m[2], {"__builtins__": {}}) == int(answer)
        return "arithmetic"
    if m := re.fullmatch(r"What is the remainder when (\d+) is divided by (\d+)\?", question):
        assert int(m[1]) % int(m[2]) == int(answer) and 0 <= int(answer) < int(m[2])
        return "remainder"
    if m := re.fullmatch(r"Let ([fgh])\(x\) = (.+)\. What is \1\((-?\d+)\)\?", question):
        assert _poly(m[2], int(m[3])) == int(answer)
        return "evaluate"
    if m := re.fullmatch(r"Simplify \((.+)\)/\((.+)\)\.", question):
        for x in points:
            if _poly(m[2], x) != 0:
                assert Fraction(_poly(m[1], x), _poly(m[2], x)) == _poly(answer, x)
        return "simplify"
    if m := re.fullmatch(r"Expand \((.+)\)\*\((.+)\)\.", question):
        assert all(_poly(m[1], x) * _poly(m[2], x) == _poly(answer, x) for x in points)
        return "expand"
    if m := re.fullmatch(r"Calculate the greatest common divisor of (\d+) and (\d+)\.", question):
        assert math.gcd(int(m[1]), int(m[2])) == int(answer)
        return "gcd"
    if m := re.fullmatch(r"Differentiate (.+) with respect to x\.", question):
        assert all(_poly(m[1], _Dual(x, 1)).b == _poly(answer, x) for x in points)
        return "differentiate"
    if m := re.fullmatch(r"(?:What is (-?\d+) times (-?\d+)\?|Multiply (-?\d+) and (-?\d+)\.)", question):
        a, b = (int(v) for v in m.groups() if v is not None)
        assert a * b == int(answer)
        return "multiply"
    if m := re.fullmatch(r"Divide (-?\d+) by (-?\d+)\.", question):
        assert int(m[1]) == int(answer) * int(m[2])
        return "divide"
    raise AssertionError(f"unrecognised question: {question}")


def test_math_answers_are_right(tmp_path):
    kinds = {_check(q, a) for q, a in _math_pairs(tmp_path)}
    assert len(kinds) == 10  # every template was exercised


def test_math_answers_agree_with_sympy(tmp_path):
    sympy = pytest.importorskip("sympy")
    x = sympy.Symbol("x")
    for question, answer in _math_pairs(tmp_path, 15):
        got = sympy.sympify(answer)
        if m := re.fullmatch(r"Solve (.+) = (-?\d+) for x\.", question):
            assert sympy.solve(sympy.Eq(sympy.sympify(m[1]), int(m[2])), x) == [got]
        elif m := re.fullmatch(r"Simplify (.+)\.", question):
            assert sympy.cancel(sympy.sympify(m[1])) == got
        elif m := re.fullmatch(r"Expand (.+)\.", question):
            assert sympy.expand(sympy.sympify(m[1])) == got
        elif m := re.fullmatch(r"Differentiate (.+) with respect to x\.", question):
            assert sympy.diff(sympy.sympify(m[1]), x) == got


def test_math_seed_changes_problems_only(tmp_path):
    a = build_corpus(tmp_path / "a.jsonl", ("math",), 5, seed=1)
    b = build_corpus(tmp_path / "b.jsonl", ("math",), 5, seed=2)
    assert _records(a.path) != _records(b.path)
    assert build_corpus(tmp_path / "c.jsonl", ("math",), 5, seed=1).sha256 == a.sha256


def test_exact_duplicate_texts_are_written_once(tmp_path):
    result = build_corpus(tmp_path / "pydoc.jsonl", ("pydoc",))
    texts = [r["text"] for r in _records(result.path)]
    assert len(texts) == len(set(texts)) == sum(result.counts["PydocTopics"].values())
    from pydoc_data.topics import topics

    assert len(texts) == len(set(topics.values()))
    if topics["if"] == topics["else"]:  # true in CPython 3.11-3.13
        assert "pydoc: skipped pydoc:if: same text as pydoc:else" in result.notes


def test_command_line_builds_and_reports(tmp_path, capsys):
    out = tmp_path / "c.jsonl.gz"
    args = ["corpus", "build", "--out", str(out), "--sources", "math", "pydoc", "--max-docs-per-source", "5",
            "--only-split", "train"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"(sha256 {hashlib.sha256(out.read_bytes()).hexdigest()[:12]})" in printed
    assert "DM Mathematics" in printed and "PydocTopics" in printed
    assert all(r["meta"]["split"] == "train" for r in _records(tmp_path / "c.jsonl.gz"))
    with pytest.raises(SystemExit) as e:
        main(["corpus", "build", "--out", str(out), "--sources", "wikipedia"])
    assert e.value.code == 2 and "invalid choice: 'wikipedia'" in capsys.readouterr().err
