#!/usr/bin/env python3
"""Make the `transformers` and `peft` references that crates/recipe-run/tests/import.rs reads.

Each is a tiny model saved by `transformers` itself (version 5 writes the rotary settings in
`rope_parameters`), with its logits on 96 fixed tokens in `expected.safetensors`:
- `llama3-rope`: a `LlamaForCausalLM` with Llama 3.1's rotary scaling and a base of 50000,
  run over three times the context the scaling counts from, so that every band of
  frequencies (kept, blended, divided) shapes the logits;
- `qwen2`: a `Qwen2ForCausalLM` (biases on the query, key and value projections) with tied
  embeddings and a base of 1e6, as Qwen2.5's small models have;
- `mistral`: a `MistralForCausalLM` whose sliding window (32) is a third of the tokens;
- `ministral`: a `MinistralForCausalLM` whose first layer alone slides (window 24);
- `phi3-longrope`: a `Phi3ForCausalLM` with LongRoPE over an original context of 32, its
  logits over 96 tokens (the long factors) and over 24 (`expected-short.safetensors`, the
  short ones);
- `phi4-mini`: the same turning only three quarters of each head, as Phi-4-mini does;
- `phi3`: a `Phi3ForCausalLM` (the query, key and value projections in one matrix, the gate and
  up projections in another) with a sliding window of 48;
- `smollm3`: a `SmolLM3ForCausalLM` whose second layer uses no positions (NoPE);
- `qwen3`: a `Qwen3ForCausalLM` (an RMSNorm over each query and key head) whose heads of 32
  are wider together (128) than the model (64), as Qwen3's are;
- `qwen3-yarn`: the same with YaRN stretching a context of 32 four times;
- `gemma3`: a `Gemma3ForCausalLM` (Gemma 3's text model) of three layers, two sliding (window
  16) with their own rotary base, one global with linear rotary scaling, and attention scaled
  by `query_pre_attn_scalar`;
- `gemma2`: a `Gemma2ForCausalLM` (Gemma 3 without head norms, its attention scores and logits
  capped) of three layers, the first and last sliding;
- `olmo2`: an `Olmo2ForCausalLM` (RMSNorms after attention and the MLP, none before; the query
  and key projections normalised whole);
- `olmo3`: an `Olmo3ForCausalLM`, OLMo 2 whose first layer slides (window 24);
- `gemma3-vision`: a `Gemma3ForConditionalGeneration` (Gemma 3 4B's multimodal layout: the
  language model under `language_model.`, a tiny vision tower beside it) over `gemma3`'s text
  configuration, its logits on text alone;
- `granite`: a `GraniteForCausalLM` (Llama with four multipliers: embeddings, the residual
  branches, attention scores and logits), each far from its neutral value;
and six `peft` adapters over `qwen3`, `gemma3`, `granite` and `gemma3-vision`, saved by `peft` with random `A` and `B` (so that they
change the logits), with the logits of the adapted model:
- `qwen3-lora`: LoRA of rank 4 on the query, value and down projections;
- `qwen3-dora`: DoRA of rank 2 on every projection;
- `qwen3-rslora`: `qwen3-lora`'s adapter with rsLoRA's scale, alpha / √r;
- `qwen3-pissa`, `qwen3-olora`: LoRA of rank 4 as `peft` initialises it from the weights
  (PiSSA: the top singular vectors; OLoRA: the first columns of a QR factorisation), its `A`
  and `B` untrained, and the residual base weights `peft` leaves (`residual.safetensors`);
- `gemma3-lora`, `granite-lora`: LoRA of rank 4 on the query, value and down projections;
- `gemma3-vision-lora`: the same over the multimodal model, which puts LoRA on the vision
  tower's query and value projections too (under `model.vision_tower.`), and names the
  language model's under `model.language_model.`.
Run once, with `transformers`, `peft` and `torch` installed (e.g. in the venv that
scripts/bench-vs-torch.sh makes):

    target/torch-venv/bin/pip install transformers peft
    target/torch-venv/bin/python scripts/make-transformers-fixture.py crates/recipe-run/tests/fixtures [NAME...]

(naming fixtures makes only those).
"""
import os
import sys

import peft
import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MinistralConfig,
    MinistralForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Olmo3Config,
    Olmo3ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    SmolLM3Config,
    SmolLM3ForCausalLM,
)

SHAPES = dict(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
)

# Gemma's: three layers, heads of 32, attention scaled by 1/sqrt(24), a window of 16.
GEMMA = dict(
    **{**SHAPES, "num_hidden_layers": 3},
    head_dim=32,
    query_pre_attn_scalar=24,
    sliding_window=16,
    pad_token_id=None,
    bos_token_id=2,
    eos_token_id=1,
)


def randomise(model):
    torch.manual_seed(1)
    # The default initialisation (std 0.02, zero biases) gives near-uniform logits; wider
    # weights make the comparison sensitive to every part of the model.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)


def save_expected(out, model, tokens=96, file="expected.safetensors"):
    # A multimodal model's vocabulary is its language model's, ending in its image tokens,
    # which text alone leaves out.
    text = getattr(model.config, "text_config", model.config)
    ids = torch.randint(0, getattr(model.config, "boi_token_index", text.vocab_size), (1, tokens))
    with torch.no_grad():
        logits = model(ids).logits[0]
    save_file({"ids": ids[0].to(torch.int64), "logits": logits.float().contiguous()}, f"{out}/{file}")
    print(f"transformers {transformers.__version__}, peft {peft.__version__}: {out}")


def save(out, model):
    randomise(model)
    model.eval().save_pretrained(out)
    os.remove(f"{out}/generation_config.json")  # not read by the tests
    save_expected(out, model)
    return model


def save_adapter(out, base, config):
    torch.manual_seed(3)
    adapted = peft.get_peft_model(base, config).eval()
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_" in name and "magnitude" not in name:
                p.normal_(0.0, 0.3)
            elif "magnitude" in name:
                p.mul_(1.0 + 0.2 * torch.randn_like(p))
    adapted.save_pretrained(out)
    os.remove(f"{out}/README.md")  # peft's model card, not read by the tests
    save_expected(out, adapted)


def save_initialised(out, base, config):
    # The adapter as peft initialises it, and what it leaves of the adapted base weights.
    adapted = peft.get_peft_model(base, config).eval()
    adapted.save_pretrained(out)
    os.remove(f"{out}/README.md")
    residual = {
        name.removeprefix("base_model.model.").replace("base_layer.", ""): p.detach().contiguous()
        for name, p in adapted.named_parameters()
        if "base_layer.weight" in name
    }
    save_file(residual, f"{out}/residual.safetensors")
    print(f"peft {peft.__version__}: {out}")


def gemma3():
    # Gemma 3's text model: layers 0 and 2 slide (window 16) and rotate with base 1e4, layer 1
    # attends globally with base 1e6 stretched linearly; its attention scales by 1/sqrt(24),
    # not 1/sqrt(head_dim); its norms scale by 1 + w.
    config = Gemma3TextConfig(
        **GEMMA,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    )
    return config


def gemma3_vision():
    # Gemma 3 4B's multimodal layout over `gemma3`'s text configuration, with a tiny vision tower.
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    return Gemma3Config(
        text_config=gemma3().to_dict(), vision_config=vision, mm_tokens_per_image=4, image_token_index=127,
        boi_token_index=125, eoi_token_index=126,
    )


def build(name):
    """Each fixture by its folder's name."""
    if name == "llama3-rope":
        llama3 = LlamaConfig(
            **SHAPES,
            tie_word_embeddings=False,
            rope_theta=50000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        )
        save(os.path.join(root, name), LlamaForCausalLM(llama3))
    elif name == "qwen2":
        save(os.path.join(root, name), Qwen2ForCausalLM(Qwen2Config(**SHAPES, tie_word_embeddings=True, rope_theta=1e6)))
    elif name == "mistral":
        save(os.path.join(root, name), MistralForCausalLM(MistralConfig(**SHAPES, sliding_window=32)))
    elif name == "ministral":
        # A window of 24 in the first layer only.
        config = MinistralConfig(
            **SHAPES, head_dim=16, sliding_window=24, layer_types=["sliding_attention", "full_attention"]
        )
        save(os.path.join(root, name), MinistralForCausalLM(config))
    elif name == "phi3":
        config = Phi3Config(**SHAPES, sliding_window=48, pad_token_id=None, eos_token_id=2)
        save(os.path.join(root, name), Phi3ForCausalLM(config))
    elif name in ("phi3-longrope", "phi4-mini"):
        # LongRoPE over an original context of 32: its long factors over 96 tokens
        # (expected.safetensors), its short ones over 24 (expected-short.safetensors). Phi-4-mini
        # also turns only three quarters of each head (12 of 16 dimensions: 6 factors).
        partial = 0.75 if name == "phi4-mini" else 1.0
        pairs = int(16 * partial) // 2
        factors = lambda low, high: [round(x, 4) for x in torch.linspace(low, high, pairs).tolist()]
        scaling = {"type": "longrope", "short_factor": factors(1.0, 1.5), "long_factor": factors(1.0, 6.0)}
        config = Phi3Config(
            **SHAPES,
            rope_scaling=scaling,
            original_max_position_embeddings=32,
            partial_rotary_factor=partial,
            pad_token_id=None,
            eos_token_id=2,
        )
        model = save(os.path.join(root, name), Phi3ForCausalLM(config))
        save_expected(os.path.join(root, name), model, tokens=24, file="expected-short.safetensors")
    elif name == "smollm3":
        smollm3 = SmolLM3Config(**SHAPES, no_rope_layers=[1, 0], pad_token_id=None, bos_token_id=1, eos_token_id=2)
        save(os.path.join(root, name), SmolLM3ForCausalLM(smollm3))
    elif name == "qwen3":
        save(os.path.join(root, name), Qwen3ForCausalLM(QWEN3))
    elif name == "qwen3-yarn":
        # YaRN stretching a context of 32 four times, over 96 tokens: frequencies kept, blended
        # and divided, and cos and sin scaled by its attention factor.
        yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 10000.0}
        config = Qwen3Config(**SHAPES, head_dim=32, tie_word_embeddings=True, rope_parameters=yarn)
        save(os.path.join(root, name), Qwen3ForCausalLM(config))
    elif name in ("qwen3-lora", "qwen3-dora", "qwen3-rslora"):
        base = Qwen3ForCausalLM(QWEN3)
        randomise(base)  # the same weights as `qwen3`'s
        config = {"qwen3-lora": LORA, "qwen3-dora": DORA, "qwen3-rslora": RSLORA}[name]
        save_adapter(os.path.join(root, name), base, config)
    elif name in ("qwen3-pissa", "qwen3-olora"):
        base = Qwen3ForCausalLM(QWEN3)
        randomise(base)  # the same weights as `qwen3`'s
        init = name.removeprefix("qwen3-")
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=init)
        save_initialised(os.path.join(root, name), base, config)
    elif name == "gemma2":
        # Gemma 2: layers 0 and 2 slide (window 16), attention scaled by 1/sqrt(24), scores and
        # logits capped low enough (5 and 3) that the caps shape them.
        config = Gemma2Config(**GEMMA, attn_logit_softcapping=5.0, final_logit_softcapping=3.0)
        save(os.path.join(root, name), Gemma2ForCausalLM(config))
    elif name == "olmo2":
        save(os.path.join(root, name), Olmo2ForCausalLM(Olmo2Config(**SHAPES, pad_token_id=None, eos_token_id=2)))
    elif name == "olmo3":
        # The first layer slides (window 24) and the second attends globally, both with base 5e5.
        config = Olmo3Config(
            **SHAPES, sliding_window=24, layer_types=["sliding_attention", "full_attention"], pad_token_id=None,
            eos_token_id=2,
        )
        save(os.path.join(root, name), Olmo3ForCausalLM(config))
    elif name == "gemma3-vision":
        save(os.path.join(root, name), Gemma3ForConditionalGeneration(gemma3_vision()))
    elif name == "gemma3-vision-lora":
        base = Gemma3ForConditionalGeneration(gemma3_vision())
        randomise(base)  # the same weights as `gemma3-vision`'s
        save_adapter(os.path.join(root, name), base, LORA)
    elif name == "granite":
        save(os.path.join(root, name), GraniteForCausalLM(GRANITE))
    elif name == "granite-lora":
        base = GraniteForCausalLM(GRANITE)
        randomise(base)  # the same weights as `granite`'s
        save_adapter(os.path.join(root, name), base, LORA)
    elif name == "gemma3":
        save(os.path.join(root, name), Gemma3ForCausalLM(gemma3()))
    elif name == "gemma3-lora":
        base = Gemma3ForCausalLM(gemma3())
        randomise(base)  # the same weights as `gemma3`'s
        save_adapter(os.path.join(root, name), base, LORA)
    else:
        sys.exit(f"no fixture {name}; the fixtures: {' '.join(FIXTURES)}")


FIXTURES = [
    "llama3-rope", "qwen2", "mistral", "ministral", "phi3", "phi3-longrope", "phi4-mini", "smollm3", "qwen3", "qwen3-yarn", "qwen3-lora", "qwen3-dora",
    "qwen3-rslora", "qwen3-pissa", "qwen3-olora", "gemma3", "gemma3-lora", "gemma2", "olmo2", "olmo3", "granite", "granite-lora", "gemma3-vision", "gemma3-vision-lora",
]
QWEN3 = Qwen3Config(**SHAPES, head_dim=32, tie_word_embeddings=True)
GRANITE = GraniteConfig(
    **SHAPES, embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=2.5,
    tie_word_embeddings=True,
)
LORA = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
RSLORA = peft.LoraConfig(
    r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True, init_lora_weights=False
)
ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DORA = peft.LoraConfig(r=2, lora_alpha=6, target_modules=ALL_MODULES, use_dora=True, init_lora_weights=False)
root = sys.argv[1]
for name in sys.argv[2:] or FIXTURES:
    build(name)
