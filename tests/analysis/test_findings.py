"""The findings say what their numbers say (issue 21): buckets named by lift with enough support, quantifiers that
match their shares, frequency buckets named by their types, plain words for two models that give the same loss, and
a chat-format finding for every sign with its per-domain picture. Every results dict here is built by hand."""

from __future__ import annotations

import copy
import math

import pytest

from lossgap.analysis.findings import key_findings
from tests.results_example import make_results

N_TOKENS = 10_000
MIN_SHARE_TOKENS, MIN_DOCUMENTS = 0.02, 2  # explanation_findings' minimum support of a named bucket


def explained(entry: dict, name: str = "instruct") -> list[str]:
    """The findings of make_results() with `entry` as its one other model's explanation."""
    results = make_results()
    results["explanation"] = {"configuration": "next-batch-block", "models": {name: entry}}
    return key_findings(results)


def finding(entry: dict, start: str, name: str = "instruct") -> str:
    (text,) = [f for f in explained(entry, name) if f.startswith(start)]
    return text


def where_finding(name: str, attribution: dict) -> str:
    return finding({"attribution": attribution}, f"Where {name}'s", name)


def chat_finding(name: str, chat_result: dict, attribution: dict | None = None) -> str:
    entry = {"chat": chat_result} | ({"attribution": attribution} if attribution else {})
    return finding(entry, "Chat format", name)


def bucket(label: str, share_of_diff: float, share_tokens: float, diff: float, n_documents: int = 10,
           **extra) -> dict:
    """An attribution bucket with the given shares of D and of the tokens."""
    contribution = share_of_diff * diff
    n = round(share_tokens * N_TOKENS)
    return {"bucket": label, "n_tokens": n, "n_documents": n_documents, "share_tokens": share_tokens,
            "mean_delta": contribution / share_tokens, "contribution": contribution, "share_of_diff": share_of_diff,
            "ci_low": contribution - 0.01, "ci_high": contribution + 0.01, **extra}


def dimension(diff: float, buckets: list[dict]) -> dict:
    return {"n_tokens": N_TOKENS, "n_documents": 40, "diff": diff, "ci_low": diff - 0.1, "ci_high": diff + 0.1,
            "buckets": buckets}


def demo_attribution(diff: float = 0.4957) -> dict:
    """The demo's shape: word_continuation carries its share, newline three times its share, a rare class and a
    one-document domain carry much more per token than anything else but are too small to name."""
    return {"dimensions": {
        "text_class": dimension(diff, [
            bucket("special", 0.05, 0.005, diff),  # lift 10 on 0.5% of tokens: below the support
            bucket("newline", 0.24, 0.08, diff),
            bucket("punctuation", 0.22, 0.23, diff),
            bucket("word_continuation", 0.24, 0.25, diff),
            bucket("word_start", 0.25, 0.435, diff),
        ]),
        "domain": dimension(diff, [
            bucket("DM Mathematics", 0.62, 0.37, diff, 26),
            bucket("Licenses", 0.30, 0.05, diff, 1),  # lift 6 from one document
            bucket("Github", 0.08, 0.58, diff, 13),
        ]),
        "frequency": dimension(diff, [
            bucket("1-4", 0.3, 0.5, diff, n_types=900, top_types=[]),
            bucket("159-260", 0.25, 0.1, diff, n_types=9, top_types=[
                {"token_id": 7, "text": "Answer", "n_tokens": 300, "contribution": 0.05, "share_of_bucket": 0.44},
                {"token_id": 8, "text": "Question", "n_tokens": 300, "contribution": 0.04, "share_of_bucket": 0.30},
                {"token_id": 9, "text": "**", "n_tokens": 100, "contribution": 0.01, "share_of_bucket": 0.08}]),
            bucket("894-949", 0.45, 0.4, diff, n_types=40, top_types=[
                {"token_id": 1, "text": "\n", "n_tokens": 949, "contribution": 0.03, "share_of_bucket": 0.2},
                {"token_id": 2, "text": " ", "n_tokens": 894, "contribution": 0.02, "share_of_bucket": 0.15},
                {"token_id": 3, "text": ".", "n_tokens": 500, "contribution": 0.01, "share_of_bucket": 0.1}]),
        ]),
    }}


def test_buckets_are_named_by_lift_and_only_with_enough_tokens_and_documents():
    text = where_finding("instruct", demo_attribution())
    assert (f"at least {MIN_SHARE_TOKENS:.0%} of tokens from {MIN_DOCUMENTS} documents or more" in text)
    assert "by text class, newline (24.0% of D on 8.0% of tokens, 3.0 times its share)" in text
    assert "word_continuation" not in text  # 24% of D on 25% of tokens: no more than its share
    assert "special" not in text  # lift 10, but on 0.5% of the tokens
    assert "by domain, DM Mathematics (62.0% of D on 37.0% of tokens, 1.7 times its share);" in text
    assert "Licenses" not in text  # lift 6, from one document


def test_a_dimension_where_no_bucket_stands_out_says_so():
    diff = 0.2
    flat = {"dimensions": {"domain": dimension(diff, [bucket("a", 0.5, 0.5, diff), bucket("b", 0.5, 0.5, diff)])}}
    assert "by domain, no bucket carries more than its share." in where_finding("x", flat)


def test_a_frequency_bucket_is_named_with_its_types_and_whether_a_few_dominate_it():
    text = where_finding("instruct", demo_attribution())
    assert ("159-260 (25.0% of D on 10.0% of tokens, 2.5 times its share; 9 types, dominated by 'Answer' and "
            "'Question' (74% of its Δ))") in text
    assert ("894-949 (45.0% of D on 40.0% of tokens, 1.1 times its share; 40 types, the largest '\\n' 20%, ' ' 15%, "
            "'.' 10% of its Δ)") in text


def test_a_lift_ranking_holds_for_a_negative_d():
    text = where_finding("instruct", demo_attribution(-0.3))
    assert "D = -0.3000 nats/token" in text and "by text class, newline (24.0% of D on 8.0% of tokens" in text


def confidence_entry(largest_share: float) -> dict:
    diff = 0.5
    rest = (1 - largest_share) / 4
    conf = dimension(diff, [bucket("<0.01", rest, 0.36, diff), bucket("0.01-0.1", largest_share, 0.26, diff),
                            bucket("0.1-0.3", rest, 0.18, diff), bucket("0.3-0.5", rest, 0.1, diff),
                            bucket("0.9-0.99", rest, 0.1, diff)])
    return {"attribution": {"dimensions": {"confidence": conf}},
            "calibration": {"other_confident_wrong": {"threshold": 0.9, "share_tokens": 0.006,
                                                      "share_of_diff": 0.04}}}


@pytest.mark.parametrize(("share", "words"), [(0.26, "the largest part of D (26%) comes from tokens base gave "
                                                     "0.01-0.1 probability (26% of tokens)"),
                                              (0.62, "most of D (62%) comes from tokens base gave 0.01-0.1")])
def test_most_is_said_only_of_more_than_half(share, words):
    text = finding(confidence_entry(share), "Confident mistakes")
    assert words in text
    assert ("most of D" in text) == (share > 0.5)


def test_byte_classes_say_mostly_only_when_the_two_named_carry_more_than_half():
    classes = [{"bucket": "letters", "contribution": 0.03, "share_of_diff": 0.3},
               {"bucket": "digits", "contribution": 0.015, "share_of_diff": 0.15},
               {"bucket": "newline", "contribution": 0.055, "share_of_diff": 0.55}]
    assert "comes mostly from newline bytes" in finding({"bits_per_byte": {"diff": 0.1, "classes": classes}},
                                                        "By byte class")
    even = [{"bucket": f"c{i}", "contribution": 0.01, "share_of_diff": 0.1} for i in range(10)]
    text = finding({"bits_per_byte": {"diff": 0.1, "classes": even}}, "By byte class")
    assert "mostly" not in text and "comes in its largest parts from c0 bytes" in text


def same_model_results() -> dict:
    """A model compared with itself (tests/run/test_comparison.py's run, by hand): D, every contribution and every
    KL exactly zero, shares of D NaN, one configuration."""
    results = make_results()
    row = copy.deepcopy(results["configurations"][4])
    for stats in [row["comparisons"]["instruct"]["overall"], *row["comparisons"]["instruct"]["per_domain"].values()]:
        stats.update(diff=0.0, ci_low=0.0, ci_high=0.0, other=stats["base"], relative_perplexity_change=0.0,
                     share_docs_worse=0.0, wilcoxon_p=1.0)
    row["comparisons"]["instruct"]["per_domain"]["Empty"]["n_documents"] = 0
    zero = [bucket(label, math.nan, 0.5, 0.0) | {"contribution": 0.0, "mean_delta": 0.0} for label in ("a", "b")]
    dims = {key: dimension(0.0, copy.deepcopy(zero)) for key in ("text_class", "domain", "frequency", "confidence")}
    dims["agreement"] = dimension(0.0, [bucket("agree", math.nan, 1.0, 0.0) | {"contribution": 0.0}])
    kl = {"mean": 0.0, "median": 0.0, "p99": 0.0, "max": 0.0}
    results.update(configurations=[row], main_configuration=row["key"], leakage=[], explanation={
        "configuration": row["key"], "models": {"instruct": {
            "attribution": {"dimensions": dims, "top_spans": {"other_worse": [], "other_better": []}},
            "distribution": {"overall": {"kl_bo": kl, "same_top": {"share": 1.0}}},
            "calibration": {"other_confident_wrong": {"threshold": 0.9, "share_tokens": 0.0,
                                                      "share_of_diff": math.nan}}}}})
    return results


def test_a_model_against_itself_gives_the_same_loss_in_plain_words():
    findings = key_findings(same_model_results())
    text = "\n".join(findings)
    assert ("On next-token loss; packed rows, documents kept apart by the block mask, instruct and base give the same "
            "loss on this corpus (D = +0.0000 nats/token, 95% CI +0.0000 to +0.0000).") in findings
    assert "nan" not in text.lower() and "% of D" not in text
    assert "than base" not in text and "largest" not in text and "smallest" not in text
    assert "By domain (instruct - base): the same difference on all 2 domains (+0.0000 nats/token)." in findings
    assert any(f.startswith("Where instruct's difference D = +0.0000 nats/token") and "no difference to attribute"
               in f for f in findings)
    assert "The two distributions are the same to the precision shown: mean KL(base || instruct) = 0 nats" in text
    assert "differ on most tokens" not in text


def test_one_domain_has_no_largest_and_smallest():
    results = make_results()
    del results["configurations"][4]["comparisons"]["instruct"]["per_domain"]["Pile-CC"]
    assert not any(f.startswith("By domain") for f in key_findings(results))


def chat(raw: float, formatted: float, ci_width: float = 0.01, per_domain: dict | None = None) -> dict:
    reduction = raw - formatted
    out = {"raw_diff": raw, "chat_diff": formatted, "reduction": reduction,
           "reduction_ci": [reduction - ci_width, reduction + ci_width],
           "share_of_raw_explained": reduction / raw if raw else math.nan,
           "attribution": {"dimensions": {"position": dimension(formatted, [])}}}
    if per_domain is not None:
        out["per_domain"] = per_domain
    return out


def test_a_chat_change_whose_interval_holds_zero_shows_no_effect():
    text = chat_finding("sft", chat(0.5, 0.49, ci_width=0.05))
    assert text.endswith("(95% CI -0.0600 to +0.0400): no effect of the format is shown at the 95% level.")


def _domain(tokens: int, raw: float, formatted: float) -> dict:
    """chat.per_domain's entry as analysis/explanation.py chat_change stores it (reduction = raw - chat)."""
    return {"n_tokens": tokens, "n_documents": 5, "raw_diff": raw, "chat_diff": formatted,
            "reduction": round(raw - formatted, 4), "reduction_ci": [0.0, 0.1], "share_of_raw_explained": None}


DOMAINS = {  # the demo's: the format helps on three domains and hurts on DM Mathematics, which drives the whole
    "DM Mathematics": _domain(7230, 0.9393, 1.1759),
    "Github": _domain(4572, 0.3330, 0.3187),
    "Licenses": _domain(3211, 0.4047, 0.3963),
    "PydocTopics": _domain(4375, -0.0006, -0.0208),
}


def test_the_chat_finding_counts_domains_and_names_the_one_that_drives_it():
    text = chat_finding("instruct", chat(0.4957, 0.5746, per_domain=DOMAINS))
    assert "the format raises instruct's loss, widening the raw gap by 16%." in text
    assert ("By domain, the format lowers instruct's loss on 3 of 4 domains (Github -0.0143, Licenses -0.0084, "
            "PydocTopics -0.0202) and raises it on 1 of 4 domains (DM Mathematics +0.2366); DM Mathematics drives the "
            "overall change (+0.0882 of the +0.0789, weighted by its 37% of tokens), so the overall rise rests on DM "
            "Mathematics alone: 3 of 4 domains do not change that way.") in text
    assert "not explained by the raw text's format" not in text  # one domain of four does not carry that conclusion


def test_the_chat_conclusion_is_drawn_when_most_domains_agree():
    agreeing = {d: v | {"reduction": -abs(v["reduction"])} for d, v in DOMAINS.items()}
    text = chat_finding("instruct", chat(0.4957, 0.5746, per_domain=agreeing))
    assert "widening the raw gap by 16%, so the gap is not explained by the raw text's format." in text
    assert "raises it on 4 of 4 domains" in text and "lowers instruct's loss on none of the 4 domains" in text
    assert "rests on" not in text


def test_without_per_domain_figures_the_chat_change_per_domain_comes_from_the_two_attributions():
    raw = {"dimensions": {"domain": dimension(0.5, [
        bucket("a", 0.4, 0.5, 0.5) | {"mean_delta": 0.4, "n_tokens": 500},
        bucket("b", 0.6, 0.5, 0.5) | {"mean_delta": 0.6, "n_tokens": 500}])}}
    formatted = chat(0.5, 0.55)
    formatted["attribution"]["dimensions"]["domain"] = dimension(0.55, [
        bucket("a", 0.5, 0.5, 0.55) | {"mean_delta": 0.5, "n_tokens": 500},
        bucket("b", 0.5, 0.5, 0.55) | {"mean_delta": 0.6, "n_tokens": 500}])
    text = chat_finding("sft", formatted, raw)
    assert "raises it on 1 of 2 domains (a +0.1000); 1 unchanged; a drives the overall change" in text


def test_an_interval_over_one_document_is_named_not_printed():
    results = make_results()
    overall = results["configurations"][4]["comparisons"]["instruct"]["overall"]
    overall.update(n_documents=1, ci_low=overall["diff"], ci_high=overall["diff"])
    (headline,) = [f for f in key_findings(results) if f.startswith("On next-token loss")]
    assert "(95% CI n/a: 1 document)" in headline and "interval contains 0" not in headline
    one = chat(0.5, 0.6)
    one["attribution"]["dimensions"]["position"]["n_documents"] = 1
    assert "a change of +0.1000 (95% CI n/a: 1 document): the format raises" in chat_finding("s", one)
