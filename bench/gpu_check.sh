#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (see ../.library/device): the base model's
# raw training speed and MFU (eager, then torch.compile), then a short real run through
# `attnlab train` (Lightning, bf16-mixed, one GPU) on Multi30k from a carried mirror.
#   bash bench/gpu_check.sh [MIRROR] [TRAIN_MINUTES]
set -uo pipefail
mirror=${1:-.gpudata}
minutes=${2:-2.5}
out=${OUT:-runs/gpu-check}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 ATTNLAB_DATA_MIRROR=$mirror ATTNLAB_CACHE=/tmp/attnlab-cache
nvidia-smi -L
python3 -c "import torch, lightning, sacrebleu, sentencepiece; print('torch', torch.__version__, 'lightning', lightning.__version__)"
python3 bench/gpu_base.py --steps 200 2>&1 | tee "$out/gpu_base_eager.txt"
python3 bench/gpu_base.py --steps 200 --compile 2>&1 | tee "$out/gpu_base_compile.txt"
python3 -m attnlab.cli train examples/multi30k_base_gpu.yaml --set train.max_train_minutes="$minutes" \
    --set output_dir=/tmp/runs 2>&1 | tail -40 | tee "$out/train_log.txt"
cp /tmp/runs/multi30k-base-gpu/result.json /tmp/runs/multi30k-base-gpu/train_stats.json "$out/" 2>/dev/null
python3 - "$out/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print({k: r.get(k) for k in ("bleu", "chrf", "val_ppl", "params", "train_steps", "train_seconds",
                             "train_tokens_per_s", "wall_s")})
PY
