#!/usr/bin/env bash
# The CUDA backend's device checks, in one run, on a machine with an NVIDIA GPU and PyTorch
# (as `python3`): the GPU tests; `recipe train --device cuda` on the quickstart in f32 and
# bf16-mixed; the f32 run again under torchrun, summing through NCCL (world size 1); kill -9
# and resume on the GPU, which must match an uninterrupted run bit for bit; and the
# 134M-parameter throughput next to PyTorch eager and torch.compile; and the LoRA SFT of
# SmolLM2-135M on the GPU in bf16-mixed, when the model is there.
#
# Sections can be named to run only those: `scripts/gpu-check.sh lora` (tests, quickstart,
# nccl, resume, architectures, optimizers, throughput, lora; all when none is named). The model (98 MB) is more than one
# device call carries (64 MiB): scripts/gpu-pack-model.sh splits it and the corpus into
# .gpu-model/; carry its parts in separate calls (what an earlier call brought stays while the
# machine is held), and the lora section puts them back together.
#
# Build here first with scripts/build-cuda.sh, which leaves gzipped binaries in .gpu/; run this
# from the repository root there. CUDA_LIBS names the folder that holds libcudart, libcublas,
# libcurand and libnvrtc of CUDA 13.
set -uo pipefail
CUDA_LIBS=${CUDA_LIBS:-/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib}
# NCCL (`recipe` is built with it), from the same PyTorch install unless told otherwise.
NCCL_LIBS=${NCCL_LIBS:-$CUDA_LIBS/../../nccl/lib}
export LD_LIBRARY_PATH=$CUDA_LIBS:$NCCL_LIBS:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
work=$(mktemp -d)
for f in .gpu/*.gz; do
    name=$(basename "$f" .gz)
    gunzip -c "$f" >"$work/$name" && chmod +x "$work/$name"
done
recipe=$work/recipe
section() { printf '\n== %s\n' "$*"; }
wanted=" ${*:-tests quickstart nccl resume architectures optimizers throughput lora} "
want() { [[ $wanted == *" $1 "* ]]; }
# step, loss, lr, grad_norm and eval loss of every line: what must match after a resume.
trace() { python3 -c 'import json,sys; [print(*(json.loads(l).get(k) for k in ("step","loss","lr","grad_norm","eval_loss"))) for l in open(sys.argv[1])]' "$1"; }
metrics() { ls "$1"/*/pretrain/*/metrics.jsonl; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
ldd "$recipe" | grep 'not found' && echo "set CUDA_LIBS / NCCL_LIBS to the folders of these libraries"

if want tests; then
section "GPU tests"
"$work/kernels-devices" --nocapture --test-threads 1 2>&1 | grep -v '^checking'
"$work/train-devices" --nocapture --test-threads 1
fi

if want quickstart || want nccl; then
section "quickstart on CUDA: f32 and bf16-mixed (held-out loss by step)"
for precision in f32 bf16-mixed; do
    start=$(date +%s.%N)
    "$recipe" train recipes/quickstart.toml --device cuda --runs "$work/q-$precision" \
        --set "stages.pretrain.precision=\"$precision\"" 2>&1 | grep -E 'device|error' 
    end=$(date +%s.%N)
    python3 - "$(metrics "$work/q-$precision")" "$precision" "$start" "$end" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
evals = [(l["step"], round(l["eval_loss"], 4)) for l in lines if "eval_loss" in l]
tps = sorted(l["tokens_per_s"] for l in lines if "tokens_per_s" in l)
print(f"{sys.argv[2]}: eval {evals}; median {tps[len(tps)//2]:.0f} tokens/s; wall {float(sys.argv[4])-float(sys.argv[3]):.1f} s")
PY
done

fi

if want architectures || want optimizers; then
section "smoke on CUDA in bf16-mixed: QKV biases, QK-norm, NoPE and a sliding window; Muon"
for example in architectures optimizers; do
    want "$example" || continue
    "$recipe" smoke "recipes/$example.toml" --device cuda --runs "$work/smoke-$example" \
        $(for s in $(grep -o '^\[stages\.[a-z-]*' "recipes/$example.toml" | cut -d. -f2); do
            echo "--set stages.$s.precision=\"bf16-mixed\""; done) 2>&1 | grep -E 'smoke |error'
done
fi

if want nccl; then
section "NCCL: the quickstart under torchrun, world size 1 (f32), against the plain CUDA run"
python3 -m torch.distributed.run --nproc-per-node 1 --no-python "$recipe" train recipes/quickstart.toml \
    --device cuda --runs "$work/nccl" 2>&1 | grep -E 'rank|device|error'
grep -o '"world_size":[0-9]*,"collectives":"[a-z]*"' "$(dirname "$(metrics "$work/nccl")")/sessions.jsonl"
if diff <(trace "$(metrics "$work/q-f32")") <(trace "$(metrics "$work/nccl")") >/dev/null; then
    echo "nccl: per-step losses, lr, grad norms and eval losses bit-identical to the run without a launcher"
else
    echo "nccl: MISMATCH"
    diff <(trace "$(metrics "$work/q-f32")") <(trace "$(metrics "$work/nccl")") | head
fi

fi

if want resume; then
section "kill -9 and resume on CUDA (bf16-mixed)"
set_bf16=(--set 'stages.pretrain.precision="bf16-mixed"' --set 'stages.pretrain.checkpoint_every=50')
"$recipe" train recipes/quickstart.toml --device cuda --runs "$work/straight" "${set_bf16[@]}" >/dev/null 2>&1
"$recipe" train recipes/quickstart.toml --device cuda --runs "$work/killed" "${set_bf16[@]}" >/dev/null 2>&1 &
pid=$!
until ls "$work"/killed/quickstart/pretrain/*/checkpoints/step-000250 >/dev/null 2>&1 || ! kill -0 $pid 2>/dev/null; do sleep 0.02; done
kill -9 $pid 2>/dev/null && echo "killed with -9 after $(ls "$work"/killed/quickstart/pretrain/*/checkpoints | tail -1)"
wait $pid 2>/dev/null
"$recipe" train recipes/quickstart.toml --device cuda --runs "$work/killed" "${set_bf16[@]}" 2>&1 | grep -i resum
straight=$(metrics "$work/straight") killed=$(metrics "$work/killed")
if diff <(trace "$straight") <(trace "$killed") >/dev/null &&
    cmp "$(dirname "$straight")/final/model.safetensors" "$(dirname "$killed")/final/model.safetensors"; then
    echo "resume: per-step losses, lr, grad norms, eval losses and final weights bit-identical"
else
    echo "resume: MISMATCH"
    diff <(trace "$straight") <(trace "$killed") | head
fi

fi

if want throughput; then
section "throughput: 134M Llama, seq 1024, batch 16, bf16-mixed, AdamW"
# Attention on tensor cores (the default), then on the CUDA cores.
for attention in tensor-cores cuda-cores; do
RECIPE_CUDA_ATTENTION=$attention "$recipe" train benches/gpu-134m.toml --device cuda --runs "$work/bench-$attention" 2>&1 |
    grep -E 'device|error'
python3 - "$(ls "$work"/bench-$attention/gpu-134m/pretrain/*/metrics.jsonl)" "$attention" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if "tokens_per_s" in l]
tps = sorted(l["tokens_per_s"] for l in lines[5:])
tok = tps[len(tps) // 2]
n = 134_105_856 - 32000 * 768  # parameters without the embedding
flops = 6 * n + 12 * 12 * 768 * 1024
print(json.dumps({"impl": f"recipe, attention on {sys.argv[2]}", "tokens_per_s": round(tok),
                  "mfu": round(tok * flops / 989e12, 4), "loss": [round(l["loss"], 3) for l in lines[::5]]}))
PY
done
python3 benches/torch_llama.py --steps 20
fi

model=assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if want lora && [ ! -f "$model" ] && [ -f .gpu-model/data.tar ] && ls .gpu-model/part-* >/dev/null 2>&1; then
    tar -xf .gpu-model/data.tar && mkdir -p "$(dirname "$model")" && cat .gpu-model/part-* >"$model"
    if [ "$(sha256sum "$model" | cut -d' ' -f1)" = "$(cat .gpu-model/sha256)" ]; then
        echo "lora: the model put back together from $(ls .gpu-model/part-* | wc -l) parts"
    else
        echo "lora: the parts in .gpu-model/ do not make the model (one not carried yet?)"
        rm "$model"
    fi
fi
if want lora && [ -f "$model" ]; then
section "LoRA SFT of SmolLM2-135M on CUDA, bf16-mixed, 60 steps (the CPU f32 run: held-out 0.5791 -> 0.2785, 2.38 s/step on a Zen 5)"
"$recipe" train recipes/smollm2-lora-sft.toml --device cuda --runs "$work/lora" \
    --set 'stages.sft.precision="bf16-mixed"' 2>&1 | grep -E 'device|error'
python3 - "$(ls "$work"/lora/*/sft/*/metrics.jsonl)" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
evals = [(l["step"], round(l["eval_loss"], 4)) for l in lines if "eval_loss" in l]
# Seconds per step from each step's tokens (`tokens` counts them all so far) and its rate, the
# first two steps (kernels compiling) left out.
rated = [l for l in lines if l.get("tokens_per_s")]
steps = sorted((b["tokens"] - a["tokens"]) / b["tokens_per_s"] for a, b in zip(rated, rated[1:]))[1:]
print(f"held-out loss by step {evals}; median {steps[len(steps) // 2]:.3f} s/step")
PY
elif want lora; then
    echo "lora: skipped, no $model (scripts/gpu-pack-model.sh, then carry .gpu-model/ in parts)"
fi
