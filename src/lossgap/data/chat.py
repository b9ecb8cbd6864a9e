"""Rendering a model's chat template (`--chat-context`) as untrusted input: in Jinja's sandbox (transformers'),
within a deadline, and with every failure reported as the model's problem, naming the file the template came from.

The deadline is a timer signal (SIGALRM via setitimer) on the main thread: Jinja renders in Python bytecode, so the
signal's handler runs between two steps of even the longest loop and ends the render; a thread with a timeout could
only stop waiting, never stop the render, and a subprocess would cost an interpreter start and a transformers import
for a render of milliseconds. One step that runs in C (say `'x' * 10**10`) is not interrupted by a signal; the
sandbox's own limits (ranges of at most 100,000 items) hold there. Off the main thread, or where the platform has no
SIGALRM (Windows), the render runs without a deadline.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ModelError

RENDER_SECONDS = 2.0  # a real template renders in milliseconds; a loop that runs longer is refused
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")  # where transformers looks


class RenderTimeout(BaseException):
    """Raised by the timer inside the render; a BaseException, so no `except Exception` in the template's callees
    can swallow it."""


def template_source(tokenizer, model_name: str) -> str:
    """The file the model's chat template was read from, in transformers' order of preference; else the model."""
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    if folder.is_dir():
        for name in TEMPLATE_FILES:
            if (folder / name).is_file():
                return str(folder / name)
    return f"{model_name} (its chat template)"


def render_chat(tokenizer, messages: list[dict], model_name: str) -> str:
    """The chat template applied to `messages`, as text; a template that fails, is refused by the sandbox or runs
    past RENDER_SECONDS is a ModelError naming its file."""
    where = template_source(tokenizer, model_name)
    fix = "fix the chat template in that file, or drop --chat-context for this model"
    try:
        with deadline(RENDER_SECONDS):
            return tokenizer.apply_chat_template(messages, tokenize=False)
    except RenderTimeout:
        raise ModelError(f"{where}: the chat template did not finish rendering within {RENDER_SECONDS:g} s (a loop "
                         "that runs too long?)", fix) from None
    except MemoryError:
        raise ModelError(f"{where}: the chat template ran out of memory while rendering", fix) from None
    except Exception as e:  # Jinja's syntax, undefined, security and template errors, the sandbox's range limit
        line = getattr(e, "lineno", None)
        at = f" at line {line}" if isinstance(line, int) else ""
        detail = (str(e).strip().splitlines() or [""])[0][:300]
        raise ModelError(f"{where}: the chat template cannot be rendered{at} ({type(e).__name__}: {detail})",
                         fix) from None


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise RenderTimeout in the block after `seconds` (main thread with SIGALRM only; elsewhere no limit). A
    timer already running (a test runner's, say) is put back with the time it has left."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    active = True

    def expire(signum, frame):
        if active:  # a signal that lands after the block, before the timer is stopped, is not a timeout
            raise RenderTimeout

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        active = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3))
