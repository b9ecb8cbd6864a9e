"""Named scoring configurations, including the seed's six-row matrix with what each row really computes."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Configuration:
    key: str
    label_offset: int
    layout: str
    mask: str
    seed_group: str = ""
    seed_setup: str = ""
    seed_mask: str = ""

    @property
    def computes(self) -> str:
        """What the row actually measures, in plain words."""
        target = ("next-token loss" if self.label_offset == 1
                  else "predicts token t+2: HF shifted the labels a second time")
        if self.layout == "single":
            context = "each document alone"
        elif self.mask == "block":
            context = "packed rows, documents kept apart by the block mask"
        else:
            context = "packed rows, context leaks across document boundaries"
        return f"{target}; {context}"

    def to_dict(self) -> dict:
        return {**asdict(self), "computes": self.computes}


SHIFTED = "SHIFTED LABELS (next-token prediction)"
NO_SHIFT = "NO SHIFTING (labels=input_ids)"

SEED_MATRIX = (
    Configuration("shifted-single-causal", 2, "single", "causal", SHIFTED, "Single document", "Default causal"),
    Configuration("shifted-batch-block", 2, "packed", "block", SHIFTED, "Batch", "Proper 4D block"),
    Configuration("shifted-batch-causal", 2, "packed", "causal", SHIFTED, "Batch", "Default causal"),
    Configuration("next-single-causal", 1, "single", "causal", NO_SHIFT, "Single document", "Default causal"),
    Configuration("next-batch-block", 1, "packed", "block", NO_SHIFT, "Batch", "Proper 4D block"),
    Configuration("next-batch-causal", 1, "packed", "causal", NO_SHIFT, "Batch", "Default causal"),
)


@dataclass(frozen=True)
class SeedFigures:
    """The original analysis's own numbers, which the findings check against this comparison's (seed matrix only)."""

    single_document_loss: float  # Base, no shifting, single document
    batch_loss: float  # Base, no shifting, packed batch
    differences: tuple[float, ...]  # Instruct - Base on the no-shifting rows, nats/token
    claimed_change: str  # the relative perplexity change it drew from them


SEED_FIGURES = SeedFigures(single_document_loss=2.514, batch_loss=3.051, differences=(0.144, 0.184),
                           claimed_change="5-15 %")


def is_seed_matrix(keys) -> bool:
    """Whether the configurations `keys` are the seed's six: only then do the seed's own figures apply."""
    return set(keys) == {c.key for c in SEED_MATRIX}


def single_configuration(label_offset: int, layout: str, mask: str) -> Configuration:
    return Configuration(f"k{label_offset}-{layout}-{mask}", label_offset, layout, mask)


def leakage_pairs(configs) -> list[tuple[Configuration, Configuration]]:
    """(block, causal) configurations on the same packed layout and offset: their difference is the leak."""
    pairs = []
    for block in configs:
        if block.layout == "packed" and block.mask == "block":
            for causal in configs:
                if (causal.layout, causal.mask, causal.label_offset) == ("packed", "causal", block.label_offset):
                    pairs.append((block, causal))
    return pairs


def main_configuration(configs: list[Configuration]) -> Configuration:
    """The row the headline numbers come from: next-token targets, packed rows, block mask, when present."""
    for conf in configs:
        if (conf.label_offset, conf.layout, conf.mask) == (1, "packed", "block"):
            return conf
    return next((c for c in configs if c.label_offset == 1), configs[0])
