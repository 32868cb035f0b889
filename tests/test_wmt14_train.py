"""The WMT14 en-de training corpus from its public archives (issue 16), offline: a local HTTP
server serves small archives in the real layout (member paths, gzip/tar) with a checksum
table for them."""

import dataclasses
import functools
import hashlib
import http.server
import io
import tarfile
import threading

import pytest

from attnlab.config import ConfigError, DataConfig
from attnlab.data import registry
from attnlab.data.corpora import load_split
from attnlab.data.registry import CORPORA, WMT14_TRAIN
from attnlab.errors import DataError


def archive(members: dict[str, list[str]]) -> bytes:
    """A .tgz holding each member's lines."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, lines in members.items():
            data = "".join(line + "\n" for line in lines).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# Per component: (en, de) pairs; CommonCrawl holds the dirt cleaning must count.
PAIRS = {
    "europarl_v7": [(f"the house number {i} .", f"das Haus Nummer {i} .") for i in range(6)],
    "commoncrawl": [("a cat", "eine Katze"), ("", "leer"), ("one", "ein sehr sehr sehr sehr langer Satz hier"),
                    ("the dog runs", "der Hund rennt")],
    "news_commentary_v9": [("news today", "Nachrichten heute"), ("more news", "mehr Nachrichten")],
}


@pytest.fixture
def upstream(tmp_path, monkeypatch):
    """The three archives served over HTTP at their registry names, upstream and in a mirror
    layout; the registry's sizes and sha256 replaced by those of these test archives."""
    served = tmp_path / "served"
    components = []
    for real in WMT14_TRAIN:
        pairs = PAIRS[real.name]
        data = archive({real.members["en"]: [e for e, _ in pairs], real.members["de"]: [d for _, d in pairs]})
        for folder in ("upstream", "mirror/wmt14"):
            (served / folder).mkdir(parents=True, exist_ok=True)
            (served / folder / real.file_name).write_bytes(data)
        components.append(dataclasses.replace(real, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                              lines=len(pairs), url=""))
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    components = {c.name: dataclasses.replace(c, url=f"{base}/upstream/{WMT14_TRAIN[i].file_name}")
                  for i, c in enumerate(components)}
    monkeypatch.setitem(CORPORA, "wmt14", dataclasses.replace(CORPORA["wmt14"], components=components))
    monkeypatch.delenv("ATTNLAB_DATA_MIRROR", raising=False)
    yield {"base": base, "served": served, "requests": requests, "components": components}
    server.shutdown()


def config(tmp_path, **values) -> DataConfig:
    return DataConfig(corpus="wmt14", train_split="train", valid_split="newstest2013", test_splits=(),
                      cache_dir=str(tmp_path / "cache"), max_length_ratio=3.0, **values)


def test_the_archives_are_fetched_checked_extracted_and_cleaned_with_counted_drops(upstream, tmp_path):
    train = load_split(config(tmp_path), "train", train=True)
    # Europarl, then CommonCrawl less an empty pair and one beyond the length ratio, then News Commentary.
    assert len(train) == 6 + 2 + 2 and dict(train.dropped) == {"empty": 1, "length_ratio": 1}
    assert train.src[0] == "the house number 0 ." and train.tgt[6] == "eine Katze" and train.src[-1] == "more news"
    assert train.files[0].count("+") == 2 and train.files[0].endswith("news_commentary_v9.en")
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    assert [n for n in cached if n.endswith(".tgz")] == sorted(c.file_name for c in WMT14_TRAIN)
    assert not [n for n in cached if n.endswith(".part")]
    # Warm: everything from the cache, no request at all.
    before = len(upstream["requests"])
    again = load_split(config(tmp_path, train_components=("commoncrawl", "news_commentary_v9")), "train", train=True)
    assert len(upstream["requests"]) == before and again.src == train.src[6:]


def test_a_mirror_serves_the_archives_in_its_layout(upstream, tmp_path):
    train = load_split(config(tmp_path, mirror=f"{upstream['base']}/mirror", train_components=("news_commentary_v9",)),
                       "train", train=True)
    assert train.src == ["news today", "more news"]
    assert upstream["requests"] == ["/mirror/wmt14/training-parallel-nc-v9.tgz"]


@pytest.mark.parametrize("damage, words", [
    (lambda data: data[: len(data) // 2], ["bytes, expected", "truncated"]),  # a download cut short
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), ["checksum mismatch", "sha256"]),  # one bit flipped
])
def test_a_damaged_archive_is_refused_and_leaves_no_file(upstream, tmp_path, damage, words):
    path = upstream["served"] / "upstream" / "training-parallel-nc-v9.tgz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError) as error:
        load_split(config(tmp_path, train_components=("news_commentary_v9",)), "train", train=True)
    assert all(w in str(error.value) for w in words) and "training-parallel-nc-v9.tgz" in str(error.value)
    left = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert left == []


def test_components_are_checked_when_the_config_is_built(tmp_path):
    with pytest.raises(ConfigError, match="choose distinct ones among europarl_v7, commoncrawl, news_commentary_v9"):
        config(tmp_path, train_components=("europarl",))
    with pytest.raises(ConfigError, match="is not made of components"):
        DataConfig(corpus="multi30k", train_components=("commoncrawl",))
    assert [c.lines for c in registry.WMT14_TRAIN] == [1_920_209, 2_399_123, 201_288]  # 4,520,620 pairs


def test_preparation_streams_the_components_into_the_cache_and_a_warm_start_reads_nothing(upstream, tmp_path,
                                                                                          monkeypatch):
    from attnlab.data import encoded
    from attnlab.data.corpora import Sources

    vocab, train = encoded.prepare_train(config(tmp_path, vocab_size=300))
    assert len(train) == 10 and dict(train.dropped) == {"empty": 1, "length_ratio": 1}
    assert train.src_text[6] == "a cat" and train.line_number(6) == 7 and train.line_number(7) == 10
    requests = len(upstream["requests"])
    monkeypatch.setattr(Sources, "pairs", lambda self: pytest.fail("read the corpus again"))
    again, warm = encoded.prepare_train(config(tmp_path, vocab_size=300))
    assert again.path == vocab.path and list(warm.tgt.ids) == list(train.tgt.ids)
    assert len(upstream["requests"]) == requests
