"""A GGUF file parsed once per process, not once per loading stage.

transformers reads a GGUF file's metadata with gguf's pure-Python GGUFReader at every stage: the config, the
tokenizer, the model's config again and its weights, each parsing every field anew (a 49k-entry vocabulary and its
merges: ~5 s per parse on a 2-core EPYC for SmolLM2-135M). It also rebuilds gguf's tensor-name map once per module
while it maps the weights (397 times for SmolLM2, ~6 s). Both are pure functions of their inputs, so while lossgap
loads a GGUF source they are served from a small memo: the file's reader by path and identity (inode, size, mtime;
an edited file is parsed again), and the name map by architecture and layer count. The metadata transformers
converts from the reader's fields (its config and tokenizer dicts, ~0.5 s a time for SmolLM2's vocabulary, asked
for three times per load) is kept the same way and handed out as a deep copy, so a caller that edits its dict edits
its own; its strings are decoded from their bytes in one call each. The one parse reads a plain ndarray view of
gguf's memory map: numpy's memmap subclass runs Python code on every slice, ~1.3M slices for SmolLM2's vocabulary
(1.85 s a parse on an AMX Xeon, 0.60-0.65 s over the plain view, the same fields and tensors). transformers is not
changed: only the names it imports at call time are replaced inside the block, then restored.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

KEPT_READERS = 2  # a comparison of two GGUF models reads each one's tokenizer, then loads each: both stay parsed
_readers: OrderedDict[tuple, object] = OrderedDict()
_metadata: dict[tuple, dict] = {}  # file identity -> load_gguf_checkpoint(path, return_tensors=False)


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
            _readers[key] = _plain(reader_class)(path, mode)
            while len(_readers) > KEPT_READERS:
                _readers.popitem(last=False)
        _readers.move_to_end(key)
        return _readers[key]

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    checkpoint = gguf_utils.load_gguf_checkpoint
    signature = inspect.signature(checkpoint)

    def metadata(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        path, *rest = bound.arguments.values()
        if any(value not in (False, None) for value in rest):  # tensors, or a model to load them into
            return checkpoint(*args, **kwargs)
        key = _identity(path)
        if key not in _metadata:
            _metadata[key] = checkpoint(*args, **kwargs)
        return copy.deepcopy(_metadata[key])

    parse_value = gguf_utils._gguf_parse_value
    gguf.GGUFReader, gguf.get_tensor_name_map = reader, _name_map(name_map)
    gguf_utils.load_gguf_checkpoint, gguf_utils._gguf_parse_value = metadata, _strings_decoded(parse_value)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map
        gguf_utils.load_gguf_checkpoint, gguf_utils._gguf_parse_value = checkpoint, parse_value


@functools.cache
def _plain(reader_class: type) -> type:
    """reader_class over a plain ndarray view of the memory map it opens (the mapping stays its base: the file is
    still read lazily, page by page)."""

    class PlainViewReader(reader_class):
        @property
        def data(self):
            return self._plain_data

        @data.setter
        def data(self, value):
            self._plain_data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return PlainViewReader


GGUF_STRING, GGUF_ARRAY = 8, 9  # gguf's value types


@functools.cache
def _strings_decoded(parse_value: Callable) -> Callable:
    """transformers' conversion of one GGUF value, with a string's bytes decoded in one call: it builds a Python
    list of numpy scalars per string (98k strings for SmolLM2's vocabulary and merges, ~0.1 s of the ~0.2 s it takes
    to convert the fields, once for the config and once more with the weights). The same str; anything else is
    converted by transformers."""

    def parse(value, data_type):
        types = data_type if isinstance(data_type, list) else [data_type]
        string = types == [GGUF_STRING] or types == [GGUF_ARRAY, GGUF_STRING]
        if string and isinstance(value, np.ndarray) and value.dtype == np.uint8:
            return value.tobytes().decode()
        return parse_value(value, data_type)

    return parse


@functools.cache
def _name_map(build):
    return functools.cache(build)


def forget(path=None) -> None:
    """Drop one file's parse (the model is loaded: its ~200 MB of parsed fields for a 49k vocabulary go), or all."""
    real = None if path is None else os.path.realpath(path)
    for memo in (_readers, _metadata):
        for key in [k for k in memo if real is None or k[0] == real]:
            del memo[key]


PACKED_WARNING = "Loading a GGUF checkpoint with its weights packed"  # transformers' quantizer_gguf.update_dtype


def false_packing_warning(model) -> Callable[[logging.LogRecord], bool]:
    """transformers warns that a GGUF model's weights "stay packed" and tells the user to load it in float32 whenever
    a dtype other than float32 is asked for, before it knows whether a packed kernel exists; without one (no hub, or
    no kernel for the device) it unpacks every weight into the asked dtype, and the warning, and its advice, are
    false. Drop it then (the model holds no packed module)."""
    def drop(record: logging.LogRecord) -> bool:
        packed = getattr(getattr(model[0], "hf_quantizer", None), "packed_modules", None) if model else None
        return record.getMessage().startswith(PACKED_WARNING) and not packed
    return drop
