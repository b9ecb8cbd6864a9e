"""Every file name of a run and of a comparison comes from formats/paths.py, and every stored file is read through a
checked reader: missing, truncated or corrupt files are one LossgapError naming the file and what to do."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lossgap.errors import LossgapError
from lossgap.formats.paths import ComparisonFolder, RunFiles, read_json, read_parquet


def _table(path: Path) -> Path:
    pq.write_table(pa.table({"doc_id": [0, 1], "nll": [1.5, 2.0]}), path)
    return path


def test_a_run_and_a_comparison_are_laid_out_as_documented(tmp_path):
    run = RunFiles(tmp_path / "r")
    assert (run.tokens.name, run.documents.name, run.summary.name) == ("tokens.parquet", "documents.parquet",
                                                                       "summary.json")
    assert run.partial_tokens.name == "tokens.parquet.partial"
    assert run.shard(3) == tmp_path / "r/shards/window-00000003.parquet"
    assert run.shard_manifest == tmp_path / "r/shards/manifest.json" and run.error_log.name == "lossgap-error.log"
    c = ComparisonFolder(tmp_path / "c")
    assert c.run("next-batch-block", "base").folder == tmp_path / "c/runs/next-batch-block/base"
    assert c.run("next-batch-block", "sft", chat=True).folder == tmp_path / "c/runs/next-batch-block-chat/sft"
    assert c.pairs("sft") == tmp_path / "c/pairs/sft.parquet" and c.pairs_work("sft") == tmp_path / "c/pairs/.sft"
    assert c.vocab("base") == tmp_path / "c/vocab/base.parquet"
    assert c.relative(c.run("k", "m")) == "runs/k/m" and c.relative(c.pairs("sft")) == "pairs/sft.parquet"
    assert c.stored_run("runs/k/m") == c.run("k", "m")
    assert (c.manifest.name, c.results.name, c.report_markdown.name, c.report_html.name) == (
        "compare.json", "results.json", "report.md", "report.html")


def test_existing_files_mark_a_run_and_a_comparison(tmp_path):
    run, c = RunFiles(tmp_path / "r"), ComparisonFolder(tmp_path / "c")
    assert run.existing() == [] and c.existing() == []
    run.folder.mkdir()
    _table(run.documents)
    run.shards.mkdir()
    assert run.existing() == ["documents.parquet", "shards"]
    c.runs.mkdir(parents=True)
    c.results.write_text("{}")
    assert c.existing() == ["results.json", "runs/"]


def test_readers_return_what_is_stored(tmp_path):
    run = RunFiles(tmp_path)
    _table(run.tokens)
    run.summary.write_text('{"mean_nll": 1.75}')
    assert run.read_tokens(["nll"]).column_names == ["nll"] and run.read_summary() == {"mean_nll": 1.75}
    c = ComparisonFolder(tmp_path)
    c.pairs("sft").parent.mkdir()
    _table(c.pairs("sft"))
    assert c.read_stored("pairs/sft.parquet").num_rows == 2


@pytest.mark.parametrize("damage", ["missing", "truncated", "not parquet"])
def test_a_damaged_parquet_file_is_named_with_a_fix(tmp_path, damage):
    path = _table(tmp_path / "pairs.parquet")
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"not parquet at all")
    with pytest.raises(LossgapError) as e:
        read_parquet(path)
    want = "missing" if damage == "missing" else "not a readable Parquet file"
    assert str(e.value).startswith(f"{path}: {want}") and "rerun compare" in str(e.value)


@pytest.mark.parametrize(("text", "why"), [("{not json", "corrupt"), ("[1, 2]", "expected a JSON object")])
def test_a_damaged_json_file_is_named_with_a_fix(tmp_path, text, why):
    path = tmp_path / "summary.json"
    path.write_text(text)
    with pytest.raises(LossgapError, match=why) as e:
        read_json(path)
    assert str(path) in str(e.value) and e.value.fix


def test_a_folder_without_a_comparison_is_named(tmp_path):
    with pytest.raises(LossgapError, match="no compare.json here") as e:
        ComparisonFolder(tmp_path).read_manifest()
    assert "lossgap compare" in e.value.fix
