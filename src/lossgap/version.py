"""The package version, and the versions of the libraries a run's numbers depend on (recorded with every run)."""

from __future__ import annotations

import platform

__version__ = "0.1.0"


def library_versions() -> dict:
    import numpy
    import pyarrow
    import tokenizers
    import torch
    import transformers

    return {
        "lossgap": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": numpy.__version__,
    }
