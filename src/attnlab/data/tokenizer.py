"""A joint sentencepiece vocabulary for source and target, cached by a hash of its inputs.

Ids are fixed: pad 0, unk 1, bos 2, eos 3 (the model's defaults). The normalisation rule is
"identity" and unknown characters fall back to bytes, so decode(encode(text)) == text for
every stripped line: BLEU is computed on exactly the text the model produced.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Sequence

import sentencepiece as spm

from attnlab.data.fetch import DataError, atomic_write, locked

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


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
        return self.sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.sp.decode([[i for i in seq if i > EOS_ID] for seq in ids])


def vocabulary_key(texts: Sequence[str], vocab_size: int, vocab_type: str, seed: int) -> str:
    """Content hash of everything that determines the trained model."""
    h = hashlib.sha256()
    h.update(json.dumps({"vocab_size": vocab_size, "type": vocab_type, "seed": seed,
                         "sentencepiece": spm.__version__, "format": 1}).encode())
    for text in texts:
        h.update(text.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:20]


def train_vocabulary(texts: Sequence[str], cache: Path, vocab_size: int = 8000, vocab_type: str = "bpe",
                     seed: int = 1) -> Vocabulary:
    """Train (or reuse from the cache) a joint model on `texts`, both languages' training text."""
    path = cache / "vocab" / f"{vocab_type}{vocab_size}-{vocabulary_key(texts, vocab_size, vocab_type, seed)}.model"
    if not path.exists():
        with locked(path):
            if not path.exists():
                model = io.BytesIO()
                spm.set_random_generator_seed(seed)  # the sentence sample when input is large
                try:
                    _train(texts, model, vocab_size, vocab_type)
                except RuntimeError as error:  # sentencepiece's own words, e.g. vocab too small
                    raise DataError(f"cannot train a {vocab_type} vocabulary of {vocab_size}: {error}") from None
                with atomic_write(path) as f:
                    f.write(model.getvalue())
    return Vocabulary(path)


def _train(texts: Sequence[str], model: io.BytesIO, vocab_size: int, vocab_type: str) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type=vocab_type,
        character_coverage=1.0, byte_fallback=True, normalization_rule_name="identity", pad_id=PAD_ID,
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, num_threads=2, minloglevel=2,
        input_sentence_size=2_000_000, shuffle_input_sentence=True,
    )
