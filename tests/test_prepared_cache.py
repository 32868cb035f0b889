"""The training split prepared once into the cache as arrays (issue 16): what it holds, that a
later run reads no text, what invalidates it, and that a failed preparation leaves nothing."""

import pickle

import numpy as np
import pytest

from attnlab.config import DataConfig
from attnlab.data import encoded
from attnlab.data.corpora import Sources, load_split
from attnlab.data.datamodule import prepare, reuse_prepared
from attnlab.data.encoded import ENCODED_DIR, EncodedSplit, TextLines, prepare_train

EN = ["A dog runs .", "", "Two  men\tsit on a bench .", "x", "A cat sleeps on the warm mat today .",
      "The children play in the park .", "one"]
DE = ["Ein Hund rennt .", "leer", "Zwei Männer sitzen auf einer Bank .", "x", "Eine Katze schläft .",
      "Die Kinder spielen im Park .", "ein sehr sehr sehr sehr langer Satz hier"]


def write(folder, en=EN, de=DE):
    folder.mkdir(exist_ok=True)
    (folder / "train.en").write_text("".join(s + "\n" for s in en), encoding="utf-8")
    (folder / "train.de").write_text("".join(s + "\n" for s in de), encoding="utf-8")


def config(tmp_path, **values) -> DataConfig:
    files = f"{tmp_path / 'c' / 'train.en'},{tmp_path / 'c' / 'train.de'}"
    return DataConfig(corpus="custom", custom_files={"train": files, "val": files}, valid_split="val",
                      test_splits=(), vocab_size=300, cache_dir=str(tmp_path / "cache"), **values)


def folders(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache" / ENCODED_DIR).iterdir() if p.is_dir())


@pytest.fixture
def corpus(tmp_path):
    write(tmp_path / "c")
    return tmp_path


def test_the_prepared_split_holds_what_cleaning_kept_encoded_as_arrays(corpus):
    vocab, split = prepare_train(config(corpus))
    memory = load_split(config(corpus), "train", train=True)  # the in-memory way: the same pairs
    assert list(split.src_text) == memory.src and list(split.tgt_text) == memory.tgt
    assert dict(split.dropped) == dict(memory.dropped) == {"empty": 1, "length_ratio": 1}
    assert [split.line_number(i) for i in range(len(split))] == memory.lines == [1, 3, 4, 5, 6]
    assert split.src_text[1] == "Two men sit on a bench ." and split.src_text[-1] == memory.src[-1]
    assert split.src_text[1:3] == memory.src[1:3] and split.src_text + [] == memory.src
    assert isinstance(split.src.ids, np.memmap) and split.src.ids.dtype == np.int32
    assert [list(split.src[i]) for i in range(len(split))] == vocab.encode(memory.src)
    assert list(split.src_lengths) == [len(ids) + 1 for ids in vocab.encode(memory.src)]
    batch = split.collate([1, 0])
    assert batch["src"][0, : split.src_lengths[1]].tolist() == [*vocab.encode([memory.src[1]])[0], 3]
    assert batch["tgt_in"][1, 0] == 2 and batch["index"].tolist() == [1, 0]


def test_a_later_run_reads_no_text_and_the_same_run_reuses_it(corpus, monkeypatch):
    vocab, first = prepare_train(config(corpus))
    with monkeypatch.context() as m:
        m.setattr(Sources, "pairs", lambda self: pytest.fail("read the corpus again"))
        m.setattr(encoded, "train_vocabulary", lambda *a, **k: pytest.fail("learnt the vocabulary again"))
        again_vocab, again = prepare_train(config(corpus))
    assert again_vocab.path == vocab.path and list(again.src.ids) == list(first.src.ids)
    assert len(folders(corpus)) == 1
    with reuse_prepared():
        assert prepare(config(corpus)) is prepare(config(corpus))


def test_changed_files_or_settings_prepare_anew_and_a_deleted_vocabulary_is_learnt_again(corpus):
    vocab, split = prepare_train(config(corpus))
    write(corpus / "c", EN + ["A new line ."], DE + ["Eine neue Zeile ."])
    _, bigger = prepare_train(config(corpus))
    assert len(bigger) == len(split) + 1
    _, capped = prepare_train(config(corpus, max_train_sentences=2))
    assert len(capped) == 2 and capped.dropped["over_limit"] == len(bigger) - 2
    assert len(folders(corpus)) == 3
    vocab.path.unlink()
    again, _ = prepare_train(config(corpus))
    assert again.path.is_file()


def test_a_failed_preparation_leaves_nothing_and_the_next_one_succeeds(corpus, monkeypatch):
    def broken(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(encoded, "_write_ids", broken)
    with pytest.raises(KeyboardInterrupt):
        prepare_train(config(corpus))
    assert folders(corpus) == [] and not list((corpus / "cache" / ENCODED_DIR).glob(".*"))
    monkeypatch.undo()
    _, split = prepare_train(config(corpus))
    assert len(split) == 5


def test_encoding_in_chunks_changes_nothing_and_the_split_travels_to_workers_by_path(corpus, monkeypatch):
    _, whole = prepare_train(config(corpus))
    monkeypatch.setattr(encoded, "CHUNK", 2)
    _, chunked = prepare_train(config(corpus, seed=2))  # another folder; the same text and ids
    assert list(chunked.src.ids) == list(whole.src.ids) and list(chunked.tgt.offsets) == list(whole.tgt.offsets)
    back = pickle.loads(pickle.dumps(whole))
    assert isinstance(back.src.ids, np.memmap) and back.src.folder == whole.src.folder  # reopened, not copied
    assert list(back.src_text) == list(whole.src_text)
    assert back.collate([0, 2])["src"].equal(whole.collate([0, 2])["src"])


def test_an_in_memory_split_pickles_its_arrays(corpus):
    vocab, _ = prepare_train(config(corpus))
    split = EncodedSplit(load_split(config(corpus), "train", train=True), vocab)
    back = pickle.loads(pickle.dumps(split))
    assert back.collate([0, 1])["tgt_out"].equal(split.collate([0, 1])["tgt_out"])


def test_text_lines_index_like_a_list(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a b\nc\n\nd é\n", encoding="utf-8")
    TextLines.index(path)
    lines = TextLines(path)
    assert len(lines) == 4 and list(lines) == ["a b", "c", "", "d é"] and lines[-1] == "d é"
    with pytest.raises(IndexError):
        lines[4]
