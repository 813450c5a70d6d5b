"""The same Llama as `recipe`'s (RMSNorm, RoPE, SwiGLU, GQA, untied head, no biases) in plain
PyTorch, trained on random tokens to measure throughput: SDPA attention, AdamW (fused on the
GPU), in f32 or under bf16 autocast; eager and torch.compile. Prints one JSON line per mode with
tokens/s, MFU and memory.

    python3 benches/torch_llama.py --vocab 32000 --d-model 768 --layers 12 --heads 12 \
        --d-ff 2048 --seq 1024 --batch 16 --steps 20
    python3 benches/torch_llama.py --device cpu --precision f32 --modes eager \
        --vocab 512 --d-model 128 --layers 4 --heads 4 --d-ff 512 --seq 256 --batch 8

MFU counts 6·N (N without the embeddings) + 12·layers·d_model·seq FLOPs per token (PaLM's
convention) against `--peak-tflops` (default: the GPU's dense bf16 peak, 989 TFLOP/s for an H100
or H200 SXM). On the CPU, `peak_mib` is the peak resident memory above what it was after
`import torch` (so the interpreter and the library are not counted).
"""
import argparse
import json
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, kv_heads, d_ff):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.input_layernorm = nn.RMSNorm(d, eps=1e-5)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(d, eps=1e-5)
        self.gate_proj = nn.Linear(d, d_ff, bias=False)
        self.up_proj = nn.Linear(d, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.heads != self.kv_heads)
        x = x + self.o_proj(a.transpose(1, 2).reshape(b, t, d))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Llama(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed_tokens = nn.Embedding(a.vocab, a.d_model)
        self.layers = nn.ModuleList(Block(a.d_model, a.heads, a.kv_heads or a.heads, a.d_ff) for _ in range(a.layers))
        self.norm = nn.RMSNorm(a.d_model, eps=1e-5)
        self.lm_head = nn.Linear(a.d_model, a.vocab, bias=False)
        hd = a.d_model // a.heads
        inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        angles = torch.outer(torch.arange(a.seq).float(), inv)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, ids, targets):
        x = self.embed_tokens(ids)
        t = ids.shape[1]
        cos, sin = self.cos[:t].to(x.dtype), self.sin[:t].to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(a, compiled, rss_after_import):
    torch.manual_seed(0)
    cuda = a.device == "cuda"
    model = Llama(a).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=cuda)
    step_fn = torch.compile(model) if compiled else model
    ids = torch.randint(0, a.vocab, (a.batch, a.seq + 1), device=a.device)

    def step():
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = step_fn(ids[:, :-1], ids[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(a.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    sync()
    seconds = (time.perf_counter() - start) / a.steps
    tokens = a.batch * a.seq / seconds
    n = sum(p.numel() for p in model.parameters()) - model.embed_tokens.weight.numel()
    flops_per_token = 6 * n + 12 * a.layers * a.d_model * a.seq
    return {
        "impl": "pytorch " + ("torch.compile" if compiled else "eager"),
        "tokens_per_s": round(tokens),
        "step_s": round(seconds, 4),
        "mfu": round(tokens * flops_per_token / (a.peak_tflops * 1e12), 4),
        "loss": round(loss.item(), 4),
        **(
            {"peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
            if cuda
            else {"peak_mib": round(peak_rss_mib() - rss_after_import, 1)}
        ),
        "params": sum(p.numel() for p in model.parameters()),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=0)
    p.add_argument("--d-ff", type=int, default=2048)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--precision", choices=["bf16", "f32"], default="bf16", help="bf16: autocast")
    a = p.parse_args()
    rss_after_import = peak_rss_mib()
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if a.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    for mode in a.modes.split(","):
        result = run(a, mode == "compile", rss_after_import)
        print(json.dumps({"device": name, "precision": a.precision, **result}), flush=True)


if __name__ == "__main__":
    main()
