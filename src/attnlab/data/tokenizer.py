"""A joint sentencepiece vocabulary for source and target, cached by a hash of its inputs.

Ids are fixed: pad 0, unk 1, bos 2, eos 3 (the model's defaults). The normalisation rule is
"identity" and unknown characters fall back to bytes, so decode(encode(text)) == text for
every stripped line: BLEU is computed on exactly the text the model produced.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from attnlab.config import DataConfig
from attnlab.data.fetch import DataError, atomic_write, locked

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


# sentencepiece learns a (slightly) different vocabulary on another number of threads, so it
# learns on a fixed number: the same settings and text give the same vocabulary on every machine.
TRAIN_THREADS = 2


def cores() -> int:
    """The CPU cores this process may use: sentencepiece encodes on all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Vocabulary:
    """Encode text to ids and back with a trained sentencepiece model."""

    def __init__(self, model_path: str | Path) -> None:
        self.path = Path(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (0, 1, 2, 3):
            raise DataError(f"{model_path}: special ids (pad, unk, bos, eos) are {ids}; attnlab's vocabularies use "
                            "(0, 1, 2, 3): train it with `attnlab data`")

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def __getstate__(self) -> dict:  # picklable for ddp_spawn workers: reload from the file
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts), out_type=int, num_threads=cores())

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.sp.decode([[i for i in seq if i > EOS_ID] for seq in ids])


DEFAULT_SAMPLE = DataConfig.vocab_sample


def vocabulary_key(texts: Iterable[str], vocab_size: int, vocab_type: str, seed: int,
                   sample: int = DEFAULT_SAMPLE) -> str:
    """Content hash of everything that determines the trained model."""
    h = hashlib.sha256()
    settings = {"vocab_size": vocab_size, "type": vocab_type, "seed": seed, "sentencepiece": spm.__version__,
                "format": 1}
    if sample != DEFAULT_SAMPLE:  # keys of vocabularies trained before the sample was a setting stay
        settings["sample"] = sample
    h.update(json.dumps(settings).encode())
    for text in texts:
        h.update(text.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:20]


def train_vocabulary(texts: Iterable[str], cache: Path, vocab_size: int = 8000, vocab_type: str = "bpe",
                     seed: int = 1, sample: int = DEFAULT_SAMPLE) -> Vocabulary:
    """Train (or reuse from the cache) a joint model on `texts`, both languages' training text,
    iterated twice (its key, then training: pass a list or a re-iterable stream of a file). The
    model learns from `sample` sentences drawn at random (by `seed`) from all of them, so memory
    is bounded by the sample, not the corpus."""
    key = vocabulary_key(texts, vocab_size, vocab_type, seed, sample)
    path = cache / "vocab" / f"{vocab_type}{vocab_size}-{key}.model"
    if not path.exists():
        with locked(path):
            if not path.exists():
                model = io.BytesIO()
                spm.set_random_generator_seed(seed)  # the sentence sample when input is large
                try:
                    _train(texts, model, vocab_size, vocab_type, sample)
                except RuntimeError as error:  # sentencepiece's own words, e.g. vocab too small
                    raise DataError(f"cannot train a {vocab_type} vocabulary of {vocab_size}: {error}") from None
                with atomic_write(path) as f:
                    f.write(model.getvalue())
    return Vocabulary(path)


def _train(texts: Iterable[str], model: io.BytesIO, vocab_size: int, vocab_type: str, sample: int) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type=vocab_type,
        character_coverage=1.0, byte_fallback=True, normalization_rule_name="identity", pad_id=PAD_ID,
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, num_threads=TRAIN_THREADS, minloglevel=2,
        input_sentence_size=sample, shuffle_input_sentence=True,
    )
