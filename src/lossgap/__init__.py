"""lossgap: measure and explain the language-modelling loss of causal LMs on a corpus.

The config classes import with the package; `score`, `score_offsets`, `ScoreResult`, `compare` and `CompareConfig`'s
runner are resolved on first use (PEP 562), because they pull in torch and transformers (~5 s), which
`lossgap --help`, `lossgap report` and the config classes do not need.
"""

from .config import (
    CompareConfig,
    CorpusConfig,
    LayoutConfig,
    ModelConfig,
    RunConfig,
    ScoreConfig,
    TokenizeConfig,
)
from .version import __version__

# name -> submodule that defines it, imported on first access
_LAZY = {
    "score": "run.scoring",
    "score_offsets": "run.scoring",
    "ScoreResult": "run.scoring",
    "compare": "run.comparison",
}

__all__ = [
    "CompareConfig",
    "CorpusConfig",
    "LayoutConfig",
    "ModelConfig",
    "RunConfig",
    "ScoreConfig",
    "TokenizeConfig",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
