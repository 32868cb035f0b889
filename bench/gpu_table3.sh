#!/usr/bin/env bash
# Issue 13 on a lent GPU, one device call each (../.library/device; at most 10 minutes a call):
#   bash bench/gpu_table3.sh study MINUTES   the Multi30k Table 3 study (60 trials) with K workers sharing
#                                            GPU 0 for MINUTES: a slice; the next call carries study.tgz
#                                            back in (.gpustudy/) and goes on where this one stopped
#   bash bench/gpu_table3.sh bench           trials per hour for K = 1, 2, 4, 8 workers on GPU 0
# Carried: the Multi30k mirror in .gpudata (here: mkdir -p .gpudata && cp -r ../shared/data/multi30k
# .gpudata/), the wheels optuna and wandb need in .whl (here: bash bench/gpu_wheels.sh, 29 MB), and
# for a later slice .gpustudy/study.tgz. K is $WORKERS (default 8). Each call:
#   run(command="bash bench/gpu_table3.sh study 8", carry=[".whl", ".gpudata", ".gpustudy"], timeout_s=590)
# Under $OUT: card.txt, the log, and study.tgz (the study's SQLite file and each run's config.yaml,
# result.json, metrics.jsonl, attention.csv, train_stats.json; no checkpoints, too large to carry:
# a trial cut off by the slice's end starts again in the next slice).
set -uo pipefail
mode=${1:-study}
minutes=${2:-8}
out=${OUT:-runs/gpu-table3}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 ATTNLAB_DATA_MIRROR=$PWD/.gpudata
export ATTNLAB_CACHE=/tmp/attnlab-cache ATTNLAB_ALLOCATOR=system
nvidia-smi -L | tee "$out/card.txt"
if [ "$mode" = bench ]; then
    python3 bench/trials_per_hour.py --gpu --model multi30k --steps 300 --trials 16 --tokens 4096 2>&1 \
        | grep -v -i warn | tee "$out/trials_per_hour.txt"
    exit 0
fi
study=runs/studies/multi30k-table3
[ -f .gpustudy/study.tgz ] && tar xzf .gpustudy/study.tgz
nvidia-cuda-mps-control -d 2>/dev/null && echo "CUDA MPS daemon started" | tee -a "$out/card.txt"
start=$(date +%s)
python3 -m attnlab.cli sweep run ablations/multi30k_table3.yaml --devices 0 --workers-per-device "${WORKERS:-8}" \
    --max-minutes "$minutes" --set logging.wandb=disabled \
    --set decode.max_tokens=65536 --set train.threads=1 2>&1 | grep -v -i warn | tee "$out/study_log.txt"
echo "wall seconds: $(( $(date +%s) - start ))" | tee -a "$out/study_log.txt"
python3 -m attnlab.cli sweep status ablations/multi30k_table3.yaml | tail -3 | tee -a "$out/study_log.txt"
find "$study" -maxdepth 2 \( -name study.db -o -name config.yaml -o -name result.json -o -name metrics.jsonl \
    -o -name attention.csv -o -name train_stats.json \) -print0 | tar czf "$out/study.tgz" --null -T -
