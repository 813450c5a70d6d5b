#!/usr/bin/env bash
# `recipe train` against PyTorch on this CPU (benches/compare_torch.py): makes a throw-away
# venv with PyTorch from PyPI under target/, builds the release binary, runs the comparison.
# Arguments go to the comparison, e.g. `scripts/bench-vs-torch.sh --precisions f32,bf16`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/torch-venv
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch
fi
cargo build --release --quiet
exec "$venv/bin/python" benches/compare_torch.py "$@"
