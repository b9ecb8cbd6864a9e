"""lossgap: measure and explain the language-modelling loss of causal LMs on a corpus.

Each subcommand fills a config dataclass and calls one API function. Any option can also come from a TOML file
(`--config run.toml`, keys named like the options); the command line wins over the file.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
import traceback
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .config import (
    MODEL_HELP,
    CompareConfig,
    CorpusConfig,
    DemoConfig,
    LayoutConfig,
    ModelConfig,
    RunConfig,
    ScoreConfig,
    TokenizeConfig,
)
from .errors import LossgapError, UsageError
from .formats.files import writable_dir
from .options import OptionParser, build, option


@dataclass
class CompareModels:
    """The models of `lossgap compare`, in order: --base, --instruct, then each --model NAME=PATH."""

    base: str | None = option(None, help=f"the baseline model: {MODEL_HELP}")
    instruct: str | None = option(None, help="the model compared with it")
    model: list[str] = option(default_factory=list, repeat=True, table="models", metavar="NAME=PATH",
                              help="a named model (repeat for more; the first is the baseline when --base is absent)")

    def named(self) -> list[tuple[str, str]]:
        models = [("base", self.base)] if self.base else []
        if self.instruct:
            models.append(("instruct", self.instruct))
        for item in self.model:
            name, sep, spec = item.partition("=")
            if not sep or not name or not spec:
                raise UsageError(f"--model {item!r}: expected NAME=PATH")
            models.append((name, spec))
        return models


@cache
def corpus_build_options() -> type:
    """The options of `corpus build`; a function so that corpus_build.py is read only when the parser is built."""
    from .data.corpus_build import MATH_DOCS, SOURCES, SPLITS

    @dataclass
    class CorpusBuildOptions:
        out: Path = option(help=".jsonl, .jsonl.gz or .jsonl.zst")
        sources: list[str] = option(default_factory=lambda: list(SOURCES), choices=SOURCES)
        max_docs_per_source: int | None = option(None)
        math_docs: int = option(MATH_DOCS, help="generated mathematics documents")
        seed: int = option(0)
        only_split: str | None = option(None, choices=SPLITS, help="write one split only (by document hash)")

    return CorpusBuildOptions


def _add_config_groups(p: OptionParser, compare: bool) -> None:
    """The option groups `score` and `compare` share; compare names its models and scores one layout only with
    --matrix single."""
    models = p.add_argument_group("models" if compare else "model")
    if compare:
        p.add_fields(models, CompareModels)
    p.add_fields(models, ModelConfig, skip=("name", "gguf_file", "revision") if compare else ())
    p.add_fields(p.add_argument_group("corpus"), CorpusConfig)
    p.add_fields(p.add_argument_group("tokens"), TokenizeConfig)
    notes = dict.fromkeys(("layout", "mask", "label_offset"), " (with --matrix single)") if compare else {}
    p.add_fields(p.add_argument_group("layout"), LayoutConfig, notes=notes)
    run = p.add_argument_group("run")
    p.add_config_option(run)
    p.add_fields(run, RunConfig)


def score_config_from_args(a: argparse.Namespace) -> ScoreConfig:
    return ScoreConfig(model=build(ModelConfig, a), corpus=build(CorpusConfig, a), tokenize=build(TokenizeConfig, a),
                       layout=build(LayoutConfig, a), run=build(RunConfig, a))


def compare_config_from_args(a: argparse.Namespace) -> CompareConfig:
    corpus, run = build(CorpusConfig, a), build(RunConfig, a)
    return build(CompareConfig, a, models=build(CompareModels, a).named(), corpus=corpus,
                 model=build(ModelConfig, a, name=""), tokenize=build(TokenizeConfig, a),
                 layout=build(LayoutConfig, a), run=run)


def _perplexity(summary: dict) -> str:
    from .formats.schema import number

    ppl = number(summary["perplexity"])
    return "inf (exp of the mean NLL overflows)" if ppl == math.inf else f"{ppl:.3f}"


def cmd_score(a: argparse.Namespace) -> int:
    cfg = score_config_from_args(a).validate()  # a bad value fails before torch is imported
    from .run.scoring import score

    result = score(cfg)
    s = result.summary
    if not s:  # a torchrun rank other than 0: rank 0 merged and reports
        return 0
    print(f"{s['model']['name']}: mean NLL {s['mean_nll']:.4f} nats/token, perplexity {_perplexity(s)}, "
          f"{s['bits_per_byte']:.4f} bits/byte over {s['n_tokens']:,} tokens in {s['n_documents']:,} documents")
    print(f"{s['tokens_per_second']:,.0f} tokens/s; results in {result.out_dir}/")
    short = s["n_documents"] - s.get("n_scored_documents", s["n_documents"])
    if short:
        print(f"note: {s['corpus']['path']}: {short} of {s['n_documents']} document(s) too short to have a target "
              f"under label offset {s['label_offset']}: counted, not scored", file=sys.stderr)
    return 0


def _print_report(out: Path, results: dict) -> None:
    from .formats.paths import ComparisonFolder
    from .report.build import format_seed_table

    print(format_seed_table(results))
    print()
    for finding in results["findings"]:
        print(f"- {finding}")
    folder = ComparisonFolder(out)
    print(f"\nreport: {folder.report_markdown} and {folder.report_html}; every number in {folder.results}")


def cmd_compare(a: argparse.Namespace) -> int:
    cfg = compare_config_from_args(a).validate()  # a bad value fails before torch is imported
    from .run.comparison import compare

    results = compare(cfg)
    if results:  # empty on torchrun ranks other than 0
        _print_report(Path(cfg.run.out), results)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .analysis.results import build_results
    from .report.build import write_report

    results = build_results(Path(a.dir))
    write_report(Path(a.dir), results)
    _print_report(Path(a.dir), results)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import COMPARE_DIR, run_demo

    cfg = build(DemoConfig, a)
    writable_dir(Path(cfg.out))  # before anything is built or loaded
    results = run_demo(cfg)
    _print_report(Path(cfg.out) / COMPARE_DIR, results)
    print(f"demo finished in {results['demo_wall_seconds']:.0f} s")
    return 0


def cmd_corpus_build(a: argparse.Namespace) -> int:
    from .data.corpus_build import build_corpus

    o = build(corpus_build_options(), a)
    writable_dir(Path(o.out).parent, shown=Path(o.out))
    result = build_corpus(o.out, tuple(o.sources), o.max_docs_per_source, o.seed, only_split=o.only_split,
                          math_docs=o.math_docs)
    for domain, splits in sorted(result.counts.items()):
        print(f"{domain:16s} " + ", ".join(f"{n} {split}" for split, n in sorted(splits.items())))
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.path} (sha256 {result.sha256[:12]}), sources in {result.sidecar}")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, OptionParser]]:
    """The parser, and the subparsers that read --config files by command."""
    parser = argparse.ArgumentParser(prog="lossgap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (also accepted "
                        "after the command, or as LOSSGAP_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OptionParser)
    p = sub.add_parser("score", help="score a corpus with one model: per-token losses and a summary",
                       config_files=True)
    _add_config_groups(p, compare=False)
    p.set_defaults(func=cmd_score)

    c = sub.add_parser("compare", help="base vs instruct (or more models) on the same tokens, with a report",
                       config_files=True)
    _add_config_groups(c, compare=True)
    c.add_fields(c.add_argument_group("statistics"), CompareConfig)
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", help="the whole analysis offline on the shipped base/instruct pair and local text")
    d.add_fields(d, DemoConfig)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("report", help="rebuild results.json and the report of a comparison from its stored files")
    r.add_argument("dir", help="a folder written by `lossgap compare`")
    r.set_defaults(func=cmd_report)

    corpus = sub.add_parser("corpus", help="corpus tools").add_subparsers(dest="corpus_command", required=True)
    b = corpus.add_parser("build", help="build a Pile-format mini corpus from text already on this machine")
    b.add_fields(b, corpus_build_options())
    b.set_defaults(func=cmd_corpus_build)
    return parser, {"score": p, "compare": c}


def _config_file(argv: list[str]) -> str | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    return known.config


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LOSSGAP_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere: before or after the command
    args, subparsers = None, {}
    try:
        parser, subparsers = build_parser()
        config_file = _config_file(argv)
        if config_file and argv and argv[0] in subparsers:
            subparsers[argv[0]].apply_config_file(Path(config_file))  # the command line still wins
        args = parser.parse_args(argv)
        return args.func(args)
    except LossgapError as e:
        if debug:
            traceback.print_exc()
        if isinstance(e, UsageError) and argv and argv[0] in subparsers:
            subparsers[argv[0]].name_file_key(e, argv)
        print(f"lossgap: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("lossgap: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # not anticipated: an environment error said plainly, anything else a bug
        if debug:
            traceback.print_exc()
        print(f"lossgap: {unexpected_error(e, argv, _out_folder(args), debug)}", file=sys.stderr)
        return 1


ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOTDIR,
                      errno.EISDIR, errno.ENOENT, errno.ENAMETOOLONG, errno.EMFILE}


def unexpected_error(e: Exception, argv: list[str], out: Path | None, debug: bool) -> str:
    """The message for an exception lossgap did not anticipate. A file system error names the path; anything else
    is a bug: its traceback is saved (in --out, else the temp folder) for the report, not spilled on the terminal."""
    if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS and e.filename:
        return (f"error: {e.filename}: {e.strerror}\n  fix: check the path, its permissions and free space"
                f"{'' if debug else '; --debug shows where it happened'}")
    saved = _save_traceback(e, argv, out)
    where = f"the full traceback is saved in {saved}" if saved else "the traceback could not be saved"
    return (f"internal error: {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}\n"
            f"  this is a bug in lossgap, not a problem with your input; {where}\n"
            "  please report it with that file attached (it holds the command, the versions and the traceback)"
            f"{'' if debug else '; --debug shows the traceback here'}")


def _out_folder(args: argparse.Namespace | None) -> Path | None:
    """The command's output folder, where a bug's traceback is saved beside the run."""
    for dest in ("RunConfig.out", "DemoConfig.out", "dir"):
        value = getattr(args, dest, None)
        if value:
            return Path(value)
    return None


def _save_traceback(e: Exception, argv: list[str], out: Path | None) -> Path | None:
    import platform
    import tempfile

    from .formats.files import PRIVATE_MODE, write_text
    from .formats.paths import RunFiles
    from .version import __version__

    versions = ", ".join(f"{name} {getattr(sys.modules[name], '__version__', '?')}" for name in
                         ("torch", "transformers", "tokenizers", "pyarrow", "numpy") if name in sys.modules)
    text = (f"command: lossgap {' '.join(argv)}\nlossgap {__version__}, python {platform.python_version()}, "
            f"{versions}\n\n{''.join(traceback.format_exception(e))}")
    # readable by its owner only (it holds the command line and paths), written under a new temporary name and renamed:
    # never through a symbolic link, in --out or in the shared temp folder
    if out is not None and out.is_dir() and not out.is_symlink():
        try:
            return write_text(RunFiles(out).error_log, text, PRIVATE_MODE)
        except OSError:
            pass
    try:
        fd, name = tempfile.mkstemp(prefix="lossgap-error-", suffix=".log")  # a unique name, then the content
        os.close(fd)
        return write_text(Path(name), text, PRIVATE_MODE)
    except OSError:
        return None
