"""Frozen configuration dataclasses.

Strings from YAML or the CLI become configs once, here, at the edge (through attnlab.fields);
everything below reads typed, validated fields. Derive a variant with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from attnlab.errors import ConfigError  # re-exported: `from attnlab.config import ConfigError`
from attnlab.fields import check_types, flatten, from_dict, to_dict

Positional = Literal["sinusoidal", "learned", "rope", "alibi", "none"]
NormPlacement = Literal["post", "pre"]
Norm = Literal["layernorm", "rmsnorm", "scalenorm", "batchnorm"]
TieEmbeddings = Literal["all", "decoder", "none"]
Activation = Literal["relu", "gelu", "silu"]
AttentionKind = Literal["multi_head"]
AttentionScale = Literal["sqrt_dk", "none", "dk"]
FeedForwardKind = Literal["standard", "gated"]
Warmup = Literal["linear", "none"]





@dataclass(frozen=True)
class ModelConfig:
    """The encoder-decoder Transformer. Defaults are the paper's base model (Vaswani et al. 2017)."""

    n_layers: int = 6
    """N: layers in the encoder and in the decoder."""
    n_encoder_layers: int | None = None
    """Overrides n_layers for the encoder."""
    n_decoder_layers: int | None = None
    """Overrides n_layers for the decoder."""
    d_model: int = 512
    """Width of embeddings and of every sub-layer output."""
    d_ff: int = 2048
    """Inner width of the position-wise feed-forward network."""
    n_heads: int = 8
    """h: attention heads per attention layer."""
    d_k: int | None = None
    """Per-head query/key size; None means d_model / n_heads (Table 3 rows A and B change it)."""
    d_v: int | None = None
    """Per-head value size; None means d_model / n_heads."""
    dropout: float = 0.1
    """P_drop: dropout on every sub-layer output and on the embedding sums."""
    attention_dropout: float = 0.0
    """Dropout on attention weights (the paper has none)."""
    activation_dropout: float = 0.0
    """Dropout after the feed-forward activation (the paper has none)."""
    positional: Positional = "sinusoidal"
    """How positions reach attention: added to embeddings (sinusoidal, learned), rotated into
    q/k (rope), a bias on the scores (alibi), or nothing (none)."""
    max_positions: int = 1024
    """Longest sequence a learned position table holds."""
    norm_placement: NormPlacement = "post"
    """post: x = Norm(x + Sublayer(x)) as in the paper; pre: x = x + Sublayer(Norm(x))."""
    norm: Norm = "layernorm"
    """Normalisation used around every sub-layer; batchnorm normalises each feature over the
    batch's real tokens (padding never enters its statistics), with running statistics at
    evaluation."""
    norm_eps: float = 1e-5
    """Epsilon of the normalisation layers."""
    tie_embeddings: TieEmbeddings = "all"
    """all: one matrix for source, target and pre-softmax (joint vocabulary, as the paper);
    decoder: target embedding and pre-softmax shared; none: three matrices."""
    scale_embeddings: bool = True
    """Multiply embeddings by sqrt(d_model) before adding positions."""
    activation: Activation = "relu"
    """Non-linearity of the feed-forward network (of its gate, for feed_forward="gated")."""
    attention: AttentionKind = "multi_head"
    """The attention layer: scaled dot-product attention over h heads."""
    attention_scale: AttentionScale = "sqrt_dk"
    """What the scores QK^T are multiplied by: 1/sqrt(d_k) (the paper), none (1), or 1/d_k."""
    n_kv_heads: int | None = None
    """Key/value heads, each shared by n_heads / n_kv_heads query heads (grouped-query
    attention; 1 is multi-query); None: n_heads, the paper's attention."""
    feed_forward: FeedForwardKind = "standard"
    """standard: W_2 act(W_1 x); gated: W_2 (act(W_1 x) * V x), a GLU whose inner width (2/3 of
    d_ff) keeps the parameter count of the standard one."""
    mask_future_in_training: bool = True
    """False: the decoder's self-attention sees future target tokens while training (teacher
    forcing lets it copy them), never at inference. A teaching row, not an option to use."""

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("n_layers", "d_model", "d_ff", "n_heads", "max_positions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ModelConfig.{name}={getattr(self, name)} must be a positive integer")
        for name in ("n_encoder_layers", "n_decoder_layers", "d_k", "d_v", "n_kv_heads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"ModelConfig.{name}={value} must be a positive integer or None")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"ModelConfig.{name}={getattr(self, name)} must be in [0, 1)")
        if (self.d_k is None or self.d_v is None) and self.d_model % self.n_heads:
            raise ConfigError(
                f"ModelConfig: n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                "choose a divisor or set d_k and d_v explicitly"
            )
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ConfigError(f"ModelConfig: n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                              "(each key/value head serves the same number of query heads)")
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"ModelConfig: positional='sinusoidal' needs an even d_model, got {self.d_model}")
        if self.positional == "rope" and self.key_dim % 2:
            raise ConfigError(f"ModelConfig: positional='rope' rotates pairs and needs an even d_k, got {self.key_dim}")

    @property
    def key_dim(self) -> int:
        """d_k as used: the explicit value or d_model / n_heads."""
        return self.d_k if self.d_k is not None else self.d_model // self.n_heads

    @property
    def value_dim(self) -> int:
        """d_v as used: the explicit value or d_model / n_heads."""
        return self.d_v if self.d_v is not None else self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads as used: n_kv_heads or n_heads."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def encoder_layers(self) -> int:
        return self.n_encoder_layers if self.n_encoder_layers is not None else self.n_layers

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers if self.n_decoder_layers is not None else self.n_layers

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "model") -> ModelConfig:
        return from_dict(cls, values, where)


@dataclass(frozen=True)
class DecodeConfig:
    """Search settings; defaults are the paper's (section 6.1)."""

    beam_size: int = 4
    """Hypotheses kept per sentence; 1 is greedy search."""
    length_penalty: float = 0.6
    """alpha of the GNMT length penalty ((5 + len) / 6) ** alpha."""
    max_len_a: float = 1.0
    """Maximum output length = max_len_a * source length + max_len_b."""
    max_len_b: int = 50
    max_tokens: int | None = None
    """Source tokens per search batch, the beam's copies included; None: data.max_tokens. A GPU
    decodes the final evaluation fastest in batches much larger than training's."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"DecodeConfig.max_tokens={self.max_tokens} must be a positive integer, or null")
        if self.beam_size < 1:
            raise ConfigError(f"DecodeConfig.beam_size={self.beam_size} must be >= 1")
        if self.length_penalty < 0:
            raise ConfigError(f"DecodeConfig.length_penalty={self.length_penalty} must be >= 0")
        if self.max_len_a < 0 or self.max_len_b < 1:
            raise ConfigError(
                f"DecodeConfig: max_len_a={self.max_len_a} must be >= 0 and max_len_b={self.max_len_b} >= 1"
            )


VocabType = Literal["bpe", "unigram"]


@dataclass(frozen=True)
class DataConfig:
    """A parallel corpus, its joint sentencepiece vocabulary and its batches."""

    corpus: str = "multi30k"
    """A registered corpus (multi30k, wmt14, iwslt14, iwslt17) or "custom" (see custom_files)."""
    src_lang: str = "en"
    tgt_lang: str = "de"
    train_split: str = "train"
    train_components: tuple[str, ...] | None = None
    """For a training split made of archives (wmt14 train: europarl_v7, commoncrawl,
    news_commentary_v9), the ones to use, in order; None: all of them."""
    valid_split: str = "val"
    test_splits: tuple[str, ...] = ("test_2016_flickr",)
    """Evaluation splits; "corpus/split" picks another corpus, e.g. "wmt14/newstest2014"."""
    custom_files: dict[str, str] | None = None
    """For corpus="custom": split -> "source_file,target_file" or "pairs.tsv" (source<TAB>target)."""
    vocab_size: int = 8000
    vocab_type: VocabType = "bpe"
    vocab_sample: int = 2_000_000
    """Sentences (of both languages) drawn at random, by seed, to train the vocabulary on: all
    of a small corpus; a bounded sample of a large one (WMT14 has 9M)."""
    max_tokens: int = 4096
    """Token budget per batch, padding included, on the source and on the target side."""
    length_buckets: int | None = None
    """Pad training and validation batches to this many lengths, and each to a fixed number of
    rows, so that batch shapes repeat (what train.compile and CUDA graphs need); None: pad each
    batch to its longest sentence."""
    max_words: int = 250
    """Training pairs with more whitespace-separated words on either side are dropped."""
    max_length_ratio: float = 3.0
    """Training pairs whose longer side has more than this many times the words of the other are dropped."""
    seed: int = 1
    """Batch order and the vocabulary's sentence sample."""
    max_train_sentences: int | None = None
    """Use only the first N training pairs (after cleaning): quick runs and smoke studies."""
    max_eval_sentences: int | None = None
    """Use only the first N sentences of the validation and test splits: quick runs only, the
    scores are then not comparable with full-set numbers."""
    cache_dir: str | None = None
    """Downloads and derived files; None means $ATTNLAB_CACHE or ~/.cache/attnlab."""
    mirror: str | None = None
    """A folder or URL laid out like <corpus>/<split>.<lang>.gz; None means $ATTNLAB_DATA_MIRROR,
    else the public sources."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.src_lang == self.tgt_lang:
            raise ConfigError(f"DataConfig: src_lang and tgt_lang are both {self.src_lang!r}")
        for name in ("vocab_size", "vocab_sample", "max_tokens", "max_words"):
            if getattr(self, name) < 1:
                raise ConfigError(f"DataConfig.{name}={getattr(self, name)} must be a positive integer")
        if self.max_length_ratio < 1:
            raise ConfigError(f"DataConfig.max_length_ratio={self.max_length_ratio} must be >= 1")
        if self.length_buckets is not None and self.length_buckets < 1:
            raise ConfigError(f"DataConfig.length_buckets={self.length_buckets} must be >= 1, or null for none")
        if (self.corpus == "custom") != (self.custom_files is not None):
            raise ConfigError('DataConfig: custom_files is needed exactly when corpus="custom"')
        object.__setattr__(self, "test_splits", tuple(self.test_splits))
        for split in (self.train_split, self.valid_split, *self.test_splits):
            self._check_split(split)
        if self.train_components is not None:
            object.__setattr__(self, "train_components", tuple(self.train_components))
            self._check_components()

    def _check_split(self, split: str) -> None:
        """Corpus, split and languages against the registry, so a misspelt name fails when the file
        is read, not in every trial."""
        from attnlab.data.registry import CORPORA

        corpus, _, name = split.rpartition("/")
        corpus = corpus or self.corpus
        if corpus == "custom":  # the user's own files: reading them names a missing one before any compute
            return
        if corpus not in CORPORA:
            close = difflib.get_close_matches(corpus, list(CORPORA), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"DataConfig: unknown corpus {corpus!r}; {hint}valid: {', '.join(CORPORA)}, custom")
        known = CORPORA[corpus]
        if name not in known.splits:
            close = difflib.get_close_matches(name, list(known.splits), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"DataConfig: corpus {corpus!r} has no split {name!r}; "
                              f"{hint}valid: {', '.join(known.splits)}")
        for lang in (self.src_lang, self.tgt_lang):
            if lang not in known.langs:
                raise ConfigError(f"DataConfig: corpus {corpus!r} has no language {lang!r}; "
                                  f"valid: {', '.join(known.langs)}")

    def _check_components(self) -> None:
        from attnlab.data.registry import CORPORA

        corpus, _, name = self.train_split.rpartition("/")
        known = CORPORA.get(corpus or self.corpus)
        offered = tuple(known.components) if known is not None and name == known.train_split else ()
        if not offered:
            raise ConfigError(f"DataConfig.train_components: {(corpus or self.corpus)!r} {name!r} is not made of "
                              "components; leave it null")
        unknown = [c for c in self.train_components if c not in offered]
        if unknown or not self.train_components or len(set(self.train_components)) < len(self.train_components):
            raise ConfigError(f"DataConfig.train_components={list(self.train_components)}: choose distinct ones "
                              f"among {', '.join(offered)}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "data") -> DataConfig:
        return from_dict(cls, values, where)


Precision = Literal["32-true", "bf16-mixed", "16-mixed"]
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune"]
WandbMode = Literal["auto", "online", "offline", "disabled"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the Lightning Trainer. Defaults are the paper's recipe (section 5)."""

    seed: int = 1
    max_steps: int | None = None
    """Optimizer steps; None: no step limit (set max_epochs or max_minutes)."""
    max_epochs: int | None = None
    max_minutes: float | None = None
    """Wall-clock budget for the fit (validation included, as Lightning counts it)."""
    max_train_minutes: float | None = None
    """Budget of pure training time (forward, backward, update), validation not counted."""
    lr_scale: float = 1.0
    """lrate = lr_scale * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)."""
    peak_lr: float | None = None
    """Alternative to lr_scale: the learning rate reached at the end of warmup."""
    warmup_steps: int = 4000
    warmup: Warmup = "linear"
    """linear: the paper's ramp to the peak over warmup_steps; none: the peak from the first
    step until warmup_steps, then the same decay, so only the ramp is missing (the warm-up
    ablation; warmup_steps: 1 instead would also decay from step 1)."""
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    grad_clip: float | None = None
    """Clip the gradient norm to this value; None: no clipping."""
    precision: Precision = "32-true"
    accumulate_grad_batches: int = 1
    """Batches per optimizer step (reach the paper's ~25,000 tokens on a small device)."""
    val_every_steps: int | None = None
    """Validate every n optimizer steps; None: at the end of every epoch."""
    val_bleu: bool = True
    """Translate the validation set at each validation for BLEU/chrF (costs decoding time)."""
    val_beam_size: int | None = None
    """Beam for validation BLEU; None: the run's DecodeConfig (beam 4 by default); 1: greedy, fast."""
    keep_checkpoints: int = 5
    """Most recent checkpoints kept (the paper averages the last 5)."""
    checkpoint_every_steps: int | None = None
    """Also write a checkpoint every n steps (default: at each validation)."""
    accelerator: str = "auto"
    devices: int | str = "auto"
    """Processes per node (GPUs, or CPU processes): 2, "0,1", or auto."""
    strategy: str = "auto"
    """ddp (Lightning starts the ranks, or torchrun/srun did), ddp_spawn, or auto."""
    num_nodes: int = 1
    """Machines; more than 1 needs torchrun or srun to start a process per node."""
    rendezvous_timeout: float = 45.0
    """Seconds the ranks of a multi-process run wait for each other before failing with a message."""
    threads: int | None = None
    """torch.set_num_threads for this process; None keeps torch's default."""
    log_every_steps: int = 10
    """Scalars go to the logger every n optimizer steps."""
    compile: CompileMode = "off"
    """torch.compile the model's training forward: default, reduce-overhead (CUDA graphs; use
    data.length_buckets so shapes repeat) or max-autotune; off (measured slower on CPU)."""
    attention_stats: bool = True
    """Attention statistics and head importance on a validation sample after training."""
    attention_sample: int = 64
    """Validation sentences used for attention statistics."""

    def __post_init__(self) -> None:
        check_types(self)
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        if all(getattr(self, k) is None for k in ("max_steps", "max_epochs", "max_minutes", "max_train_minutes")):
            raise ConfigError("TrainConfig: set at least one of max_steps, max_epochs, max_minutes, max_train_minutes")
        if self.peak_lr is not None and self.lr_scale != 1.0:
            raise ConfigError("TrainConfig: set lr_scale or peak_lr, not both")
        if self.val_beam_size is not None and self.val_beam_size < 1:
            raise ConfigError(f"TrainConfig.val_beam_size={self.val_beam_size} must be >= 1 or None")
        if self.rendezvous_timeout <= 0:
            raise ConfigError(f"TrainConfig.rendezvous_timeout={self.rendezvous_timeout} must be > 0 seconds")
        for name in ("warmup_steps", "accumulate_grad_batches", "keep_checkpoints", "num_nodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"TrainConfig.label_smoothing={self.label_smoothing} must be in [0, 1)")


@dataclass(frozen=True)
class LoggingConfig:
    """Weights & Biases and console output."""

    wandb: WandbMode = "auto"
    """auto: online when an API key is configured, else offline (sync later); disabled: no W&B."""
    project: str = "attnlab"
    entity: str | None = None
    group: str | None = None
    job_type: str = "train"
    tags: tuple[str, ...] = ()
    progress_bar: bool = True
    quiet: bool = False
    """Only warnings and the final result on the console."""

    def __post_init__(self) -> None:
        check_types(self)
        object.__setattr__(self, "tags", tuple(self.tags))


# Fields that do not change what a run computes: editing them never makes a run or a row "changed".
NOT_DEFINING = ("name", "output_dir", "logging.", "data.cache_dir", "data.mirror", "train.threads",
                "train.log_every_steps", "train.rendezvous_timeout", "decode.max_tokens")
# Budgets: a run may be resumed with more (or fewer) steps or minutes than it started with.
BUDGETS = ("train.max_steps", "train.max_epochs", "train.max_minutes", "train.max_train_minutes")
# Where and how a run is split, not what it computes: a definition holds their one product that
# does, the batches per optimizer step, so 2 ranks and 1 process accumulating 2 batches are one run.
PLACEMENT = ("train.accelerator", "train.devices", "train.num_nodes", "train.strategy", "train.accumulate_grad_batches")
BATCHES_PER_STEP = "train.devices x num_nodes x accumulate_grad_batches"


def device_count(devices: int | str, accelerator: str = "auto") -> int | None:
    """How many processes per node `train.devices` asks for; None when the machine decides (auto, -1)."""
    if isinstance(devices, int):
        return devices if devices > 0 else None
    text = devices.strip()
    if text.isdigit():
        return int(text)
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return 1 if accelerator == "cpu" and text == "auto" else None


def without_placement(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flat definition with the placement fields replaced by BATCHES_PER_STEP (also for
    definitions stored before it existed; idempotent)."""
    if not any(k in flat for k in PLACEMENT):
        return dict(flat)
    out = {k: v for k, v in flat.items() if k not in PLACEMENT}
    nodes, accumulate = flat.get("train.num_nodes", 1), flat.get("train.accumulate_grad_batches", 1)
    devices = device_count(flat.get("train.devices", "auto"), flat.get("train.accelerator", "auto"))
    out[BATCHES_PER_STEP] = devices * nodes * accumulate if devices else f"auto x {nodes} x {accumulate}"
    return out


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "decode": DecodeConfig,
            "logging": LoggingConfig}


def stored_definition(stored: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """A definition stored by an earlier attnlab, read as this one writes them: placement as
    BATCHES_PER_STEP, fields that no longer define a run (NOT_DEFINING) left out, and each field
    added since at its default (which keeps the old meaning), so that a new field alone never
    makes an old study's rows read as changed."""
    out = {k: v for k, v in without_placement(stored).items() if not k.startswith(NOT_DEFINING)}
    for key in current.keys() - out.keys():
        section, _, name = key.partition(".")
        known = {f.name: f for f in dataclasses.fields(SECTIONS[section])} if section in SECTIONS else {}
        if name in known and known[name].default is not dataclasses.MISSING:
            out[key] = json.loads(json.dumps(known[name].default))
    return out


@dataclass(frozen=True)
class ExperimentConfig:
    """One training run: what to build, on what data, how to train, decode and log it."""

    name: str = "run"
    output_dir: str = "runs"
    """Run folders are created under it: <output_dir>/<name>."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig(max_epochs=1)
    decode: DecodeConfig = DecodeConfig()
    logging: LoggingConfig = LoggingConfig()

    def __post_init__(self) -> None:
        check_types(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "config") -> ExperimentConfig:
        return from_dict(cls, values, where)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def definition(self, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
        """What a run computes, as flat JSON-able fields (`model.n_heads: 4`), less the fields that
        do not change it (NOT_DEFINING) and `ignore`: compared to notice that a stored run or a
        study's row now means something else."""
        values = without_placement(flatten(json.loads(json.dumps(self.to_dict()))))
        return {k: v for k, v in values.items() if not k.startswith((*NOT_DEFINING, *ignore))}



CONFIG_SHAPE = "a config needs name, output_dir and model/data/train/decode/logging sections"
