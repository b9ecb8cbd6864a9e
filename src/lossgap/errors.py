"""User-facing errors: one readable message, a fix, and an exit code; never a traceback."""

from __future__ import annotations


class LossgapError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\n  fix: {self.fix}"


class UsageError(LossgapError):
    """A bad option value or combination (exit code 2, like argparse)."""

    exit_code = 2


class CorpusError(LossgapError):
    """A corpus file that cannot be read, or a record in it that is malformed."""


class ModelError(LossgapError):
    """A model or tokenizer that cannot be loaded or cannot take the requested run."""


class PlanError(LossgapError):
    """An execution plan that fails its correctness probe on a model."""
