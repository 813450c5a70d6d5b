"""`recipe train` against PyTorch on the CPU: the same Llama (untied head), the same shapes, on
random tokens that fill each row exactly (a pre-tokenized source, pad packing), interleaved
round by round so both see the same machine. Prints, per configuration and precision, the
median tokens/s of each (whole steps, as `metrics.jsonl` reports them; PyTorch's as
`benches/torch_llama.py` times them), their ratio, peak memory (PyTorch's above its
after-import resident set; `recipe`'s whole process) and `recipe plan`'s memory estimate.

    scripts/bench-vs-torch.sh            # makes a venv with PyTorch, builds, runs this
    python3 benches/compare_torch.py --recipe target/release/recipe --configs tiny,small \\
        --precisions f32,bf16 --rounds 3 --threads 2

bf16 means `precision = "bf16-mixed"` for `recipe` and bf16 autocast for PyTorch.
"""
import argparse
import array
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CONFIGS = {
    "tiny": dict(vocab=512, d_model=128, layers=4, heads=4, d_ff=512, seq=256, batch=8, steps=30),
    "small": dict(vocab=8192, d_model=384, layers=6, heads=6, d_ff=1536, seq=512, batch=4, steps=10),
}
# Steps not timed at the start of each run (allocator, caches, thread pools warming).
WARMUP = 3


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            flags = Path("/proc/cpuinfo").read_text()
            isa = "avx512_bf16" if "avx512_bf16" in flags else "avx512f" if "avx512f" in flags else "avx2"
            return f"{name} ({isa})"
    return platform.processor()


def write_inputs(work, name, c):
    """A WordLevel tokenizer of `vocab` ids (0 ends a document) and documents of exactly `seq`
    tokens (with the end-of-document token, each fills one row of seq + 1)."""
    vocab = {f"t{i}": i for i in range(1, c["vocab"])}
    vocab["<|endoftext|>"] = 0
    special = dict(id=0, content="<|endoftext|>", single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
    tokenizer = dict(version="1.0", truncation=None, padding=None, added_tokens=[special], normalizer=None,
                     pre_tokenizer=dict(type="Whitespace"), post_processor=None, decoder=None,
                     model=dict(type="WordLevel", vocab=vocab, unk_token="<|endoftext|>"))
    (work / f"{name}-tokenizer.json").write_text(json.dumps(tokenizer))
    docs = c["batch"] * c["steps"] + 64
    rng = random.Random(0)
    ids = array.array("H", (rng.randrange(1, c["vocab"]) for _ in range(docs * c["seq"])))
    (work / f"{name}.bin").write_bytes(ids.tobytes())
    (work / f"{name}.idx").write_bytes(array.array("Q", range(0, docs * c["seq"] + 1, c["seq"])).tobytes())


def write_recipe(work, name, c, precision):
    path = work / f"{name}-{precision}.toml"
    path.write_text(f"""[recipe]
name = "{name}-{precision}"
[model]
vocab_size = {c['vocab']}
d_model = {c['d_model']}
n_layers = {c['layers']}
n_heads = {c['heads']}
d_ff = {c['d_ff']}
max_seq_len = {c['seq']}
tie_embeddings = false
[tokenizer]
path = "{name}-tokenizer.json"
[sources.random]
path = "{name}.bin"
format = "tokens"
dtype = "u16"
[stages.train]
kind = "pretrain"
steps = {c['steps']}
seq_len = {c['seq']}
batch_size = {c['batch']}
precision = "{'bf16-mixed' if precision == 'bf16' else 'f32'}"
data = {{ mix = {{ random = 1.0 }}, packing = "pad" }}
optim = {{ lr = 6e-4, weight_decay = 0.1 }}
log_every = 1
""")
    return path


def run_recipe(binary, recipe, work, env):
    name = recipe.stem
    shutil.rmtree(work / "runs" / name / "train", ignore_errors=True)
    proc = subprocess.Popen([binary, "train", str(recipe)], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"recipe train {recipe} failed: {proc.stderr.read().decode()}")
    metrics = next((work / "runs" / name / "train").glob("*/metrics.jsonl"))
    rates = [json.loads(l)["tokens_per_s"] for l in metrics.read_text().splitlines() if "tokens_per_s" in l]
    return statistics.median(rates[WARMUP:]), usage.ru_maxrss / 1024


def run_torch(c, precision, env):
    steps = c["steps"] if precision == "f32" else max(2, c["steps"] // 5)
    cmd = [sys.executable, str(HERE / "torch_llama.py"), "--device", "cpu", "--precision", precision, "--modes", "eager",
           "--vocab", str(c["vocab"]), "--d-model", str(c["d_model"]), "--layers", str(c["layers"]),
           "--heads", str(c["heads"]), "--d-ff", str(c["d_ff"]), "--seq", str(c["seq"]), "--batch", str(c["batch"]),
           "--steps", str(steps), "--warmup", "2"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["tokens_per_s"], result["peak_mib"]


def planned_mib(binary, recipe, work, env):
    out = subprocess.run([binary, "plan", str(recipe)], cwd=work, env=env, capture_output=True, text=True).stdout
    # Under bf16-mixed the CPU's own figure (activations in f32) follows the GPU's.
    m = re.search(r"([\d.]+) (MiB|GiB) on the CPU, where", out) or re.search(r"memory\s+([\d.]+) (MiB|GiB) peak", out)
    return float(m.group(1)) * (1024 if m.group(2) == "GiB" else 1) if m else float("nan")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--recipe", default=str(HERE.parent / "target/release/recipe"))
    p.add_argument("--configs", default="tiny,small")
    p.add_argument("--precisions", default="f32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=str(HERE.parent / "target/bench-vs-torch"))
    a = p.parse_args()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    threads = str(a.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
    binary = str(Path(a.recipe).resolve())
    print(f"# {cpu_name()}, {threads} threads; median tokens/s over {a.rounds} interleaved rounds")
    print("config  precision  pytorch tok/s  recipe tok/s  ratio  pytorch MiB  recipe MiB  plan MiB")
    for name in a.configs.split(","):
        c = CONFIGS[name]
        write_inputs(work, name, c)
        for precision in a.precisions.split(","):
            recipe = write_recipe(work, name, c, precision)
            ours, theirs = [], []
            for _ in range(a.rounds):
                theirs.append(run_torch(c, precision, env))
                ours.append(run_recipe(binary, recipe, work, env))
            t_rate, t_mib = statistics.median(r for r, _ in theirs), max(m for _, m in theirs)
            r_rate, r_mib = statistics.median(r for r, _ in ours), max(m for _, m in ours)
            plan = planned_mib(binary, recipe, work, env)
            print(f"{name:7} {precision:9} {t_rate:14.0f} {r_rate:13.0f} {r_rate / t_rate:6.2f} "
                  f"{t_mib:12.0f} {r_mib:11.0f} {plan:9.0f}", flush=True)


if __name__ == "__main__":
    main()
