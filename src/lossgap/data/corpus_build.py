"""Build a small Pile-format corpus from real text already on the machine, so tests and demos need no hub.

Sources (see `SOURCES`): standard-library code, `pydoc_data` prose, `/usr/share/common-licenses` legal text,
and seeded arithmetic/algebra questions with answers computed here. Nothing third-party is committed to the
repo: the text is read at run time. The output is byte-identical on every run with the same Python install,
and a sidecar `<out>.sources.json` records where each source came from and hashes of what was written.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import random
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from ..errors import UsageError
from ..formats.files import atomic_path, write_text

SOURCES = {"stdlib": "Github", "pydoc": "PydocTopics", "licenses": "Licenses", "math": "DM Mathematics"}
SPLITS = ("train", "heldout")
LICENSES_DIR = Path("/usr/share/common-licenses")
# Third-party code, test suites (huge, full of odd fixtures), IDLE, 2to3 and demos.
STDLIB_SKIP_DIRS = {
    "site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "lib2to3", "turtledemo",
    "__pycache__",
}
STDLIB_MIN_BYTES, STDLIB_MAX_BYTES = 500, 200_000
MATH_DOCS, MATH_QUESTIONS_PER_DOC = 300, 10
HASH_RULE = "sha256 over the concatenated sha256 digests of each document's UTF-8 text, in file order"


@dataclass
class BuildResult:
    """What a build wrote: counts[domain][split] are documents in the output file."""

    path: Path
    sidecar: Path
    sha256: str
    counts: dict[str, dict[str, int]]
    notes: list[str] = field(default_factory=list)


@dataclass
class _Source:
    """One source's documents as (meta.source, text) pairs, plus the paths it read and notes on skips."""

    paths: list[str]
    docs: Iterator[tuple[str, str]]
    notes: list[str] = field(default_factory=list)


def split_of(text: str) -> str:
    """Held-out iff the text's hash is 0 mod 10: fixed per document, whatever else is in the corpus."""
    return "heldout" if int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % 10 == 0 else "train"


def build_corpus(
    out: Path,
    sources: tuple[str, ...] = ("stdlib", "pydoc", "licenses", "math"),
    max_docs_per_source: int | None = None,
    seed: int = 0,
    *,
    only_split: str | None = None,
    math_docs: int = MATH_DOCS,
    licenses_dir: Path = LICENSES_DIR,
    stdlib_dir: Path | None = None,
) -> BuildResult:
    """Write the corpus to `out` (.jsonl, .jsonl.gz or .jsonl.zst) and its sidecar; `seed` seeds math."""
    out = Path(out)
    _check_args(out, sources, max_docs_per_source, only_split, math_docs)
    readers: dict[str, Callable[[], _Source]] = {
        "stdlib": lambda: _stdlib(Path(stdlib_dir or sysconfig.get_paths()["stdlib"])),
        "pydoc": _pydoc,
        "licenses": lambda: _licenses(Path(licenses_dir)),
        "math": lambda: _math(seed, math_docs),
    }
    counts: dict[str, dict[str, int]] = {}
    entries, notes, seen = [], [], {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, ".tmp") as tmp, open(tmp, "wb") as raw, _compressor(raw, out.name) as f:
        for name in sources:  # a failed build never leaves a truncated corpus under `out`
            src = readers[name]()
            written, digest = _write_source(f, SOURCES[name], src, max_docs_per_source, only_split, seen)
            if any(written.values()):
                counts[SOURCES[name]] = written
            notes += [f"{name}: {note}" for note in src.notes]
            n = sum(written.values())
            entries.append({
                "name": name, "domain": SOURCES[name], "paths": src.paths, "documents": n,
                "splits": written, "sha256": digest, "notes": src.notes,
            })
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    sidecar = out.with_name(out.name + ".sources.json")
    meta = {
        "python": sys.version.split()[0], "output": out.name, "output_sha256": sha,
        "output_bytes": out.stat().st_size, "seed": seed, "max_docs_per_source": max_docs_per_source,
        "only_split": only_split, "split_rule": "heldout iff int(sha256(text).hexdigest(), 16) % 10 == 0",
        "source_sha256_rule": HASH_RULE, "counts": counts, "sources": entries,
    }
    write_text(sidecar, json.dumps(meta, ensure_ascii=False, indent=2) + "\n")
    return BuildResult(out, sidecar, sha, counts, notes)


def _write_source(f, domain: str, src: _Source, max_docs: int | None, only_split: str | None, seen: dict):
    """Write one source's records; return its documents per split and the sha256 over their texts.

    An exact repeat of a text already written (pydoc's `if` and `else` topics are one text) is skipped, so
    no document is counted twice. `max_docs` counts before the split filter: one split is a subset of both.
    """
    digest, written, taken = hashlib.sha256(), dict.fromkeys(SPLITS, 0), 0
    for source, text in src.docs:
        if max_docs is not None and taken >= max_docs:
            break
        text_hash = hashlib.sha256(text.encode("utf-8")).digest()
        if text_hash in seen:
            src.notes.append(f"skipped {source}: same text as {seen[text_hash]}")
            continue
        seen[text_hash] = source
        taken += 1
        split = split_of(text)
        if only_split not in (None, split):
            continue
        record = {"text": text, "meta": {"pile_set_name": domain, "split": split, "source": source}}
        f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        digest.update(text_hash)
        written[split] += 1
    return written, digest.hexdigest()


def _check_args(out: Path, sources, max_docs_per_source, only_split, math_docs) -> None:
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources or len(set(sources)) != len(sources):
        what = f"unknown source(s) {', '.join(map(repr, unknown))}" if unknown else "give distinct sources"
        raise UsageError(f"corpus build: {what}", f"choose from {', '.join(SOURCES)}")
    if only_split not in (None, *SPLITS):
        raise UsageError(f"corpus build: split {only_split!r} is not one of {', '.join(SPLITS)}")
    for name, value in (("max_docs_per_source", max_docs_per_source), ("math_docs", math_docs)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"corpus build: {name}={value!r} must be a positive integer")
    if not out.name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        raise UsageError(f"corpus build: {out.name}: unknown output format", "end the name in .jsonl, "
                         ".jsonl.gz or .jsonl.zst")


def _compressor(raw: io.BufferedIOBase, name: str):
    """Compressed formats carry no file name or timestamp, so the bytes depend on the documents only."""
    if name.endswith(".gz"):
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
    if name.endswith(".zst"):
        return zstandard.ZstdCompressor(level=10).stream_writer(raw, closefd=False)
    return contextlib.nullcontext(raw)


def _stdlib(root: Path) -> _Source:
    """Standard-library modules, one document per file, sorted by relative path."""
    files, notes = [], []
    for folder, dirs, names in os.walk(root):
        # config-3.x-*/ and _sysconfigdata*.py are generated by the build of the interpreter
        dirs[:] = [d for d in dirs if d not in STDLIB_SKIP_DIRS and not d.startswith("config-")]
        files += [Path(folder, n) for n in names if n.endswith(".py") and not n.startswith("_sysconfigdata")]
    if not files:
        notes.append(f"no .py files under {root}; skipped")
    files.sort(key=lambda p: p.relative_to(root).as_posix())

    def docs() -> Iterator[tuple[str, str]]:
        skipped = {"size": 0, "utf8": 0}
        for path in files:
            if not STDLIB_MIN_BYTES <= path.stat().st_size <= STDLIB_MAX_BYTES:
                skipped["size"] += 1
                continue
            try:
                yield f"stdlib:{path.relative_to(root).as_posix()}", path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                skipped["utf8"] += 1
        if any(skipped.values()):
            limits = f"{STDLIB_MIN_BYTES}-{STDLIB_MAX_BYTES} bytes"
            notes.append(f"skipped {skipped['size']} files outside {limits} and {skipped['utf8']} not UTF-8")

    return _Source([str(root)], docs(), notes)


def _pydoc() -> _Source:
    """The interpreter's own reference-manual topics: English prose with code examples."""
    from pydoc_data import topics

    docs = ((f"pydoc:{key}", text) for key, text in sorted(topics.topics.items()) if text.strip())
    return _Source([topics.__file__], docs)


def _licenses(folder: Path) -> _Source:
    """License texts; regular files first, so a symlink (GPL -> GPL-3) never shadows its target's name."""
    if not folder.is_dir():
        return _Source([str(folder)], iter(()), [f"{folder} does not exist; skipped"])
    entries = sorted(folder.iterdir(), key=lambda p: (p.is_symlink(), p.name))
    notes: list[str] = []

    def docs() -> Iterator[tuple[str, str]]:
        seen, bad = set(), []
        for path in entries:
            real = path.resolve()
            if real in seen or not real.is_file():
                continue
            seen.add(real)
            try:
                text = real.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                bad.append(path.name)
                continue
            if text.strip():
                yield f"licenses:{path.name}", text
        if bad:
            notes.append(f"skipped unreadable or non-UTF-8 files: {', '.join(bad)}")

    return _Source([str(folder)], docs(), notes)


def _math(seed: int, n_docs: int) -> _Source:
    """DM-Mathematics-style blocks of question/answer pairs; every answer is computed, not sampled."""
    rng = random.Random(seed)

    def docs() -> Iterator[tuple[str, str]]:
        for i in range(n_docs):
            pairs = (rng.choice(_TEMPLATES)(rng) for _ in range(MATH_QUESTIONS_PER_DOC))
            yield f"math:seed{seed}:{i}", "".join(f"Question: {q}\nAnswer: {a}\n" for q, a in pairs)

    return _Source([f"generated: lossgap.corpus_build, random.Random({seed})"], docs())


def poly(coeffs: dict[int, int], var: str = "x") -> str:
    """Format {degree: coefficient} in descending powers, in Python/sympy syntax: '2*x**2 - x + 3'."""
    out = ""
    for deg in sorted((d for d, c in coeffs.items() if c), reverse=True):
        c = coeffs[deg]
        body = var if deg == 1 else f"{var}**{deg}" if deg > 1 else ""
        mag = str(abs(c)) if not body else "" if abs(c) == 1 else f"{abs(c)}*"
        sign = ("-" if c < 0 else "") if not out else (" - " if c < 0 else " + ")
        out += sign + mag + body
    return out or "0"


def _nonzero(rng: random.Random, lo: int, hi: int) -> int:
    return rng.choice([v for v in range(lo, hi + 1) if v])


def _random_poly(rng: random.Random, degree: int) -> dict[int, int]:
    coeffs = {d: rng.randint(-6, 6) for d in range(degree)}
    coeffs[degree] = _nonzero(rng, -6, 6)
    return coeffs


def _solve(rng):
    a, b, x = _nonzero(rng, -9, 9), _nonzero(rng, -30, 30), rng.randint(-20, 20)
    return f"Solve {poly({1: a, 0: b})} = {a * x + b} for x.", str(x)


def _calculate(rng):
    terms = [rng.randint(-50, 50) for _ in range(rng.randint(3, 5))]
    expr = str(terms[0]) + "".join(f" - {-t}" if t < 0 else f" + {t}" for t in terms[1:])
    return rng.choice([f"Calculate {expr}.", f"What is {expr}?"]), str(sum(terms))


def _remainder(rng):
    n, d = rng.randint(100, 5000), rng.randint(3, 60)
    return f"What is the remainder when {n} is divided by {d}?", str(n % d)


def _evaluate(rng):
    name, coeffs, x = rng.choice("fgh"), _random_poly(rng, rng.randint(1, 3)), rng.randint(-6, 6)
    value = sum(c * x**d for d, c in coeffs.items())
    return f"Let {name}(x) = {poly(coeffs)}. What is {name}({x})?", str(value)


def _simplify(rng):
    a, b = _nonzero(rng, -9, 9), rng.randint(-9, 9)  # (x - a)(x - b)/(x - a) = x - b
    return f"Simplify ({poly({2: 1, 1: -a - b, 0: a * b})})/({poly({1: 1, 0: -a})}).", poly({1: 1, 0: -b})


def _expand(rng):
    a, b = _nonzero(rng, -9, 9), _nonzero(rng, -9, 9)
    question = f"Expand ({poly({1: 1, 0: a})})*({poly({1: 1, 0: b})})."
    return question, poly({2: 1, 1: a + b, 0: a * b})


def _gcd(rng):
    g = rng.randint(2, 30)
    m, n = g * rng.randint(2, 20), g * rng.randint(2, 20)
    return f"Calculate the greatest common divisor of {m} and {n}.", str(math.gcd(m, n))


def _differentiate(rng):
    coeffs = _random_poly(rng, rng.randint(2, 4))
    derivative = {d - 1: c * d for d, c in coeffs.items() if d > 0}
    return f"Differentiate {poly(coeffs)} with respect to x.", poly(derivative)


def _multiply(rng):
    a, b = rng.randint(-40, 40), rng.randint(-40, 40)
    return rng.choice([f"What is {a} times {b}?", f"Multiply {a} and {b}."]), str(a * b)


def _divide(rng):
    d, q = _nonzero(rng, -25, 25), rng.randint(-60, 60)
    return f"Divide {d * q} by {d}.", str(q)


_TEMPLATES = (
    _solve, _calculate, _remainder, _evaluate, _simplify, _expand, _gcd, _differentiate, _multiply, _divide,
)
