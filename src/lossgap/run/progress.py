"""A progress bar on stderr: the share of the corpus done (for an ETA), with tokens and tokens/s."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..config import ScoreConfig
from ..data.corpus import Corpus


class Progress:
    def __init__(self, cfg: ScoreConfig, corpus: Corpus, enabled: bool):
        self.cfg, self.corpus = cfg, corpus
        self.bar = None
        self.started = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=100.0, file=sys.stderr, unit="%", dynamic_ncols=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}",
                            desc=f"scoring {Path(cfg.model.name).name}")

    def update(self, input_tokens: int, docs_seen: int) -> None:
        if self.bar is None:
            return
        c = self.cfg.corpus
        limits = [self.corpus.fraction_read if c.sample is None else 0.0]
        if c.max_tokens:
            limits.append(input_tokens / c.max_tokens)
        doc_limit = min(x for x in (c.max_docs, c.sample) if x) if (c.max_docs or c.sample) else None
        if doc_limit:
            limits.append(docs_seen / doc_limit)
        done = min(100.0, 100.0 * max(limits))
        rate = input_tokens / max(1e-9, time.perf_counter() - self.started)
        self.bar.set_postfix_str(f"{input_tokens:,} tok, {rate:,.0f} tok/s", refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
