//! A real published model through the whole import path: SmolLM2-135M-Instruct from its GGUF
//! (dequantized, Q/K rows un-permuted, tokenizer rebuilt from the metadata) answers a known
//! question, and import → export → import gives back the same tensors bit for bit.
//! Needs `scripts/fetch-assets.sh`.

use std::path::PathBuf;

use candle_core::Device;
use recipe_checkpoint::{Headers, load_checkpoint};
use recipe_data::{Message, Role, chat_prompt, format_chat};
use recipe_model::{Llama, Sampling, generate};
use recipe_run::load_tokenizer;
use recipe_spec::{ChatTemplate, CheckpointFormat, CheckpointInfo, CheckpointReader, TokenizerFile};

fn inspect(path: &std::path::Path) -> Result<CheckpointInfo, String> {
    Headers.inspect(path)
}

fn smollm2() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-assets.sh", path.display());
    path
}

#[test]
fn smollm2_from_gguf_knows_the_capital_of_france() {
    let gguf = smollm2();
    let info = inspect(&gguf).unwrap();
    let config = info.arch.resolve(None);
    assert_eq!((config.d_model, config.n_layers, config.n_heads, config.n_kv_heads), (576, 30, 9, 3));
    assert_eq!((config.d_ff, config.vocab_size, config.rope_theta), (1536, 49152, 100000.0));
    assert!(config.tie_embeddings);
    let model =
        Llama::frozen(&config, load_checkpoint(&gguf, CheckpointFormat::Gguf, &config).unwrap(), &Device::Cpu).unwrap();
    let tok = load_tokenizer(&TokenizerFile::Gguf(gguf)).unwrap();
    assert_eq!(tok.encode("2024").unwrap().len(), 4, "SmolLM2 splits digits one per token");
    let messages = [
        Message {
            role: Role::System,
            content: "You are a helpful AI assistant named SmolLM, trained by Hugging Face".into(),
        },
        Message { role: Role::User, content: "What is the capital of France?".into() },
    ];
    let prompt = chat_prompt(&tok, recipe_spec::ChatTemplate::ChatMl, &messages).unwrap();
    let stop = tok.turn_ends().first().copied();
    let sampling = Sampling { max_new_tokens: 16, temperature: 0.0, top_p: 1.0, seed: 0, stop };
    let answer = tok.decode(&generate(&model, &prompt, &sampling).unwrap());
    assert!(answer.contains("Paris"), "answered {answer:?}");
}

#[test]
fn gguf_import_export_import_is_bit_identical() {
    let gguf = smollm2();
    let config = inspect(&gguf).unwrap().arch.resolve(None);
    let imported =
        Llama::from_tensors(&config, load_checkpoint(&gguf, CheckpointFormat::Gguf, &config).unwrap(), &Device::Cpu)
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    imported.save_pretrained(dir.path(), None, &[0], "SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
    let info = inspect(dir.path()).unwrap();
    assert_eq!(info.format, CheckpointFormat::HfDir);
    assert_eq!(info.arch.resolve(None), config, "config.json describes the same architecture");
    let again = load_checkpoint(dir.path(), CheckpointFormat::HfDir, &config).unwrap();
    let first = imported.weights().unwrap();
    assert_eq!(first.len(), again.iter().filter(|(n, _)| first.iter().any(|(m, _)| m == n)).count());
    for (name, a) in &first {
        let b = &again.iter().find(|(n, _)| n == name).unwrap().1;
        let bits = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(bits(a).iter().zip(bits(b)).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} changed");
    }
}

/// A system prompt, a question with spaces around it, an answer with spaces after it, a second
/// question and its answer: what templates trim, and where they put the system prompt.
fn whale_conversation() -> [Message; 5] {
    let message = |role, content: &str| Message { role, content: content.into() };
    [
        message(Role::System, "You are a whale expert."),
        message(Role::User, " What is a whale?\n"),
        message(Role::Assistant, "A large mammal of the sea.  "),
        message(Role::User, "And a fish?"),
        message(Role::Assistant, "A cold-blooded swimmer."),
    ]
}

/// Gemma 3's own tokenizer: its end of document is `<eos>` (its `</s>` is an ordinary token),
/// a text document starts with `<bos>` as `transformers`' `tokenizer(text)` gives it (and
/// validation knows it, so the key does), `sample --chat` picks the `gemma` template, and a
/// conversation formatted with it has the ids that Gemma's tokenizer gives its
/// `tokenizer_config.json` template's rendering. Qwen3's starts texts with nothing.
#[test]
fn the_gemma_template_tokenizes_as_gemma3s_own_template() {
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let path = assets.join("gemma3/tokenizer.json");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-assets.sh", path.display());
    let file = TokenizerFile::Json(path);
    let tok = load_tokenizer(&file).unwrap();
    assert_eq!(
        (tok.eos(), tok.chat_template(), tok.turn_ends()),
        (1, Some(recipe_spec::ChatTemplate::Gemma), vec![106])
    );
    // `Tokenizer.encode(text).ids` in tokenizers 0.23.3, which adds the post-processor's tokens.
    assert_eq!(tok.encode_document("Call me Ishmael.").unwrap(), [2, 7029, 786, 39579, 136817, 236761]);
    assert_eq!(Headers.tokenizer_facts(&file).unwrap().bos, Some(2));
    let qwen3 = TokenizerFile::Json(assets.join("qwen3/tokenizer.json"));
    assert_eq!(
        load_tokenizer(&qwen3).unwrap().encode_document("Call me Ishmael.").unwrap(),
        [7220, 752, 56604, 1728, 301, 13]
    );
    assert_eq!(Headers.tokenizer_facts(&qwen3).unwrap().bos, None);
    let messages = &whale_conversation()[..4];
    // The template in the package's tokenizer_config.json, rendered by jinja2 with
    // add_generation_prompt, then `Tokenizer.encode(text, add_special_tokens=False)` (tokenizers
    // 0.23.3): `<bos><start_of_turn>user\nYou are a whale expert.\n\nWhat is a whale?<end_of_turn>\n
    // <start_of_turn>model\nA large mammal of the sea.<end_of_turn>\n<start_of_turn>user\nAnd a
    // fish?<end_of_turn>\n<start_of_turn>model\n`.
    let theirs = [
        2, 105, 2364, 107, 3048, 659, 496, 47389, 7710, 236761, 108, 3689, 563, 496, 47389, 236881, 106, 107, 105,
        4368, 107, 236776, 2455, 121921, 529, 506, 5442, 236761, 106, 107, 105, 2364, 107, 3133, 496, 5385, 236881,
        106, 107, 105, 4368, 107,
    ];
    assert_eq!(chat_prompt(&tok, recipe_spec::ChatTemplate::Gemma, messages).unwrap(), theirs);
    // Its own template, read from that tokenizer_config.json and rendered here, gives the same
    // ids; and a conversation ends and is masked as the hand-written `gemma` template does.
    assert_eq!(chat_prompt(&tok, ChatTemplate::Tokenizer, messages).unwrap(), theirs);
    assert_eq!(
        format_chat(&tok, ChatTemplate::Tokenizer, &messages[..3]).unwrap(),
        format_chat(&tok, ChatTemplate::Gemma, &messages[..3]).unwrap()
    );
}

/// `template = "tokenizer"`: Qwen3's own template (its `tokenizer_config.json`, which uses
/// namespaces, reversed slices and Python's string methods) gives the ids `transformers`'
/// `apply_chat_template` gives, and the mask covers each reply as given and its `<|im_end|>`,
/// not the empty thinking block the template writes before the last one.
#[test]
fn qwen3s_own_template_tokenizes_as_transformers_does() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/qwen3/tokenizer.json");
    let file = TokenizerFile::Json(path);
    let tok = load_tokenizer(&file).unwrap();
    assert!(Headers.tokenizer_facts(&file).unwrap().templates.contains(&ChatTemplate::Tokenizer));
    let messages = whale_conversation();
    // `AutoTokenizer.from_pretrained("assets/qwen3").apply_chat_template(messages)`
    // (transformers 5.24): `<|im_start|>system\nYou are a whale expert.<|im_end|>\n<|im_start|>user\n
    // What is a whale?\n<|im_end|>\n<|im_start|>assistant\nA large mammal of the sea.  <|im_end|>\n
    // <|im_start|>user\nAnd a fish?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA
    // cold-blooded swimmer.<|im_end|>\n`.
    let theirs = [
        151644, 8948, 198, 2610, 525, 264, 50019, 6203, 13, 151645, 198, 151644, 872, 198, 3555, 374, 264, 50019, 5267,
        151645, 198, 151644, 77091, 198, 32, 3460, 34941, 278, 315, 279, 9396, 13, 256, 151645, 198, 151644, 872, 198,
        3036, 264, 7640, 30, 151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271, 32, 9255, 92903, 291, 16191,
        1174, 13, 151645, 198,
    ];
    let (ids, mask) = format_chat(&tok, ChatTemplate::Tokenizer, &messages).unwrap();
    assert_eq!(ids, theirs);
    let masked: Vec<u32> = ids.iter().zip(&mask).filter(|(_, m)| **m == 1).map(|(t, _)| *t).collect();
    let replies = [tok.encode("A large mammal of the sea.  ").unwrap(), tok.encode("A cold-blooded swimmer.").unwrap()];
    assert_eq!(masked, [replies[0].clone(), vec![151645], replies[1].clone(), vec![151645]].concat());
    // With `add_generation_prompt`, as `sample --chat` prompts.
    assert_eq!(chat_prompt(&tok, ChatTemplate::Tokenizer, &messages[..4]).unwrap(), theirs[..47]);
    assert_eq!(tok.template_ids(ChatTemplate::Tokenizer), Some(vec![151645]), "<|im_end|> ends a turn");

    // `[tokenizer] chat_template_args = { enable_thinking = false }`, as a recipe sets it:
    // `apply_chat_template(..., add_generation_prompt=True, enable_thinking=False)` prompts
    // with an empty thinking block.
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[model]\nd_model = 32\nn_layers = 1\nn_heads = 2\n[tokenizer]\npath = \"{}\"\nchat_template_args = {{ enable_thinking = false }}\n\
         [sources.chat]\npath = \"chat.jsonl\"\nformat = \"chat-jsonl\"\ntemplate = \"tokenizer\"\n\
         [stages.sft]\nkind = \"sft\"\ndata = {{ mix = {{ chat = 1 }} }}\n",
        file.path().display()
    );
    std::fs::write(dir.path().join("chat.jsonl"), "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}\n").unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, text).unwrap();
    let recipe = recipe_spec::Recipe::load(&path, &[], &Headers).unwrap();
    let recipe_spec::Tokenizer::File { own_template, .. } = &recipe.tokenizer else { panic!("a file") };
    assert!(own_template.as_ref().unwrap().jinja.starts_with("{%- set enable_thinking = false -%}\n"));
    let tok = recipe_data::Tok::new(recipe_checkpoint::read_tokenizer(&file).unwrap())
        .unwrap()
        .with_own_template(own_template.clone());
    let prompt = chat_prompt(&tok, ChatTemplate::Tokenizer, &messages[..4]).unwrap();
    assert_eq!(prompt, [&theirs[..47], &[151667, 271, 151668, 271]].concat());
}

/// A `.gguf`'s `tokenizer.chat_template` is its tokenizer's own template: SmolLM2's is ChatML
/// with a default system prompt, so given one it prompts as `chatml` does.
#[test]
fn a_ggufs_own_template_is_read_from_its_metadata() {
    let tok = load_tokenizer(&TokenizerFile::Gguf(smollm2())).unwrap();
    let message = |role, content: &str| Message { role, content: content.into() };
    let messages = [message(Role::System, "Be brief."), message(Role::User, "What is a whale?")];
    let prompt = chat_prompt(&tok, ChatTemplate::Tokenizer, &messages).unwrap();
    assert_eq!(prompt, chat_prompt(&tok, ChatTemplate::ChatMl, &messages).unwrap());
    let without_system = tok.decode(&chat_prompt(&tok, ChatTemplate::Tokenizer, &messages[1..]).unwrap());
    assert!(
        without_system.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"),
        "{without_system}"
    );
}

/// A model folder whose weights are split over shards named by `model.safetensors.index.json`
/// loads the same tensors as the single file.
#[test]
fn a_sharded_model_folder_loads_like_a_single_file() {
    let config = recipe_spec::ModelSpec {
        d_model: Some(32),
        n_layers: Some(2),
        n_heads: Some(4),
        vocab_size: Some(50),
        ..Default::default()
    }
    .resolve(None);
    let model = Llama::init(&config, 1, &Device::Cpu).unwrap();
    let single = tempfile::tempdir().unwrap();
    model.save_pretrained(single.path(), None, &[0], "").unwrap();
    let sharded = tempfile::tempdir().unwrap();
    std::fs::copy(single.path().join("config.json"), sharded.path().join("config.json")).unwrap();
    let tensors = model.weights().unwrap();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        let map: std::collections::HashMap<String, candle_core::Tensor> = part.iter().cloned().collect();
        candle_core::safetensors::save(&map, sharded.path().join(file)).unwrap();
        for (name, _) in part {
            weight_map.insert(name.clone(), file.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(sharded.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let info = inspect(sharded.path()).unwrap();
    assert_eq!(info.arch.resolve(None), config);
    let mut a = load_checkpoint(single.path(), CheckpointFormat::HfDir, &config).unwrap();
    let mut b = load_checkpoint(sharded.path(), CheckpointFormat::HfDir, &config).unwrap();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(ta), values(tb), "{na}");
    }
    // A lone safetensors file without its config: the shapes give all but the head count.
    let lone = tempfile::tempdir().unwrap();
    std::fs::copy(single.path().join("model.safetensors"), lone.path().join("weights.safetensors")).unwrap();
    let info = inspect(&lone.path().join("weights.safetensors")).unwrap();
    assert_eq!(info.kv_width_of_unknown_heads, Some(32), "4 heads of 8: key/value width 32");
    assert_eq!((info.arch.d_model, info.arch.n_layers, info.arch.vocab_size), (Some(32), Some(2), Some(50)));
    assert_eq!((info.arch.tie_embeddings, info.arch.n_heads), (Some(true), None));
}

/// A checkpoint `transformers` 5 saved (`scripts/make-transformers-fixture.py`), imported:
/// its architecture, after checking that its logits on the saved tokens are `transformers'`
/// and that an export reads back as the same architecture.
fn import_transformers_fixture(name: &str) -> recipe_spec::Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let config = inspect(&dir).unwrap().arch.resolve(None);
    let model =
        Llama::frozen(&config, load_checkpoint(&dir, CheckpointFormat::HfDir, &config).unwrap(), &Device::Cpu).unwrap();
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    assert_logits(name, &model, &expected);

    let exported = tempfile::tempdir().unwrap();
    model.save_pretrained(exported.path(), None, &[0], name).unwrap();
    assert_eq!(inspect(exported.path()).unwrap().arch.resolve(None), config);
    config
}

/// `model`'s logits on the fixture's tokens are the fixture's, within 2e-5 of the largest one's size.
fn assert_logits(name: &str, model: &Llama, expected: &std::collections::HashMap<String, candle_core::Tensor>) {
    let ids: Vec<u32> = expected["ids"].to_vec1::<i64>().unwrap().into_iter().map(|i| i as u32).collect();
    let t = ids.len();
    let positions = candle_core::Tensor::arange(0u32, t as u32, &Device::Cpu).unwrap();
    let tokens = candle_core::Tensor::from_vec(ids, (1, t), &Device::Cpu).unwrap();
    let logits = model.forward(&tokens, &positions, &recipe_model::KeySpans::after(0, t)).unwrap();
    let (ours, theirs) = (logits.to_vec2::<f32>().unwrap(), expected["logits"].to_vec2::<f32>().unwrap());
    assert_eq!(ours.len(), t);
    let worst = ours.iter().flatten().zip(theirs.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    // f32's rounding, grown through the layers in proportion to the logits' size (Gemma's, with
    // four norms a block, grow it most).
    let top = theirs.iter().flatten().fold(1f32, |m, x| m.max(x.abs()));
    assert!(worst < 2e-5 * top, "{name}: logits differ from the reference's by up to {worst} (the largest is {top})");
}

/// Llama 3.1's rotary scaling and a base of 50000, both in the `rope_parameters` that
/// `transformers` 5 writes, over three times the scaling's original context.
#[test]
fn a_transformers_llama3_checkpoint_computes_its_reference_logits() {
    let config = import_transformers_fixture("llama3-rope");
    assert_eq!((config.arch.as_str(), config.rope_theta), ("llama", 50000.0));
    let scaling = recipe_spec::RopeScaling::Llama3 {
        factor: 4.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_seq_len: 32,
    };
    assert_eq!(config.rope_scaling, Some(scaling));
}

/// Qwen2: biases on the query, key and value projections, tied embeddings.
#[test]
fn a_transformers_qwen2_checkpoint_computes_its_reference_logits() {
    let config = import_transformers_fixture("qwen2");
    assert_eq!((config.arch.as_str(), config.rope_theta, config.tie_embeddings), ("qwen2", 1e6, true));
}

/// Mistral: Llama whose every position sees itself and the 31 before it, over 96 tokens.
#[test]
fn a_transformers_mistral_checkpoint_computes_its_reference_logits() {
    let config = import_transformers_fixture("mistral");
    assert_eq!((config.arch.as_str(), config.max_seq_len, config.sliding_window), ("llama", 128, Some(32)));
}

/// Phi-3: Mistral with fused query/key/value and gate/up projections, split on loading.
#[test]
fn a_transformers_phi3_checkpoint_computes_its_reference_logits() {
    let config = import_transformers_fixture("phi3");
    assert_eq!((config.arch.as_str(), config.sliding_window, config.d_ff), ("llama", Some(48), 96));
}

/// Ministral: Llama whose first layer alone slides (window 24, over 96 tokens).
#[test]
fn a_transformers_ministral_checkpoint_computes_its_reference_logits() {
    let config = import_transformers_fixture("ministral");
    assert_eq!((config.arch.as_str(), config.sliding_window), ("llama", Some(24)));
    assert_eq!(config.full_attention_layers, Some(vec![1]));
}

/// Gemma 3's text model: norms after each sublayer and over each head, all scaling by `1 + w`;
/// GeGLU; embeddings scaled by √d_model; two sliding layers (window 16) rotating with base 1e4
/// around a global one with base 1e6, linearly scaled; attention scaled by 1/√24.
#[test]
fn a_transformers_gemma3_checkpoint_computes_its_reference_logits() {
    let config = import_transformers_fixture("gemma3");
    assert_eq!((config.arch.as_str(), config.sliding_window, config.local_rope_theta), ("gemma3", Some(16), Some(1e4)));
    assert_eq!((config.full_attention_layers.clone(), config.query_pre_attn_scalar), (Some(vec![1]), Some(24)));
    assert_eq!((config.rope_theta, config.rope_scaling), (1e6, Some(recipe_spec::RopeScaling::Linear { factor: 2.0 })));
    let error = inspect(&lone_weights("gemma3").path().join("weights.safetensors")).unwrap_err();
    assert!(error.contains("four norms, as Gemma's: put its config.json beside it"), "{error}");
}

/// Gemma 3's multimodal layout (4B to 27B): the language model, named under `language_model.`
/// beside a vision tower, imports as Gemma 3's text model, the vision tower left out.
#[test]
fn a_transformers_multimodal_gemma3_checkpoint_imports_its_language_model() {
    let config = import_transformers_fixture("gemma3-vision");
    assert_eq!((config.arch.as_str(), config.sliding_window, config.local_rope_theta), ("gemma3", Some(16), Some(1e4)));
    assert_eq!(config, import_transformers_fixture("gemma3"));
}

/// Gemma 2: Gemma 3's block without head norms, its attention scores capped at ±5 and its logits
/// at ±3, the first and last of three layers sliding (window 16).
#[test]
fn a_transformers_gemma2_checkpoint_computes_its_reference_logits() {
    let config = import_transformers_fixture("gemma2");
    assert_eq!(
        (config.arch.as_str(), config.sliding_window, config.full_attention_layers.clone()),
        ("gemma2", Some(16), Some(vec![1]))
    );
    assert_eq!((config.attn_logit_softcapping, config.final_logit_softcapping), (Some(5.0), Some(3.0)));
}

/// OLMo 2: RMSNorms after attention and the MLP and none before, the query and key projections
/// normalised whole; OLMo 3: the same with its first layer sliding (window 24).
#[test]
fn transformers_olmo2_and_olmo3_checkpoints_compute_their_reference_logits() {
    let config = import_transformers_fixture("olmo2");
    assert_eq!((config.arch.as_str(), config.sliding_window, config.tie_embeddings), ("olmo2", None, false));
    let config = import_transformers_fixture("olmo3");
    assert_eq!((config.arch.as_str(), config.sliding_window, config.rope_theta), ("olmo2", Some(24), 5e5));
    assert_eq!(config.full_attention_layers, Some(vec![1]));
    // Without its config.json, OLMo 2 is told by its blocks' lacking an input norm.
    let info = inspect(&lone_weights("olmo2").path().join("weights.safetensors")).unwrap();
    assert_eq!(
        (info.arch.arch.as_deref(), info.arch.n_layers, info.kv_width_of_unknown_heads),
        (Some("olmo2"), Some(2), Some(32))
    );
}

/// Granite: Llama with its embeddings, residual branches, attention scores and logits each
/// multiplied by a constant of its own.
#[test]
fn a_transformers_granite_checkpoint_computes_its_reference_logits() {
    let config = import_transformers_fixture("granite");
    assert_eq!(config.arch, "granite");
    let multipliers = (config.embedding_multiplier, config.residual_multiplier, config.logits_scaling);
    assert_eq!((multipliers, config.attention_scale()), ((Some(3.0), Some(0.5), Some(2.5)), 0.3));
}

/// A fixture's `model.safetensors` alone, as `weights.safetensors` in a new folder.
fn lone_weights(name: &str) -> tempfile::TempDir {
    let lone = tempfile::tempdir().unwrap();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name).join("model.safetensors");
    std::fs::copy(&fixture, lone.path().join("weights.safetensors")).unwrap();
    lone
}

/// Phi-3 with LongRoPE over an original context of 32: its long factors over 96 tokens, its
/// short ones over 24, and cos and sin scaled by √(1 + ln 4 / ln 32) either way; Phi-4-mini's
/// the same turning only 12 of each head's 16 dimensions (and exported as Phi-3, its
/// projections fused again).
#[test]
fn transformers_phi3_and_phi4_mini_checkpoints_with_longrope_compute_their_reference_logits() {
    for (name, rotary_dim) in [("phi3-longrope", None), ("phi4-mini", Some(12))] {
        let config = import_transformers_fixture(name);
        let Some(recipe_spec::RopeScaling::LongRope { original_max_seq_len, attention_factor, .. }) =
            config.rope_scaling
        else {
            panic!("LongRoPE scaling, not {:?}", config.rope_scaling)
        };
        assert_eq!((original_max_seq_len, attention_factor), (32, (1.0 + 4f64.ln() / 32f64.ln()).sqrt()));
        assert_eq!(config.rotary_dim, rotary_dim, "{name}");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let model =
            Llama::frozen(&config, load_checkpoint(&dir, CheckpointFormat::HfDir, &config).unwrap(), &Device::Cpu)
                .unwrap();
        let short = candle_core::safetensors::load(dir.join("expected-short.safetensors"), &Device::Cpu).unwrap();
        assert_logits(&format!("{name} within its original context"), &model, &short);
    }
}

/// SmolLM3: Llama whose second layer attends without positions.
#[test]
fn a_transformers_smollm3_checkpoint_computes_its_reference_logits() {
    let config = import_transformers_fixture("smollm3");
    assert_eq!((config.arch.as_str(), config.nope_layers.clone()), ("llama", Some(vec![1])));
}

/// Qwen3: each query and key head RMS-normalised, heads wider together than the model.
#[test]
fn a_transformers_qwen3_checkpoint_computes_its_reference_logits() {
    let config = import_transformers_fixture("qwen3");
    assert_eq!((config.arch.as_str(), config.d_model, config.n_heads, config.head_dim()), ("qwen3", 64, 4, 32));
    // Without its config.json, the per-head norms give the head size and with it the counts.
    let lone = lone_weights("qwen3");
    let info = inspect(&lone.path().join("weights.safetensors")).unwrap();
    assert_eq!(info.kv_width_of_unknown_heads, None);
    let from_shapes = info.arch.resolve(None);
    assert_eq!(
        (from_shapes.arch.as_str(), from_shapes.n_heads, from_shapes.n_kv_heads, from_shapes.head_dim()),
        ("qwen3", 4, 2, 32)
    );
    // A Llama's query projection that is not d_model wide says nothing of the head size.
    let llama = lone.path().join("llama.safetensors");
    let mut tensors = candle_core::safetensors::load(lone.path().join("weights.safetensors"), &Device::Cpu).unwrap();
    // Llama's block norms kept, the per-head ones dropped.
    tensors.retain(|name, _| !name.contains("q_norm.") && !name.contains("k_norm."));
    candle_core::safetensors::save(&tensors, &llama).unwrap();
    let error = inspect(&llama).unwrap_err();
    assert!(error.contains("query projection is 128 wide, not d_model (64)"), "{error}");
}

/// Qwen3 with YaRN's rotary scaling (its long-context setting), over three times the context
/// it stretches.
#[test]
fn a_transformers_qwen3_checkpoint_with_yarn_computes_its_reference_logits() {
    let config = import_transformers_fixture("qwen3-yarn");
    let Some(recipe_spec::RopeScaling::Yarn { factor, original_max_seq_len, attention_factor, .. }) =
        config.rope_scaling
    else {
        panic!("yarn scaling, not {:?}", config.rope_scaling)
    };
    assert_eq!((factor, original_max_seq_len, attention_factor), (4.0, 32, 0.1 * 4f64.ln() + 1.0));
}

/// Adapters `peft` saved over the `qwen3`, `gemma3`, `granite` and `gemma3-vision` checkpoints,
/// with random `A` and `B`: a stage that starts from one computes the adapted model's logits as
/// `peft` does, for LoRA and DoRA (over the multimodal model, with the vision tower's LoRA left
/// out with the tower).
#[test]
fn a_stage_starts_from_a_peft_adapter_as_peft_computes_it() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (name, method, rank, targets) in [
        ("qwen3-lora", recipe_spec::PeftMethod::Lora, 4, vec!["q_proj", "v_proj", "down_proj"]),
        ("qwen3-dora", recipe_spec::PeftMethod::Dora, 2, recipe_spec::PEFT_MODULES.to_vec()),
        ("qwen3-rslora", recipe_spec::PeftMethod::Lora, 4, vec!["q_proj", "v_proj", "down_proj"]),
        ("gemma3-lora", recipe_spec::PeftMethod::Lora, 4, vec!["q_proj", "v_proj", "down_proj"]),
        ("granite-lora", recipe_spec::PeftMethod::Lora, 4, vec!["q_proj", "v_proj", "down_proj"]),
        ("gemma3-vision-lora", recipe_spec::PeftMethod::Lora, 4, vec!["q_proj", "v_proj", "down_proj"]),
    ] {
        let base = fixtures.join(name.rsplit_once('-').unwrap().0);
        let config = inspect(&base).unwrap().arch.resolve(None);
        let dir = fixtures.join(name);
        let info = recipe_spec::CheckpointReader::adapter(&Headers, &dir).unwrap();
        assert_eq!(
            (info.method, info.rank, info.rslora, info.targets.clone()),
            (method, rank, name.contains("rslora"), targets.iter().map(|t| t.to_string()).collect())
        );
        let peft = recipe_spec::Peft::of_adapter(name, &dir, info);
        let tensors = load_checkpoint(&base, CheckpointFormat::HfDir, &config).unwrap();
        let model = Llama::with_lora(&config, tensors, &peft, 0, &Device::Cpu).unwrap();
        let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        assert_logits(name, &model, &expected);
    }
}

/// PiSSA and OLoRA as `peft` 0.21 initialises them over the `qwen3` checkpoint: the same `A₀`
/// and `B₀` (each component up to its sign, which neither SVD nor QR fixes and training does
/// not see) and the same residual base weights. An adapter `peft` saved that way, which fits
/// only that residual base, is refused as a starting point.
#[test]
fn pissa_and_olora_start_from_the_weights_as_peft_does() {
    use candle_core::Tensor;
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let base = fixtures.join("qwen3");
    let config = inspect(&base).unwrap().arch.resolve(None);
    for (name, init) in [("qwen3-pissa", recipe_spec::LoraInit::Pissa), ("qwen3-olora", recipe_spec::LoraInit::Olora)] {
        let dir = fixtures.join(name);
        let why = recipe_spec::CheckpointReader::adapter(&Headers, &dir).unwrap_err();
        assert!(why.contains("init_lora_weights"), "{why}");
        let targets = ["q_proj", "v_proj", "down_proj"].map(String::from).to_vec();
        let peft = recipe_spec::Peft {
            method: recipe_spec::PeftMethod::Lora,
            rank: 4,
            alpha: 8.0,
            rslora: false,
            loraplus_lr_ratio: None,
            init: Some(init),
            dropout: 0.0,
            targets,
            relora: None,
            from: None,
            adapter: None,
        };
        let tensors = load_checkpoint(&base, CheckpointFormat::HfDir, &config).unwrap();
        let model = Llama::with_lora(&config, tensors.clone(), &peft, 0, &Device::Cpu).unwrap();
        let ours: std::collections::HashMap<String, Tensor> = model.trainable_tensors().into_iter().collect();
        let theirs = recipe_checkpoint::load_adapter(&dir).unwrap();
        let residual = candle_core::safetensors::load(dir.join("residual.safetensors"), &Device::Cpu).unwrap();
        let original: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        let max = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(theirs.len(), 3 * 2 * 2);
        for (tensor, want) in &theirs {
            let got = &ours[tensor];
            // Component k is row k of A and column k of B: compare each with either sign.
            let (components, along) =
                if tensor.contains("lora_A") { (got.dim(0).unwrap(), 0) } else { (got.dim(1).unwrap(), 1) };
            for k in 0..components {
                let (g, w) = (got.narrow(along, k, 1).unwrap(), want.narrow(along, k, 1).unwrap());
                let off = max(&(&g - &w).unwrap()).min(max(&(&g + &w).unwrap()));
                assert!(off < 1e-4 * max(&w), "{name} {tensor} component {k}: {off} off (largest {})", max(&w));
            }
        }
        for (weight, want) in &residual {
            let (a, b) = (
                &ours[&weight.replace(".weight", ".lora_A.weight")],
                &ours[&weight.replace(".weight", ".lora_B.weight")],
            );
            let got = (&original[weight] - (b.matmul(a).unwrap() * 2.0).unwrap()).unwrap();
            let off = max(&(&got - want).unwrap());
            assert!(off < 1e-5 * max(want).max(1.0), "{name}: residual {weight} {off} off");
        }
    }
}

/// A byte-level BPE of three tokens (`a`, `b`, `ab`) and `end` as id 3: enough to carry
/// weights into GGUF.
fn tiny_tokenizer(end: &str) -> serde_json::Value {
    serde_json::json!({
        "model": { "type": "BPE", "vocab": { "a": 0, "b": 1, "ab": 2 }, "merges": ["a b"] },
        "pre_tokenizer": { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true },
        "added_tokens": [{ "id": 3, "content": end, "special": true }],
    })
}

/// A one-layer Llama of `vocab_size` tokens and width `d_model`, with random weights: enough
/// to carry a tokenizer into GGUF.
fn random_model(vocab_size: u32, d_model: u32) -> (recipe_spec::Model, Vec<(String, candle_core::Tensor)>) {
    let config = recipe_spec::ModelSpec {
        vocab_size: Some(vocab_size),
        d_model: Some(d_model),
        n_layers: Some(1),
        n_heads: Some(2),
        d_ff: Some(2 * d_model),
        ..Default::default()
    }
    .resolve(None);
    let weights = Llama::init(&config, 0, &Device::Cpu).unwrap().weights().unwrap();
    (config, weights)
}

/// A model written as GGUF carries its tokenizer under the pre-tokenizer name llama.cpp knows,
/// and reads back as the same tokenizer: Qwen3's (`qwen2`: its split, then bytes) gives the
/// same ids for text, digits and ChatML, and the token put before every text when there is
/// one; Gemma 3's SentencePiece BPE goes in as llama.cpp's `llama` tokenizer.
#[test]
fn a_gguf_export_keeps_the_tokenizer_llama_cpp_names() {
    use recipe_checkpoint::{GgmlDType, GgufTokenizer, write_gguf};
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let json = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(assets.join(name).join("tokenizer.json")).unwrap()).unwrap()
    };
    let (config, weights) = random_model(151669, 32);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen3.gguf");
    let qwen3 = json("qwen3");
    let tokenizer = GgufTokenizer { json: &qwen3, bos: None, eos: 151643, chat_template: None };
    write_gguf(&path, "qwen3-vocab", &config, &weights, &tokenizer, GgmlDType::F16).unwrap();
    let g = recipe_checkpoint::Headers.inspect(&path).unwrap();
    assert_eq!(g.arch.resolve(None).vocab_size, 151669);
    let ours = load_tokenizer(&TokenizerFile::Json(assets.join("qwen3/tokenizer.json"))).unwrap();
    let again = load_tokenizer(&TokenizerFile::Gguf(path)).unwrap();
    let text = "<|im_start|>user\nWhat's 12345 + 678?<|im_end|>\n<|im_start|>assistant\nIt's 13023.\n\n  Done!";
    assert_eq!(again.encode(text).unwrap(), ours.encode(text).unwrap());
    assert_eq!(again.bos(), None);

    // A file whose texts start with a token (`add_bos_token`, as Llama 3's) reads back with it.
    let path = dir.path().join("framed.gguf");
    let tokenizer = GgufTokenizer { json: &qwen3, bos: Some(151644), eos: 151643, chat_template: None };
    write_gguf(&path, "qwen3-vocab", &config, &weights, &tokenizer, GgmlDType::F16).unwrap();
    let framed = load_tokenizer(&TokenizerFile::Gguf(path.clone())).unwrap();
    assert_eq!(framed.bos(), Some(151644));
    assert_eq!(framed.encode_document("Done!").unwrap(), [vec![151644], ours.encode("Done!").unwrap()].concat());
    assert_eq!(recipe_checkpoint::Headers.inspect(&path).unwrap().tokenizer.unwrap().bos, Some(151644));

    // Gemma 3's SentencePiece BPE (no `▁` put before a text, runs of `▁` as user-defined
    // pieces) goes in as llama.cpp's `llama` tokenizer and reads back giving its ids.
    let gemma = json("gemma3");
    let (config, weights) = random_model(262208, 8);
    let path = dir.path().join("gemma.gguf");
    let tokenizer = GgufTokenizer { json: &gemma, bos: Some(2), eos: 1, chat_template: None };
    write_gguf(&path, "gemma-vocab", &config, &weights, &tokenizer, GgmlDType::F16).unwrap();
    let ours = load_tokenizer(&TokenizerFile::Json(assets.join("gemma3/tokenizer.json"))).unwrap();
    let again = load_tokenizer(&TokenizerFile::Gguf(path)).unwrap();
    let text = "<start_of_turn>user\nWhat's 12345 + 678?<end_of_turn>\n<start_of_turn>model\n  Two  spaces,\n\n\tnaïve café 日本語\n    Done!";
    assert_eq!(again.encode(text).unwrap(), ours.encode(text).unwrap());
    assert_eq!(again.encode_document("Done!").unwrap(), ours.encode_document("Done!").unwrap());
    assert_eq!(again.decode(&ours.encode(text).unwrap()), text);
}

/// Qwen2 (biases) and Qwen3 (per-head norms, heads wider together than the model) written as
/// GGUF under llama.cpp's `qwen2` and `qwen3` architectures (rows as they are: llama.cpp
/// rotates Qwen's by halves) read back as the same architecture computing `transformers`'
/// logits.
#[test]
fn qwen2_and_qwen3_checkpoints_go_through_gguf_unchanged() {
    use recipe_checkpoint::{GgmlDType, GgufTokenizer, write_gguf};
    let tokenizer = tiny_tokenizer("<|endoftext|>");
    for name in ["qwen2", "qwen3"] {
        let config = import_transformers_fixture(name);
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let weights = load_checkpoint(&dir, CheckpointFormat::HfDir, &config).unwrap();
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join(format!("{name}.gguf"));
        let tok = GgufTokenizer { json: &tokenizer, bos: None, eos: 3, chat_template: None };
        write_gguf(&path, name, &config, &weights, &tok, GgmlDType::F32).unwrap();
        let again = inspect(&path).unwrap().arch.resolve(None);
        // GGUF stores the norm's epsilon as an f32.
        assert_eq!(again.norm_eps as f32, config.norm_eps as f32, "{name}");
        assert_eq!(recipe_spec::Model { norm_eps: config.norm_eps, ..again.clone() }, config, "{name}");
        let model =
            Llama::frozen(&again, load_checkpoint(&path, CheckpointFormat::Gguf, &again).unwrap(), &Device::Cpu)
                .unwrap();
        let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        assert_logits(name, &model, &expected);
    }
}

/// Llama 3.1's rotary scaling goes into GGUF as llama.cpp's converter writes it: no scaling
/// type, and a `rope_freqs.weight` tensor holding each frequency's divisor (1 for the fast
/// ones, the factor for the slow ones, blended between), read by llama.cpp (checked by hand).
/// Read back, the divisors give the same scaling, and the model `transformers`' logits.
#[test]
fn llama3_rotary_scaling_goes_through_gguf_as_llama_cpps_frequency_divisors() {
    use candle_core::quantized::gguf_file;
    use recipe_checkpoint::{GgmlDType, GgufTokenizer, write_gguf};
    let config = import_transformers_fixture("llama3-rope");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama3-rope");
    let weights = load_checkpoint(&dir, CheckpointFormat::HfDir, &config).unwrap();
    let tokenizer = tiny_tokenizer("<|endoftext|>");
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("llama3.gguf");
    let tok = GgufTokenizer { json: &tokenizer, bos: None, eos: 3, chat_template: None };
    write_gguf(&path, "llama3-rope", &config, &weights, &tok, GgmlDType::F32).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    assert!(!content.metadata.contains_key("llama.rope.scaling.type"));
    let divisors = content.tensor(&mut file, "rope_freqs.weight", &Device::Cpu).unwrap().dequantize(&Device::Cpu);
    let divisors = divisors.unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(divisors.len(), 8, "one per frequency of a head of 16");
    assert_eq!((divisors[0], divisors[7]), (1.0, 4.0), "the fastest unscaled, the slowest by the factor");
    assert!(divisors.windows(2).all(|w| w[0] <= w[1]), "{divisors:?}");

    let again = inspect(&path).unwrap().arch.resolve(None);
    assert_eq!(again.rope_scaling, config.rope_scaling);
    assert_eq!(recipe_spec::Model { norm_eps: config.norm_eps, ..again.clone() }, config);
    let model =
        Llama::frozen(&again, load_checkpoint(&path, CheckpointFormat::Gguf, &again).unwrap(), &Device::Cpu).unwrap();
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    assert_logits("llama3-rope through GGUF", &model, &expected);
}

/// A SentencePiece BPE tokenizer in GGUF (llama.cpp's `llama` model, as Llama 2, Mistral and
/// TinyLlama ship): rebuilt from its pieces, scores and types, it gives SentencePiece's own ids
/// (byte fallback, digits, runs of spaces, a leading `▁`) and llama.cpp's around a
/// user-defined piece, starts a document with `<s>` as llama.cpp does when the file is silent,
/// and decodes back. Fixture: `scripts/make-sentencepiece-gguf-fixture.py`.
///
/// Written back as GGUF (each piece scored by the first merge that makes it, byte-fallback
/// pieces typed as bytes), it reads back as the same tokenizer; llama-cpp-python tokenizes such
/// an export as SentencePiece does and continues a prompt as `recipe sample` does (by hand).
#[test]
fn a_sentencepiece_gguf_tokenizer_gives_llama_cpps_ids_and_goes_back_into_gguf() {
    use candle_core::quantized::gguf_file;
    use recipe_checkpoint::{GgmlDType, GgufTokenizer, write_gguf};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sentencepiece-gguf");
    let expected: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let gives_the_expected_ids = |path: PathBuf| {
        let tok = load_tokenizer(&TokenizerFile::Gguf(path)).unwrap();
        for case in &expected {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode(text).unwrap(), ids, "{text:?}");
            assert_eq!(tok.encode_document(text).unwrap(), [vec![1], ids.clone()].concat(), "{text:?}");
            assert_eq!(tok.decode(&ids), case["decoded"].as_str().unwrap(), "{text:?}");
        }
        assert_eq!((tok.bos(), tok.eos()), (Some(1), 2));
    };
    gives_the_expected_ids(dir.join("tokenizer.gguf"));

    let rebuilt = recipe_checkpoint::read_tokenizer(&TokenizerFile::Gguf(dir.join("tokenizer.gguf"))).unwrap();
    let json: serde_json::Value = serde_json::from_str(&rebuilt.to_string(false).unwrap()).unwrap();
    let (config, weights) = random_model(1200, 32);
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("spm.gguf");
    let tokenizer = GgufTokenizer { json: &json, bos: Some(1), eos: 2, chat_template: None };
    write_gguf(&path, "spm", &config, &weights, &tokenizer, GgmlDType::F32).unwrap();
    let content = gguf_file::Content::read(&mut std::fs::File::open(&path).unwrap()).unwrap();
    let types = content.metadata["tokenizer.ggml.token_type"].to_vec().unwrap();
    let kind = |id: usize| types[id].to_i32().unwrap();
    assert_eq!(
        (kind(0), kind(1), kind(3), kind(4), kind(500)),
        (2, 3, 4, 6, 1),
        "unknown, control, user-defined, byte, normal"
    );
    assert_eq!(content.metadata["tokenizer.ggml.model"].to_string().unwrap(), "llama");
    gives_the_expected_ids(path);
}

/// Gemma 2 and Gemma 3 go through GGUF as llama.cpp's `gemma2` and `gemma3`: their norms stored
/// as `1 + w` (as llama.cpp's converter stores them), Gemma's norm names, the sliding layers as
/// a per-layer pattern, the sliding layers' rotary base, the logit caps. Read back, each is the
/// same architecture computing the same logits. A query scale llama.cpp would not compute
/// (these fixtures' `query_pre_attn_scalar` of 24 against heads of 32) is refused.
#[test]
fn gemma2_and_gemma3_checkpoints_go_through_gguf() {
    use recipe_checkpoint::{GgmlDType, GgufTokenizer, write_gguf};
    let tokenizer = tiny_tokenizer("<eos>");
    let tok = GgufTokenizer { json: &tokenizer, bos: None, eos: 3, chat_template: None };
    for name in ["gemma2", "gemma3"] {
        let fixture = import_transformers_fixture(name);
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let weights = load_checkpoint(&dir, CheckpointFormat::HfDir, &fixture).unwrap();
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join(format!("{name}.gguf"));
        let refused = write_gguf(&path, name, &fixture, &weights, &tok, GgmlDType::F32).unwrap_err();
        assert!(refused.contains("query_pre_attn_scalar"), "{refused}");

        let config = recipe_spec::Model { query_pre_attn_scalar: None, ..fixture };
        write_gguf(&path, name, &config, &weights, &tok, GgmlDType::F32).unwrap();
        let again = inspect(&path).unwrap().arch.resolve(None);
        assert_eq!(again.norm_eps as f32, config.norm_eps as f32, "{name}");
        assert_eq!(recipe_spec::Model { norm_eps: config.norm_eps, ..again.clone() }, config, "{name}");
        let read = load_checkpoint(&path, CheckpointFormat::Gguf, &again).unwrap();
        let ids = candle_core::Tensor::new(
            &[[5u32, 17, 99, 3, 42, 8, 120, 64, 1, 0, 77, 31, 12, 90, 45, 6, 101, 23, 2]],
            &Device::Cpu,
        )
        .unwrap();
        let logits = |weights| {
            let model = Llama::frozen(&config, weights, &Device::Cpu).unwrap();
            let t = ids.dim(1).unwrap();
            let positions = candle_core::Tensor::arange(0u32, t as u32, &Device::Cpu).unwrap();
            model.forward(&ids, &positions, &recipe_model::KeySpans::after(0, t)).unwrap().to_vec2::<f32>().unwrap()
        };
        let (before, after) = (logits(weights), logits(read));
        let worst =
            before.iter().flatten().zip(after.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{name}: logits differ by {worst} after GGUF");
    }
}
