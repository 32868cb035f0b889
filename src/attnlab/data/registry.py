"""Named corpora: splits, line counts, checksums and public sources (as data, no I/O).

Every split is one file per language. A mirror (a folder or URL laid out like
`<corpus>/<split>.<lang>.gz`) holds gzip files checked by `sha256_gz`; upstream sources give
either the same gzip files or plain text checked by `sha256_text`. The cache always holds the
verified plain text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# (corpus, split, lang) -> (lines, sha256 of the .gz file, sha256 of the decompressed text)
_SUMS: dict[tuple[str, str, str], tuple[int, str, str]] = {
    ("multi30k", "test_2016_flickr", "de"): (1000, "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8", "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16"),
    ("multi30k", "test_2016_flickr", "en"): (1000, "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9", "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182"),
    ("multi30k", "test_2017_flickr", "de"): (1000, "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee", "c3078bc3b36808bf9d20eb2347ed6137016179ef59ec0d2b9b8ecc3fb2880081"),
    ("multi30k", "test_2017_flickr", "en"): (1000, "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074", "ce1450ddc5ab0834502579d77a170849952e15a2938b34cc503bdc25ebb4fb98"),
    ("multi30k", "test_2017_mscoco", "de"): (461, "799e4854c25d601cb6cb6be29eabe5667734c61ace2f495e03e429031a0bc338", "58277df3c75f92f7145a11b910b553d1cf82c439249d4dc237c899609eafac22"),
    ("multi30k", "test_2017_mscoco", "en"): (461, "aab300bfb4427697987e02cd0aacd44bfe8aa50456231b6474c08038bbed2b58", "43051fdfa86fd5395182e718a94ca67b1b227b9f7c79596ff0f6b813216981d2"),
    ("multi30k", "test_2018_flickr", "de"): (1071, "ddd0130c7d97482dc5197a02141dae8dd79f20f03586c480d675c09a32daf608", "39fcc8b3331d76fb42d648d019c6898b0d5e58baac87bc2a0bb93f44ec8db207"),
    ("multi30k", "test_2018_flickr", "en"): (1071, "ef4f4844037d4c5dea75c9a8ed5fd78905967a26f67c255e230cc9780032654d", "4e585c2dd525911a6ea7730e9d0b516239af3f1b1ffae6a2130223cfb639f25e"),
    ("multi30k", "train", "de"): (29000, "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6", "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72"),
    ("multi30k", "train", "en"): (29000, "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f", "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6"),
    ("multi30k", "val", "de"): (1014, "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a", "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660"),
    ("multi30k", "val", "en"): (1014, "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28", "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227"),
    ("wmt14", "newstest2013", "de"): (3000, "f3b87352620b54bc2bb2e314ee11595af4af957389d254303708b701a0893b5d", "d7ea35ab91ff3709e03ad9cb6bf5b4f2cc775cd2d72efd5254c4aec5e69663ca"),
    ("wmt14", "newstest2013", "en"): (3000, "162df22a4c495e32b7039463d27085e20ffff94b816f57a96ede3b1d92ddfa3e", "ace268a1d9724ca76f6d8e5c720ffdc08f01bdce45630ed8b269dc7918e1c16e"),
    ("wmt14", "newstest2014", "de"): (3003, "20b141a4dfe4c78a991f9999174f8f378565ea479ebaef056a68b16d23b74702", "ae5d110486bc33d7175e9e28c7d0051eb3e5fcd2166dd93371089852c091a20e"),
    ("wmt14", "newstest2014", "en"): (3003, "c9d36aa995abde6b41abebef6411be4f1ecc2f520f04dd6e382a232c34b36ff6", "7294bccf2879a97b3706b95c9595f1459617a8ee7130d5d8581c910e69736971"),
    ("iwslt14", "test", "de"): (6750, "21d4497ab8d43e870e752352f528f0c7ceec378e964ae7902cd3ebf687d5beae", "79907bfa24fc515a756aaf10d3d9b9adbb0d9fe9adc694ce2bb24ff90b6487c5"),
    ("iwslt14", "test", "en"): (6750, "f182fc0e91ffacd6fb665a2e5f7aadc7182ffc9928b97e28ad3e56e1dfa0e636", "2acf38d4de6ba944fc077218ccae8609bec9d75380cf5ec7e3c2ebefcf84f2bb"),
    ("iwslt17", "tst2016", "de"): (1133, "9d664bdbe8cbf3ae440da76a6bc6508ef4528698b7b85c90e485cf49e3daa633", "6f5f9f5441c0bf2181e63919e8422e14fdc3dbc097ecfa3a09dba9edec9d6e29"),
    ("iwslt17", "tst2016", "en"): (1133, "30e2fd59043e7b86f7157a24b3dc0a2a58e5f928b50b027e115b74c3fe2fff20", "806e5f3e420d6855258ed7c1ea943c40842fbe743e5cf2d3292ad5b69050cb59"),
    ("iwslt17", "tst2017", "de"): (1138, "2e1ae87e907e05d594dcebc564a1ae8c95b2a3471a1d6cc00bdd52fe92327c46", "4abb1461c4b0c8fbf420cf7325e087a470a9a384e6292fa18817ca7252e82022"),
    ("iwslt17", "tst2017", "en"): (1138, "5e96d9966c5a36a1d911aae6e81fcbf9018e14a6d23ac696a8073b4d1e28d43a", "2a0fc06a5858451c2b811e960c0d15c83a27a4a80ecfd9549875fd7afdcdae47"),
}

_GITHUB = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class Source:
    """Where a file comes from upstream. kind: gz (the mirror's own gzip file), text (plain
    text), wit3 (a member of a WIT3 .tgz archive, XML <seg> lines)."""

    url: str
    kind: str
    member: str = ""


@dataclass(frozen=True)
class SplitFile:
    corpus: str
    split: str
    lang: str
    lines: int
    sha256_gz: str
    sha256_text: str
    source: Source

    @property
    def mirror_path(self) -> str:
        return f"{self.corpus}/{self.split}.{self.lang}.gz"


@dataclass(frozen=True)
class Component:
    """One public archive of a corpus's training text (WMT's .tgz files): checked by size and
    sha256 before anything is read from it. A mirror holds it as `<corpus>/<file name>`."""

    name: str
    url: str
    size: int
    sha256: str
    members: dict[str, str]
    """Language -> the member of the archive holding that side."""
    lines: int
    """Sentence pairs in the members."""

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    splits: tuple[str, ...]
    train_split: str | None
    """None for evaluation-only corpora."""
    text_form: str = "raw"
    terms: str = ""
    langs: tuple[str, str] = ("en", "de")
    files: dict[tuple[str, str], SplitFile] = field(default_factory=dict, compare=False)
    components: dict[str, Component] = field(default_factory=dict, compare=False)
    """The archives the training split is made of (wmt14), in their order; empty: one file per language."""

    def file(self, split: str, lang: str) -> SplitFile:
        return self.files[(split, lang)]


def _source(corpus: str, split: str, lang: str) -> Source:
    if corpus == "multi30k":
        commit = "a3d2e0d26b56f3846f66a952536ffed4e401d05a"
        return Source(f"{_GITHUB}/multi30k/dataset/{commit}/data/task1/raw/{split}.{lang}.gz", "gz")
    if corpus == "wmt14":
        commit = "ac0f19c0bf3cb4e0d9450fcb2d7a9847c4bdd180"
        return Source(f"{_GITHUB}/Helsinki-NLP/OPUS-MT-testsets/{commit}/testsets/de-en/{split}.{lang}", "text")
    if corpus == "iwslt14":
        commit = "b3599ce82fb06fcfb26e45555c31c2e42247af01"
        return Source(f"{_GITHUB}/mt-upc/transformer-contributions-nmt/{commit}/data/iwslt14/{split}.{lang}", "text")
    if corpus == "iwslt17":
        commit = "e43615b79232e9cc0fccc76d90fd1c658146d29d"
        pair = "en/de/en-de" if lang == "en" else "de/en/de-en"
        member = f"{pair.split('/')[-1]}/IWSLT17.TED.{split}.{pair.split('/')[-1]}.{lang}.xml"
        return Source(f"{_GITHUB}/hlt-mt/WIT3/{commit}/archive/2017-01-ted-test/texts/{pair}.tgz", "wit3", member)
    raise KeyError(corpus)


_STATMT = "http://www.statmt.org"
# WMT14 en-de training text, as the WMT14 task page and fairseq, tensor2tensor and Hugging Face's
# wmt14 name it. Sizes and sha256 as TensorFlow Datasets' url_checksums/wmt14_translate.txt and
# Hugging Face datasets' wmt14 dataset_infos.json (statmt.org version) publish them; pairs as counted
# with `wc -l` (both sides agree).
WMT14_TRAIN = (
    Component("europarl_v7", f"{_STATMT}/wmt13/training-parallel-europarl-v7.tgz", 657_632_379,
              "0224c7c710c8a063dfd893b0cc0830202d61f4c75c17eb8e31836103d27d96e7",
              {"de": "training/europarl-v7.de-en.de", "en": "training/europarl-v7.de-en.en"}, 1_920_209),
    Component("commoncrawl", f"{_STATMT}/wmt13/training-parallel-commoncrawl.tgz", 918_311_367,
              "c7a74e2ea01ac6c920123108627e35278d4ccb5701e15428ffa34de86fa3a9e5",
              {"de": "commoncrawl.de-en.de", "en": "commoncrawl.de-en.en"}, 2_399_123),
    Component("news_commentary_v9", f"{_STATMT}/wmt14/training-parallel-nc-v9.tgz", 80_418_416,
              "cb8953f292298e6877ae433c98912b927cb0766b303f4540512ddd286c748485",
              {"de": "training/news-commentary-v9.de-en.de", "en": "training/news-commentary-v9.de-en.en"}, 201_288),
)


def _corpus(name: str, description: str, train_split: str | None, components: tuple[Component, ...] = (),
            **kwargs) -> Corpus:
    splits = tuple(dict.fromkeys([*(s for (c, s, _) in _SUMS if c == name), *([train_split] if components else [])]))
    files = {(s, lang): SplitFile(name, s, lang, *_SUMS[(name, s, lang)], _source(name, s, lang))
             for (c, s, lang) in _SUMS if c == name}
    return Corpus(name, description, splits, train_split, files=files, components={c.name: c for c in components},
                  **kwargs)


CORPORA: dict[str, Corpus] = {
    "multi30k": _corpus("multi30k", "Multi30k task 1 image descriptions (Elliott et al. 2016)", "train",
                        terms="non-commercial research and education (Flickr terms of use)"),
    "wmt14": _corpus("wmt14", "WMT14 en-de: train (Europarl v7, CommonCrawl, News Commentary v9; 4.5M pairs), "
                     "newstest2013 (dev), newstest2014 full (test)", "train", WMT14_TRAIN,
                     terms="free for research; cite Bojar et al. 2014"),
    "iwslt14": _corpus("iwslt14", "IWSLT'14 TED test set (fairseq split), tokenized and lowercased", None,
                       text_form="tokenized, lowercased", terms="CC BY-NC-ND 3.0 (TED)"),
    "iwslt17": _corpus("iwslt17", "IWSLT'17 TED test sets tst2016 and tst2017", None, terms="CC BY-NC-ND 3.0 (TED)"),
}
