"""Parallel text for one split and direction: fetched, validated and (for training) cleaned."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from attnlab.config import DataConfig
from attnlab.data.fetch import DataError, cache_dir, fetch, mirror_location
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

    def __len__(self) -> int:
        return len(self.src)


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file without their newline; invalid UTF-8 is an error naming file and line."""
    lines = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as error:
                raise DataError(f"{path}: line {number} is not valid UTF-8 ({error.reason} at byte {error.start})") from None
    return lines


def read_pair(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    for path in (src_path, tgt_path):
        if not Path(path).is_file():
            raise DataError(f"missing file {path}")
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; parallel files must align line by line")
    return src, tgt


def read_tsv(path: Path) -> tuple[list[str], list[str]]:
    if not Path(path).is_file():
        raise DataError(f"missing file {path}")
    src, tgt = [], []
    for number, line in enumerate(read_lines(path), start=1):
        columns = line.split("\t")
        if len(columns) != 2:
            raise DataError(f"{path}: line {number} has {len(columns)} tab-separated columns, expected 2 (source, target)")
        src.append(columns[0])
        tgt.append(columns[1])
    return src, tgt


def _split_location(config: DataConfig, split: str) -> tuple[str, str]:
    """(corpus, split) for a split name that may carry its own corpus ("wmt14/newstest2014")."""
    corpus, _, name = split.rpartition("/")
    return (corpus or config.corpus), name


def read_split(config: DataConfig, split: str) -> tuple[list[str], list[str]]:
    """Raw (uncleaned) source and target lines of a split, in the configured direction."""
    corpus_name, name = _split_location(config, split)
    if corpus_name == "custom":
        files = config.custom_files or {}
        if name not in files:
            raise DataError(f"custom corpus has no split {name!r}; custom_files names {', '.join(files) or 'none'}")
        spec = files[name]
        if "," in spec:
            src_path, tgt_path = (Path(p.strip()).expanduser() for p in spec.split(",", 1))
            return read_pair(src_path, tgt_path)
        return read_tsv(Path(spec).expanduser())
    if corpus_name not in CORPORA:
        raise DataError(f"unknown corpus {corpus_name!r}; valid: {', '.join(CORPORA)}, custom")
    corpus = CORPORA[corpus_name]
    if name not in corpus.splits:
        raise DataError(f"corpus {corpus_name!r} has no split {name!r}; valid: {', '.join(corpus.splits)}")
    for lang in (config.src_lang, config.tgt_lang):
        if lang not in corpus.langs:
            raise DataError(f"corpus {corpus_name!r} has no language {lang!r}; valid: {', '.join(corpus.langs)}")
    cache, mirror = cache_dir(config.cache_dir), mirror_location(config.mirror)
    src_path = fetch(corpus.file(name, config.src_lang), cache, mirror)
    tgt_path = fetch(corpus.file(name, config.tgt_lang), cache, mirror)
    return read_pair(src_path, tgt_path)


def normalise_space(text: str) -> str:
    """Strip the ends and make every run of whitespace (tabs included) one space, as sentencepiece
    would; BLEU's tokenizer and chrF ignore the difference, and decoding is then exact."""
    return " ".join(text.split())


def clean(src: list[str], tgt: list[str], config: DataConfig, name: str) -> Parallel:
    """Training pairs minus known dirt, each drop counted by reason."""
    kept = Parallel(name, [], [])
    for s, t in zip(src, tgt):
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
            continue
        kept.dropped[reason] += 1
    return kept


def load_split(config: DataConfig, split: str, train: bool = False) -> Parallel:
    """One split in the configured direction. Training splits are cleaned; evaluation splits
    are kept whole (a test set is scored on every line), whitespace normalised."""
    src, tgt = read_split(config, split)
    if train:
        kept = clean(src, tgt, config, split)
        limit = config.max_train_sentences
    else:
        kept = Parallel(split, [normalise_space(s) for s in src], [normalise_space(t) for t in tgt])
        limit = config.max_eval_sentences
    if limit is not None and len(kept) > limit:
        kept.dropped["over_limit"] += len(kept) - limit
        kept.src, kept.tgt = kept.src[:limit], kept.tgt[:limit]
    return kept
