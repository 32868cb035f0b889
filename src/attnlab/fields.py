"""How text becomes typed config fields: one type check, one unknown-key check (with the
closest valid key), YAML and `--set` parsing, dotted paths, field docstrings.

Every config dataclass (config.py, the study file in sweep/spec.py, a tuning `Range`) is read
through `from_dict`, so a problem reads the same wherever it is: `row wide:
model.d_model='512' must be an integer`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

import yaml

from attnlab.errors import ConfigError


def describe(hint: Any) -> str:
    """A field's type in a user's words: "an integer", "one of 'post', 'pre'", "an integer or null"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (Union, types.UnionType):
        named = [describe(a) for a in args if a is not type(None)]
        return " or ".join(named) + (", or null" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return "a list" if args[0] is Any else f"a list of values each {describe(args[0])}"
        return f"a list of {len(args)} values, {', '.join(describe(a) for a in args)}"
    if origin is dict:
        return "a mapping" if args[1] is Any else f"a mapping with values each {describe(args[1])}"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null",
          Any: "any value"}


def matches(value: Any, hint: Any) -> bool:
    """Whether a value read from YAML or --set has a field's type (bool is not a number here)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
    if origin is dict:
        return isinstance(value, Mapping) and all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (Mapping, hint))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body ("" -> the class docstring);
    what `attnlab config --fields` prints."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    docs = {"": inspect.getdoc(cls) or ""}
    for node, after in zip(tree.body, tree.body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = inspect.cleandoc(str(after.value.value))
    return docs


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_types(obj: Any) -> None:
    """Reject a value of the wrong type or outside a `Literal[...]`'s choices (dataclasses check
    neither) before __post_init__ compares it with anything."""
    for name, hint in field_types(type(obj)).items():
        value = getattr(obj, name)
        if not matches(value, hint):
            raise ConfigError(f"{type(obj).__name__}.{name}={value!r} must be {describe(hint)}")


def _unknown_key(key: Any, names: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f"; did you mean {prefix + close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
    return f"unknown key {prefix + str(key)!r}{hint}"


def problems_of(cls: type, values: Any, prefix: str = "") -> list[str]:
    """Unknown keys and values of the wrong type in a mapping meant for dataclass `cls`, each
    named by its dotted path; nested config sections are checked the same way."""
    if values is None:
        return []
    if not isinstance(values, Mapping):
        return [f"{prefix.rstrip('.') or cls.__name__} must be a mapping of {cls.__name__} fields, got {values!r}"]
    types_ = field_types(cls)
    problems = []
    for key, value in values.items():
        if key not in types_:
            problems.append(_unknown_key(key, list(types_), prefix))
        elif dataclasses.is_dataclass(types_[key]) and not isinstance(value, types_[key]):
            problems += problems_of(types_[key], value, f"{prefix}{key}.")
        elif not matches(value, types_[key]):
            problems.append(f"{prefix}{key}={value!r} must be {describe(types_[key])}")
    return problems


def from_dict(cls: type, values: Mapping[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a mapping read from YAML or --set. Every unknown key (with the
    closest valid one) and every value of the wrong type is reported at once, each line starting
    with `where`; then __post_init__ checks how the fields go together."""
    problems = problems_of(cls, values)
    if problems:
        raise ConfigError("\n".join(f"{where}: {p}" for p in problems))
    types_ = field_types(cls)
    values = {k: (from_dict(types_[k], v or {}, where) if dataclasses.is_dataclass(types_[k])
                  and not isinstance(v, types_[k]) else v) for k, v in values.items()}
    try:
        return cls(**values)
    except ConfigError as error:
        if str(error).startswith(f"{where}:"):
            raise
        raise ConfigError(f"{where}: {error}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain dict of a config (for YAML, W&B and result files)."""
    return dataclasses.asdict(obj)


def set_path(values: dict[str, Any], dotted: str, value: Any, where: str = "--set") -> None:
    """values["train"]["max_steps"] = value for dotted="train.max_steps"."""
    *parents, leaf = dotted.split(".")
    node = values
    for key in parents:
        if node.get(key) is None:  # absent, or an empty section in YAML (`train:`)
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {dotted!r} goes through a non-mapping value")
    node[leaf] = value


def flatten(changes: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"n_heads": 4}} -> {"model.n_heads": 4}: the dotted form of --set and study axes."""
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 4) -> str:
    """The fields that differ between two flat configs: "model.n_heads 1 -> 2, ... and 3 more"."""
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k, "(unset)") != new.get(k, "(unset)")]
    shown = [f"{k} {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def unflatten(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """{"model.n_heads": 4} -> {"model": {"n_heads": 4}}."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        set_path(out, key, value)
    return out


# --- YAML and --set: the two ways text becomes config values -------------------------------------

class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string; researchers write learning rates that way."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str, what: str) -> dict[str, Any]:
    """A YAML mapping from a file; a missing, empty or malformed file is a ConfigError naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a YAML file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} cannot be read: {error}") from None
    try:
        document = parse_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if document is None:
        raise ConfigError(f"{path}: the file is empty; {what}")
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(document).__name__} {document!r:.60}; {what}")
    return document


def parse_overrides(pairs: Sequence[str], root: type, section: str = "") -> dict[str, Any]:
    """`--set key=value` pairs as {dotted key: value}, each checked against the config fields it
    names (values read as YAML scalars: 4 -> int, 0.1 -> float, pre -> str, [a, b] -> list).
    Keys are dotted paths from `root` (`model.n_heads`); verbs about one section (`attnlab model`,
    `attnlab data`) also take the bare field name (`n_heads`). Problems name --set, not a file."""
    out: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--set {pair!r}: expected key=value, for example --set model.n_heads=4")
            continue
        try:
            value = parse_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        head = key.split(".", 1)[0]
        if section and head != section and head in field_types(root):
            problems.append(f"--set {pair}: this command takes only {section}.* fields")
            continue
        if section and head != section:
            key = f"{section}.{key}"
        problems += [f"--set {pair}: {p}" for p in problems_of(root, unflatten({key: value}))]
        out[key] = value
    if problems:
        raise ConfigError("\n".join(problems))
    return out

