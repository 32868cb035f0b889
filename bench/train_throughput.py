"""Training-step throughput of attnlab's Transformer against `torch.nn.Transformer`.

What it measures: target tokens per second (real, non-pad tokens only) of one full training
step -- forward, label-smoothed cross-entropy, backward and an AdamW step -- on the same fixed
synthetic batches for every variant. Setup as /work/shared/BASELINES.md: d_model 256, 3 + 3
layers, 4 heads, d_ff 1024, vocabulary 8,000, dropout 0.1, ~4,096 target tokens per step,
2 threads, median of 20 steps after 3 warm-ups.

The variants run in one process, interleaved step by step (every variant does step k on
batch k before any does step k + 1), so machine drift hits them all alike; each line reports
the median tokens/s and its ratio to the reference measured in the same run and mode.

  reference   torch.nn.Transformer (post-LN) + one shared embedding / output matrix + sinusoids
  default     attnlab defaults: post-LN, sinusoidal
  learned, rope, alibi, none   attnlab with that positional encoding
  pre         attnlab with norm_placement="pre"
Optional (--variants): matched-dropout (attnlab with the reference's attention and FFN
activation dropout) and default-math (attnlab default with SDPA forced to the math backend).

The default run does 7 variants x 23 steps x 2 modes and takes ~9-13 minutes on 2 cores;
other processes on the machine show up as low "min" values and a spread between the ratio of
medians and the paired ratio.

Run:  python bench/train_throughput.py                        (fp32 and bf16, all variants)
      python bench/train_throughput.py --quick                (tiny smoke run, seconds)
      python bench/train_throughput.py --modes bf16 --variants reference,default --steps 10
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnlab.config import ModelConfig
from attnlab.model import build_model, count_parameters

PAD, BOS, EOS = 0, 2, 3
ATTNLAB_VARIANTS = {  # name -> changes to the default ModelConfig
    "default": {},
    "learned": {"positional": "learned"},
    "rope": {"positional": "rope"},
    "alibi": {"positional": "alibi"},
    "none": {"positional": "none"},
    "pre": {"norm_placement": "pre"},
    # Not run by default: the reference's dropout layout (attention weights + FFN activation),
    # and the default model with SDPA forced to its math backend (see SDPA_MATH).
    "matched-dropout": {"attention_dropout": 0.1, "activation_dropout": 0.1},
    "default-math": {},
}
# Variants whose whole step runs under sdpa_kernel(MATH). attnlab otherwise gets SDPA's CPU
# flash kernel, whose bf16 backward is slow here (~4.6x its fp32 time in a profile); the
# reference gets the math path because its attention has dropout.
SDPA_MATH = {"default-math"}
DEFAULT_VARIANTS = ["reference", "default", "learned", "rope", "alibi", "none", "pre"]


class Reference(nn.Module):
    """nn.Transformer with one embedding matrix for source, target and pre-softmax, scaled by
    sqrt(d_model), plus sinusoidal positions and dropout on the embedding sums.

    Parameter count vs attnlab's default: nn.Transformer adds a final LayerNorm after the
    encoder and after the decoder (2 x 2 x d_model = 1,024 parameters here) which attnlab's
    post-LN stack does not have (its `final_norm` is an identity for post-LN). Also, the
    `dropout` of nn.Transformer is applied to the attention weights and after the FFN
    activation too, where attnlab's defaults (attention_dropout = activation_dropout = 0, as
    in the paper) have none -- a little extra work for the reference."""

    def __init__(self, cfg: ModelConfig, vocab: int, max_len: int = 1024) -> None:
        super().__init__()
        self.d_model = cfg.d_model
        self.embed = nn.Parameter(torch.randn(vocab, cfg.d_model) * cfg.d_model**-0.5)
        pos = torch.arange(max_len, dtype=torch.float64)[:, None]
        inv_freq = 10000.0 ** (-torch.arange(0, cfg.d_model, 2, dtype=torch.float64) / cfg.d_model)
        table = torch.zeros(max_len, cfg.d_model, dtype=torch.float64)
        table[:, 0::2], table[:, 1::2] = torch.sin(pos * inv_freq), torch.cos(pos * inv_freq)
        self.register_buffer("pe", table.float(), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.transformer = nn.Transformer(
            cfg.d_model, cfg.n_heads, cfg.encoder_layers, cfg.decoder_layers, cfg.d_ff, cfg.dropout,
            batch_first=True)

    def _embed(self, tokens: Tensor) -> Tensor:
        x = F.embedding(tokens, self.embed) * math.sqrt(self.d_model)
        return self.dropout(x + self.pe[: tokens.size(1)])

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        t = tgt_in.size(1)
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).triu(1)  # True = blocked
        src_pad, tgt_pad = src == PAD, tgt_in == PAD
        out = self.transformer(
            self._embed(src), self._embed(tgt_in), tgt_mask=causal, src_key_padding_mask=src_pad,
            tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad, tgt_is_causal=True)
        return F.linear(out, self.embed)


def make_batches(n_batches: int, max_tokens: int, vocab: int, lo: int, hi: int, seed: int = 0):
    """A few fixed (src, tgt_in, tgt_out, n_real_target_tokens) batches, bucketed by length.
    Lengths are log-normal around 16 tokens, clipped to [lo, hi]; the batches are picked
    evenly across the sorted pool, so short, medium and long sentences are all represented."""
    g = torch.Generator().manual_seed(seed)
    n = 40 * max_tokens // 16
    tgt_len = (torch.randn(n, generator=g) * 0.35 + math.log(16)).exp().round().clamp(lo, hi).long()
    src_len = (tgt_len * (0.8 + 0.4 * torch.rand(n, generator=g))).round().clamp(lo, hi).long()
    order = sorted(range(n), key=lambda i: (int(tgt_len[i]), int(src_len[i])))
    chunks, current, tokens = [], [], 0
    for i in order:  # each sentence gives len + 1 target tokens (bos .. / .. eos)
        if tokens + int(tgt_len[i]) + 1 > max_tokens:
            chunks.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += int(tgt_len[i]) + 1
    picks = [chunks[round(k * (len(chunks) - 1) / max(n_batches - 1, 1))] for k in range(n_batches)]
    batches = []
    for chunk in picks:
        b, s, t = len(chunk), int(src_len[chunk].max()), int(tgt_len[chunk].max()) + 1
        src = torch.full((b, s), PAD, dtype=torch.long)
        tgt = torch.full((b, t + 1), PAD, dtype=torch.long)
        for row, i in enumerate(chunk):
            ls, lt = int(src_len[i]), int(tgt_len[i])
            src[row, :ls] = torch.randint(4, vocab, (ls,), generator=g)
            tgt[row, 0], tgt[row, lt + 1] = BOS, EOS
            tgt[row, 1 : lt + 1] = torch.randint(4, vocab, (lt,), generator=g)
        tgt_in, tgt_out = tgt[:, :-1].clone(), tgt[:, 1:].clone()
        tgt_in[tgt_in == EOS] = PAD  # eos is never an input
        batches.append((src, tgt_in, tgt_out, int((tgt_out != PAD).sum())))
    return batches


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch, autocast, math_sdpa=False) -> float:
    """One full training step; returns its wall time in seconds."""
    src, tgt_in, tgt_out, _ = batch
    start = time.perf_counter()
    with sdpa_kernel(SDPBackend.MATH) if math_sdpa else nullcontext():
        opt.zero_grad(set_to_none=True)
        with autocast():
            logits = model(src, tgt_in)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt_out.reshape(-1),
                                   ignore_index=PAD, label_smoothing=0.1)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="measured steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps per variant first")
    p.add_argument("--modes", default="fp32,bf16", help="comma list of fp32, bf16 (bf16 = CPU autocast)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma list of reference, {', '.join(ATTNLAB_VARIANTS)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=4096, help="target tokens per batch")
    p.add_argument("--batches", type=int, default=3, help="distinct fixed batches, used in turn")
    p.add_argument("--quick", action="store_true", help="tiny model and batches: a smoke run")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    if args.quick:
        cfg, vocab = ModelConfig(n_layers=1, d_model=64, d_ff=128, n_heads=2), 1000
        args.tokens, args.steps, args.warmup = 512, min(args.steps, 3), min(args.warmup, 1)
    else:
        cfg, vocab = ModelConfig(n_layers=3, d_model=256, d_ff=1024, n_heads=4, dropout=0.1), 8000
    modes = args.modes.split(",")
    names = args.variants.split(",")
    for name in names:
        if name != "reference" and name not in ATTNLAB_VARIANTS:
            p.error(f"unknown variant {name!r}")
    if "reference" not in names:
        names.insert(0, "reference")  # the ratios need it
    for mode in modes:
        if mode not in ("fp32", "bf16"):
            p.error(f"unknown mode {mode!r}")

    batches = make_batches(args.batches, args.tokens, vocab, lo=8, hi=40)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {cfg.encoder_layers}+"
          f"{cfg.decoder_layers} layers, d_model {cfg.d_model}, d_ff {cfg.d_ff}, {cfg.n_heads} heads, "
          f"vocab {vocab}, dropout {cfg.dropout}")
    for src, tgt_in, _, n in batches:
        print(f"  batch {tuple(src.shape)} src, {tuple(tgt_in.shape)} tgt: {n} real target tokens, "
              f"{n / tgt_in.numel():.0%} of padded")

    torch.manual_seed(0)
    models: dict[str, nn.Module] = {}
    for name in names:
        models[name] = (Reference(cfg, vocab) if name == "reference"
                        else build_model(dataclasses.replace(cfg, **ATTNLAB_VARIANTS[name]), vocab, PAD, BOS, EOS))
        models[name].train()
    params = {name: count_parameters(m) for name, m in models.items()}
    print(f"parameters: reference {params['reference']:,}; " +
          "; ".join(f"attnlab {n} {params[n]:,}" for n in names if n != "reference"))
    if "default" in params:  # see Reference's docstring: nn.Transformer's two final LayerNorms
        print(f"  reference - attnlab default = {params['reference'] - params['default']:,} "
              f"(2 final LayerNorms = {4 * cfg.d_model:,})")

    results: dict[tuple[str, str], float] = {}
    t0 = time.perf_counter()
    for mode in modes:
        autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mode == "bf16" else nullcontext)
        opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
        rates: dict[str, list[float]] = {n: [] for n in names}
        for step in range(args.warmup + args.steps):
            batch = batches[step % len(batches)]
            for name in names:  # round-robin: each variant does this step before the next step
                seconds = train_step(models[name], opts[name], batch, autocast, name in SDPA_MATH)
                if step >= args.warmup:
                    rates[name].append(batch[3] / seconds)
        for name in names:
            results[name, mode] = statistics.median(rates[name])
            ratio = results[name, mode] / results["reference", mode]
            # Paired: median over steps of (this step's rate / the reference's in the same round);
            # less sensitive to bursts of load from other processes than the ratio of medians.
            paired = statistics.median(r / ref for r, ref in zip(rates[name], rates["reference"]))
            print(f"[{mode}] {name:16s} {results[name, mode]:8.0f} tok/s  {ratio:5.2f}x reference  "
                  f"(paired {paired:.2f}x; min {min(rates[name]):.0f}, max {max(rates[name]):.0f})")
    wall = time.perf_counter() - t0

    print(f"\nMedian target tokens/s over {args.steps} steps after {args.warmup} warm-ups "
          f"(ratio: against the reference in the same run and mode); {wall:.0f} s measuring\n")
    print("| variant | parameters | " + " | ".join(f"{m} tok/s | {m} vs ref" for m in modes) + " |")
    print("| --- | ---: | " + " | ".join("---: | ---:" for _ in modes) + " |")
    for name in names:
        label = "nn.Transformer (reference)" if name == "reference" else f"attnlab {name}"
        cells = " | ".join(f"{results[name, m]:,.0f} | {results[name, m] / results['reference', m]:.2f}x"
                           for m in modes)
        print(f"| {label} | {params[name]:,} | {cells} |")


if __name__ == "__main__":
    main()
