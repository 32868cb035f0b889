"""`attnlab` command line. Verbs arrive with their subsystems; each has --help with defaults."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Sequence

import yaml

from attnlab.config import ConfigError, ModelConfig
from attnlab.data.fetch import DataError


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs; values are read as YAML scalars (4 -> int, 0.1 -> float, pre -> str)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value, for example --set n_heads=4")
        values[key.strip()] = yaml.safe_load(raw)
    return values


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
    config = ModelConfig.from_dict(parse_overrides(args.set), where="--set")
    with torch.device("meta"):
        n = count_parameters(build_model(config, args.vocab))
    print(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False).rstrip())
    print(f"# d_k={config.key_dim} d_v={config.value_dim} parameters={n:,} (vocabulary {args.vocab:,})")
    return 0


def read_yaml(path: str) -> dict[str, Any]:
    """A YAML mapping from a file; a missing or malformed file is a ConfigError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping with model/data/train/decode/logging sections")
    return document


def load_yaml_section(path: str | None, section: str) -> dict[str, Any]:
    """The `section:` mapping of a YAML config file (empty without a file)."""
    if path is None:
        return {}
    document = read_yaml(path)
    if not isinstance(document.get(section, {}), dict):
        raise ConfigError(f"{path}: {section!r} must be a mapping")
    return dict(document.get(section) or {})


def cmd_data(args: argparse.Namespace) -> int:
    """Download/check the corpus, train the vocabulary, print what was kept and dropped."""
    import json
    import time

    from attnlab.config import DataConfig
    from attnlab.data.datamodule import prepare

    values = load_yaml_section(args.config, "data")
    values.update(parse_overrides(args.set))
    config = DataConfig.from_dict(values, where=f"{args.config or '--set'} (data)")
    start = time.perf_counter()
    summary = prepare(config).summary()
    summary["seconds"] = round(time.perf_counter() - start, 2)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{config.corpus} {config.src_lang}->{config.tgt_lang}: vocabulary {summary['vocab_size']} "
          f"({config.vocab_type}) at {summary['vocab_model']}, prepared in {summary['seconds']} s")
    print(f"{'role':8} {'split':22} {'kept':>7} {'dropped':24} {'src tok':>9} {'tgt tok':>9} {'tok/sent':>9}")
    for s in summary["splits"]:
        dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items()) or "-"
        print(f"{s['role']:8} {s['split']:22} {s['sentences']:7} {dropped:24} {s['src_tokens']:9} {s['tgt_tokens']:9} "
              f"{s['src_tokens_per_sentence']:4.1f}/{s['tgt_tokens_per_sentence']:<4.1f}")
    return 0


def load_experiment(path: str, overrides: Sequence[str]):
    """An ExperimentConfig from a YAML file plus dotted --set overrides (train.max_steps=100)."""
    from attnlab.config import ExperimentConfig, set_path

    values = read_yaml(path)
    for key, value in parse_overrides(overrides).items():
        set_path(values, key, value)
    return ExperimentConfig.from_dict(values, where=path)


def cmd_train(args: argparse.Namespace) -> int:
    import json

    from attnlab.train.run import train

    config = load_experiment(args.config, args.set)
    if args.quiet:
        config = dataclasses.replace(config, logging=dataclasses.replace(config.logging, quiet=True))
    result = train(config, resume=not args.restart)
    if result:
        keys = ("name", "bleu", "chrf", "val_ppl", "params", "train_steps", "train_tokens_per_s", "wall_s", "run_dir")
        print(json.dumps({k: result.get(k) for k in keys}, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from attnlab.data.corpora import load_split
    from attnlab.data.datamodule import EncodedSplit
    from attnlab.train.checkpoints import load_checkpoint
    from attnlab.train.evaluation import score, translate

    model, vocab, config = load_checkpoint(args.checkpoint)
    decode = dataclasses.replace(config.decode, **({"beam_size": args.beam} if args.beam else {}))
    data = dataclasses.replace(config.data, max_eval_sentences=None)
    split = EncodedSplit(load_split(data, args.split), vocab)
    hypotheses = translate(model, split, vocab, decode, data.max_tokens)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.writelines(h + "\n" for h in hypotheses)
    print(json.dumps({"split": args.split, "sentences": len(split), **score(hypotheses, split.tgt_text).as_dict()}, indent=2))
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from attnlab.data.corpora import Parallel, normalise_space
    from attnlab.data.datamodule import EncodedSplit
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

    paths = list(args.checkpoints)
    if args.last:
        if len(paths) != 1 or not Path(paths[0]).is_dir():
            raise ConfigError("--last N takes one run folder or checkpoints folder")
        folder = Path(paths[0]) / "checkpoints" if (Path(paths[0]) / "checkpoints").is_dir() else Path(paths[0])
        paths = step_checkpoints(folder)[-args.last :]
        if len(paths) < args.last:
            raise ConfigError(f"{folder} holds {len(paths)} step checkpoints, fewer than --last {args.last}")
    print(average_checkpoints(paths, args.output))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnlab", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    model = verbs.add_parser("model", help="show a model config and its parameter count",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a ModelConfig field (repeatable)")
    model.add_argument("--vocab", type=int, default=37000, help="shared vocabulary size")
    model.add_argument("--table3", action="store_true", help="every row of the paper's Table 3")
    model.set_defaults(run=cmd_model)

    data = verbs.add_parser("data", help="prepare a corpus: fetch, check, train the vocabulary, summarise",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data.add_argument("config", nargs="?", help="YAML file with a 'data:' section (DataConfig fields)")
    data.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a DataConfig field, e.g. --set corpus=multi30k --set vocab_size=8000")
    data.add_argument("--json", action="store_true", help="print the summary as JSON")
    data.set_defaults(run=cmd_data)

    fmt = argparse.ArgumentDefaultsHelpFormatter
    train = verbs.add_parser("train", help="train, evaluate and log one run", formatter_class=fmt)
    train.add_argument("config", help="YAML with name, output_dir and model/data/train/decode/logging sections")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field by dotted path, e.g. --set train.max_steps=100 (repeatable)")
    train.add_argument("--restart", action="store_true", help="ignore checkpoints in the run folder")
    train.add_argument("--quiet", action="store_true", help="no progress bar; warnings and the result only")
    train.set_defaults(run=cmd_train)

    evaluate = verbs.add_parser("evaluate", help="score a checkpoint on a split (sacreBLEU BLEU, chrF)", formatter_class=fmt)
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--split", required=True, help='a split of the run\'s corpus, or "corpus/split"')
    evaluate.add_argument("--beam", type=int, help="beam size (default: the run's decode.beam_size)")
    evaluate.add_argument("--output", help="write the hypotheses to this file")
    evaluate.set_defaults(run=cmd_evaluate)

    translate = verbs.add_parser("translate", help="translate stdin to stdout, one sentence per line", formatter_class=fmt)
    translate.add_argument("checkpoint")
    translate.add_argument("--beam", type=int, help="beam size (default: the run's decode.beam_size)")
    translate.set_defaults(run=cmd_translate)

    average = verbs.add_parser("average", help="average checkpoints (the paper's Table 2 recipe)", formatter_class=fmt)
    average.add_argument("checkpoints", nargs="+", help="checkpoint files, or one run folder with --last")
    average.add_argument("--last", type=int, help="average the last N step checkpoints of a run folder")
    average.add_argument("-o", "--output", required=True)
    average.set_defaults(run=cmd_average)

    from attnlab.sweep.commands import add_parser as add_sweep_parser

    add_sweep_parser(verbs)
    from attnlab.report.command import add_parser as add_report_parser

    add_report_parser(verbs)
    return parser


# Verbs that train or decode for long: worth a faster, leaner malloc (attnlab/allocator.py).
ALLOCATOR_VERBS = ("train", "sweep", "evaluate")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if argv is None and args.verb in ALLOCATOR_VERBS:  # a real command line, not a call from Python
            from attnlab.allocator import reexec_with_allocator

            reexec_with_allocator(sys.argv[1:])
        return args.run(args)
    except (ConfigError, DataError, FileNotFoundError) as error:
        print(f"attnlab: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
