"""Produce work in a background thread (reading, tokenizing and laying out documents) while the model computes.

Tokenizers and zstd release the GIL, so this overlaps real work; `wait_seconds` is the time the consumer spent
waiting for data, reported as `data_wait_share` in summary.json.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable

_DONE = object()


class Prefetch:
    def __init__(self, items: Iterable, depth: int = 2):
        self.wait_seconds = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(iter(items),), daemon=True)
        self._thread.start()

    def _produce(self, items) -> None:
        try:
            for item in items:
                while not self._stop.is_set():
                    try:
                        self._queue.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put((_DONE, None))
        except BaseException as e:  # handed to the consumer, raised there
            self._queue.put((_DONE, e))

    def __iter__(self):
        while True:
            started = time.perf_counter()
            item, error = self._queue.get()
            self.wait_seconds += time.perf_counter() - started
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item

    def close(self) -> None:
        """Stop the producer (e.g. after an error in the consumer) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)
