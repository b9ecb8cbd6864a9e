"""The explanation's contribution tables: one rule for an interval over one document (n/a with the reason, as in the
per-domain table), and the frequency buckets' top types beside their numbers."""

from __future__ import annotations

from lossgap.report.explanation_tables import contribution_table
from lossgap.report.render import md_table


def _bucket(label: str, n_documents: int, ci: tuple | None, **extra) -> dict:
    low, high = ci or (None, None)
    return {"bucket": label, "n_tokens": 100, "n_documents": n_documents, "share_tokens": 0.5, "mean_delta": 0.2,
            "contribution": 0.1, "share_of_diff": 0.5, "ci_low": low, "ci_high": high, **extra}


def test_a_bucket_of_one_document_shows_no_interval_and_says_why():
    result = {"n_tokens": 200, "n_documents": 4, "diff": 0.2, "ci_low": 0.1, "ci_high": 0.3,
              "buckets": [_bucket("Licenses", 1, None), _bucket("Github", 3, (0.05, 0.15))]}
    md = md_table(contribution_table("instruct", "domain", result))
    assert "| Licenses | 100 | 50.0% | +0.2000 | +0.1000 | n/a (1 document) | 50.0% |" in md
    assert "| Github | 100 | 50.0% | +0.2000 | +0.1000 | +0.0500 to +0.1500 | 50.0% |" in md
    alone = {**result, "n_documents": 1, "ci_low": None, "ci_high": None, "buckets": [_bucket("Licenses", 1, None)]}
    assert "| all (D) | 200 | 100.0% | +0.2000 | +0.2000 | n/a (1 document) | 100.0% |" in md_table(
        contribution_table("instruct", "domain", alone))


def test_frequency_buckets_show_their_top_types():
    types = [{"token_id": 7, "text": "Answer", "share_of_bucket": 0.438},
             {"token_id": 8, "text": "Question", "share_of_bucket": 0.305}]
    result = {"n_tokens": 200, "n_documents": 4, "diff": 0.2, "ci_low": 0.1, "ci_high": 0.3,
              "buckets": [_bucket("159-260", 4, (0.05, 0.15), n_types=9, top_types=types)]}
    table = contribution_table("instruct", "frequency", result)
    assert table.headers[-1] == "Top types (share of the bucket's Δ)"
    assert "| 9 types: 'Answer' 43.8%, 'Question' 30.5% |" in md_table(table)
    assert table.records[0]["top_types"] == "9 types: 'Answer' 43.8%, 'Question' 30.5%"
