"""Parallel text for one split and direction: fetched, validated and (for training) cleaned."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
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


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file without their newline; invalid UTF-8 is an error naming file and line."""
    lines = []
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    lines.append(raw.decode("utf-8").rstrip("\r\n"))
                except UnicodeDecodeError as error:
                    raise DataError(f"{path}: line {number} is not valid UTF-8 "
                                    f"({error.reason} at byte {error.start})") from None
    except OSError as error:  # a folder, no permission...: the user's file, not our bug
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    return lines


def read_pair(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    for path in (src_path, tgt_path):
        if not Path(path).is_file():
            raise DataError(f"missing file {path}")
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
                        "parallel files must align line by line")
    return src, tgt


def read_tsv(path: Path) -> tuple[list[str], list[str]]:
    if not Path(path).is_file():
        raise DataError(f"missing file {path}")
    src, tgt = [], []
    for number, line in enumerate(read_lines(path), start=1):
        columns = line.split("\t")
        if len(columns) != 2:
            raise DataError(f"{path}: line {number} has {len(columns)} tab-separated columns, "
                            "expected 2 (source, target)")
        src.append(columns[0])
        tgt.append(columns[1])
    return src, tgt


def _split_location(config: DataConfig, split: str) -> tuple[str, str]:
    """(corpus, split) for a split name that may carry its own corpus ("wmt14/newstest2014")."""
    corpus, _, name = split.rpartition("/")
    return (corpus or config.corpus), name


def read_split(config: DataConfig, split: str) -> tuple[list[str], list[str]]:
    """Raw (uncleaned) source and target lines of a split, in the configured direction."""
    src, tgt, _ = _read_split(config, split)
    return src, tgt


def _custom_paths(name: str, spec: str) -> tuple[Path, ...]:
    """(source, target) of "a.en,a.de", or (tsv,) of "pairs.tsv"."""
    parts = tuple(p.strip() for p in spec.split(",", 1))
    if not all(parts):
        raise DataError(f"custom_files.{name}={spec!r} names no file on one side; expected "
                        "'source_file,target_file' or one tab-separated file")
    return tuple(Path(p).expanduser() for p in parts)


def _read_split(config: DataConfig, split: str) -> tuple[list[str], list[str], tuple[str, ...]]:
    """Raw source and target lines of a split, and the file(s) they came from."""
    corpus_name, name = _split_location(config, split)
    if corpus_name == "custom":
        files = config.custom_files or {}
        if name not in files:
            raise DataError(f"custom corpus has no split {name!r}; custom_files names {', '.join(files) or 'none'}")
        paths = _custom_paths(name, files[name])
        src, tgt = read_pair(*paths) if len(paths) == 2 else read_tsv(paths[0])
        return src, tgt, tuple(map(str, paths))
    if corpus_name not in CORPORA:
        raise DataError(f"unknown corpus {corpus_name!r}; valid: {', '.join(CORPORA)}, custom")
    corpus = CORPORA[corpus_name]
    if name not in corpus.splits:
        raise DataError(f"corpus {corpus_name!r} has no split {name!r}; valid: {', '.join(corpus.splits)}")
    for lang in (config.src_lang, config.tgt_lang):
        if lang not in corpus.langs:
            raise DataError(f"corpus {corpus_name!r} has no language {lang!r}; valid: {', '.join(corpus.langs)}")
    cache, mirror = cache_dir(config.cache_dir), mirror_location(config.mirror)
    if corpus.components and name == corpus.train_split:
        return _read_components(config, corpus, cache, mirror)
    src_path = fetch(corpus.file(name, config.src_lang), cache, mirror)
    tgt_path = fetch(corpus.file(name, config.tgt_lang), cache, mirror)
    return *read_pair(src_path, tgt_path), (str(src_path), str(tgt_path))


def _read_components(config: DataConfig, corpus, cache: Path, mirror: str | None
                     ) -> tuple[list[str], list[str], tuple[str, ...]]:
    """A training split made of archives: the chosen components' pairs, one after the other.
    Its files are named "a.en+b.en" (source) and "a.de+b.de" (target): line numbers in
    messages count through the concatenation."""
    src, tgt, src_files, tgt_files = [], [], [], []
    for name in config.train_components or tuple(corpus.components):
        component = corpus.components[name]
        paths = [fetch_component(corpus.name, component, lang, cache, mirror)
                 for lang in (config.src_lang, config.tgt_lang)]
        s, t = read_pair(*paths)
        src += s
        tgt += t
        src_files.append(str(paths[0]))
        tgt_files.append(str(paths[1]))
    return src, tgt, ("+".join(src_files), "+".join(tgt_files))


def normalise_space(text: str) -> str:
    """Strip the ends and make every run of whitespace (tabs included) one space, as sentencepiece
    would; BLEU's tokenizer and chrF ignore the difference, and decoding is then exact."""
    return " ".join(text.split())


def clean(src: list[str], tgt: list[str], config: DataConfig, name: str) -> Parallel:
    """Training pairs minus known dirt, each drop counted by reason."""
    kept = Parallel(name, [], [], lines=[])
    for number, (s, t) in enumerate(zip(src, tgt), start=1):
        s, t = normalise_space(s), normalise_space(t)
        n_s, n_t = len(s.split()), len(t.split())
        if not s or not t:
            reason = "empty"
        elif s in PLACEHOLDERS or t in PLACEHOLDERS:
            reason = "placeholder"
        elif max(n_s, n_t) > config.max_words:
            reason = "too_long"
        elif max(n_s, n_t) > config.max_length_ratio * min(n_s, n_t):
            reason = "length_ratio"
        else:
            kept.src.append(s)
            kept.tgt.append(t)
            kept.lines.append(number)
            continue
        kept.dropped[reason] += 1
    return kept


def load_split(config: DataConfig, split: str, train: bool = False) -> Parallel:
    """One split in the configured direction. Training splits are cleaned; evaluation splits
    are kept whole (a test set is scored on every line), whitespace normalised. A split left
    with nothing to train on or to score is a DataError naming its file(s)."""
    src, tgt, files = _read_split(config, split)
    label = " ".join(_split_location(config, split))  # "custom train", "wmt14 newstest2014"
    if train:
        kept = clean(src, tgt, config, split)
        _check_trainable(label, src, tgt, files, kept)
        limit = config.max_train_sentences
    else:
        kept = Parallel(split, [normalise_space(s) for s in src], [normalise_space(t) for t in tgt])
        _check_scorable(label, kept.src, kept.tgt, files)
        limit = config.max_eval_sentences
    kept.files = files
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


def _empty_sides(src: list[str], tgt: list[str], files: tuple[str, ...]) -> list[str]:
    """The sides (named by file) on which every line is blank."""
    return [side for side, lines in zip(_sides(files), (src, tgt)) if not any(line.strip() for line in lines)]


def _check_trainable(label: str, src: list[str], tgt: list[str], files: tuple[str, ...], kept: Parallel) -> None:
    """Cleaning must leave something; else say what it dropped, and why, in which files."""
    if len(kept):
        return
    where = ",".join(files)
    if not src:
        raise DataError(f"{label}: {where} holds no lines; nothing to train on")
    reasons = ", ".join(f"{reason}: {n}" for reason, n in kept.dropped.most_common())
    hints = [f"every line of {side} is empty" for side in _empty_sides(src, tgt, files)]
    hints += [f"raise {_LOOSER[r]}" for r in kept.dropped if r in _LOOSER]
    raise DataError(f"{label}: all {len(src)} pairs were dropped by cleaning ({reasons}) in {where}; "
                    f"nothing left to train on" + "".join(f"; {h}" for h in hints))


def _check_scorable(label: str, src: list[str], tgt: list[str], files: tuple[str, ...]) -> None:
    """An evaluation split needs sources to translate and references to score against."""
    if not src:
        raise DataError(f"{label}: {','.join(files)} holds no lines; an evaluation split needs sentence pairs")
    empty = _empty_sides(src, tgt, files)
    if empty:
        raise DataError(f"{label}: every line of {' and of '.join(empty)} is empty; an evaluation split "
                        "needs text on both sides")
