"""results.json's shared accessors and its one JSON-cleaning function, by value."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np

from lossgap.formats import schema
from tests.results_example import make_results


def test_accessors_read_the_shared_facts():
    results = make_results(extra_model=True)
    assert schema.others(results) == ["instruct", "chat"]
    assert schema.tokens_mode(results) and schema.unit(results) == "nats/token"
    assert schema.main_row(results)["key"] == "next-batch-block"
    assert schema.configuration_row(results, "next-single-causal")["models"]["base"]["mean_nll"] == 2.514
    assert schema.configuration_row(results, "no-such-row") is None
    results["mode"] = schema.BITS_PER_BYTE
    assert not schema.tokens_mode(results) and schema.unit(results) == "bits/byte"
    results["main_configuration"] = "gone"
    assert schema.main_row(results) is None
    alone = {**results, "models": {"base": results["models"]["base"]}}
    assert schema.others(alone) == []


def test_finite_keeps_numbers_and_drops_the_rest():
    assert schema.finite(2) == 2 and schema.finite(-0.5) == -0.5
    assert math.copysign(1, schema.finite(-0.0)) == 1  # an exact zero never prints with a minus sign
    for missing in (None, float("nan"), float("inf"), -float("inf"), True, "1.0"):
        assert schema.finite(missing) is None, missing


def test_clean_gives_what_json_reads_back():
    raw = {"nan": float("nan"), "inf": [float("-inf"), 1.5], "pair": (1, (2, 3)), 7: "int key",
           "numpy": {"f": np.float64(0.25), "i": np.int64(3), "b": np.bool_(True), "nan": np.float32("nan")},
           "text": "n/a", "none": None}
    cleaned = schema.clean(raw)
    assert cleaned == {"nan": None, "inf": [None, 1.5], "pair": [1, [2, 3]], "7": "int key",
                       "numpy": {"f": 0.25, "i": 3, "b": True, "nan": None}, "text": "n/a", "none": None}
    assert type(cleaned["numpy"]["f"]) is float and type(cleaned["numpy"]["i"]) is int
    assert type(cleaned["numpy"]["b"]) is bool
    assert json.loads(json.dumps(cleaned)) == cleaned
    results = make_results()
    assert schema.clean(results) == json.loads(json.dumps(results))


def test_schema_is_cheap_to_import():
    probe = "import sys, lossgap.formats.schema; print(sorted({'numpy', 'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_typed_structures_name_every_key_of_results_json():
    results = make_results()
    assert set(schema.Results.__annotations__) == set(results)
    row = results["configurations"][0]
    assert set(schema.ConfigurationRow.__annotations__) == set(row)
    assert set(schema.ModelSummary.__annotations__) == set(row["models"]["base"])
    assert set(schema.ComparisonStats.__annotations__) == set(row["comparisons"]["instruct"]["overall"])
    assert set(schema.LeakageBucket.__annotations__) == set(results["leakage"][0]["models"]["base"][0])
    assert set(schema.Settings.__annotations__) == set(results["settings"])


def test_an_overflowing_perplexity_is_stored_as_inf_and_read_back(tmp_path):
    """inf under a perplexity key is schema.INF in strict JSON (write_json), every other non-finite number null; the
    reader turns INF back into inf."""
    from lossgap.formats.files import write_json

    summary = {"mean_nll": 750.0, "perplexity": math.inf, "doc_mean_nll": float("nan"), "bits_per_byte": math.inf,
               "per_domain": {"=x": {"perplexity": math.inf, "relative_perplexity_change": float("nan")}},
               "ci_relative_perplexity_change": [np.float64(2.5), math.inf, -math.inf]}
    path = write_json(tmp_path / "summary.json", summary)

    def refuse(token):
        raise AssertionError(f"{token} is not JSON")

    stored = json.loads(path.read_text(), parse_constant=refuse)
    assert stored == {"mean_nll": 750.0, "perplexity": schema.INF, "doc_mean_nll": None, "bits_per_byte": None,
                      "per_domain": {"=x": {"perplexity": schema.INF, "relative_perplexity_change": None}},
                      "ci_relative_perplexity_change": [2.5, schema.INF, None]}
    assert [schema.number(v) for v in stored["ci_relative_perplexity_change"]] == [2.5, math.inf, None]
    assert schema.number(stored["perplexity"]) == math.inf and schema.number("Github") is None
    assert schema.clean(stored) == stored  # cleaning twice changes nothing
