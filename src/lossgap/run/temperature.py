"""The temperature fit behind the explanation's temperature split (docs/explanation.md): right after the paired pass,
with both models still loaded, a seeded sample of the pass's rows (run/sample.py) goes through each model once more;
each model's temperature is fitted on the sample (engine/temperature.py), and per document of the sample its scored
tokens and each model's NLL sum at T = 1 and at its fitted T are written to pairs/<other>.temperature.json
(formats/schema.py TemperatureFile). analysis/temperature.py splits D from that file alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..config import ScoreConfig
from ..engine.dist import init_distributed
from ..engine.temperature import TemperatureFit, fit_temperature, scored_sample
from ..formats.files import write_json
from ..formats.paths import ComparisonFolder
from ..formats.schema import TemperatureFile
from .paired import PairedResult
from .sample import sample_rows

TOKEN_BUDGET = 16384  # scored tokens the temperature is fitted on (two more forward passes over this many): the
# default of --layers-tokens, so that with both at their defaults the layer attribution runs on the same rows
ROLES = ("baseline", "other")


def fit_pair_temperatures(cfg: ScoreConfig, done: PairedResult, names: tuple[str, str], folder: ComparisonFolder,
                          seed: int) -> Path:
    """Fit both models' temperatures on a sample of the paired pass's rows (TOKEN_BUDGET scored tokens, drawn with
    `seed`) and write pairs/<other>.temperature.json (rank 0); return its path."""
    started = time.perf_counter()
    dist = init_distributed(cfg.model.device)
    dist.barrier()  # rank 0 has merged the pairs file: the number of scored tokens the sample is drawn from
    total = pq.read_metadata(done.path).num_rows
    sample = sample_rows(cfg, done.engines[0], done.corpus, total, TOKEN_BUDGET, seed)
    fits: dict[str, TemperatureFit] = {}
    models = {}
    doc_ids = np.zeros(0, np.int64)
    for role, name, engine in zip(ROLES, names, done.engines, strict=True):
        began = time.perf_counter()
        scored = scored_sample(engine.plan, engine.head, sample.batches)
        doc_ids = scored.doc_ids
        fits[role] = fit = fit_temperature(engine.head, scored)
        del scored  # the sample's hidden states (and logits) only as long as the fit needs them
        models[role] = {"name": name, "beta": fit.beta, "temperature": fit.temperature, "steps": fit.steps,
                        "converged": fit.converged, "logits_kept": fit.logits_kept,
                        "seconds": time.perf_counter() - began}
    stored: TemperatureFile = {"sample": sample.describe(), "models": models,
                               "documents": per_document(doc_ids, fits),
                               "seconds": time.perf_counter() - started}
    path = folder.temperature(names[1])
    if dist.main:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, dict(stored))
    if not cfg.run.quiet and dist.main:
        fitted = ", ".join(f"{m['name']} T = {m['temperature']:.4f}" for m in models.values())
        print(f"temperature: {fitted} on {sample.targets:,} scored tokens of {sample.documents:,} documents "
              f"({stored['seconds']:.1f} s)", file=sys.stderr, flush=True)
    return path


def per_document(doc_ids: np.ndarray, fits: dict[str, TemperatureFit]) -> dict[str, list]:
    """Per document of the sample (in doc_id order): its scored tokens and each model's NLL sum at T = 1 and at its
    fitted T."""
    docs, idx = np.unique(doc_ids, return_inverse=True)
    out: dict[str, list] = {"doc_id": docs.tolist(), "n_tokens": np.bincount(idx, minlength=docs.size).tolist()}
    for role, fit in fits.items():
        out[f"nll_{role}"] = np.bincount(idx, weights=fit.nll, minlength=docs.size).tolist()
        out[f"nll_{role}_tempered"] = np.bincount(idx, weights=fit.nll_tempered, minlength=docs.size).tolist()
    return out
