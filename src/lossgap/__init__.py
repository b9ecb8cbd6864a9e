"""lossgap: measure and explain the language-modelling loss of causal LMs on a corpus.

`lossgap.score` (the function) and `ScoreResult` are imported on first use, not with the package: they pull in torch
and transformers (~5 s), which `lossgap --help`, `lossgap report` and the config classes do not need.
"""

import sys
import types

__version__ = "0.1.0"

from .config import CorpusConfig, LayoutConfig, ModelConfig, RunConfig, ScoreConfig, TokenizeConfig  # noqa: E402

__all__ = [
    "CorpusConfig",
    "LayoutConfig",
    "ModelConfig",
    "RunConfig",
    "ScoreConfig",
    "ScoreResult",
    "TokenizeConfig",
    "score",
]


class _Package(types.ModuleType):
    """The package's module type. `score` names both the submodule `lossgap/score.py` and its public function; the
    import system binds the submodule on the package when it is first imported, which would hide the function. A
    data descriptor on the type wins over that binding: `lossgap.score` is always the function, and the submodule
    stays reachable as `sys.modules["lossgap.score"]`, exactly as when the package imported it eagerly."""

    @property
    def score(self):
        from .score import score as function

        return function

    @score.setter
    def score(self, value) -> None:
        if not isinstance(value, types.ModuleType):
            raise AttributeError("lossgap.score is the scoring function; patch sys.modules['lossgap.score'] instead")

    def __dir__(self):
        return sorted(set(super().__dir__()) | {"score", "ScoreResult"})

    @property
    def ScoreResult(self):
        from .score import ScoreResult

        return ScoreResult


sys.modules[__name__].__class__ = _Package
