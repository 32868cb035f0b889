"""The paper's base model on one GPU in bf16: training tokens/s and model FLOPs utilisation.

    python bench/gpu_base.py [--steps 300] [--warmup 20] [--tokens 25000] [--vocab 37000] [--compile]

Synthetic batches of about `--tokens` source and `--tokens` target tokens (the paper's batch),
sentences of 20-40 tokens, the base model (6+6 layers, d_model 512, 8 heads, d_ff 2048, one
shared 37,000-token embedding), label smoothing 0.1, Adam with the paper's schedule, bf16
autocast. MFU = model FLOPs per second / the GPU's dense bf16 peak, with model FLOPs counted
as 6 x (parameters touched per token) per token plus the attention score and value products
(x3 for forward and backward), the usual convention (Kaplan et al. 2020; PaLM appendix B).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from attnlab.config import ModelConfig
from attnlab.model import build_model, count_parameters
from attnlab.train.schedule import noam_scheduler

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def batch(tokens: int, vocab: int, device: torch.device, gen: torch.Generator):
    lengths = torch.randint(20, 41, (tokens // 30,), generator=gen)
    n = int((lengths.cumsum(0) <= tokens).sum())
    s, t = int(lengths[:n].max()), int(lengths[:n].max())
    src = torch.randint(4, vocab, (n, s), generator=gen)
    tgt = torch.randint(4, vocab, (n, t + 1), generator=gen)
    for i, length in enumerate(lengths[:n].tolist()):
        src[i, length:] = 0
        tgt[i, length + 1 :] = 0
    return src.to(device), tgt[:, :-1].to(device), tgt[:, 1:].to(device)


def model_flops(config: ModelConfig, vocab: int, src_tokens: int, tgt_tokens: int, s: int, t: int, n: int) -> float:
    """Training FLOPs of one step (forward + backward = 3 x forward)."""
    d, layers = config.d_model, config.n_layers
    attention = 4 * d * d + 2 * d * config.d_ff  # weights per layer: projections + FFN
    encoder = layers * attention * src_tokens
    decoder = layers * (attention + 4 * d * d) * tgt_tokens  # + cross-attention projections
    output = vocab * d * tgt_tokens
    scores = 2 * layers * d * n * (s * s + t * t + t * s)  # QK^T and AV, per attention kind
    return 3 * 2 * (encoder + decoder + output + scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=25000)
    parser.add_argument("--vocab", type=int, default=37000)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu only to dry-run this script with tiny --tokens")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for a GPU machine")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    config = ModelConfig()
    model = build_model(config, args.vocab).to(device).train()
    step_fn = torch.compile(model) if args.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9, fused=cuda)
    scheduler = noam_scheduler(optimizer, config.d_model, 4000)
    gen = torch.Generator().manual_seed(1)
    batches = [batch(args.tokens, args.vocab, device, gen) for _ in range(8)]
    times, tokens, flops = [], [], []
    for step in range(args.warmup + args.steps):
        src, tgt_in, tgt_out = batches[step % len(batches)]
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = step_fn(src, tgt_in)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=0, label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            real_tgt, real_src = int((tgt_out != 0).sum()), int((src != 0).sum())
            tokens.append(real_tgt)
            flops.append(model_flops(config, args.vocab, real_src, real_tgt, src.size(1), tgt_in.size(1), src.size(0)))
    name = torch.cuda.get_device_name() if cuda else "cpu"
    median = statistics.median(times)
    tok_s = sum(tokens) / sum(times)
    achieved = sum(flops) / sum(times)
    peak = peak_flops(name)
    print(f"{name}; base model {count_parameters(model) / 1e6:.1f}M parameters, vocabulary {args.vocab}, bf16 autocast"
          f"{', torch.compile' if args.compile else ''}")
    print(f"{args.steps} steps of ~{statistics.mean(tokens):,.0f} target tokens: median step {median * 1000:.0f} ms, "
          f"{tok_s:,.0f} target tokens/s, "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30 if cuda else 0:.1f} GiB")
    print(f"model FLOPs {achieved / 1e12:.1f} TFLOP/s" + (f" = {achieved / peak:.1%} MFU of {peak / 1e12:.0f} TFLOP/s"
                                                          if peak else " (peak unknown for this GPU)"))
    print(f"the paper: 8 P100s, ~0.4 s per step of ~25,000 tokens: ~{25000 / 0.4:,.0f} target tokens/s in all")


if __name__ == "__main__":
    main()
