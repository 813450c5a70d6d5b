#!/usr/bin/env bash
# Compile the fused ops' CUDA C with NVRTC from PyPI, as `recipe` compiles it on a GPU at run
# time (scripts/check-cuda-kernels.py says what is checked), then run them on the CPU. No GPU
# and no toolkit needed.
set -euo pipefail
cd "$(dirname "$0")/.."
nvrtc=target/nvrtc-py
[ -d "$nvrtc/nvidia" ] ||
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$nvrtc" nvidia-cuda-nvrtc==13.0.88
PYTHONPATH=$nvrtc python3 scripts/check-cuda-kernels.py
# Their arithmetic and indexing, run on the CPU by a small CUDA emulation against double
# references (scripts/cuda-emulator/check.cpp).
g++ -std=c++20 -O1 -pthread -Wall -Werror -Wno-unknown-pragmas -fno-strict-aliasing -o target/cuda-emulated scripts/cuda-emulator/check.cpp
target/cuda-emulated
