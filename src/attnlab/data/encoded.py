"""Token ids as flat arrays, and the training split cleaned, encoded and cached once.

A split's ids are one int32 array and the offsets where each sentence starts: 4.5M WMT14
pairs are ~1 GB this way, ~10 GB as Python lists. The training split is prepared into the
cache as a stream (clean into text files, train the vocabulary on a sample, encode in chunks
on all cores, write the arrays), so memory is bounded by a chunk and the vocabulary's sample,
not by the corpus. Its folder is keyed by the settings and the identity (path, size, time) of
the files it was made from, not their text, so a later run memory-maps it in a moment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import shutil
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
from torch.utils.data import Dataset

from attnlab.config import DataConfig
from attnlab.data.batching import Buckets
from attnlab.data.corpora import Cleaning, Parallel, Sources, check_trainable, clean_pairs, split_sources
from attnlab.data.fetch import cache_dir, locked
from attnlab.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Vocabulary, train_vocabulary
from attnlab.errors import DataError

CHUNK = 100_000  # sentences encoded at a time: a few MB of Python lists, then int32 arrays
FORMAT = 1  # bump when the cleaning rules or the folder's files change: old folders are not read
ENCODED_DIR = "encoded"  # under the cache root: one folder per prepared training split
META = "meta.json"  # written last: a folder without it is not ready
IDS = np.dtype("<i4")  # token ids on disk: <side>.ids, raw, memory-mapped


class TokenIds:
    """The ids of many sentences: `ids[offsets[i]:offsets[i + 1]]` is sentence i (no specials)."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, folder: Path | None = None, side: str = "") -> None:
        self.ids, self.offsets = ids, offsets
        self.folder, self.side = folder, side  # set when memory-mapped from the cache

    @classmethod
    def encode(cls, vocab: Vocabulary, texts: Iterable[str]) -> TokenIds:
        chunks = list(_encoded_chunks(vocab, texts))
        ids = np.concatenate([c for c, _ in chunks]) if chunks else np.zeros(0, IDS)
        return cls(ids, _offsets([n for _, n in chunks]))

    @classmethod
    def open(cls, folder: Path, side: str) -> TokenIds:
        """Memory-mapped from a prepared folder: pages are read when a batch touches them."""
        offsets = np.load(folder / f"{side}.offsets.npy", mmap_mode="r")
        ids = np.memmap(folder / f"{side}.ids", dtype=IDS, mode="r") if offsets[-1] else np.zeros(0, IDS)
        return cls(ids, offsets, folder, side)

    def __reduce__(self):  # to DataLoader workers and spawned ranks: reopen the cache, do not copy it
        if self.folder is not None:
            return TokenIds.open, (self.folder, self.side)
        return TokenIds, (self.ids, self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class TextLines(Sequence[str]):
    """The lines of a prepared split's text file, read where asked for (memory-mapped): the
    training text of millions of pairs without holding it in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.starts = np.load(path.with_suffix(".starts.npy"), mmap_mode="r")  # byte offset of each line, and the end
        self._bytes = np.memmap(path, dtype=np.uint8, mode="r") if self.starts[-1] else np.zeros(0, np.uint8)

    def __reduce__(self):
        return TextLines, (self.path,)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"line {i} of {len(self)}")
        i %= len(self)
        return self._bytes[self.starts[i] : self.starts[i + 1] - 1].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return _lines(self.path)

    def __add__(self, other: Iterable[str]) -> list[str]:  # like the lists of an evaluation split
        return [*self, *other]

    def __radd__(self, other: Iterable[str]) -> list[str]:
        return [*other, *self]

    @staticmethod
    def index(path: Path) -> None:
        """Write the byte offsets of `path`'s lines beside it, scanning it in chunks."""
        starts, position = [np.zeros(1, np.int64)], 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                starts.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + position + 1)
                position += len(chunk)
        np.save(path.with_suffix(".starts.npy"), np.concatenate(starts))


def _lines(path: Path) -> Iterator[str]:
    """The lines of a text file written by `_clean_into`, streamed."""
    with open(path, encoding="utf-8", newline="\n") as f:
        yield from (line.rstrip("\n") for line in f)


def _encoded_chunks(vocab: Vocabulary, texts: Iterable[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, lengths) of CHUNK sentences at a time, encoded on all cores."""
    texts = iter(texts)
    while chunk := list(itertools.islice(texts, CHUNK)):
        encoded = vocab.encode(chunk)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        yield np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32, count=int(lengths.sum())), lengths


def _offsets(lengths: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.concatenate(lengths))]) if lengths else np.zeros(1, np.int64)


class EncodedSplit(Dataset):
    """Token ids of one split. Source: text + eos; target in: bos + text; target out: text + eos.
    `src_text`/`tgt_text`: the text (whitespace normalised), lists for a split read into memory,
    TextLines for a training split prepared into the cache."""

    def __init__(self, parallel: Parallel, vocab: Vocabulary) -> None:
        self._set(parallel.name, TokenIds.encode(vocab, parallel.src), TokenIds.encode(vocab, parallel.tgt),
                  parallel.files, parallel.lines, parallel.dropped)
        self.src_text, self.tgt_text = parallel.src, parallel.tgt

    def _set(self, name: str, src: TokenIds, tgt: TokenIds, files: tuple[str, ...], lines, dropped: Counter) -> None:
        self.name, self.src, self.tgt = name, src, tgt
        self.files, self.lines = files, lines  # for messages naming a file's line
        self.dropped = dropped
        self.src_lengths = src.lengths() + 1  # text + eos
        self.tgt_lengths = tgt.lengths() + 1  # bos + text, or text + eos

    @classmethod
    def open(cls, folder: Path) -> EncodedSplit:
        """A training split prepared by `prepare_train`, memory-mapped."""
        meta = json.loads((folder / META).read_text())
        split = cls.__new__(cls)
        split._set(meta["name"], TokenIds.open(folder, "src"), TokenIds.open(folder, "tgt"), tuple(meta["files"]),
                   np.load(folder / "lines.npy", mmap_mode="r"), Counter(meta["dropped"]))
        split.src_text, split.tgt_text = TextLines(folder / "src.txt"), TextLines(folder / "tgt.txt")
        return split

    def __len__(self) -> int:
        return len(self.src)

    def line_number(self, i: int) -> int:
        """The line of the file (or of stdin) sentence `i` came from."""
        return int(self.lines[i]) if self.lines is not None else i + 1

    def __getitem__(self, i: int) -> int:
        return i  # collate() looks the ids up: one list of indices per batch, no per-item tensors

    def collate(self, indices: list[int], buckets: Buckets | None = None) -> dict[str, Any]:
        """Right-padded tensors: src (B, S), tgt_in and tgt_out (B, T); `index` maps rows to lines.
        With buckets, both sides are padded to the bucket's length and the batch to its rows
        with empty pairs (source eos, target bos, no target token: no loss, index -1)."""
        src, tgt = [self.src[i] for i in indices], [self.tgt[i] for i in indices]
        longest_src, longest_tgt = max(map(len, src)) + 1, max(map(len, tgt)) + 1
        rows = len(indices)
        if buckets is not None:
            longest_src = longest_tgt = buckets.length(max(longest_src, longest_tgt))
            rows = max(rows, buckets.rows(longest_src))
        src_out = np.full((rows, longest_src), PAD_ID, dtype=np.int64)
        tgt_in, tgt_out = (np.full((rows, longest_tgt), PAD_ID, dtype=np.int64) for _ in range(2))
        src_out[:, 0], tgt_in[:, 0] = EOS_ID, BOS_ID  # what the filler rows hold
        for r, (s, t) in enumerate(zip(src, tgt)):
            src_out[r, : len(s)], src_out[r, len(s)] = s, EOS_ID
            tgt_in[r, 1 : len(t) + 1] = t
            tgt_out[r, : len(t)], tgt_out[r, len(t)] = t, EOS_ID
        index = np.full(rows, -1, dtype=np.int64)
        index[: len(indices)] = indices
        return {"src": torch.from_numpy(src_out), "tgt_in": torch.from_numpy(tgt_in),
                "tgt_out": torch.from_numpy(tgt_out), "index": torch.from_numpy(index)}


# -- the training split, prepared once into the cache ---------------------------------------------
def _key(config: DataConfig, sources: Sources) -> str:
    """What the prepared split depends on: the settings that shape it and the identity of its
    files (a file changed in place has another size or time). Reading no text, it is instant."""
    shaping = ("corpus", "src_lang", "tgt_lang", "train_split", "train_components", "vocab_size", "vocab_type",
               "vocab_sample", "max_words", "max_length_ratio", "seed", "max_train_sentences")
    files = [[str(Path(p).resolve()), (s := Path(p).stat()).st_size, s.st_mtime_ns] for part in sources.parts
             for p in part]
    settings = {name: getattr(config, name) for name in shaping}
    text = json.dumps({"format": FORMAT, "sentencepiece": spm.__version__, "settings": settings, "files": files},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def prepare_train(config: DataConfig) -> tuple[Vocabulary, EncodedSplit]:
    """The training split's vocabulary and ids: from the cache, else prepared into it (once
    across processes: under a lock, in a temporary folder renamed into place when complete)."""
    sources = split_sources(config, config.train_split)  # fetched and checked on first use
    folder = cache_dir(config.cache_dir) / ENCODED_DIR / _key(config, sources)
    if not _ready(folder):
        with locked(folder):
            if not _ready(folder):
                _build(config, sources, folder)
    return Vocabulary(_vocab_path(folder)), EncodedSplit.open(folder)


def _vocab_path(folder: Path) -> Path:
    """The vocabulary in the cache's vocab/ folder (shared by every split of the same text)."""
    return folder.parents[1] / json.loads((folder / META).read_text())["vocab"]


def _ready(folder: Path) -> bool:
    """Complete, and its vocabulary still there (a cleaned cache may have lost it)."""
    return (folder / META).is_file() and _vocab_path(folder).is_file()


class _Lines:
    """The lines of text files, re-iterable: the vocabulary reads them twice (key, training)."""

    def __init__(self, *paths: Path) -> None:
        self.paths = paths

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(map(_lines, self.paths))


def _build(config: DataConfig, sources: Sources, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)  # a folder whose vocabulary was deleted
    work = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".part"))
    try:
        text = (work / "src.txt", work / "tgt.txt")
        seen, lines = _clean_into(config, sources, text)
        try:
            vocab = train_vocabulary(_Lines(*text), cache_dir(config.cache_dir), config.vocab_size,
                                     config.vocab_type, config.seed, config.vocab_sample)
        except DataError as error:  # sentencepiece's complaint, e.g. too little text for vocab_size
            pairs = f"{len(lines)} pair{'s' if len(lines) > 1 else ''} after cleaning"
            raise DataError(f"{sources.label} ({sources.where}, {pairs}): {error}") from None
        for side, path in zip(("src", "tgt"), text):
            _write_ids(vocab, path, work, side)
            TextLines.index(path)
        np.save(work / "lines.npy", np.frombuffer(lines, dtype=np.int64))
        meta = {"name": config.train_split, "files": sources.files, "dropped": dict(seen.dropped),
                "pairs_read": seen.read, "pairs": len(lines),
                "vocab": str(vocab.path.relative_to(folder.parents[1])),
                "settings": dataclasses.asdict(config)}
        (work / META).write_text(json.dumps(meta, indent=1, default=str))
        work.rename(folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _clean_into(config: DataConfig, sources: Sources, text: tuple[Path, Path]) -> tuple[Cleaning, array]:
    """Stream the split's pairs through cleaning into two text files; the kept pairs' lines."""
    seen, lines, limit = Cleaning(), array("q"), config.max_train_sentences
    with open(text[0], "w", encoding="utf-8", newline="\n") as src, \
            open(text[1], "w", encoding="utf-8", newline="\n") as tgt:
        for number, s, t in clean_pairs(sources.pairs(), config, seen):
            if limit is not None and len(lines) >= limit:
                seen.dropped["over_limit"] += 1
                continue
            src.write(s + "\n")
            tgt.write(t + "\n")
            lines.append(number)
    check_trainable(sources, seen, len(lines) + seen.dropped["over_limit"])
    if not lines:  # cleaning kept some, yet data.max_train_sentences took none
        raise DataError(f"{sources.label}: data.max_train_sentences={limit} leaves no training pairs of "
                        f"{sources.where}; set it to at least 1")
    return seen, lines


def _write_ids(vocab: Vocabulary, text: Path, work: Path, side: str) -> None:
    """Encode a text file chunk by chunk into `<side>.ids` and `<side>.offsets.npy`."""
    lengths = []
    with open(work / f"{side}.ids", "wb") as out:
        for ids, n in _encoded_chunks(vocab, _lines(text)):
            ids.astype(IDS, copy=False).tofile(out)
            lengths.append(n)
    np.save(work / f"{side}.offsets.npy", _offsets(lengths))
