"""The float32 check in results.json's diagnostics: what a run or a paired pass saw, or why it had no check, and
runs written before the limits judged by them."""

from __future__ import annotations

from lossgap.analysis.precision import pair_fp32_diagnostic, run_fp32_diagnostic
from lossgap.formats.schema import FP32_LIMITS

WHERE = "k1-packed-block / base"
OLD_CHECK = {"dtype": "bfloat16", "tokens": 63, "max_abs_diff": 0.04, "mean_abs_diff": 0.01, "mean_nll_diff": 0.001}


def _summary(dtype: str, check: dict | None = None, enabled: bool = True) -> dict:
    return {"dtype": dtype, "fp32_check": check, "config": {"run": {"fp32_check": enabled}}}


def test_a_run_without_a_check_says_why():
    assert run_fp32_diagnostic(WHERE, _summary("float32")) == {
        "level": "info", "code": "fp32_check", "where": WHERE,
        "message": "scored in float32: no reduced-precision check needed"}
    off = run_fp32_diagnostic(WHERE, _summary("bfloat16", enabled=False))
    assert off["level"] == "info" and off["message"] == ("scored in bfloat16 with --no-fp32-check: not compared "
                                                         "with float32")
    resumed = run_fp32_diagnostic(WHERE, _summary("float16"))
    assert resumed["level"] == "info" and resumed["message"].startswith("scored in float16: no float32 check recorded")


def test_a_run_written_before_the_limits_is_judged_by_them():
    fine = run_fp32_diagnostic(WHERE, _summary("bfloat16", OLD_CHECK))
    assert fine["level"] == "info"
    assert fine["message"] == ("bfloat16 against float32 on the first batch (63 tokens): per-token NLL off by 0.01 "
                               "nats on average (max 0.04), the mean NLL by +0.001 nats/token: within the limits "
                               "(0.075 on average, 0.01 on the mean)")
    for past in ({"mean_abs_diff": 0.09, "max_abs_diff": 2.07}, {"mean_nll_diff": -0.02}):
        d = run_fp32_diagnostic(WHERE, _summary("bfloat16", {**OLD_CHECK, **past}))
        assert d["level"] == "warning" and "past the limits" in d["message"]
        assert d["message"].endswith("; rerun with --dtype float32")


def test_a_recorded_verdict_and_its_limits_are_shown_as_recorded():
    recorded = {**OLD_CHECK, "warn": True, "limits": {"mean_abs_diff": 0.005, "mean_diff": 0.01}}
    d = run_fp32_diagnostic(WHERE, _summary("bfloat16", recorded))
    assert d["level"] == "warning" and "past the limits (0.005 on average, 0.01 on the mean)" in d["message"]


def test_a_paired_pass_shows_each_statistic_or_why_it_had_no_check():
    stats = {"nll_b": {"max_abs_diff": 0.96, "mean_abs_diff": 0.2, "mean_diff": -0.021},
             "kl_bo": {"max_abs_diff": 0.1, "mean_abs_diff": 0.02, "mean_diff": 0.004}}
    check = {"dtype": "bfloat16", "tokens": 63, "statistics": stats, "warn": True, "limits": dict(FP32_LIMITS)}
    where = "k1-packed-block / a vs b (paired pass)"
    d = pair_fp32_diagnostic(where, {"fp32_check": check}, ["bfloat16"] * 2, {"fp32_check": True}, ("a", "b"))
    assert d["level"] == "warning" and d["where"] == where
    assert d["message"] == ("bfloat16 against float32 on the first paired batch (63 tokens): NLL of a off by 0.2 on "
                            "average (max 0.96, mean -0.021); KL(a||b) off by 0.02 on average (max 0.1, mean +0.004) "
                            "nats: past the limits (0.075 on average, 0.01 on the mean); rerun with --dtype float32")
    unchecked = {"fp32_check": None}
    off = pair_fp32_diagnostic(where, unchecked, ["bfloat16"] * 2, {"fp32_check": False}, ("a", "b"))
    full = pair_fp32_diagnostic(where, unchecked, ["float32"] * 2, {"fp32_check": True}, ("a", "b"))
    assert off["level"] == full["level"] == "info"
    assert "--no-fp32-check" in off["message"] and full["message"].startswith("scored in float32")
