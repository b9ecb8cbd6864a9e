"""A GGUF file parsed once per process, not once per loading stage.

transformers reads a GGUF file's metadata with gguf's pure-Python GGUFReader at every stage: the config, the
tokenizer, the model's config again and its weights, each parsing every field anew (a 49k-entry vocabulary and its
merges: ~5 s per parse on a 2-core EPYC for SmolLM2-135M). It also rebuilds gguf's tensor-name map once per module
while it maps the weights (397 times for SmolLM2, ~6 s). Both are pure functions of their inputs, so while lossgap
loads a GGUF source they are served from a small memo: the file's reader by path and identity (inode, size, mtime;
an edited file is parsed again), and the name map by architecture and layer count. transformers is not changed: only
the two names it imports from gguf at call time are replaced inside the block, then restored.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

KEPT_READERS = 2  # a comparison of two GGUF models reads each one's tokenizer, then loads each: both stay parsed
_readers: OrderedDict[tuple, object] = OrderedDict()


def _identity(path) -> tuple:
    st = os.stat(path)
    return os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns


@contextmanager
def parsed_once() -> Iterator[None]:
    """Inside the block, gguf.GGUFReader and gguf.get_tensor_name_map as transformers calls them come from the memo."""
    import gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def reader(path, mode="r"):
        if mode != "r":  # a writable map is never shared
            return reader_class(path, mode)
        key = (*_identity(path), mode)
        if key not in _readers:
            _readers[key] = reader_class(path, mode)
            while len(_readers) > KEPT_READERS:
                _readers.popitem(last=False)
        _readers.move_to_end(key)
        return _readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, _name_map(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


@functools.cache
def _name_map(build):
    return functools.cache(build)


def forget(path=None) -> None:
    """Drop one file's parse (the model is loaded: its ~200 MB of parsed fields for a 49k vocabulary go), or all."""
    real = None if path is None else os.path.realpath(path)
    for key in [k for k in _readers if real is None or k[0] == real]:
        del _readers[key]
