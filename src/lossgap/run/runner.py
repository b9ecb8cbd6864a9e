"""Scoring the windows a process owns: the plan's batches through the forward layer, out-of-memory back-off, the
float32 check of the first batch, and one per-token table per label offset in document order."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import torch

from ..analysis import precision
from ..data.layout import Batch, retarget
from ..engine import forward
from ..errors import LossgapError
from ..formats.columns import MODEL_METRICS, TOKEN_COLUMNS, token_table
from .store import DocumentSums


def layout_columns(batch: Batch) -> dict[str, np.ndarray]:
    """The per-token columns the layout decides (columns.py, sources "key" and "document"), but the domain."""
    return {"doc_id": batch.doc_ids, "pos": batch.target_pos, "target": batch.targets.numpy(),
            "truncated": batch.truncated, "context": batch.context}


class WindowRunner:
    """Scores windows with one plan and head; one forward pass per batch serves every label offset asked for (the
    plan's rows are laid out for the smallest)."""

    columns = TOKEN_COLUMNS  # what a window's table holds

    def __init__(self, plan, head, model_name: str, fp32_check: bool):
        self.plan, self.head, self.model_name = plan, head, model_name
        self.want_fp32_check = fp32_check and plan.dtype != torch.float32
        self.fp32_check: dict[object, dict | None] = {}  # label offset -> deviation of its first batch from float32
        self.checked: set[int] = set()  # the label offsets whose float32 check ran (or ran out of memory)
        self.input_tokens = 0
        self.oom_retries = 0

    def score_window(self, rows, documents: DocumentSums, offsets: list[int]) -> list[pa.Table]:
        """One table per offset, each in document order, whatever order the plan scored in."""
        parts: dict[int, list[dict]] = {k: [] for k in offsets}
        for group in self.plan.groups(rows):
            for batches, stats in self._score_group(group, offsets):
                self.check(offsets, batches, stats)
                for k, batch, columns in zip(offsets, batches, stats, strict=True):
                    parts[k].append({**layout_columns(batch), **columns})
                self.input_tokens += batches[0].n_input_tokens
        return [document_order(parts[k], documents, self.columns_for(k)) for k in offsets]

    def columns_for(self, k: int) -> tuple:
        """The columns of label offset k's table."""
        return self.columns

    def attention(self):
        """The plan's attention on the model while the windows are scored (plans.Plan.attention)."""
        return self.plan.attention()

    def forward(self, batches: list[Batch], offsets: list[int]) -> list[dict[str, np.ndarray]]:
        """The per-token columns the model computes, one dict per batch (the same rows, one per offset)."""
        return forward.forward_batches(self.plan, self.head, batches, MODEL_METRICS)

    def check(self, offsets: list[int], batches: list[Batch], stats: list[dict]) -> None:
        """Refuse a non-finite loss; measure the first batch of each offset against float32 below it, and say so on
        stderr when it is farther than the limits (formats/schema.py FP32_LIMITS)."""
        for batch, columns in zip(batches, stats, strict=True):
            self.require_finite(batch, columns)
        todo = [(k, b, c) for k, b, c in zip(offsets, batches, stats, strict=True)
                if self.want_fp32_check and k not in self.checked and b.n_targets]
        if not todo:
            return
        try:
            checks = self.measure_fp32(todo)
        except torch.OutOfMemoryError:  # no check, said, not a crash (the results' fp32_check stays null)
            self.checked.update(k for k, _, _ in todo)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            print(f"lossgap: warning: {self.model_name}: the float32 check of the first batch ran out of memory "
                  "and was skipped; the results are unchecked against float32", file=sys.stderr, flush=True)
            return
        # an offset whose slice held no target is checked on its next batch
        self.checked.update(key if isinstance(key, int) else key[1] for key in checks)  # k, or (model role, k)
        self.fp32_check.update(checks)
        for key, check in checks.items():
            if check["warn"]:
                print(f"lossgap: warning: {self.fp32_warning(key, check)}; {precision.REMEDY}", file=sys.stderr,
                      flush=True)

    def require_finite(self, batch: Batch, columns: dict) -> None:
        forward.require_finite_loss(columns["nll"], batch, self.model_name, self.plan.dtype)

    def measure_fp32(self, todo: list[tuple[int, Batch, dict]]) -> dict:
        """Check key -> the deviation from float32 of each offset's first batch (offsets whose slice held no target
        absent): one float32 forward pass serves every offset, the rows being the same."""
        found = forward.fp32_deviations(self.plan, self.head, [b for _, b, _ in todo], [c["nll"] for _, _, c in todo])
        return {k: check for (k, _, _), check in zip(todo, found, strict=True) if check is not None}

    def fp32_warning(self, key, check: dict) -> str:
        return f"{self.model_name} (label offset {key}): {precision.run_check_text(check)}"

    def _score_group(self, group, offsets: list[int]) -> list[tuple[list[Batch], list[dict]]]:
        batches = [self.plan.collate(retarget(group, self.plan.k, k), k) for k in offsets]
        try:
            return [(batches, self.forward(batches, offsets))]
        except torch.OutOfMemoryError:
            if len(group) == 1:
                raise LossgapError(
                    f"out of memory on a single row of {group[0].length} tokens",
                    "lower --seq-len, --batch-tokens or --loss-chunk-mb",
                ) from None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.oom_retries += 1
        print(f"lossgap: out of memory on a batch of {len(group)} rows; retrying in halves", file=sys.stderr)
        half = len(group) // 2
        return self._score_group(group[:half], offsets) + self._score_group(group[half:], offsets)


def document_order(parts: list[dict], documents: DocumentSums, columns=TOKEN_COLUMNS) -> pa.Table:
    """The batches' columns joined and sorted by (document, position), with each document's domain."""
    names = [c.name for c in columns if c.name != "domain"]
    joined = {name: np.concatenate([p[name] for p in parts]) for name in names}
    order = np.lexsort((joined["pos"], joined["doc_id"]))
    values = {name: a[order] for name, a in joined.items()}
    values["domain"] = [documents.docs[d].domain for d in values["doc_id"].tolist()]
    return token_table(values, columns)
