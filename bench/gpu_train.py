"""One training step on one GPU, the raw loop against the attnlab path, in one process.

    python bench/gpu_train.py --model base       [--steps 60] [--warmup 15] [--tokens 25000] [--compile]
    python bench/gpu_train.py --model multi30k   [--tokens 8192] [--compile] [--profile out/profile.txt]
    python bench/gpu_train.py --device cpu --model multi30k --tokens 512 --steps 3 --warmup 1   (a dry run)

Both paths train the same model (`--model base`: the paper's 6+6 layers, d_model 512, 37,000
shared vocabulary; `multi30k`: ../shared/BASELINES.md's 3+3 layers, d_model 256, 8,000) on the
same synthetic batches (sentences of 20-40 tokens, about `--tokens` target tokens a step), in bf16
autocast with fp32 loss, label smoothing 0.1, Adam (fused on CUDA) and the paper's schedule:

  raw       a plain PyTorch loop (what bench/gpu_base.py measures)
  attnlab   TranslationModule + Lightning Trainer (bf16-mixed), its TrainClock and logging as in a run

With --compile each is also run with torch.compile (the raw loop compiles the model; attnlab sets
train.compile). Printed per variant: target tokens/s, the ratio to the raw loop of the same
mode, MFU, peak memory and the seconds its first steps took beyond the eager ones (compile time).
MFU = model FLOPs per second / the GPU's dense bf16 peak from its data sheet (989 TFLOP/s for
H100 and H200 SXM); model FLOPs = 3 x 2 x (weights touched per token x tokens + attention score
and value products), gpu_base.model_flops (Kaplan et al. 2020; PaLM appendix B). --profile writes
the attnlab path's top CUDA kernels and host time for a few steps to a file.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from attnlab.config import ModelConfig, TrainConfig
from attnlab.model import build_model, count_parameters
from attnlab.train.callbacks import TrainClock
from attnlab.train.module import TranslationModule
from attnlab.train.schedule import noam_scheduler
from gpu_base import batch, model_flops, peak_flops

MODELS = {"base": (ModelConfig(), 37000, 25000),
          "multi30k": (ModelConfig(n_layers=3, d_model=256, n_heads=4, d_ff=1024), 8000, 8192)}


@dataclass
class Measured:
    name: str
    tokens_per_s: float
    flops_per_s: float
    peak_gib: float
    first_steps_s: float  # the warm-up steps' time: compile time shows here


def batches(args, vocab: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(8):
        src, tgt_in, tgt_out = batch(args.tokens, vocab, device, gen)
        out.append({"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out, "index": torch.arange(src.size(0))})
    return out


def step_flops(config: ModelConfig, vocab: int, b: dict[str, torch.Tensor]) -> tuple[int, float]:
    real_tgt, real_src = int((b["tgt_out"] != 0).sum()), int((b["src"] != 0).sum())
    return real_tgt, model_flops(config, vocab, real_src, real_tgt, b["src"].size(1), b["tgt_in"].size(1),
                                 b["src"].size(0))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def raw_loop(args, config: ModelConfig, vocab: int, data, device: torch.device, compiled: bool) -> Measured:
    model = build_model(config, vocab).to(device).train()
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9,
                                 fused=True if device.type == "cuda" else None)
    scheduler = noam_scheduler(optimizer, config.d_model, 4000)
    marks = []
    for step in range(args.warmup + args.steps):
        b = data[step % len(data)]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = forward(b["src"], b["tgt_in"])
        loss = F.cross_entropy(logits.float().flatten(0, 1), b["tgt_out"].flatten(), ignore_index=0,
                               label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step in (0, args.warmup - 1, args.warmup + args.steps - 1):
            sync(device)
            marks.append(time.perf_counter())
    return _measured("raw" + (" compiled" if compiled else ""), args, config, vocab, data, marks)


class _Marks(pl.Callback):
    """Times at the end of the first step, of the warm-up and of the last step (synchronised)."""

    def __init__(self, at: tuple[int, ...]) -> None:
        self.at, self.marks = at, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx in self.at:
            sync(pl_module.device)
            self.marks.append(time.perf_counter())


def attnlab_path(args, config: ModelConfig, vocab: int, data, device: torch.device, compiled: bool) -> Measured:
    model = build_model(config, vocab)
    train = TrainConfig(max_steps=args.warmup + args.steps, warmup_steps=4000, log_every_steps=10,
                        precision="bf16-mixed", compile="default" if compiled else "off")
    module = TranslationModule(model, train)
    marks = _Marks((0, args.warmup - 1, args.warmup + args.steps - 1))
    loader = [data[i % len(data)] for i in range(args.warmup + args.steps)]
    trainer = pl.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision="bf16-mixed",
                         max_steps=train.max_steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[TrainClock("/tmp/gpu_train_stats.json", 0, 10, None), marks])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(loader, batch_size=None))
    return _measured("attnlab" + (" compiled" if compiled else ""), args, config, vocab, data, marks.marks)


def _measured(name, args, config, vocab, data, marks) -> Measured:
    tokens = flops = 0.0
    for step in range(args.warmup, args.warmup + args.steps):
        t, f = step_flops(config, vocab, data[step % len(data)])
        tokens, flops = tokens + t, flops + f
    seconds = marks[2] - marks[1]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return Measured(name, tokens / seconds, flops / seconds, peak, marks[1] - marks[0])


def profile(args, config: ModelConfig, vocab: int, data, device: torch.device, path: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    short = argparse.Namespace(**{**vars(args), "warmup": 3, "steps": 5})
    with torch_profile(activities=activities) as prof:
        attnlab_path(short, config, vocab, data, device, compiled=False)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    with open(path, "w") as f:
        f.write(prof.key_averages().table(sort_by=key, row_limit=25))
    print(f"profile of the attnlab path (8 steps) -> {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="base")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--tokens", type=int, help="target tokens per step (default: 25000 base, 8192 multi30k)")
    parser.add_argument("--compile", action="store_true", help="also run both paths compiled")
    parser.add_argument("--profile", help="write a profile summary of the attnlab path to this file")
    parser.add_argument("--device", default="cuda", help="cpu only to dry-run this script with tiny --tokens")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for a GPU machine (--device cpu for a dry run)")
    config, vocab, tokens = MODELS[args.model]
    args.tokens = args.tokens or tokens
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    data = batches(args, vocab, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = peak_flops(name)
    print(f"{name}; {args.model} model {count_parameters(build_model(config, vocab)) / 1e6:.1f}M parameters, "
          f"~{args.tokens:,} target tokens a step, bf16; {args.steps} steps timed after {args.warmup}")
    results = []
    for compiled in (False, True) if args.compile else (False,):
        for path in (raw_loop, attnlab_path):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            results.append(path(args, config, vocab, data, device, compiled))
    reference = {("compiled" in r.name): r.tokens_per_s for r in results if r.name.startswith("raw")}
    eager_first = {r.name.split()[0]: r.first_steps_s for r in results if "compiled" not in r.name}
    print(f"{'variant':18} {'tokens/s':>11} {'vs raw':>7} {'MFU':>7} {'peak GiB':>9} {'first steps s':>14}")
    for r in results:
        mfu = f"{r.flops_per_s / peak:.1%}" if peak else "-"
        extra = r.first_steps_s - eager_first[r.name.split()[0]] if "compiled" in r.name else r.first_steps_s
        print(f"{r.name:18} {r.tokens_per_s:11,.0f} {r.tokens_per_s / reference['compiled' in r.name]:7.2f} "
              f"{mfu:>7} {r.peak_gib:9.1f} {extra:14.1f}{' (compile)' if 'compiled' in r.name else ''}")
    if peak:
        print(f"MFU against {peak / 1e12:.0f} TFLOP/s (dense bf16, data sheet)")
    if args.profile:
        profile(args, config, vocab, data, device, args.profile)


if __name__ == "__main__":
    main()
