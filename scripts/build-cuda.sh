#!/usr/bin/env bash
# Build `recipe` with `--features cuda,nccl` and the GPU test binaries (the toolkit and NCCL from
# scripts/cuda-toolkit.sh; a clean build takes about ten minutes on two cores) into
# target/cuda, and pack them gzipped into .gpu/ for scripts/gpu-check.sh on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/cuda-toolkit.sh)"
cargo build --release --features cuda,nccl --target-dir target/cuda
args=(--release --features recipe-kernels/cuda --target-dir target/cuda)
mkdir -p .gpu
# Stripped, the three fit the 64 MiB a device call carries.
pack() { strip -o ".gpu/$2" "$1" && gzip -f ".gpu/$2"; }
pack target/cuda/release/recipe recipe
# The test binaries, by the file cargo reports for each.
for pair in "recipe-kernels kernels-devices" "recipe-train train-devices"; do
    set -- $pair
    exe=$(cargo test "${args[@]}" --no-run -p "$1" --test devices --message-format json |
        python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')
    pack "$exe" "$2"
done
ls -la .gpu
