"""Hostile input, tried as a new user would: every case runs the real CLI (`lossgap.cli.main`, a few also as
`python -m lossgap`) and must exit with its code and one message that names the input, with no traceback.

The table covers model files, output folders, corpora, config files, resume state and an internal error; each row
says what it damages, the exit code and what the message must say. The last section feeds what must not stop a run:
domain names that are Markdown, HTML, mathtext or a spreadsheet formula, and a loss whose perplexity overflows.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lossgap.cli import main
from tests.helpers import read_summary, write_jsonl
from tests.hostile_models import (
    copy_model,
    edit_config,
    edit_weights,
    scale_weights,
    to_bin,
    truncate,
    write_tiny_gguf,
    zero_weights,
)

SRC = Path(__file__).parents[2] / "src" / "lossgap"


@dataclass
class Ctx:
    """What a case builds its input from: a tmp folder, the tiny Llama, a small corpus, monkeypatch."""

    tmp: Path
    llama: Path
    corpus: Path
    records: list
    monkeypatch: pytest.MonkeyPatch
    gguf: Path

    def model(self, name: str) -> Path:
        return copy_model(self.llama, self.tmp / name)

    def score(self, model, *extra, corpus=None, out=None) -> list[str]:
        return ["score", "--model", str(model), "--corpus", str(corpus or self.corpus), "--out",
                str(out or self.tmp / "out"), "--device", "cpu", "--dtype", "float32", "--quiet", "--seq-len", "64",
                *map(str, extra)]

    def compare(self, *extra, corpus=None, out=None) -> list[str]:
        return ["compare", "--base", str(self.llama), "--instruct", str(self.llama), "--corpus",
                str(corpus or self.corpus), "--out", str(out or self.tmp / "cmp"), "--device", "cpu", "--dtype",
                "float32", "--quiet", "--matrix", "single", *map(str, extra)]

    def toml(self, text: str) -> Path:
        path = self.tmp / "run.toml"
        path.write_text(text)
        return path


@dataclass
class Case:
    id: str
    setup: Callable[[Ctx], tuple[list[str], str]]  # -> (argv, the input the message must name)
    code: int
    says: tuple[str, ...]
    check: Callable[[Ctx, str], None] | None = None  # more assertions after the run, given stderr


# ---------------------------------------------------------------- model inputs


def st_truncated(c):
    m = c.model("half")
    truncate(m / "model.safetensors", 0.5)
    return c.score(m), str(m / "model.safetensors")


def st_garbage(c):
    m = c.model("garbage")
    (m / "model.safetensors").write_bytes(b"hello")
    return c.score(m), str(m / "model.safetensors")


def st_bad_header(c):
    m = c.model("header")
    data = bytearray((m / "model.safetensors").read_bytes())
    data[8] = ord("!")  # the first byte of the JSON header
    (m / "model.safetensors").write_bytes(bytes(data))
    return c.score(m), str(m / "model.safetensors")


def bin_truncated(c):
    m = c.model("bin")
    truncate(to_bin(m), 0.5)
    return c.score(m), str(m / "pytorch_model.bin")


def gguf_truncated(c):
    path = c.tmp / "cut.gguf"
    path.write_bytes(c.gguf.read_bytes()[:100_000])
    return c.score(path), str(path)


def gguf_not_gguf(c):
    path = c.tmp / "text.gguf"
    path.write_text("not a gguf file at all\n" * 10)
    return c.score(path), str(path)


def config_wrong_type(c):
    m = edit_config(c.model("cfgtype"), hidden_size="64")
    return c.score(m), str(m / "config.json")


def config_not_json(c):
    m = c.model("cfgjson")
    (m / "config.json").write_text('{"model_type": "llama",')
    return c.score(m), str(m / "config.json")


def config_not_object(c):
    m = c.model("cfglist")
    (m / "config.json").write_text("[1, 2]")
    return c.score(m), str(m / "config.json")


def shapes_mismatch(c):
    m = edit_config(c.model("shapes"), vocab_size=500)
    return c.score(m), str(m / "model.safetensors")


def unknown_architecture(c):
    m = edit_config(c.model("arch"), model_type="superllama")
    return c.score(m), str(m / "config.json")


def custom_code(c):
    m = edit_config(c.model("custom"), model_type="xmodel", auto_map={
        "AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    return c.score(m), str(m / "config.json")


def no_model_type(c):
    m = edit_config(c.model("nomt"), model_type=None)
    return c.score(m), str(m / "config.json")


def invalid_heads(c):
    m = edit_config(c.model("heads"), num_attention_heads=5)
    return c.score(m), str(m / "config.json")


def not_causal(c):
    m = c.model("t5")
    (m / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 64, "num_layers": 1, "num_heads": 2,
                                               "d_kv": 32, "d_ff": 64, "vocab_size": 384}))
    return c.score(m), str(m / "config.json")


def tokenizer_missing(c):
    m = c.model("notok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (m / name).unlink()
    return c.score(m), str(m)


def tokenizer_truncated(c):
    m = c.model("tokcut")
    truncate(m / "tokenizer.json", 0.5)
    return c.score(m), str(m / "tokenizer.json")


def tokenizer_config_broken(c):
    m = c.model("tokcfg")
    (m / "tokenizer_config.json").write_text("{bad")
    return c.score(m), str(m / "tokenizer_config.json")


def tokenizer_wrong_shape(c):
    m = c.model("tokshape")
    tok = json.loads((m / "tokenizer.json").read_text())
    tok["model"] = {"type": "BPE", "vocab": 5}
    (m / "tokenizer.json").write_text(json.dumps(tok))
    return c.score(m), str(m / "tokenizer.json")


def nan_weights(c):
    def poison(w):
        w["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
        w["model.layers.1.mlp.up_proj.weight"][0, 0] = float("inf")

    m = edit_weights(c.model("nan"), poison)
    return c.score(m), str(m / "model.safetensors")


def fp16_overflow(c):
    m = scale_weights(c.model("overflow"), 300, ("proj.weight",))  # finite in float16; activations are not
    return c.score(m, "--dtype", "float16"), str(m)


def all_zero_weights(c):
    m = zero_weights(c.model("zero"))
    return c.score(m, "--layout", "packed", "--mask", "causal", "--attn", "sdpa"), str(m)


def never_says(wrong: str) -> Callable[[Ctx, str], None]:
    """The misleading diagnosis a case used to get must be gone."""
    def check(c: Ctx, err: str) -> None:
        assert wrong not in err, err

    return check


def missing_tensor(c):
    m = edit_weights(c.model("lack"), lambda w: w.pop("lm_head.weight"))
    return c.score(m), str(m / "model.safetensors")


def index_missing_shard(c):
    m = c.model("index")
    (m / "model.safetensors").rename(m / "model-00001-of-00002.safetensors")
    from safetensors import safe_open

    with safe_open(m / "model-00001-of-00002.safetensors", "pt") as f:
        keys = list(f.keys())
    weight_map = {k: "model-00001-of-00002.safetensors" for k in keys}
    weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (m / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return c.score(m), str(m / "model-00002-of-00002.safetensors")


def hub_offline(c):
    return c.score("no-such-org/no-such-model"), "no-such-org/no-such-model"


def _hub_raises(c, text: str):
    import transformers

    def refuse(*args, **kwargs):
        raise OSError(text) from RuntimeError("HTTP 403")

    c.monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)


def hub_gated(c):
    _hub_raises(c, "You are trying to access a gated repo.\nMake sure to have access to it at "
                   "https://huggingface.co/gated-org/model.\n403 Client Error")
    return c.score("gated-org/model"), "gated-org/model"


def hub_missing(c):
    _hub_raises(c, "typo-org/model is not a local folder and is not a valid model identifier listed on "
                   "'https://huggingface.co/models'")
    return c.score("typo-org/model"), "typo-org/model"


# ---------------------------------------------------------------- output folders


def out_under_file(c):
    return c.score(c.llama, out=c.corpus / "sub"), str(c.corpus)


def out_is_file(c):
    return c.score(c.llama, out=c.corpus), str(c.corpus)


def out_virtual_fs(c):
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    return c.score(c.llama, out="/proc/lossgap-hostile-test"), "/proc/lossgap-hostile-test"


def _refuse_writes(c, code: int):
    import lossgap.formats.files

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    c.monkeypatch.setattr(lossgap.formats.files.tempfile, "mkstemp", refuse)


def out_read_only(c):
    _refuse_writes(c, errno.EROFS)  # a read-only mount, as the probe meets it
    return c.score(c.llama, out=c.tmp / "ro"), str(c.tmp / "ro")


def out_no_permission(c):
    folder = c.tmp / "locked"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: the probe meets the refusal a user would
        _refuse_writes(c, errno.EACCES)
    else:
        folder.chmod(0o555)
    return c.score(c.llama, out=folder / "run"), str(folder / "run")


def out_checked_before_model(c):
    m = c.model("half2")
    truncate(m / "model.safetensors", 0.5)  # would fail to load: the --out message must come first
    return c.score(m, out=c.corpus / "sub"), str(c.corpus)


def compare_out_under_file(c):
    return c.compare(out=c.corpus / "sub"), str(c.corpus)


# ---------------------------------------------------------------- corpora


def corpus_empty(c):
    path = c.tmp / "empty.jsonl"
    path.write_text("\n\n")
    return c.score(c.llama, corpus=path), str(path)


def corpus_skip_all(c):
    return c.score(c.llama, "--skip", 100), str(c.corpus)


def corpus_all_bad(c):
    path = write_jsonl(c.tmp / "bad.jsonl", ['{"text": 1}', '{"body": "x"}', "not json"])
    return c.score(c.llama, "--on-bad-line", "skip", corpus=path), str(path)


def corpus_too_short(c):
    path = write_jsonl(c.tmp / "short.jsonl", [{"text": "a"}, {"text": "b"}])
    return c.score(c.llama, "--no-bos", "--no-eos", corpus=path), str(path)


def corpus_some_too_short(c):
    path = write_jsonl(c.tmp / "mixed.jsonl", [{"text": "a"}, *c.records[:4]])
    return c.score(c.llama, "--no-bos", "--no-eos", corpus=path), f"{path}: 1 of 5 document(s)"


def corpus_text_folder_empty(c):
    folder = c.tmp / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("   \n")
    return c.score(c.llama, "--on-bad-line", "skip", corpus=folder), str(folder)


def compare_empty_corpus(c):
    path = c.tmp / "empty.jsonl"
    path.write_text("")
    return c.compare(corpus=path), str(path)


# ---------------------------------------------------------------- config files


def toml_unknown_key(c):
    path = c.toml("seq_length = 64\n")
    return ["score", "--config", str(path), "--model", "m", "--corpus", "c", "--out", "o"], str(path)


def toml_wrong_type(c):
    path = c.toml('max-docs = "ten"\n')
    return ["score", "--config", str(path), "--model", "m", "--corpus", "c", "--out", "o"], "'max-docs'"


def toml_out_of_range(c):
    path = c.toml("max-docs = -3\n")
    return ["score", "--config", str(path), "--model", "m", "--corpus", "c", "--out", "o"], "max-docs = -3"


def toml_section(c):
    path = c.toml("[run]\nseq-len = 64\n")
    return ["score", "--config", str(path), "--model", "m", "--corpus", "c", "--out", "o"], "'run'"


def toml_not_toml(c):
    path = c.toml("model: llama\n")
    return ["score", "--config", str(path)], str(path)


def toml_never_executed(c):
    marker = c.tmp / "executed"
    path = c.toml(f"model = \"__import__('os').system('touch {marker}')\"\n")
    return ["score", "--config", str(path), "--corpus", str(c.corpus), "--out", str(c.tmp / "o")], "__import__"


def toml_compare_range(c):
    path = c.toml("bootstrap = 5\n")
    return ["compare", "--config", str(path), "--base", "a", "--instruct", "b", "--corpus", "c", "--out", "o"], \
        "bootstrap = 5"


# ---------------------------------------------------------------- resume state


def interrupted(c, windows: int = 3, name: str = "resumable", seq_len: int = 64) -> tuple[list[str], Path]:
    """A run stopped by a full disk after `windows` windows: its shards and manifest stay for --resume."""
    from lossgap.run.shards import ShardStore

    out = c.tmp / name
    argv = c.score(c.llama, "--window-tokens", 256, "--batch-size", 2, out=out)
    argv[argv.index("--seq-len") + 1] = str(seq_len)
    original = ShardStore.write

    def full_after(self, window, table):
        if window >= windows:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, window, table)

    with c.monkeypatch.context() as m:
        m.setattr(ShardStore, "write", full_after)
        assert main(argv) == 1
    return argv, out / "shards"


def resume_truncated_shard(c):
    argv, shards = interrupted(c)
    truncate(shards / "window-00000001.parquet", 0.5)
    return [*argv, "--resume"], str(shards / "window-00000001.parquet")


def resume_flipped_shard(c):
    argv, shards = interrupted(c)
    path = shards / "window-00000002.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10  # inside a data page: its checksum catches it
    path.write_bytes(bytes(data))
    return [*argv, "--resume"], str(path)


def resume_foreign_shard(c):
    argv, shards = interrupted(c)
    pq.write_table(pa.table({"x": [1, 2, 3]}), shards / "window-00000002.parquet")
    return [*argv, "--resume"], str(shards / "window-00000002.parquet")


def resume_shard_of_another_run(c):
    argv, shards = interrupted(c)
    _, other = interrupted(c, name="other", seq_len=48)  # the same corpus and model, another configuration
    (other / "window-00000000.parquet").replace(shards / "window-00000000.parquet")
    return [*argv, "--resume"], str(shards / "window-00000000.parquet")


def resume_edited_manifest(c):
    argv, shards = interrupted(c)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["window_tokens"] = 512
    (shards / "manifest.json").write_text(json.dumps(manifest))
    return [*argv, "--resume"], str(shards / "manifest.json")


def resume_manifest_not_json(c):
    argv, shards = interrupted(c)
    truncate(shards / "manifest.json", 0.5)
    return [*argv, "--resume"], str(shards / "manifest.json")


def resume_manifest_missing(c):
    argv, shards = interrupted(c)
    (shards / "manifest.json").unlink()
    return [*argv, "--resume"], str(shards / "manifest.json")


def resume_manifest_unhashed(c):
    argv, shards = interrupted(c)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest.pop("run_sha256")
    (shards / "manifest.json").write_text(json.dumps(manifest))
    return [*argv, "--resume"], str(shards / "manifest.json")


def rescored_equals_reference(c: Ctx, err: str) -> None:
    """The resumed run's files equal a run that was never interrupted: the damaged window was scored again."""
    out = c.tmp / "resumable"
    reference = c.tmp / "reference"
    argv = c.score(c.llama, "--window-tokens", 256, "--batch-size", 2, out=reference)
    assert main(argv) == 0
    a, b = pq.read_table(out / "tokens.parquet"), pq.read_table(reference / "tokens.parquet")
    assert a.schema.remove_metadata() == b.schema.remove_metadata() and a.equals(b)
    assert read_summary(out)["complete"] and "scored again" in err


def nothing_deleted(c: Ctx, err: str) -> None:
    shards = c.tmp / "resumable" / "shards"
    assert len(list(shards.glob("window-*.parquet"))) == 3  # refusing kept the finished windows


# ---------------------------------------------------------------- symbolic links in --out


VICTIM_TEXT = "not lossgap's\n"


def _victim(c) -> Path:
    """A file outside --out that a link points to: no run may write or delete it."""
    victim = c.tmp / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    return victim


def victim_untouched(c: Ctx, err: str) -> None:
    assert (c.tmp / "victim.txt").read_text() == VICTIM_TEXT


def out_is_a_link(c):
    real = c.tmp / "real"
    real.mkdir()
    (c.tmp / "linked").symlink_to(real)
    return c.score(c.llama, out=c.tmp / "linked"), str(c.tmp / "linked")


def out_entry_is_a_link(name: str, *extra) -> Callable[[Ctx], tuple[list[str], str]]:
    """--out holding a link, named `name`, to a file outside it."""

    def setup(c):
        out = c.tmp / "out"
        (out / name).parent.mkdir(parents=True)
        (out / name).symlink_to(_victim(c))
        return c.score(c.llama, *extra, out=out), str(out / name)

    return setup


def old_temporary_names_are_links(c):
    """Links waiting under the temporary names lossgap used to write to (<name>.partial): the run finishes and
    writes nothing through them."""
    out = c.tmp / "out"
    out.mkdir()
    victim = _victim(c)
    for name in ("summary.json.partial", "documents.parquet.partial", "summary.json.tmp"):
        (out / name).symlink_to(victim)
    return c.score(c.llama, out=out), ""


def run_finished_beside_the_links(c: Ctx, err: str) -> None:
    victim_untouched(c, err)
    out = c.tmp / "out"
    assert read_summary(out)["complete"] and not (out / "summary.json").is_symlink()
    assert pq.read_table(out / "tokens.parquet").num_rows > 0
    assert sorted(p.name for p in out.iterdir() if not p.is_symlink()) == [  # no temporary left
        ".lossgap.lock", "documents.parquet", "summary.json", "tokens.parquet"]


def overwrite_through_linked_shards(c):
    """--overwrite of a run whose shards/ is a link to a folder elsewhere: refused before anything is deleted."""
    out, elsewhere = c.tmp / "out", c.tmp / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text(VICTIM_TEXT)
    (out / "summary.json").write_text("{}\n")
    (out / "shards").symlink_to(elsewhere)
    return c.score(c.llama, "--overwrite", out=out), str(out / "shards")


def nothing_deleted_through_the_link(c: Ctx, err: str) -> None:
    assert (c.tmp / "elsewhere" / "keep.txt").read_text() == VICTIM_TEXT
    assert (c.tmp / "out" / "summary.json").read_text() == "{}\n"


def compare_runs_is_a_link(c):
    out, elsewhere = c.tmp / "cmp", c.tmp / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text(VICTIM_TEXT)
    (out / "runs").symlink_to(elsewhere)
    return c.compare("--overwrite", out=out), str(out / "runs")


# ---------------------------------------------------------------- an internal error


def internal_bug(c):
    import lossgap.run.scoring

    def bug(*args, **kwargs):
        raise KeyError("no_such_column")

    c.monkeypatch.setattr(lossgap.run.scoring, "finish", bug)
    return c.score(c.llama, out=c.tmp / "bug"), str(c.tmp / "bug" / "lossgap-error.log")


def log_holds_the_traceback(c: Ctx, err: str) -> None:
    log = (c.tmp / "bug" / "lossgap-error.log").read_text()
    assert "Traceback" in log and "KeyError: 'no_such_column'" in log and "command: lossgap score" in log


def bug_with_links_at_the_log(c):
    """An internal error while links to a file elsewhere wait under the error log's name and its old temporary
    name (planted during the run, after --out was checked)."""
    import lossgap.run.scoring

    out, victim = c.tmp / "bug", _victim(c)

    def bug(*args, **kwargs):
        for name in ("lossgap-error.log", "lossgap-error.log.partial"):
            (out / name).symlink_to(victim)
        raise KeyError("no_such_column")

    c.monkeypatch.setattr(lossgap.run.scoring, "finish", bug)
    return c.score(c.llama, out=out), str(out / "lossgap-error.log")


def log_is_private_and_no_link_followed(c: Ctx, err: str) -> None:
    victim_untouched(c, err)
    log = c.tmp / "bug" / "lossgap-error.log"
    assert not log.is_symlink() and stat.S_IMODE(log.stat().st_mode) == 0o600
    log_holds_the_traceback(c, err)


def bug_before_out_exists(c):
    """An internal error before --out is made: the log goes to the temp folder."""
    import tempfile

    import lossgap.run.scoring

    def bug(*args, **kwargs):
        raise KeyError("no_such_column")

    (c.tmp / "temp").mkdir()
    c.monkeypatch.setenv("TMPDIR", str(c.tmp / "temp"))
    c.monkeypatch.setattr(tempfile, "tempdir", None)
    c.monkeypatch.setattr(lossgap.run.scoring, "require_documents", bug)
    return c.score(c.llama, out=c.tmp / "never"), str(c.tmp / "temp" / "lossgap-error-")


def temp_log_is_private(c: Ctx, err: str) -> None:
    (log,) = (c.tmp / "temp").iterdir()  # the log alone: no temporary left beside it
    assert log.name.endswith(".log") and stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "KeyError: 'no_such_column'" in log.read_text()


CASES = [
    Case("model-safetensors-truncated", st_truncated, 1, ("truncated", "download the file again")),
    Case("model-safetensors-garbage", st_garbage, 1, ("too short for a safetensors header",)),
    Case("model-safetensors-bad-header", st_bad_header, 1, ("header is not valid JSON",)),
    Case("model-bin-truncated", bin_truncated, 1, ("not a readable PyTorch checkpoint",)),
    Case("model-gguf-truncated", gguf_truncated, 1, ("not a readable GGUF file", "truncated or corrupt")),
    Case("model-gguf-not-gguf", gguf_not_gguf, 1, ("not a readable GGUF file",)),
    Case("model-config-wrong-type", config_wrong_type, 1, ("hidden_size", "expected int, got str")),
    Case("model-config-not-json", config_not_json, 1, ("not valid JSON",)),
    Case("model-config-not-object", config_not_object, 1, ("expected a JSON object, got list",)),
    Case("model-shapes-mismatch", shapes_mismatch, 1, ("do not match the config", "[384, 64]", "[500, 64]")),
    Case("model-unknown-architecture", unknown_architecture, 1, ("'superllama'", "upgrade transformers")),
    Case("model-custom-code", custom_code, 1, ("--trust-remote-code",)),
    Case("model-no-model-type", no_model_type, 1, ("no model_type",)),
    Case("model-config-invalid-value", invalid_heads, 1, ("not a multiple of the number of attention heads",)),
    Case("model-not-causal-lm", not_causal, 1, ("not a causal language model",)),
    Case("model-tokenizer-missing", tokenizer_missing, 1, ("no tokenizer files",)),
    Case("model-tokenizer-truncated", tokenizer_truncated, 1, ("not valid JSON",)),
    Case("model-tokenizer-config-broken", tokenizer_config_broken, 1, ("not valid JSON",)),
    Case("model-tokenizer-wrong-structure", tokenizer_wrong_shape, 1, ("the tokenizer cannot be loaded",)),
    Case("model-nan-weights", nan_weights, 1, ("model.layers.1.mlp.up_proj.weight", "2 NaN/inf")),
    Case("model-missing-tensor", missing_tensor, 1, ("lack 1 tensor", "lm_head.weight")),
    Case("model-fp16-overflow", fp16_overflow, 1,
         ("inf/NaN in the model's logits", "in float16", "overflow float16's range", "--dtype bfloat16"),
         never_says("a logit transform lossgap does not know")),
    Case("model-all-zero-weights", all_zero_weights, 1,
         ("logits do not depend on its input", "degenerate", "check the model's weights"), never_says("--attn")),
    Case("model-index-missing-shard", index_missing_shard, 1, ("missing", "download the missing file")),
    Case("model-hub-offline", hub_offline, 1, ("not in the local hub cache", "hf download")),
    Case("model-hub-gated", hub_gated, 1, ("gated", "hf auth login")),
    Case("model-hub-missing", hub_missing, 1, ("no such model on the hub",)),
    Case("out-under-a-file", out_under_file, 2, ("is a file, not a folder",)),
    Case("out-is-a-file", out_is_file, 2, ("is a file, not a folder",)),
    Case("out-virtual-fs", out_virtual_fs, 2, ("virtual file system",)),
    Case("out-read-only", out_read_only, 2, ("read-only",)),
    Case("out-no-permission", out_no_permission, 2, ("permission denied",)),
    Case("out-before-model-loads", out_checked_before_model, 2, ("is a file, not a folder",)),
    Case("compare-out-under-a-file", compare_out_under_file, 2, ("is a file, not a folder",)),
    Case("corpus-empty", corpus_empty, 1, ("no documents to score", "holds no records")),
    Case("corpus-skip-all", corpus_skip_all, 1, ("--skip 100 skips all 24",)),
    Case("corpus-all-bad-skipped", corpus_all_bad, 1, ("all 3 of its records are bad", "bad.jsonl:1")),
    Case("corpus-all-too-short", corpus_too_short, 1, ("nothing to score", "label offset 1")),
    Case("corpus-some-too-short", corpus_some_too_short, 0, ("too short to have a target",)),
    Case("corpus-text-folder-blank", corpus_text_folder_empty, 1, ("empty document",)),
    Case("compare-corpus-empty", compare_empty_corpus, 1, ("no documents to score",)),
    Case("config-unknown-key", toml_unknown_key, 2, ("unknown option 'seq_length'", "did you mean 'seq-len'")),
    Case("config-wrong-type", toml_wrong_type, 2, ("expects an integer",)),
    Case("config-out-of-range", toml_out_of_range, 2, ("--max-docs: -3 must be a positive integer",)),
    Case("config-section", toml_section, 2, ("top-level keys",)),
    Case("config-not-toml", toml_not_toml, 2, ("not valid TOML",)),
    Case("config-never-executed", toml_never_executed, 1, ("model folder not found",),
         lambda c, err: not (c.tmp / "executed").exists() or pytest.fail("the config ran code")),
    Case("config-compare-out-of-range", toml_compare_range, 2, ("at least 100",)),
    Case("resume-truncated-shard", resume_truncated_shard, 0, ("truncated or corrupt", "window 1 is scored again"),
         rescored_equals_reference),
    Case("resume-bit-flipped-shard", resume_flipped_shard, 0, ("corrupt", "window 2 is scored again"),
         rescored_equals_reference),
    Case("resume-foreign-shard", resume_foreign_shard, 0, ("not a shard of a lossgap run",), rescored_equals_reference),
    Case("resume-shard-of-another-run", resume_shard_of_another_run, 0, ("a shard of another run",),
         rescored_equals_reference),
    Case("resume-edited-manifest", resume_edited_manifest, 2, ("was edited", "--overwrite"), nothing_deleted),
    Case("resume-manifest-not-json", resume_manifest_not_json, 2, ("is damaged",), nothing_deleted),
    Case("resume-manifest-missing", resume_manifest_missing, 2, ("is missing",), nothing_deleted),
    Case("resume-manifest-unhashed", resume_manifest_unhashed, 2, ("no content hash",), nothing_deleted),
    Case("internal-error", internal_bug, 1, ("internal error: KeyError", "a bug in lossgap", "--debug"),
         log_holds_the_traceback),
    Case("internal-error-log-link", bug_with_links_at_the_log, 1, ("internal error: KeyError",),
         log_is_private_and_no_link_followed),
    Case("internal-error-log-in-temp", bug_before_out_exists, 1, ("internal error: KeyError",), temp_log_is_private),
    Case("out-is-a-link", out_is_a_link, 2, ("is a symbolic link", "pass the folder it points to"),
         lambda c, err: list((c.tmp / "real").iterdir()) == [] or pytest.fail("wrote through the link")),
    Case("out-tokens-partial-is-a-link", out_entry_is_a_link("tokens.parquet.partial", "--overwrite"), 2,
         ("is a symbolic link",), victim_untouched),
    Case("out-summary-is-a-link", out_entry_is_a_link("summary.json", "--overwrite"), 2, ("is a symbolic link",),
         victim_untouched),
    Case("out-error-log-is-a-link", out_entry_is_a_link("lossgap-error.log"), 2, ("is a symbolic link",),
         victim_untouched),
    Case("out-link-inside-shards", out_entry_is_a_link("shards/manifest.json", "--resume"), 2,
         ("is a symbolic link",), victim_untouched),
    Case("out-old-temporary-names-are-links", old_temporary_names_are_links, 0, (), run_finished_beside_the_links),
    Case("out-overwrite-linked-shards", overwrite_through_linked_shards, 2, ("is a symbolic link", "remove the link"),
         nothing_deleted_through_the_link),
    Case("compare-runs-is-a-link", compare_runs_is_a_link, 2, ("is a symbolic link",),
         lambda c, err: (c.tmp / "elsewhere" / "keep.txt").read_text() == VICTIM_TEXT or pytest.fail("deleted")),
]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, llama_dir) -> Path:
    return write_tiny_gguf(llama_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_input(case, tmp_path, llama_dir, pile_jsonl, pile_records, tiny_gguf, monkeypatch, capsys):
    ctx = Ctx(tmp_path, llama_dir, pile_jsonl, pile_records, monkeypatch, tiny_gguf)
    argv, named = case.setup(ctx)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err and 'File "' not in err, err
    assert named in err, f"the message does not name {named!r}: {err}"
    for part in case.says:
        assert part in err, f"{part!r} not in {err!r}"
    if case.code:
        assert err.count("lossgap: ") == 1, err  # one message
    if case.check is not None:
        case.check(ctx, err)


def test_there_are_enough_cases():
    kinds = {c.id.split("-")[0] for c in CASES}
    assert len(CASES) >= 30 and {"model", "out", "corpus", "config", "resume", "internal"} <= kinds


# ---------------------------------------------------------------- reduced precision: the float32 check speaks up


@pytest.fixture(scope="module")
def large_logits(tmp_path_factory, llama_dir) -> Path:
    """The tiny Llama with its lm_head scaled 8x: logits large enough that bf16 moves the NLL by ~0.2 a token."""
    return scale_weights(copy_model(llama_dir, tmp_path_factory.mktemp("large") / "large"), 8)


def _bf16(command: str, corpus: Path, out: Path, *models: str) -> list[str]:
    return [command, *models, "--corpus", str(corpus), "--out", str(out), "--device", "cpu", "--dtype", "bfloat16",
            "--quiet", "--seq-len", "64", "--max-docs", "6"]


def test_a_large_bf16_deviation_warns_names_the_model_and_is_recorded(tmp_path, large_logits, pile_jsonl, capsys):
    from lossgap.formats.schema import FP32_LIMITS

    assert main(_bf16("score", pile_jsonl, tmp_path / "large", "--model", str(large_logits))) == 0
    err = capsys.readouterr().err
    check = read_summary(tmp_path / "large")["fp32_check"]
    assert check["warn"] is True and check["limits"] == FP32_LIMITS
    assert check["mean_abs_diff"] > FP32_LIMITS["mean_abs_diff"]
    assert f"lossgap: warning: {large_logits} (label offset 1): bfloat16 against float32 on the first " in err
    assert "input tokens of the first batch)" in err
    assert f"off by {check['mean_abs_diff']:.3g} nats on average (max {check['max_abs_diff']:.3g})" in err
    assert "past the limits" in err and "; rerun with --dtype float32" in err and "Traceback" not in err


def test_a_healthy_bf16_model_does_not_warn(tmp_path, llama_dir, pile_jsonl, capsys):
    assert main(_bf16("score", pile_jsonl, tmp_path / "plain", "--model", str(llama_dir))) == 0
    err = capsys.readouterr().err
    check = read_summary(tmp_path / "plain")["fp32_check"]
    assert check["warn"] is False and check["mean_abs_diff"] > 0 and "warning" not in err, err


def test_a_float32_check_out_of_memory_is_skipped_and_said(tmp_path, llama_dir, pile_jsonl, capsys, monkeypatch):
    """float32 needs twice the weights' memory: running out there skips the check, says so, and scores on."""
    import torch

    from lossgap.engine import forward

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    assert main(_bf16("score", pile_jsonl, tmp_path / "ref", "--model", str(llama_dir))) == 0
    monkeypatch.setattr(forward, "in_float32", out_of_memory)
    assert main(_bf16("score", pile_jsonl, tmp_path / "oom", "--model", str(llama_dir))) == 0
    err = capsys.readouterr().err
    assert "the float32 check of the first batch ran out of memory and was skipped" in err and "Traceback" not in err
    assert read_summary(tmp_path / "oom")["fp32_check"] is None
    assert read_summary(tmp_path / "oom")["mean_nll"] == read_summary(tmp_path / "ref")["mean_nll"]


def test_a_comparison_shows_every_fp32_check_in_its_diagnostics(tmp_path, large_logits, llama_dir, pile_jsonl,
                                                                capsys):
    """The large-logits baseline's run and the paired pass warn (stderr, results.json, report.md); the healthy
    model's run shows its numbers as a note; the paired pass measured the same first batch as the baseline's run."""
    out = tmp_path / "cmp"
    argv = _bf16("compare", pile_jsonl, out, "--base", str(large_logits), "--instruct", str(llama_dir))
    assert main([*argv, "--matrix", "single", "--bootstrap", "100"]) == 0
    err = capsys.readouterr().err
    assert err.count("lossgap: warning:") == 2 and "the paired pass of base and instruct: bfloat16" in err, err
    results = json.loads((out / "results.json").read_text())
    key = results["main_configuration"]
    checks = {d["where"]: d for d in results["diagnostics"] if d["code"] == "fp32_check"}
    assert set(checks) == {f"{key} / base", f"{key} / instruct", f"{key} / base vs instruct (paired pass)"}
    base, instruct, pair = checks.values()
    assert base["level"] == "warning" and base["message"].endswith("past the limits (0.075 on average, 0.01 on the "
                                                                   "mean); rerun with --dtype float32")
    assert instruct["level"] == "info" and "within the limits" in instruct["message"]
    assert pair["level"] == "warning" and "NLL of base off by" in pair["message"] and "KL(base||instruct)" in \
        pair["message"]
    report = (out / "report.md").read_text()
    assert base["message"] in report and instruct["message"] in report and "(paired pass)" in report
    run = read_summary(out / json.loads((out / "compare.json").read_text())["runs"][key]["base"])["fp32_check"]
    facts = json.loads(pq.read_schema(out / "pairs" / "instruct.parquet").metadata[b"lossgap"])["facts"]
    paired = facts["fp32_check"]["statistics"]["nll_b"]
    assert paired["mean_abs_diff"] == pytest.approx(run["mean_abs_diff"], abs=1e-6)
    assert paired["mean_diff"] == pytest.approx(run["mean_nll_diff"], abs=1e-6)


# ---------------------------------------------------------------- the same through a real process


def _run(*argv: str, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"import sys\n{prelude}\nfrom lossgap.cli import main\nraise SystemExit(main(sys.argv[1:]))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_a_process_prints_one_message_and_exits_1(tmp_path, llama_dir, pile_jsonl):
    model = copy_model(llama_dir, tmp_path / "half")
    truncate(model / "model.safetensors", 0.5)
    proc = subprocess.run([sys.executable, "-m", "lossgap", "score", "--model", str(model), "--corpus",
                           str(pile_jsonl), "--out", str(tmp_path / "o"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{model / 'model.safetensors'}: not a readable safetensors file" in proc.stderr


@pytest.mark.slow
def test_a_bug_is_short_on_the_terminal_and_whole_with_debug(tmp_path, llama_dir, pile_jsonl):
    bug = "import lossgap.run.scoring as s\ndef bug(*a, **k):\n    raise KeyError('no_such_column')\ns.finish = bug"
    argv = ["score", "--model", str(llama_dir), "--corpus", str(pile_jsonl), "--device", "cpu", "--quiet"]
    proc = _run(*argv, "--out", str(tmp_path / "a"), prelude=bug)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 4, proc.stderr
    assert str(tmp_path / "a" / "lossgap-error.log") in proc.stderr
    proc = _run(*argv, "--out", str(tmp_path / "b"), "--debug", prelude=bug)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "KeyError: 'no_such_column'" in proc.stderr


def test_a_bug_with_an_unusable_out_saves_its_traceback_in_the_temp_folder(tmp_path, monkeypatch, capsys):
    from lossgap import cli

    monkeypatch.setattr(cli, "cmd_report", lambda a: 1 / 0)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert main(["report", str(tmp_path / "no_such_dir")]) == 1
    err = capsys.readouterr().err
    saved = re.search(r"saved in (\S+)", err).group(1)
    assert Path(saved).parent == tmp_path and "ZeroDivisionError" in Path(saved).read_text()


def test_a_file_system_error_names_the_path(tmp_path, monkeypatch, capsys):
    from lossgap import cli

    def full(a):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.json"))

    monkeypatch.setattr(cli, "cmd_report", full)
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'x.json'}: No space left on device" in err and "internal" not in err


# ---------------------------------------------------------------- every finished file is written atomically


WRITES = re.compile(r"\.write_text\(|\.write_bytes\(|savefig\(|write_table\(|ParquetWriter\("
                    r"|open\([^)]*[\"'][wa]b?[\"']")


def test_every_file_is_written_under_a_temporary_name():
    """A write outside files.py must go to a temporary name (tmp, a .partial path) that is renamed when complete."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).as_posix() == "formats/files.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if WRITES.search(line) and not re.search(r"\btmp\b|writer\.write_table|self\.path|tmp\)", line):
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert offenders == []


# ---------------------------------------------------------------- names, texts and losses that reach the report


HOSTILE_DOMAINS = (r"$\undefinedmacro{x}$", "costs_$HOME_$", "Price: $5 - $10", "<img src=x onerror=alert(1)>",
                   '=HYPERLINK("http://x","y")', "a|b *c* [d](e) `f`")


def _strict_json(path: Path) -> dict:
    """The file as a strict JSON reader sees it: NaN and Infinity are refused."""
    def refuse(token):
        raise AssertionError(f"{path}: {token} is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_hostile_domain_names_reach_a_safe_report(tmp_path, llama_dir, pile_records, monkeypatch, capsys):
    """Domain names with mathtext, HTML, Markdown and a spreadsheet formula: compare and report exit 0, every plot is
    drawn, report.md shows the names as text and per_domain.csv holds no formula."""
    records = [{**r, "meta": {"pile_set_name": HOSTILE_DOMAINS[i % len(HOSTILE_DOMAINS)]}}
               for i, r in enumerate(pile_records[:12])]
    corpus = write_jsonl(tmp_path / "hostile.jsonl", records)
    out = tmp_path / "cmp"
    ctx = Ctx(tmp_path, llama_dir, corpus, records, monkeypatch, gguf=None)
    for argv in (ctx.compare("--bootstrap", "100", "--no-explain"), ["report", str(out)]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0 and "Traceback" not in err and "internal error" not in err, err
        assert (out / "per_domain_difference.png").read_bytes().startswith(b"\x89PNG")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    assert r"\$\\undefinedmacro{x}\$" in md and r"a\|b \*c\* \[d\](e) \`f\`" in md
    domains = {row["domain"] for row in _csv_rows(out / "per_domain.csv")}
    assert domains == {"'" + d if d.startswith("=") else d for d in HOSTILE_DOMAINS}


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _huge_loss(c: Ctx, name: str) -> Path:
    """The tiny Llama with its lm_head scaled by 1e4 (fp32): logits in the tens of thousands, a mean NLL far above
    the 709.78 nats where exp overflows a float."""
    def scale(w):
        w["lm_head.weight"] *= 1e4

    return edit_weights(c.model(name), scale)


def test_an_overflowing_perplexity_is_inf_not_a_crash(tmp_path, llama_dir, pile_jsonl, pile_records, monkeypatch,
                                                      capsys):
    ctx = Ctx(tmp_path, llama_dir, pile_jsonl, pile_records, monkeypatch, gguf=None)
    model = _huge_loss(ctx, "huge")
    code = main(ctx.score(model))
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err and "internal error" not in captured.err, captured.err
    assert "perplexity inf (exp of the mean NLL overflows)" in captured.out
    summary = _strict_json(tmp_path / "out" / "summary.json")
    assert summary["mean_nll"] > 710 and summary["perplexity"] == "inf"
    # compared against the unscaled model: the relative perplexity overflows too, and the report says so
    out = tmp_path / "cmp"
    argv = ["compare", "--base", str(llama_dir), "--instruct", str(model), "--corpus", str(pile_jsonl), "--out",
            str(out), "--device", "cpu", "--dtype", "float32", "--quiet", "--matrix", "single", "--bootstrap", "100",
            "--no-explain"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err and "internal error" not in err, err
    results = _strict_json(out / "results.json")
    overall = results["configurations"][0]["comparisons"]["instruct"]["overall"]
    assert overall["diff"] > 709.79 and overall["relative_perplexity_change"] == "inf"
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "+inf%" in md and "overflowed" in md


# ---------------------------------------------------------------- faults while finishing a run


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # as pyarrow and file.write say it: no file named


def _full_where(original, part: str):
    """`original` (a write function taking the file second), failing for files whose name holds `part`."""

    def write(first, where, *args, **kwargs):
        if part in str(where):
            _disk_full()
        return original(first, where, *args, **kwargs)

    return write


def _full_at_tokens(m):
    """Merging the shards into tokens.parquet (ParquetWriter also writes the shards: only the merge fails)."""
    original = pq.ParquetWriter.write_table
    m.setattr(pq.ParquetWriter, "write_table",
              lambda self, *a, **k: _disk_full() if "tokens.parquet" in str(self.where) else original(self, *a, **k))


def _full_at_documents(m):
    m.setattr(pq, "write_table", _full_where(pq.write_table, "documents.parquet"))


def _full_at_summary(m):
    original = Path.write_bytes
    m.setattr(Path, "write_bytes",
              lambda self, data: _disk_full() if "summary.json" in self.name else original(self, data))


def _full_while_scoring_and_finishing(m):
    from lossgap.run.shards import ShardStore

    original = ShardStore.write
    m.setattr(ShardStore, "write", lambda self, w, t: _disk_full() if w >= 2 else original(self, w, t))
    _full_at_tokens(m)


FULL_AT = {"tokens": _full_at_tokens, "documents": _full_at_documents, "summary": _full_at_summary,
           "scoring-and-finishing": _full_while_scoring_and_finishing}


def _score_args(model, corpus, out) -> list:
    return ["--model", model, "--corpus", corpus, "--out", out, "--seq-len", 64, "--batch-size", 2,
            "--window-tokens", 256]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, llama_dir, pile_records) -> tuple[Path, Path]:
    """(corpus, run folder) of a run nothing interrupted: what a resumed run must equal."""
    from tests.helpers import run_cli

    folder = tmp_path_factory.mktemp("clean")
    corpus = write_jsonl(folder / "pile.jsonl", pile_records)

    class Quiet:  # run_cli reads the captured output; here nothing captures it
        readouterr = staticmethod(lambda: ("", ""))

    assert run_cli(Quiet, *_score_args(llama_dir, corpus, folder / "run"))[0] == 0
    return corpus, folder / "run"


def _same_results(a: Path, b: Path) -> None:
    for name in ("tokens.parquet", "documents.parquet"):
        ta, tb = pq.read_table(a / name), pq.read_table(b / name)
        assert ta.schema.remove_metadata() == tb.schema.remove_metadata() and ta.equals(tb), name


@pytest.mark.parametrize("stage", list(FULL_AT))
def test_a_full_disk_while_finishing_keeps_the_shards_for_resume(stage, tmp_path, llama_dir, clean_run, monkeypatch,
                                                                  capsys):
    from tests.helpers import run_cli

    corpus, clean = clean_run
    out = tmp_path / "full"
    with monkeypatch.context() as m:
        FULL_AT[stage](m)
        code, _, err = run_cli(capsys, *_score_args(llama_dir, corpus, out))
    assert code == 1 and f"disk full while writing to {out}\n" in err and "then rerun with --resume" in err, err
    assert "internal error" not in err and err.count("lossgap: ") == 1, err
    assert list((out / "shards").glob("window-*.parquet")), "the finished windows are kept"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "a failed write leaves no temporary"
    assert not (out / "summary.json").exists() or not read_summary(out)["complete"]
    code, _, err = run_cli(capsys, *_score_args(llama_dir, corpus, out), "--resume")
    assert code == 0, err
    _same_results(out, clean)
    assert read_summary(out)["complete"] and not (out / "shards").exists()


def _remove_out_at(out: Path, cls, name: str, when) -> Callable:
    """cls.name that removes the folder `out` when `when(args)` holds, then does its work."""
    import shutil

    original = getattr(cls, name)

    def removing(self, *args):
        if when(args) and out.exists():
            shutil.rmtree(out)
        return original(self, *args)

    return removing


@pytest.mark.parametrize("stage", ["scoring", "finishing"])
def test_out_removed_mid_run_is_one_clear_message(stage, tmp_path, llama_dir, pile_jsonl, monkeypatch, capsys):
    from lossgap.run.shards import ShardStore
    from tests.helpers import run_cli

    out = tmp_path / "gone"
    if stage == "scoring":  # before the third shard is written
        monkeypatch.setattr(ShardStore, "write", _remove_out_at(out, ShardStore, "write", lambda a: a[0] == 2))
    else:  # while the shards are merged
        monkeypatch.setattr(ShardStore, "read", _remove_out_at(out, ShardStore, "read", lambda a: a[0] == 1))
    code, _, err = run_cli(capsys, *_score_args(llama_dir, pile_jsonl, out))
    assert code == 1 and f"{out} was removed while the run was writing to it" in err, err
    assert "internal error" not in err and err.count("lossgap: ") == 1, err
    assert not out.exists()  # nothing half-made in its place


COMPARE_ARGS = ["--device", "cpu", "--dtype", "float32", "--quiet", "--matrix", "single", "--seq-len", "64",
                "--window-tokens", "256"]
MERGES = {  # the merges that finish a comparison: where a full disk meets them, and what the message names
    "runs": (lambda where: where.name.startswith("tokens.parquet"), "runs/"),
    "pairs": (lambda where: where.parent.name == "pairs", "pairs/"),
}


def _compare_args(c_model: Path, corpus: Path, out: Path) -> list[str]:
    return ["compare", "--base", str(c_model), "--instruct", str(c_model), "--corpus", str(corpus), "--out", str(out),
            *COMPARE_ARGS]


@pytest.fixture(scope="module")
def clean_comparison(clean_run, llama_dir) -> Path:
    out = clean_run[1].parent / "comparison"
    assert main(_compare_args(llama_dir, clean_run[0], out)) == 0
    return out


@pytest.mark.slow  # three comparisons, one with the paired pass: about a minute
@pytest.mark.parametrize("merge", list(MERGES))
def test_a_full_disk_while_a_comparison_finishes_resumes_to_the_same_files(merge, tmp_path, llama_dir, clean_run,
                                                                           clean_comparison, monkeypatch, capsys):
    fails, named = MERGES[merge]
    out = tmp_path / "full"
    original = pq.ParquetWriter.write_table
    with monkeypatch.context() as m:
        m.setattr(pq.ParquetWriter, "write_table",
                  lambda self, *a, **k: _disk_full() if fails(Path(self.where)) else original(self, *a, **k))
        code = main(_compare_args(llama_dir, clean_run[0], out))
    err = capsys.readouterr().err
    assert code == 1 and f"disk full while writing to {out / named}" in err and "--resume" in err, err
    assert "internal error" not in err and "Traceback" not in err and err.count("lossgap: ") == 1, err
    assert main([*_compare_args(llama_dir, clean_run[0], out), "--resume"]) == 0, capsys.readouterr().err
    files = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
    assert files == sorted(p.relative_to(clean_comparison) for p in clean_comparison.rglob("*.parquet"))
    for name in files:
        a, b = pq.read_table(out / name), pq.read_table(clean_comparison / name)
        assert a.schema.remove_metadata() == b.schema.remove_metadata() and a.equals(b), name
