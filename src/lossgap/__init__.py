"""lossgap: measure and explain the language-modelling loss of causal LMs on a corpus."""

__version__ = "0.1.0"

from .config import CorpusConfig, LayoutConfig, ModelConfig, RunConfig, ScoreConfig, TokenizeConfig  # noqa: E402
from .score import ScoreResult, score  # noqa: E402

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
