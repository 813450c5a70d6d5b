#!/usr/bin/env bash
# Split what the LoRA SFT example needs on a GPU machine into pieces a device call carries
# (at most 64 MiB each, the binaries of .gpu/ taking 42 MB of the first call): the SmolLM2
# model in two parts and the corpus, into .gpu-model/. scripts/gpu-check.sh's lora section
# puts them back together and checks the model's sha256.
set -euo pipefail
cd "$(dirname "$0")/.."
model=assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$model" ] || scripts/fetch-assets.sh
rm -rf .gpu-model && mkdir -p .gpu-model
split -b 50M "$model" .gpu-model/part-
sha256sum "$model" | cut -d' ' -f1 >.gpu-model/sha256
tar -cf .gpu-model/data.tar assets/chat
ls -la .gpu-model
