"""The float32 check in words: a reduced-precision run measures the first tokens of its first batch against float32
(engine/forward.py check_slice); the same sentence goes to stderr while the run scores (run/runner.py,
run/paired.py) and into results.json's diagnostics, one per run and one per paired pass, so that a reader sees the
check ran, what it saw, or why not."""

from __future__ import annotations

from ..formats.schema import FP32_LIMITS, Diagnostic, exceeds_fp32_limits

REMEDY = "rerun with --dtype float32"


def limits_text(limits: dict) -> str:
    return f"{limits['mean_abs_diff']:g} on average, {limits['mean_diff']:g} on the mean"


def _verdict(warn: bool, limits: dict) -> str:
    return f"{'past' if warn else 'within'} the limits ({limits_text(limits)})"


def run_warns(check: dict) -> bool:
    """A run's verdict as recorded; a run written before the limits is judged by them."""
    if "warn" in check:
        return bool(check["warn"])
    return exceeds_fp32_limits(check["mean_abs_diff"], check["mean_nll_diff"])


def _what_checked(check: dict, batch: str) -> str:
    """The slice the check scored again (a run written before the slice checked its whole first batch)."""
    if "input_tokens" in check:
        return (f"on the first {check['tokens']:,} scored tokens ({check['input_tokens']:,} input tokens of the "
                f"first {batch})")
    return f"on the first {batch} ({check['tokens']:,} tokens)"


def run_check_text(check: dict) -> str:
    """What a run's float32 check (summary.json's fp32_check) saw."""
    limits = check.get("limits", FP32_LIMITS)
    return (f"{check['dtype']} against float32 {_what_checked(check, 'batch')}: per-token NLL off "
            f"by {check['mean_abs_diff']:.3g} nats on average (max {check['max_abs_diff']:.3g}), the mean NLL by "
            f"{check['mean_nll_diff']:+.3g} nats/token: {_verdict(run_warns(check), limits)}")


def pair_check_text(check: dict, names: tuple[str, str]) -> str:
    """What the paired pass's float32 check saw, statistic by statistic."""
    b, o = names
    roles = {"nll_b": f"NLL of {b}", "nll_o": f"NLL of {o}", "kl_bo": f"KL({b}||{o})", "kl_ob": f"KL({o}||{b})"}
    parts = [f"{roles.get(role, role)} off by {d['mean_abs_diff']:.3g} on average (max {d['max_abs_diff']:.3g}, "
             f"mean {d['mean_diff']:+.3g})" for role, d in check["statistics"].items()]
    return (f"{check['dtype']} against float32 {_what_checked(check, 'paired batch')}: "
            f"{'; '.join(parts)} nats: {_verdict(check['warn'], check['limits'])}")


def run_fp32_diagnostic(where: str, run: dict) -> Diagnostic:
    """A run's float32 check from its summary.json: a warning past the limits, else a note with the numbers, or
    why there was no check."""
    check = run.get("fp32_check")
    if check:
        warn = run_warns(check)
        return _diagnostic(warn, where, run_check_text(check) + (f"; {REMEDY}" if warn else ""))
    return _diagnostic(False, where, _why_unchecked(run.get("dtype"), run.get("config", {}).get("run", {})))


def pair_fp32_diagnostic(where: str, facts: dict, dtypes: list[str], run_config: dict,
                         names: tuple[str, str]) -> Diagnostic:
    """The paired pass's float32 check from its facts (pairs/<other>.parquet's metadata), as run_fp32_diagnostic."""
    check = facts.get("fp32_check")
    if check:
        return _diagnostic(check["warn"], where,
                           pair_check_text(check, names) + (f"; {REMEDY}" if check["warn"] else ""))
    reduced = next((d for d in dtypes if d != "float32"), "float32")
    return _diagnostic(False, where, _why_unchecked(reduced, run_config))


def _why_unchecked(dtype: str | None, run_config: dict) -> str:
    if dtype == "float32":
        return "scored in float32: no reduced-precision check needed"
    if run_config.get("fp32_check") is False:
        return f"scored in {dtype} with --no-fp32-check: not compared with float32"
    return (f"scored in {dtype}: no float32 check recorded (no batch was scored by this run, e.g. every window "
            "resumed, or the check ran out of memory)")


def _diagnostic(warn: bool, where: str, message: str) -> Diagnostic:
    return {"level": "warning" if warn else "info", "code": "fp32_check", "where": where, "message": message}
