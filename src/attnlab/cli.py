"""`attnlab` command line. Verbs arrive with their subsystems; each has --help with defaults."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Sequence

import yaml

from attnlab.config import ConfigError, ModelConfig


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"attnlab: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
