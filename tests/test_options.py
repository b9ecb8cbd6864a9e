"""Options come from the config dataclasses: one declaration per field, the same names in --config files, and
usage errors (exit 2) that name the key and what it expects. No model is loaded here."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from lossgap import config
from lossgap.cli import build_parser, compare_config_from_args, corpus_build_options, main, score_config_from_args
from lossgap.config import CompareConfig, CorpusConfig, ModelConfig, RunConfig, ScoreConfig
from lossgap.errors import UsageError
from lossgap.options import build

SRC = Path(config.__file__).parent
REQUIRED = ["--model", "m", "--corpus", "c.jsonl", "--out", "o"]


def parse(*argv: str):
    parser, _ = build_parser()
    return parser.parse_args(list(argv))


def test_parser_defaults_are_the_dataclass_defaults():
    """Nothing is declared twice: with only the required options, the command line builds the dataclasses'
    own defaults."""
    assert score_config_from_args(parse("score", *REQUIRED)) == ScoreConfig(
        model=ModelConfig("m"), corpus=CorpusConfig("c.jsonl"), run=RunConfig(out="o"))
    compared = compare_config_from_args(parse("compare", "--base", "a", "--instruct", "b", *REQUIRED[2:]))
    assert compared == CompareConfig(models=[("base", "a"), ("instruct", "b")], corpus=CorpusConfig("c.jsonl"),
                                     run=RunConfig(out="o"))


def test_demo_and_corpus_build_defaults_are_their_functions_defaults():
    from lossgap.data.corpus_build import build_corpus
    from lossgap.demo import DemoConfig

    assert build(DemoConfig, parse("demo")) == DemoConfig()
    parsed = parse("corpus", "build", "--out", "x.jsonl")
    defaults = {k: p.default for k, p in inspect.signature(build_corpus).parameters.items()}
    built = build(corpus_build_options(), parsed)
    assert built.out == Path("x.jsonl")
    for name in ("max_docs_per_source", "seed", "only_split", "math_docs"):
        assert getattr(built, name) == defaults[name], name
    assert tuple(built.sources) == defaults["sources"]


@pytest.mark.parametrize(("command", "flag", "choices"), [
    ("score", "--layout", config.LAYOUTS), ("score", "--mask", config.MASKS),
    ("score", "--positions", config.POSITIONS), ("score", "--dtype", config.DTYPES),
    ("score", "--device", config.DEVICES), ("score", "--attn", config.ATTNS),
    ("score", "--on-bad-line", config.ON_BAD_LINE), ("score", "--plan", config.PLANS),
    ("score", "--loss-kernel", config.LOSS_KERNELS), ("score", "--label-offset", config.LABEL_OFFSETS),
    ("compare", "--matrix", config.MATRICES), ("compare", "--plan", config.PLANS),
])
def test_choices_are_the_config_tuples(capsys, command, flag, choices):
    _, subs = build_parser()
    assert f"{flag} {{{','.join(map(str, choices))}}}" in subs[command].format_help()
    outside = "3" if isinstance(choices[0], int) else "no-such-choice"
    with pytest.raises(SystemExit) as e:
        parse(command, flag, outside)
    assert e.value.code == 2 and "invalid choice: " in capsys.readouterr().err


def _non_default_argv(opt) -> tuple[list[str], object]:
    """Command-line words that set this option to something other than its default, and the value expected."""
    if opt.switch:
        return [opt.flag if opt.switch != "both" or opt.default is None else "--no-" + opt.name], \
            {"on": True, "off": False, "both": opt.default is None}[opt.switch]
    if opt.spec.choices:
        value = next(c for c in opt.spec.choices if c != opt.default)
        return [opt.flag, str(value)], value
    if opt.spec.repeat:
        return [opt.flag, "extra=model/path"], ["extra=model/path"]
    if opt.spec.words:
        return [opt.flag, opt.spec.words[0]], opt.spec.words[0]
    if int in opt.types:
        return [opt.flag, "7"], 7
    return [opt.flag, f"x-{opt.name}"], f"x-{opt.name}"


@pytest.mark.parametrize("command", ["score", "compare"])
def test_every_option_reaches_its_config_field(command):
    _, subs = build_parser()
    argv, expected = [command], {}
    for opt in subs[command].field_options:
        words, value = _non_default_argv(opt)
        argv += words
        expected[(opt.cls.__name__, opt.field.name)] = value
    assert len({opt.flag for opt in subs[command].field_options}) == len(expected)  # one option per field
    args = parse(*argv)
    if command == "score":
        cfg = score_config_from_args(args)
        parts = {"ModelConfig": cfg.model}
    else:
        cfg = compare_config_from_args(args)
        parts = {"ModelConfig": cfg.model, "CompareConfig": cfg}
        assert cfg.models == [("base", "x-base"), ("instruct", "x-instruct"), ("extra", "model/path")]
    parts.update(CorpusConfig=cfg.corpus, TokenizeConfig=cfg.tokenize, LayoutConfig=cfg.layout, RunConfig=cfg.run)
    for (cls, name), value in expected.items():
        if cls != "CompareModels":
            assert getattr(parts[cls], name) == value, (cls, name)


TOML_EVERY_KIND = """
model = "m"                 # strings
corpus = "c.jsonl"
out = "o"
gguf_file = "m.gguf"        # _ as well as -
revision = "main"
dtype = "float32"           # choices
device = "cpu"
attn = "eager"
trust-remote-code = true    # switches
device-map = "auto"
tp = true
text-field = "body"
domain-field = "meta.src"
split = "validation"
skip = 3                    # integers
sample = 10
seed = 4
max-docs = 5
max-tokens = 900
on-bad-line = "skip"
bos = false                 # --bos/--no-bos
no-eos = true
bos-id = 1
eos-id = 2
layout = "single"
seq-len = 64
stride = 32
mask = "causal"
positions = "restart"
label-offset = 2
overwrite = true
resume = true
window-tokens = 1024
batch-size = "auto"         # a number or auto
plan = "dense"
batch-tokens = 4096
no-fp32-check = true        # a --no-... switch by its own name
mask-heads = true
loss-chunk-mb = 64
loss-kernel = "tiled"
compile = true
probe = false               # ... or by the field it turns off
quiet = true
"""

ARGV_EVERY_KIND = (
    "--model m --corpus c.jsonl --out o --gguf-file m.gguf --revision main --dtype float32 --device cpu --attn eager "
    "--trust-remote-code --device-map auto --tp --text-field body --domain-field meta.src --split validation "
    "--skip 3 --sample 10 --seed 4 --max-docs 5 --max-tokens 900 --on-bad-line skip --no-bos --no-eos --bos-id 1 "
    "--eos-id 2 --layout single --seq-len 64 --stride 32 --mask causal --positions restart --label-offset 2 "
    "--overwrite --resume --window-tokens 1024 --batch-size auto --plan dense --batch-tokens 4096 --no-fp32-check "
    "--mask-heads --loss-chunk-mb 64 --loss-kernel tiled --compile --no-probe --quiet"
)


def test_config_file_builds_the_same_config_as_the_command_line(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(TOML_EVERY_KIND)
    parser, subs = build_parser()
    subs["score"].apply_config_file(path)
    from_file = score_config_from_args(parser.parse_args(["score", "--config", str(path)]))
    from_argv = score_config_from_args(parse("score", *ARGV_EVERY_KIND.split()))
    assert from_file == from_argv
    assert from_file.run.batch_size == "auto" and from_file.tokenize.add_bos is False and not from_file.run.probe


def test_command_line_wins_over_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('seq-len = 64\nbos = false\nmodel = ["a=x", "b=y"]\n[models]\nc = "z"\n')
    parser, subs = build_parser()
    subs["compare"].apply_config_file(path)
    args = parser.parse_args(["compare", "--corpus", "c", "--out", "o", "--seq-len", "128", "--bos"])
    cfg = compare_config_from_args(args)
    assert cfg.layout.seq_len == 128 and cfg.tokenize.add_bos is True
    assert cfg.models == [("a", "x"), ("b", "y"), ("c", "z")]


def run_with_config(capsys, tmp_path, text: str, command: str = "score") -> tuple[int, str]:
    path = tmp_path / "run.toml"
    path.write_text(text)
    code = main([command, "--config", str(path), *(REQUIRED if command == "score" else REQUIRED[2:])])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("text", "message"), [
    ("seq_length = 8", "unknown option 'seq_length' (did you mean 'seq-len'?)"),
    ("batchsize = 8", "unknown option 'batchsize' (did you mean 'batch-size'?)"),
    ("fp32_check = false\nno_fp32_check = true", "'no_fp32_check' sets --no-fp32-check a second time"),
    ("config = 'other.toml'", "unknown option 'config'"),
    ('seq-len = "8192"', "'seq-len' expects an integer, got '8192'"),
    ("seq-len = 64.0", "'seq-len' expects an integer, got 64.0"),
    ("skip = true", "'skip' expects an integer, got True"),
    ('corpus = ["a", "b"]', "'corpus' expects a string, got ['a', 'b']"),
    ('tp = "yes"', "'tp' expects true or false, got 'yes'"),
    ('batch-size = "many"', "'batch-size' expects a number of rows or auto, got 'many'"),
    ('layout = "diagonal"', "'layout' expects one of packed, single, got 'diagonal'"),
    ("label-offset = 3", "'label-offset' expects one of 1, 2, got 3"),
    ('[models]\na = "x"', "unknown option 'models' (did you mean 'model'?)"),
    ("seq-len = 0", "--seq-len: 0 must be a positive integer"),
    ("batch-size = -2", "--batch-size: -2 must be a positive integer"),
    ("stride = 8", "--stride applies to --layout single"),
])
def test_config_file_errors_name_the_key(capsys, tmp_path, text, message):
    code, err = run_with_config(capsys, tmp_path, text)
    assert code == 2 and message in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(("text", "message"), [
    ('models = ["a"]', "'models' expects a table of NAME = \"PATH\" entries"),
    ("model = 'a=x'", "'model' expects a list of strings, got 'a=x'"),
    ("bootstrap = 50\nbase = 'a'\ninstruct = 'b'", "--bootstrap must be at least 100 resamples"),
    ("gguf-file = 'x.gguf'", "unknown option 'gguf-file'"),
    # before: the key "a=b" was split at its '=' into the model "a" at the path "b=/models/x"
    ('[models]\n"a=b" = "/models/x"', "'models' entry 'a=b': a name cannot hold '='"),
])
def test_compare_config_file_errors(capsys, tmp_path, text, message):
    code, err = run_with_config(capsys, tmp_path, text, "compare")
    assert code == 2 and message in err, err


def test_a_model_path_may_hold_an_equals_sign(tmp_path):
    """A path may hold '=' (NAME=PATH splits at the first one); a name never does, from the API either."""
    path = tmp_path / "run.toml"
    path.write_text('[models]\nbase = "/models/lr=1e-4"\n')
    parser, subs = build_parser()
    subs["compare"].apply_config_file(path)
    args = parser.parse_args(["compare", "--corpus", "c", "--out", "o", "--model", "sft=/models/lr=2e-5"])
    assert compare_config_from_args(args).models == [("base", "/models/lr=1e-4"), ("sft", "/models/lr=2e-5")]
    with pytest.raises(UsageError, match="a model name must be a plain word"):
        CompareConfig(models=[("a=b", "x"), ("c", "y")], corpus=CorpusConfig("c.jsonl")).validate()


def test_unreadable_config_files(capsys, tmp_path):
    assert main(["score", "--config", str(tmp_path / "missing.toml"), *REQUIRED]) == 2
    assert "missing.toml: file not found" in capsys.readouterr().err
    code, err = run_with_config(capsys, tmp_path, "seq-len = = 3")
    assert code == 2 and "not valid TOML" in err


def test_required_options_may_come_from_the_file(capsys, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "m"\ncorpus = "c.jsonl"\nout = "o"\nseq-len = 0\n')
    assert main(["score", "--config", str(path)]) == 2  # past the required options, stopped by --seq-len
    assert "--seq-len: 0 must be a positive integer" in capsys.readouterr().err
    assert main(["score", "--corpus", "c", "--out", "o"]) == 2
    assert "--model is required (on the command line or in --config)" in capsys.readouterr().err


def test_no_private_argparse_attributes():
    for module in ("cli.py", "options.py", "config.py"):
        text = (SRC / module).read_text()
        assert not re.search(r"\._(actions|option_string_actions|action_groups|defaults|registries|get_\w+)\b", text)
