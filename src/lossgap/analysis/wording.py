"""How a number becomes words in the findings: every quantifier and every "the same" follows from the figure printed
beside it, so a sentence never says more than its number."""

from __future__ import annotations

import math

MOST = 0.5  # "most" of a whole only above this share; otherwise "the largest part"
LOSS_DIGITS = 4  # losses and differences print with 4 decimals (nats/token, bits/byte)
KL_DIGITS = 3  # mean KL prints with 3 decimals


def shown_as_zero(x: float | None, digits: int = LOSS_DIGITS) -> bool:
    """Whether x prints as zero at `digits` decimals: then the findings say "the same", not a direction or a share."""
    return x is not None and math.isfinite(x) and round(abs(x), digits) == 0


def all_shown_equal(values: list[float], digits: int = LOSS_DIGITS) -> bool:
    """Whether the values print alike at `digits` decimals: no "largest" or "smallest" among them."""
    return len({f"{v + 0.0:+.{digits}f}" for v in values}) <= 1


def interval_text(stats: dict, low: float | None = None, high: float | None = None) -> str:
    """ "95% CI a to b", or why there is none: a bootstrap over one document has no spread to show."""
    if stats.get("n_documents") == 1:
        return "95% CI n/a: 1 document"
    low = stats.get("ci_low") if low is None else low
    high = stats.get("ci_high") if high is None else high
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "95% CI n/a"
    return f"95% CI {low:+.4f} to {high:+.4f}"


def portion_of_d(share: float) -> str:
    """A bucket's share of D in words: "most of D (62%)" only above one half, else "the largest part of D (26%)" (for
    the bucket with the largest share)."""
    return f"most of D ({share:.0%})" if share > MOST else f"the largest part of D ({share:.0%})"
