"""Bad checkpoints, decoding inputs and custom corpora end in one `attnlab: error:` line (exit 2),
never a traceback, and leave every file as it was."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from attnlab.cli import main
from attnlab.config import ExperimentConfig
from attnlab.data.corpora import Parallel
from attnlab.data.encoded import EncodedSplit
from attnlab.data.tokenizer import train_vocabulary
from attnlab.errors import CheckpointError, DataError
from attnlab.train.checkpoints import FORMAT_VERSION, average_checkpoints, latest_checkpoint, load_checkpoint
from attnlab.train.evaluation import check_lengths
from conftest import real_mirror, snapshot


@dataclass
class Tiny:
    root: Path  # everything the run wrote: runs/, cache/
    checkpoint: Path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    """Two training steps of a tiny learned-position model on 200 real Multi30k pairs."""
    from attnlab.train.run import train
    mirror = real_mirror()
    root = tmp_path_factory.mktemp("tiny")
    config = ExperimentConfig.from_dict({
        "name": "tiny", "output_dir": str(root / "runs"),
        "model": {"n_layers": 1, "d_model": 16, "d_ff": 32, "n_heads": 2, "positional": "learned",
                  "max_positions": 256},
        "data": {"vocab_size": 400, "max_tokens": 512, "max_train_sentences": 200, "max_eval_sentences": 4,
                 "test_splits": [], "mirror": mirror, "cache_dir": str(root / "cache")},
        "train": {"max_steps": 2, "warmup_steps": 1, "threads": 1, "val_bleu": False, "attention_stats": False},
        "decode": {"beam_size": 1, "max_len_b": 5},
        "logging": {"wandb": "disabled", "progress_bar": False, "quiet": True},
    })
    train(config)
    return Tiny(root, latest_checkpoint(root / "runs" / "tiny" / "checkpoints"))


# -- helpers -----------------------------------------------------------------------------------
def fails_cleanly(capsys, argv: list[str], *roots: Path, stdin: str | None = None, monkeypatch=None) -> str:
    """Run the CLI, expect exit 2 with one `attnlab: error:` line and no file changed; the line."""
    before = snapshot(*roots)
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnlab: error: "), err
    assert snapshot(*roots) == before
    return lines[0]


def edited(tiny: Tiny, tmp_path: Path, name: str, change) -> Path:
    """A copy of the tiny checkpoint, its dict changed by `change` first."""
    checkpoint = torch.load(tiny.checkpoint, map_location="cpu", weights_only=False)
    change(checkpoint)
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


def shrink_positions(checkpoint: dict, rows: int) -> None:
    """The same model with a learned position table of `rows` rows (the first ones)."""
    checkpoint["attnlab"]["config"]["model"]["max_positions"] = rows
    state = checkpoint["state_dict"]
    for key in [k for k in state if "position" in k]:
        state[key] = state[key][:rows].clone()


# -- checkpoints -------------------------------------------------------------------------------
def test_a_saved_checkpoint_carries_the_format_version(tiny):
    entry = torch.load(tiny.checkpoint, map_location="cpu", weights_only=False)["attnlab"]
    assert entry["format_version"] == FORMAT_VERSION == 1


def test_a_checkpoint_without_a_version_is_version_1_and_loads(tiny, tmp_path):
    path = edited(tiny, tmp_path, "old.ckpt", lambda c: c["attnlab"].pop("format_version"))
    model, vocab, config = load_checkpoint(path)
    assert len(vocab) == 400 and config.model.max_positions == 256


def test_missing_checkpoint(tiny, tmp_path, capsys):
    line = fails_cleanly(capsys, ["evaluate", str(tmp_path / "nope.ckpt"), "--split", "val"], tmp_path)
    assert f"checkpoint {tmp_path / 'nope.ckpt'} does not exist" in line


@pytest.mark.parametrize("kind", ["random", "text", "yaml", "empty", "truncated", "zip", "folder"])
def test_a_file_that_is_not_a_checkpoint(kind, tiny, tmp_path, capsys, monkeypatch):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "text":
        path.write_text("A dog runs across the grass.\n")
    elif kind == "yaml":
        path.write_text("model:\n  n_heads: 4\ndata:\n  corpus: multi30k\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(tiny.checkpoint.read_bytes()[:5000])
    elif kind == "zip":
        import zipfile

        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "not a checkpoint")
    else:
        path.mkdir()
    line = fails_cleanly(capsys, ["translate", str(path)], tmp_path, stdin="A dog.\n", monkeypatch=monkeypatch)
    assert str(path) in line


def test_a_torch_file_that_is_not_ours(tiny, tmp_path, capsys):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, path)
    line = fails_cleanly(capsys, ["evaluate", str(path), "--split", "val"], tmp_path)
    assert f"{path} is a torch file but not an attnlab checkpoint (no 'attnlab' entry)" in line


def test_a_newer_format_version_is_refused_naming_both(tiny, tmp_path, capsys):
    path = edited(tiny, tmp_path, "future.ckpt", lambda c: c["attnlab"].update(format_version=7))
    line = fails_cleanly(capsys, ["evaluate", str(path), "--split", "val"], tmp_path)
    assert f"{path} has checkpoint format version 7, but this attnlab reads version 1" in line


def test_missing_tokenizer(tiny, tmp_path, capsys, monkeypatch):
    gone = tmp_path / "gone.model"
    path = edited(tiny, tmp_path, "a.ckpt", lambda c: c["attnlab"].update(vocab_model=str(gone)))
    line = fails_cleanly(capsys, ["translate", str(path)], tmp_path, stdin="A dog.\n", monkeypatch=monkeypatch)
    assert f"{path}: its tokenizer {gone} is missing" in line


def test_unreadable_tokenizer(tiny, tmp_path, capsys):
    bad = tmp_path / "bad.model"
    bad.write_text("not a sentencepiece model\n")
    path = edited(tiny, tmp_path, "a.ckpt", lambda c: c["attnlab"].update(vocab_model=str(bad)))
    line = fails_cleanly(capsys, ["evaluate", str(path), "--split", "val"], tmp_path)
    assert f"{path}: its tokenizer {bad} is not a readable sentencepiece model" in line


def test_tokenizer_of_another_size_is_caught_before_loading_weights(tiny, tmp_path, capsys):
    texts = [f"the {w} number {i} runs across a green field" for i, w in enumerate(["dog", "cat", "man"] * 20)]
    other = train_vocabulary(texts, tmp_path / "cache", vocab_size=300)
    path = edited(tiny, tmp_path, "a.ckpt", lambda c: c["attnlab"].update(vocab_model=str(other.path)))
    line = fails_cleanly(capsys, ["evaluate", str(path), "--split", "val"], tmp_path)
    assert f"{path}: its embeddings have 400 rows but its tokenizer {other.path} has 300 tokens" in line


def test_a_stored_config_that_no_longer_validates_names_the_file(tiny, tmp_path, capsys):
    path = edited(tiny, tmp_path, "a.ckpt", lambda c: c["attnlab"]["config"]["model"].update(n_head=2))
    line = fails_cleanly(capsys, ["evaluate", str(path), "--split", "val"], tmp_path)
    assert str(path) in line and "n_head" in line


def test_weights_that_do_not_fit_the_stored_config(tiny, tmp_path, capsys):
    path = edited(tiny, tmp_path, "a.ckpt", lambda c: c["attnlab"]["config"]["model"].update(d_ff=48))
    line = fails_cleanly(capsys, ["evaluate", str(path), "--split", "val"], tmp_path)
    assert f"{path}: its weights do not fit its stored model config" in line and "(config: (48, 16))" in line


def test_average_refuses_bad_and_mismatched_checkpoints(tiny, tmp_path, capsys):
    output = tmp_path / "avg.ckpt"
    other = edited(tiny, tmp_path, "other.ckpt", lambda c: c["state_dict"].pop("model.tgt_embed.weight"))
    line = fails_cleanly(capsys, ["average", str(tiny.checkpoint), str(other), "-o", str(output)], tmp_path)
    assert f"{other} has other parameters than {tiny.checkpoint} (model.tgt_embed.weight)" in line
    (tmp_path / "notes.txt").write_text("hello\n")
    line = fails_cleanly(capsys, ["average", str(tmp_path / "notes.txt"), "-o", str(output)], tmp_path)
    assert "notes.txt is not a checkpoint" in line
    assert not output.exists()
    with pytest.raises(CheckpointError, match="no checkpoints to average"):
        average_checkpoints([], output)


# -- decoding inputs longer than a learned position table ---------------------------------------
def test_a_line_longer_than_the_position_table_is_refused_before_decoding(tiny, tmp_path, capsys, monkeypatch):
    path = edited(tiny, tmp_path, "short.ckpt", lambda c: shrink_positions(c, 16))
    lines = "A dog.\n" + "A dog runs across the green grass in the park. " * 4 + "\nA cat.\n"
    line = fails_cleanly(capsys, ["translate", str(path)], tmp_path, stdin=lines, monkeypatch=monkeypatch)
    assert line.startswith("attnlab: error: stdin: line 2 is ") and "model.max_positions=16" in line


def test_outputs_are_capped_at_the_position_table(tiny, tmp_path, capsys, monkeypatch):
    """Sources that fit, outputs that would not (max_len_b=30 > 16 rows): capped, not a crash,
    with short and long sources in one batch."""
    def change(c):
        shrink_positions(c, 16)
        c["attnlab"]["config"]["decode"].update(max_len_b=30, beam_size=2)

    path = edited(tiny, tmp_path, "short.ckpt", change)
    monkeypatch.setattr(sys, "stdin", io.StringIO("A dog.\nTwo men sit on a bench.\n"))
    assert main(["translate", str(path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_search_caps_only_the_rows_that_would_outgrow_the_table(tiny, tmp_path):
    from attnlab.config import DecodeConfig
    from attnlab.train.evaluation import search

    model, vocab, _ = load_checkpoint(edited(tiny, tmp_path, "short.ckpt", lambda c: shrink_positions(c, 16)))
    split = EncodedSplit(Parallel("t", ["A dog.", "Two men sit on a bench."], ["", ""]), vocab)
    decode = DecodeConfig(beam_size=1, max_len_a=1.0, max_len_b=8)
    assert split.src_lengths[0] + 8 <= 16 < split.src_lengths[1] + 8  # one row capped, one not
    both = search(model, split.collate([0, 1])["src"], decode)
    assert both == [search(model, split.collate([i])["src"], decode)[0] for i in (0, 1)]
    assert len(both[1]) <= 15  # 16 positions: bos + 15 tokens, eos forced at the last


def test_check_lengths_names_the_file_and_its_line(tiny, tmp_path):
    model, vocab, _ = load_checkpoint(edited(tiny, tmp_path, "short.ckpt", lambda c: shrink_positions(c, 16)))
    long = "A dog runs across the green grass in the park. " * 4
    split = EncodedSplit(Parallel("test", ["A dog.", long, "A cat.", long], ["x"] * 4, files=("t.en", "t.de")), vocab)
    expected = r"^t.en: line 2 is \d+ tokens long .*max_positions=16.*\(1 more too long: line 4\)$"
    with pytest.raises(DataError, match=expected):
        check_lengths(model, split)
    check_lengths(model, split, indices=[0, 2])  # the short ones pass


# -- custom corpora with nothing left ------------------------------------------------------------
def write_corpus(tmp_path: Path, **files: str) -> Path:
    """Text files, and a data config naming train and val pairs of them (its cache beside
    tmp_path: a failed vocabulary may leave a lock file there, which is no input of ours)."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n  corpus: custom\n  test_splits: []\n  vocab_size: 300\n"
        f"  cache_dir: {tmp_path.with_name(tmp_path.name + '-cache')}\n  custom_files:\n"
        f"    train: {tmp_path / 'a.en'},{tmp_path / 'a.de'}\n    val: {tmp_path / 'v.en'},{tmp_path / 'v.de'}\n")
    return config


GOOD = "".join(f"the dog number {i} runs across a green field\n" for i in range(40))
GOOD_DE = "".join(f"der hund nummer {i} rennt über eine grüne wiese\n" for i in range(40))


def test_a_target_side_of_empty_lines(tmp_path, capsys):
    config = write_corpus(tmp_path, **{"a.en": GOOD, "a.de": "\n" * 40, "v.en": GOOD, "v.de": GOOD_DE})
    line = fails_cleanly(capsys, ["data", str(config)], tmp_path)
    assert (f"custom train: all 40 pairs were dropped by cleaning (empty: 40) in {tmp_path / 'a.en'},"
            f"{tmp_path / 'a.de'}; nothing left to train on; every line of {tmp_path / 'a.de'} is empty") in line


def test_an_empty_training_file(tmp_path, capsys):
    config = write_corpus(tmp_path, **{"a.en": "", "a.de": "", "v.en": GOOD, "v.de": GOOD_DE})
    line = fails_cleanly(capsys, ["data", str(config)], tmp_path)
    assert f"custom train: {tmp_path / 'a.en'},{tmp_path / 'a.de'} holds no lines; nothing to train on" in line


@pytest.mark.parametrize("v_en, v_de, expected", [
    ("", "", "holds no lines"),
    (GOOD, "\n" * 40, "every line of {v_de} is empty"),
    ("  \n\n", "a\nb\n", "every line of {v_en} is empty"),
], ids=["no-lines", "empty-target", "blank-source"])
def test_an_empty_validation_split(v_en, v_de, expected, tmp_path, capsys):
    config = write_corpus(tmp_path, **{"a.en": GOOD, "a.de": GOOD_DE, "v.en": v_en, "v.de": v_de})
    line = fails_cleanly(capsys, ["data", str(config)], tmp_path)
    assert line.startswith("attnlab: error: custom val: ")
    assert expected.format(v_de=tmp_path / "v.de", v_en=tmp_path / "v.en") in line


def test_too_little_text_for_the_vocabulary_names_the_training_files(tmp_path, capsys):
    config = write_corpus(tmp_path, **{"a.en": "a b\n", "a.de": "c d\n", "v.en": "a\n", "v.de": "c\n"})
    config.write_text(config.read_text().replace("vocab_size: 300", "vocab_size: 8000"))
    line = fails_cleanly(capsys, ["data", str(config)], tmp_path)
    files = f"{tmp_path / 'a.en'},{tmp_path / 'a.de'}"
    assert f"custom train ({files}, 1 pair after cleaning): cannot train a bpe vocabulary of 8000" in line
