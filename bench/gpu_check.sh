#!/usr/bin/env bash
# The GPU checks, as one script for one call on a lent GPU machine (../.library/device; at most
# 10 minutes): the raw loop against the attnlab path (Lightning), eager and compiled, for the
# paper's base model and for the Multi30k model, with a profile summary of each; then, when
# TRAIN_MINUTES > 0, a short real run through `attnlab train` on Multi30k from a carried mirror.
#   bash bench/gpu_check.sh [MIRROR] [TRAIN_MINUTES]     results under $OUT (or runs/gpu-check)
set -uo pipefail
mirror=${1:-.gpudata}
minutes=${2:-0}
out=${OUT:-runs/gpu-check}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 ATTNLAB_DATA_MIRROR=$mirror ATTNLAB_CACHE=/tmp/attnlab-cache
nvidia-smi -L | tee "$out/card.txt"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" \
    | tee -a "$out/card.txt"
timeout 260 python3 bench/gpu_train.py --model base --compile --profile "$out/profile_base.txt" 2>&1 \
    | grep -v -i warn | tee "$out/train_base.txt"
timeout 200 python3 bench/gpu_train.py --model multi30k --compile --profile "$out/profile_multi30k.txt" 2>&1 \
    | grep -v -i warn | tee "$out/train_multi30k.txt"
if [ "$minutes" != 0 ]; then
    python3 -m attnlab.cli train examples/multi30k_base_gpu.yaml --set train.max_train_minutes="$minutes" \
        --set output_dir=/tmp/runs 2>&1 | tail -40 | tee "$out/train_log.txt"
    cp /tmp/runs/multi30k-base-gpu/result.json "$out/" 2>/dev/null
fi
