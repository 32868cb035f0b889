#!/usr/bin/env bash
# The wheels the GPU machine lacks (its image has torch, lightning, sentencepiece, sacrebleu, pandas,
# matplotlib, pyyaml, requests, protobuf, ...: ../.library/device/KINDS.md), downloaded here for its
# Python 3.12 on x86-64 into .whl, which the device call carries (carry: [".whl", ...]) and
# bench/gpu_table3.sh installs. Run once per checkout, here (PyPI is reachable here, not there).
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python=${PYTHON:-python3}
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64)
# optuna and wandb with every requirement the image lacks, at the versions tested here (pip's
# metadata of this project's .venv, walked from optuna and wandb).
wheels=(optuna==5.0.0 alembic==1.20.1 mako==1.4.3 sqlalchemy==2.1.9 colorlog==6.12.0
        wandb==0.31.0 platformdirs==4.14.9 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5 cwevals==0.0.1b1 distro==1.9.0 sniffio==1.3.1 googleapis-common-protos==1.76.0
        opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
        opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-otlp-proto-http==1.45.2
        opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-exporter-otlp-common==0.66b2
        opentelemetry-exporter-http-transport==0.66b2)
rm -rf .whl
$python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${wheels[@]}"
ls -1 .whl
du -sh .whl
