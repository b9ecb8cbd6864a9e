"""Stopping a run cleanly: at a signal, after the window being scored, or at the first corpus error, keeping every
finished window so that `--resume` continues from there."""

from __future__ import annotations

import signal
import threading

from ..errors import LossgapError


class Interrupted(LossgapError):
    exit_code = 130


class StopOnSignal:
    """SIGINT/SIGTERM finish the window being scored, then stop cleanly (resumable); a second signal kills."""

    def __init__(self):
        self.received: str | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received:
            self.restore()
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


class StopAtError:
    """Ends the document stream at the first corpus error and keeps it, so every document before it is scored."""

    def __init__(self, documents):
        self.documents = documents
        self.error: LossgapError | None = None

    def __iter__(self):
        try:
            yield from self.documents
        except LossgapError as e:
            self.error = e
