"""Parallel text for one split and direction: fetched, validated and (for training) cleaned.

Files are read as streams of pairs, so a training corpus of millions of pairs can be cleaned
into the cache (datamodule, encoded) without ever sitting in memory whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

from attnlab.config import DataConfig
from attnlab.data.fetch import DataError, cache_dir, fetch, fetch_component, mirror_location
from attnlab.data.registry import CORPORA

# Multi30k train.de lines 16,510 and 16,664 hold this instead of a translation.
PLACEHOLDERS = frozenset({"@@"})


@dataclass
class Parallel:
    """Aligned source and target sentences, and how many pairs were dropped for which reason."""

    name: str
    src: list[str]
    tgt: list[str]
    dropped: Counter = field(default_factory=Counter)
    files: tuple[str, ...] = ()
    """The file(s) read: (source, target) or (tsv,); none for text from elsewhere (stdin)."""
    lines: list[int] | None = None
    """1-based file line of each pair where cleaning dropped some; None: pair i is line i + 1."""

    def __len__(self) -> int:
        return len(self.src)

    @property
    def where(self) -> str:
        return ",".join(self.files) or self.name


Part = tuple[Path, ...]
"""The file(s) of one part of a split: (source, target), or (tsv,) of source<TAB>target lines."""


@dataclass(frozen=True)
class Sources:
    """Where a split's pairs come from: its parts, read one after the other."""

    label: str
    """How messages name the split: "custom train", "wmt14 newstest2014"."""
    parts: tuple[Part, ...]

    @property
    def files(self) -> tuple[str, ...]:
        """(source, target) or (tsv,); a split of several parts names "a.en+b.en" and "a.de+b.de",
        and line numbers in messages count through the concatenation."""
        return tuple("+".join(str(part[side]) for part in self.parts) for side in range(len(self.parts[0])))

    @property
    def where(self) -> str:
        return ",".join(self.files)

    def pairs(self) -> Iterator[tuple[str, str]]:
        """Raw (uncleaned) source and target lines, streamed."""
        for part in self.parts:
            yield from (_pair_lines(*part) if len(part) == 2 else _tsv_lines(part[0]))


def _open(path: Path):
    if not path.is_file():
        raise DataError(f"missing file {path}")
    try:
        return open(path, "rb")
    except OSError as error:  # no permission...: the user's file, not our bug
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None


def _decode(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: line {number} is not valid UTF-8 ({error.reason} at byte {error.start})") from None


def _pair_lines(src_path: Path, tgt_path: Path) -> Iterator[tuple[str, str]]:
    """Line i of both files; files of different lengths are an error naming both counts."""
    with _open(src_path) as src, _open(tgt_path) as tgt:
        number = 0
        for number, (s, t) in enumerate(zip_longest(src, tgt), start=1):
            if s is None or t is None:
                rest = 1 + sum(1 for _ in (src if t is None else tgt))
                counts = (number - 1 + rest, number - 1) if t is None else (number - 1, number - 1 + rest)
                raise DataError(f"{src_path} has {counts[0]} lines but {tgt_path} has {counts[1]}; "
                                "parallel files must align line by line")
            yield _decode(s, src_path, number), _decode(t, tgt_path, number)


def _tsv_lines(path: Path) -> Iterator[tuple[str, str]]:
    with _open(path) as f:
        for number, raw in enumerate(f, start=1):
            columns = _decode(raw, path, number).split("\t")
            if len(columns) != 2:
                raise DataError(f"{path}: line {number} has {len(columns)} tab-separated columns, "
                                "expected 2 (source, target)")
            yield columns[0], columns[1]


def _split_location(config: DataConfig, split: str) -> tuple[str, str]:
    """(corpus, split) for a split name that may carry its own corpus ("wmt14/newstest2014")."""
    corpus, _, name = split.rpartition("/")
    return (corpus or config.corpus), name


def _custom_paths(name: str, spec: str) -> tuple[Path, ...]:
    """(source, target) of "a.en,a.de", or (tsv,) of "pairs.tsv"."""
    parts = tuple(p.strip() for p in spec.split(",", 1))
    if not all(parts):
        raise DataError(f"custom_files.{name}={spec!r} names no file on one side; expected "
                        "'source_file,target_file' or one tab-separated file")
    return tuple(Path(p).expanduser() for p in parts)


def split_sources(config: DataConfig, split: str) -> Sources:
    """The files of a split, fetched into the cache (and checked) where they come from a corpus."""
    corpus_name, name = _split_location(config, split)
    label = f"{corpus_name} {name}"
    if corpus_name == "custom":
        files = config.custom_files or {}
        if name not in files:
            raise DataError(f"custom corpus has no split {name!r}; custom_files names {', '.join(files) or 'none'}")
        return Sources(label, (_custom_paths(name, files[name]),))
    if corpus_name not in CORPORA:
        raise DataError(f"unknown corpus {corpus_name!r}; valid: {', '.join(CORPORA)}, custom")
    corpus = CORPORA[corpus_name]
    if name not in corpus.splits:
        raise DataError(f"corpus {corpus_name!r} has no split {name!r}; valid: {', '.join(corpus.splits)}")
    langs = (config.src_lang, config.tgt_lang)
    for lang in langs:
        if lang not in corpus.langs:
            raise DataError(f"corpus {corpus_name!r} has no language {lang!r}; valid: {', '.join(corpus.langs)}")
    cache, mirror = cache_dir(config.cache_dir), mirror_location(config.mirror)
    if corpus.components and name == corpus.train_split:  # archives, one part each, in order
        chosen = [corpus.components[c] for c in config.train_components or tuple(corpus.components)]
        return Sources(label, tuple(tuple(fetch_component(corpus.name, c, lang, cache, mirror) for lang in langs)
                                    for c in chosen))
    return Sources(label, (tuple(fetch(corpus.file(name, lang), cache, mirror) for lang in langs),))


def normalise_space(text: str) -> str:
    """Strip the ends and make every run of whitespace (tabs included) one space, as sentencepiece
    would; BLEU's tokenizer and chrF ignore the difference, and decoding is then exact."""
    return " ".join(text.split())


@dataclass
class Cleaning:
    """What cleaning saw: pairs read, pairs dropped by reason, whether each side had any text."""

    dropped: Counter = field(default_factory=Counter)
    read: int = 0
    text: list[bool] = field(default_factory=lambda: [False, False])


def clean_pairs(pairs: Iterable[tuple[str, str]], config: DataConfig, seen: Cleaning) -> Iterator[tuple[int, str, str]]:
    """(line, source, target) of each pair that passes the cleaning rules, whitespace normalised;
    `seen` counts every drop by reason."""
    for number, (s, t) in enumerate(pairs, start=seen.read + 1):
        seen.read = number
        s, t = normalise_space(s), normalise_space(t)
        seen.text[0] = seen.text[0] or bool(s)
        seen.text[1] = seen.text[1] or bool(t)
        n_s, n_t = s.count(" ") + 1, t.count(" ") + 1  # words, spaces being single now
        if not s or not t:
            reason = "empty"
        elif s in PLACEHOLDERS or t in PLACEHOLDERS:
            reason = "placeholder"
        elif max(n_s, n_t) > config.max_words:
            reason = "too_long"
        elif max(n_s, n_t) > config.max_length_ratio * min(n_s, n_t):
            reason = "length_ratio"
        else:
            yield number, s, t
            continue
        seen.dropped[reason] += 1


def clean(pairs: Iterable[tuple[str, str]], config: DataConfig, name: str) -> tuple[Parallel, Cleaning]:
    """Training pairs minus known dirt, in memory, and what cleaning saw."""
    seen = Cleaning()
    kept = Parallel(name, [], [], lines=[])
    for number, s, t in clean_pairs(pairs, config, seen):
        kept.src.append(s)
        kept.tgt.append(t)
        kept.lines.append(number)
    kept.dropped = seen.dropped
    return kept, seen


def load_split(config: DataConfig, split: str, train: bool = False) -> Parallel:
    """One split in the configured direction, in memory. Training splits are cleaned; evaluation
    splits are kept whole (a test set is scored on every line), whitespace normalised. A split
    left with nothing to train on or to score is a DataError naming its file(s). (`prepare`
    streams a training split into the cache instead: encoded.prepare_train.)"""
    sources = split_sources(config, split)
    if train:
        kept, seen = clean(sources.pairs(), config, split)
        check_trainable(sources, seen, len(kept))
        limit = config.max_train_sentences
    else:
        pairs = [(normalise_space(s), normalise_space(t)) for s, t in sources.pairs()]
        kept = Parallel(split, [s for s, _ in pairs], [t for _, t in pairs])
        _check_scorable(sources, kept.src, kept.tgt)
        limit = config.max_eval_sentences
    kept.files = sources.files
    if limit is not None and len(kept) > limit:
        kept.dropped["over_limit"] += len(kept) - limit
        kept.src, kept.tgt = kept.src[:limit], kept.tgt[:limit]
        kept.lines = kept.lines[:limit] if kept.lines is not None else None
    return kept


# Settings that would have kept pairs dropped for these reasons.
_LOOSER = {"too_long": "data.max_words", "length_ratio": "data.max_length_ratio"}


def _sides(files: tuple[str, ...]) -> tuple[str, str]:
    """How to name the source and the target side in a message."""
    if len(files) == 2:
        return files[0], files[1]
    return f"{files[0]} (first column)", f"{files[0]} (second column)"


def check_trainable(sources: Sources, seen: Cleaning, kept: int) -> None:
    """Cleaning must leave something; else say what it dropped, and why, in which files."""
    if kept:
        return
    if not seen.read:
        raise DataError(f"{sources.label}: {sources.where} holds no lines; nothing to train on")
    reasons = ", ".join(f"{reason}: {n}" for reason, n in seen.dropped.most_common())
    hints = [f"every line of {side} is empty" for side, text in zip(_sides(sources.files), seen.text) if not text]
    hints += [f"raise {_LOOSER[r]}" for r in seen.dropped if r in _LOOSER]
    raise DataError(f"{sources.label}: all {seen.read} pairs were dropped by cleaning ({reasons}) in "
                    f"{sources.where}; nothing left to train on" + "".join(f"; {h}" for h in hints))


def _check_scorable(sources: Sources, src: list[str], tgt: list[str]) -> None:
    """An evaluation split needs sources to translate and references to score against."""
    if not src:
        raise DataError(f"{sources.label}: {sources.where} holds no lines; an evaluation split needs sentence pairs")
    empty = [side for side, lines in zip(_sides(sources.files), (src, tgt)) if not any(lines)]
    if empty:
        raise DataError(f"{sources.label}: every line of {' and of '.join(empty)} is empty; an evaluation split "
                        "needs text on both sides")
