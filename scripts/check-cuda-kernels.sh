#!/usr/bin/env bash
# Compile the fused ops' CUDA C with NVRTC from PyPI, as `recipe` compiles it on a GPU at run
# time (scripts/check-cuda-kernels.py says what is checked). No GPU and no toolkit needed.
set -euo pipefail
cd "$(dirname "$0")/.."
nvrtc=target/nvrtc-py
[ -d "$nvrtc/nvidia" ] ||
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$nvrtc" nvidia-cuda-nvrtc==13.0.88
PYTHONPATH=$nvrtc python3 scripts/check-cuda-kernels.py
