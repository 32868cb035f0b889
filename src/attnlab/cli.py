"""`attnlab` command line. Verbs arrive with their subsystems; each has --help with defaults."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Sequence

import yaml

from attnlab.config import CONFIG_SHAPE, ConfigError, ExperimentConfig
from attnlab.errors import AttnlabError, StopTimeReached
from attnlab.fields import from_dict, parse_overrides, problems_of, read_yaml, set_path
from attnlab.paths import check_output_file


def _check_file(path: str | None, values: dict[str, Any]) -> None:
    """Keys and types of a config file on their own, so their faults name the file, not --set."""
    problems = problems_of(ExperimentConfig, values)
    if problems:
        raise ConfigError("\n".join(f"{path}: {p}" for p in problems))


def section_config(path: str | None, overrides: Sequence[str], section: str) -> Any:
    """One section (`model`, `data`) of a YAML config file, or of a study file's `base:`, plus --set
    overrides, checked with the same dotted names as a whole config (`data.vocab_size`); bare
    names are allowed in --set."""
    document = read_yaml(path, CONFIG_SHAPE) if path else {}
    if "study" in document:  # `attnlab data ablations/x.yaml`: the study's base
        document = document.get("base") or {}
        if not isinstance(document, dict):
            raise ConfigError(f"{path}: base: expected a mapping of config sections, got {document!r:.60}")
    values: dict[str, Any] = {section: document.get(section) or {}}
    _check_file(path, values)
    changes = parse_overrides(overrides, ExperimentConfig, section=section)
    for key, value in changes.items():
        set_path(values, key, value)
    where = " + ".join(w for w in (path, "--set" if changes else "") if w) or "--set"
    return getattr(from_dict(ExperimentConfig, values, where), section)


def cmd_model(args: argparse.Namespace) -> int:
    """Build a model config and print it with its parameter count (no weights are allocated)."""
    import torch

    from attnlab.model import build_model, count_parameters
    from attnlab.paper import table3_rows

    if args.table3:
        print(f"{'row':5} {'ours (M)':>9} {'paper (M)':>9}  changes")
        for row in table3_rows():
            with torch.device("meta"):
                n = count_parameters(build_model(row.model_config(), args.vocab)) / 1e6
            print(f"{row.id:5} {n:9.2f} {row.params_millions:9.0f}  {row.model or ''} {row.train or ''}")
        return 0
    config = section_config(None, args.set, "model")
    with torch.device("meta"):
        n = count_parameters(build_model(config, args.vocab))
    print(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False).rstrip())
    print(f"# d_k={config.key_dim} d_v={config.value_dim} parameters={n:,} (vocabulary {args.vocab:,})")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """Download/check the corpus, train the vocabulary, print what was kept and dropped."""
    import json
    import time

    from attnlab.data.datamodule import prepare
    from attnlab.data.fetch import cache_dir
    from attnlab.paths import check_writable_folder

    config = section_config(args.config, args.set, "data")
    check_writable_folder(cache_dir(config.cache_dir), "data.cache_dir")
    start = time.perf_counter()
    summary = prepare(config).summary()
    summary["seconds"] = round(time.perf_counter() - start, 2)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{config.corpus} {config.src_lang}->{config.tgt_lang}: vocabulary {summary['vocab_size']} "
          f"({config.vocab_type}) at {summary['vocab_model']}, prepared in {summary['seconds']} s")
    print(f"training split, cleaned and encoded: {summary['train_prepared']}")
    print(f"{'role':8} {'split':22} {'kept':>7} {'dropped':24} {'src tok':>9} {'tgt tok':>9} {'tok/sent':>9}")
    for s in summary["splits"]:
        dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items()) or "-"
        print(f"{s['role']:8} {s['split']:22} {s['sentences']:7} {dropped:24} {s['src_tokens']:9} {s['tgt_tokens']:9} "
              f"{s['src_tokens_per_sentence']:4.1f}/{s['tgt_tokens_per_sentence']:<4.1f}")
    return 0


def load_experiment(path: str, overrides: Sequence[str]) -> ExperimentConfig:
    """An ExperimentConfig from a YAML file plus dotted --set overrides (train.max_steps=100).
    The file is checked on its own first, so a fault is blamed on the file or on --set."""
    values = read_yaml(path, CONFIG_SHAPE)
    _check_file(path, values)
    changes = parse_overrides(overrides, ExperimentConfig)
    for key, value in changes.items():
        set_path(values, key, value)
    return ExperimentConfig.from_dict(values, where=f"{path} + --set" if changes else path)


def cmd_train(args: argparse.Namespace) -> int:
    import json

    from attnlab.train.run import train

    config = load_experiment(args.config, args.set)
    if args.quiet:
        config = dataclasses.replace(config, logging=dataclasses.replace(config.logging, quiet=True))
    result = train(config, resume=not args.restart)
    if result:
        from attnlab.results import result_keys

        print(json.dumps({k: result.get(k) for k in result_keys("shown")}, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from attnlab.data.corpora import load_split
    from attnlab.data.encoded import EncodedSplit
    from attnlab.train.checkpoints import load_checkpoint
    from attnlab.train.evaluation import score, translate

    check_output_file(args.output, "--output")
    model, vocab, config = load_checkpoint(args.checkpoint)
    decode = dataclasses.replace(config.decode, **({"beam_size": args.beam} if args.beam else {}))
    data = dataclasses.replace(config.data, max_eval_sentences=None)
    split = EncodedSplit(load_split(data, args.split), vocab)
    hypotheses = translate(model, split, vocab, decode, data.max_tokens)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.writelines(h + "\n" for h in hypotheses)
    scores = score(hypotheses, split.tgt_text).as_dict()
    print(json.dumps({"split": args.split, "sentences": len(split), **scores}, indent=2))
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from attnlab.data.corpora import Parallel, normalise_space
    from attnlab.data.encoded import EncodedSplit
    from attnlab.train.checkpoints import load_checkpoint
    from attnlab.train.evaluation import translate

    model, vocab, config = load_checkpoint(args.checkpoint)
    decode = dataclasses.replace(config.decode, **({"beam_size": args.beam} if args.beam else {}))
    lines = [normalise_space(line) for line in sys.stdin]
    if lines:
        split = EncodedSplit(Parallel("stdin", lines, [""] * len(lines)), vocab)
        for hypothesis in translate(model, split, vocab, decode, config.data.max_tokens):
            print(hypothesis)
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from pathlib import Path

    from attnlab.train.checkpoints import average_checkpoints, step_checkpoints

    check_output_file(args.output, "-o")
    paths = list(args.checkpoints)
    if args.last:
        if len(paths) != 1 or not Path(paths[0]).is_dir():
            raise ConfigError("--last N takes one run folder or checkpoints folder")
        folder = Path(paths[0]) / "checkpoints" if (Path(paths[0]) / "checkpoints").is_dir() else Path(paths[0])
        paths = step_checkpoints(folder)[-args.last :]
        if len(paths) < args.last:
            raise ConfigError(f"{folder} holds {len(paths)} step checkpoints, fewer than --last {args.last}")
    if any(Path(p).resolve() == Path(args.output).resolve() for p in paths):
        raise ConfigError(f"-o {args.output} is one of the checkpoints to average; write the average to a new file")
    print(average_checkpoints(paths, args.output))
    return 0


def int_at_least(minimum: int):
    """argparse type for counts (--workers, --threads, --last, ...): checked before anything runs."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be {minimum} or more")
        return value

    return parse


positive_int = int_at_least(1)


SET_HELP = "override a field by dotted path, e.g. --set train.max_steps=100 (repeatable; values are YAML)"


def cmd_config(args: argparse.Namespace) -> int:
    """Every config field with its type, default and docstring (the YAML keys and --set paths)."""
    from attnlab.config import SECTIONS
    from attnlab.fields import field_docs
    from attnlab.sweep.spec import StudyFile

    known = {**SECTIONS, "study": StudyFile}
    if args.section and args.section not in known:
        raise ConfigError(f"config --fields {args.section!r}: not a section; valid: {', '.join(known)}")
    for name, cls in known.items():
        if args.section in (None, name):
            print(f"{name}:  ({cls.__name__}) {field_docs(cls).get('', '')}".rstrip())
            for field, (type_, default, doc) in field_docs_table(cls).items():
                print(f"  {field:24} {type_:32} {default:14} {doc}".rstrip())
    return 0


def field_docs_table(cls: type) -> dict[str, tuple[str, str, str]]:
    """field -> (type, default, docstring) as printed by `attnlab config --fields`."""
    from attnlab.fields import field_docs, field_types

    hints, docs = field_types(cls), field_docs(cls)
    rows = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default) if not dataclasses.is_dataclass(f.default) else "(section)"
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        type_ = str(hints[f.name]).replace("typing.", "").replace("<class '", "").replace("'>", "")
        rows[f.name] = (type_, default, " ".join(docs.get(f.name, "").split()))
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnlab", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    model = verbs.add_parser("model", help="show a model config and its parameter count",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a model field: --set model.n_heads=16 (or n_heads=16; repeatable)")
    model.add_argument("--vocab", type=positive_int, default=37000, help="shared vocabulary size")
    model.add_argument("--table3", action="store_true", help="every row of the paper's Table 3")
    model.set_defaults(run=cmd_model)

    data = verbs.add_parser("data", help="prepare a corpus: fetch, check, train the vocabulary, summarise",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data.add_argument("config", nargs="?", help="YAML file with a 'data:' section (DataConfig fields), or a study "
                      "file (its base's data)")
    data.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a data field: --set data.vocab_size=8000 (or vocab_size=8000; repeatable)")
    data.add_argument("--json", action="store_true", help="print the summary as JSON")
    data.set_defaults(run=cmd_data)

    fmt = argparse.ArgumentDefaultsHelpFormatter
    train = verbs.add_parser("train", help="train, evaluate and log one run", formatter_class=fmt)
    train.add_argument("config", help="YAML with name, output_dir and model/data/train/decode/logging sections")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    train.add_argument("--restart", action="store_true",
                       help="start over; an existing run folder is kept as <name>.superseded-N")
    train.add_argument("--quiet", action="store_true", help="no progress bar; warnings and the result only")
    train.set_defaults(run=cmd_train)

    evaluate = verbs.add_parser("evaluate", help="score a checkpoint on a split (sacreBLEU BLEU, chrF)",
                                formatter_class=fmt)
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--split", required=True, help='a split of the run\'s corpus, or "corpus/split"')
    evaluate.add_argument("--beam", type=positive_int, help="beam size (default: the run's decode.beam_size)")
    evaluate.add_argument("--output", help="write the hypotheses to this file")
    evaluate.set_defaults(run=cmd_evaluate)

    translate = verbs.add_parser("translate", help="translate stdin to stdout, one sentence per line",
                                 formatter_class=fmt)
    translate.add_argument("checkpoint")
    translate.add_argument("--beam", type=positive_int, help="beam size (default: the run's decode.beam_size)")
    translate.set_defaults(run=cmd_translate)

    average = verbs.add_parser("average", help="average checkpoints (the paper's Table 2 recipe)", formatter_class=fmt)
    average.add_argument("checkpoints", nargs="+", help="checkpoint files, or one run folder with --last")
    average.add_argument("--last", type=positive_int, help="average the last N step checkpoints of a run folder")
    average.add_argument("-o", "--output", required=True)
    average.set_defaults(run=cmd_average)

    config = verbs.add_parser("config", help="list config fields: type, default, what each does", formatter_class=fmt)
    config.add_argument("--fields", nargs="?", const=None, default=None, metavar="SECTION", dest="section",
                        help="only this section: model, data, train, decode, logging or study")
    config.set_defaults(run=cmd_config)

    from attnlab.sweep.commands import add_parser as add_sweep_parser

    add_sweep_parser(verbs)
    from attnlab.report.command import add_parser as add_report_parser

    add_report_parser(verbs)
    return parser


# Verbs that train or decode for long: worth a faster, leaner malloc (attnlab/allocator.py).
ALLOCATOR_VERBS = ("train", "sweep", "evaluate")


def storage_to_env(argv: list[str]) -> list[str]:
    """The command line without `--storage URL`, whose URL moves to $ATTNLAB_STORAGE: W&B records
    a process's command line in every run, and re-executed or spawned processes would show it, so
    a password given on the command line would end up in files. Every verb also reads the variable."""
    from attnlab.sweep.commands import STORAGE_ENV

    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--storage" and i + 1 < len(argv):
            os.environ[STORAGE_ENV] = argv[i + 1]
            i += 2
            continue
        if argv[i].startswith("--storage="):
            os.environ[STORAGE_ENV] = argv[i].partition("=")[2]
        else:
            out.append(argv[i])
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # a real command line: keep secrets out of sys.argv before anything records it
        sys.argv[1:] = storage_to_env(sys.argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if argv is None and args.verb in ALLOCATOR_VERBS:  # a real command line, not a call from Python
            from attnlab.allocator import reexec_with_allocator

            reexec_with_allocator(sys.argv[1:])
        return args.run(args)
    except AttnlabError as error:
        print(f"attnlab: error: {error}", file=sys.stderr)
        return 2
    except StopTimeReached as error:  # not an error: the run waits, checkpointed, for its next slice
        print(f"attnlab: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
