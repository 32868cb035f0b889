"""Corpora from the real mirror, over HTTP, and every kind of bad input."""

import gzip
import hashlib
import http.server
import io
import shutil
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from attnlab.config import DataConfig
from attnlab.data.corpora import load_split
from attnlab.data.fetch import DataError, fetch
from attnlab.data.registry import CORPORA, Source


def test_real_multi30k_line_counts_and_known_dirt(mirror, cache):
    config = DataConfig(mirror=mirror, cache_dir=cache)
    train = load_split(config, "train", train=True)
    assert len(train) == 28998 and dict(train.dropped) == {"placeholder": 2}
    assert "@@" not in train.tgt
    assert "\t" not in "".join(train.tgt)  # train.de line 7,366 holds a tab: normalised to a space
    for split, lines in [("val", 1014), ("test_2016_flickr", 1000), ("test_2017_mscoco", 461),
                         ("test_2018_flickr", 1071)]:
        assert len(load_split(config, split)) == lines
    de_en = load_split(replace(config, src_lang="de", tgt_lang="en"), "val")
    en_de = load_split(config, "val")
    assert de_en.src == en_de.tgt and de_en.tgt == en_de.src


@pytest.mark.parametrize("split, lines", [("wmt14/newstest2013", 3000), ("wmt14/newstest2014", 3003),
                                          ("iwslt14/test", 6750), ("iwslt17/tst2016", 1133), ("iwslt17/tst2017", 1138)])
def test_evaluation_corpora_from_the_mirror(mirror, cache, split, lines):
    assert len(load_split(DataConfig(mirror=mirror, cache_dir=cache), split)) == lines


@pytest.mark.parametrize("split, words", [
    ("nope", ["'nope'", "valid:", "train", "test_2016_flickr"]),
    ("europarl/train", ["unknown corpus 'europarl'", "multi30k", "wmt14", "custom"]),
])
def test_unknown_corpus_or_split_lists_the_valid_ones(cache, split, words):
    with pytest.raises(DataError) as error:
        load_split(DataConfig(cache_dir=cache, mirror="/nonexistent"), split)
    for word in words:
        assert word in str(error.value)


def test_missing_mirror_file_is_named(tmp_path, cache):
    with pytest.raises(DataError, match=r"missing file .*multi30k/val.en.gz"):
        load_split(DataConfig(cache_dir=cache, mirror=str(tmp_path)), "val")


def custom(tmp_path, cache, src_text: bytes, tgt_text: bytes, **overrides) -> DataConfig:
    (tmp_path / "a.en").write_bytes(src_text)
    (tmp_path / "a.de").write_bytes(tgt_text)
    return DataConfig(corpus="custom", custom_files={"train": f"{tmp_path}/a.en,{tmp_path}/a.de"},
                      cache_dir=cache, **overrides)


def test_different_line_counts_name_both_files_and_counts(tmp_path, cache):
    config = custom(tmp_path, cache, b"one\ntwo\nthree\n", b"eins\nzwei\n")
    with pytest.raises(DataError) as error:
        load_split(config, "train", train=True)
    message = str(error.value)
    assert "a.en has 3 lines" in message and "a.de has 2" in message


def test_invalid_utf8_names_file_and_line(tmp_path, cache):
    config = custom(tmp_path, cache, b"one\ntwo\n", b"eins\nzw\xffei\n")
    with pytest.raises(DataError, match=r"a\.de: line 2 is not valid UTF-8"):
        load_split(config, "train", train=True)


def test_cleaning_counts_every_reason(tmp_path, cache):
    src = "ok one\n\nfine\nshort\n" + "w " * 30 + "\nbalanced pair here\n"
    tgt = "gut eins\nleer\n@@\nviel zu viele Worte hier auf dieser Seite\nkurz\nausgewogenes Paar hier\n"
    config = custom(tmp_path, cache, src.encode(), tgt.encode(), max_words=20, max_length_ratio=3.0)
    train = load_split(config, "train", train=True)
    assert train.src == ["ok one", "balanced pair here"]
    assert dict(train.dropped) == {"empty": 1, "placeholder": 1, "length_ratio": 1, "too_long": 1}


def test_tsv_corpus_and_its_errors(tmp_path, cache):
    (tmp_path / "p.tsv").write_text("hello\thallo\nworld\twelt\n")
    config = DataConfig(corpus="custom", custom_files={"train": str(tmp_path / "p.tsv")}, cache_dir=cache)
    assert load_split(config, "train", train=True).tgt == ["hallo", "welt"]
    (tmp_path / "p.tsv").write_text("hello\thallo\nworld\n")
    with pytest.raises(DataError, match=r"p\.tsv: line 2 has 1 tab-separated columns, expected 2"):
        load_split(config, "train", train=True)
    with pytest.raises(DataError, match="custom corpus has no split 'val'; custom_files names train"):
        load_split(config, "val")


# -- the download path, served for real from 127.0.0.1 ------------------------------------

@pytest.fixture
def http_mirror(tmp_path, mirror):
    """A copy of part of the mirror served over HTTP; val.de.gz has one byte flipped."""
    root = tmp_path / "served"
    (root / "multi30k").mkdir(parents=True)
    for name in ["val.en.gz", "val.de.gz", "test_2016_flickr.en.gz", "test_2016_flickr.de.gz"]:
        shutil.copy(Path(mirror) / "multi30k" / name, root / "multi30k" / name)
    corrupt = bytearray((root / "multi30k" / "val.de.gz").read_bytes())
    corrupt[100] ^= 0xFF
    (root / "multi30k" / "val.de.gz").write_bytes(bytes(corrupt))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_from_an_http_mirror_and_reject_a_corrupted_file(http_mirror, cache):
    _, url = http_mirror
    config = DataConfig(mirror=url, cache_dir=cache)
    assert len(load_split(config, "test_2016_flickr")) == 1000
    with pytest.raises(DataError, match=r"checksum mismatch for http://127\.0\.0\.1:\d+/multi30k/val\.de\.gz"):
        load_split(config, "val")
    # The good file of the pair may be cached; the corrupted one left nothing, not even a partial file.
    corpus_dir = Path(cache) / "corpora" / "multi30k"
    assert not (corpus_dir / "val.de").exists()
    assert not list(corpus_dir.glob("*.part"))
    assert sorted(p.name for p in corpus_dir.iterdir() if not p.name.endswith(".lock")) == [
        "test_2016_flickr.de", "test_2016_flickr.en", "val.en"]


def test_upstream_sources_plain_text_gzip_and_wit3(http_mirror, cache, mirror):
    """The online path, pointed at the local server: each kind of upstream source is decoded
    and checked against the registry's text checksum."""
    root, url = http_mirror
    text = gzip.decompress((Path(mirror) / "multi30k" / "test_2016_flickr.de.gz").read_bytes())
    (root / "plain.de").write_bytes(text)
    archive = io.BytesIO()
    xml = "".join(f'<seg id="{i}">  {line}  </seg>\n' for i, line in enumerate(text.decode().splitlines(), 1))
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        data = f"<mteval><doc>\n{xml}</doc></mteval>\n".encode()
        info = tarfile.TarInfo("de-en/talks.xml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (root / "talks.tgz").write_bytes(archive.getvalue())
    spec = CORPORA["multi30k"].file("test_2016_flickr", "de")
    for i, source in enumerate([Source(f"{url}/plain.de", "text"),
                                Source(f"{url}/multi30k/test_2016_flickr.de.gz", "gz"),
                                Source(f"{url}/talks.tgz", "wit3", "de-en/talks.xml")]):
        path = fetch(replace(spec, source=source), Path(cache) / str(i), mirror=None)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256_text
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(replace(spec, source=Source(f"{url}/multi30k/val.de.gz", "gz")), Path(cache) / "bad", mirror=None)
    with pytest.raises(DataError, match="could not download"):
        fetch(replace(spec, source=Source(f"{url}/absent.gz", "gz")), Path(cache) / "absent", mirror=None)
