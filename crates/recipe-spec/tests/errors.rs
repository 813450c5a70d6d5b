//! Every class of recipe error, with the shape of its message: what is wrong, `file:line:col`,
//! the snippet with a caret, what was expected, and a suggestion where one exists.

use std::path::{Path, PathBuf};

use recipe_checkpoint::Headers;
use recipe_spec::{LossOn, Packing, Recipe, StageKind};

/// A folder with a few small documents, a chat file and a recipe.
struct Fixture {
    dir: tempfile::TempDir,
}

const BASE: &str = r#"[recipe]
name = "t"
seed = 3

[model]
d_model = 64
n_layers = 2
n_heads = 4
max_seq_len = 128

[tokenizer]
train = { vocab_size = 512, sources = ["books"] }

[sources.books]
path = "data/*.txt"
holdout = 0.1

[sources.chat]
path = "chat.jsonl"
format = "chat-jsonl"

[stages.pretrain]
kind = "pretrain"
steps = 100
seq_len = 64
batch_size = 8
data = { mix = { books = 1.0 } }
schedule = { kind = "cosine", warmup = 10 }

[stages.sft]
kind = "sft"
after = "pretrain"
steps = 50
seq_len = 64
data = { mix = { chat = 1.0 } }
peft = { rank = 4, targets = ["q_proj", "v_proj"] }
"#;

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/a.txt"), "Call me Ishmael.").unwrap();
        std::fs::write(dir.path().join("data/b.txt"), "It was the best of times.").unwrap();
        std::fs::write(
            dir.path().join("chat.jsonl"),
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#,
        )
        .unwrap();
        Fixture { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("r.toml")
    }

    fn parse(&self, text: &str, sets: &[&str]) -> Result<Recipe, String> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Recipe::parse(&self.path(), text, &sets, &Headers).map_err(|e| e.to_string())
    }

    /// The rendered errors of a recipe that must be invalid.
    fn errors(&self, text: &str) -> String {
        self.parse(text, &[]).expect_err("recipe should be invalid")
    }
}

fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "fixture lacks {from:?}");
    text.replacen(from, to, 1)
}

/// Line and column (1-based) of the first occurrence of `needle` in `text`.
fn at(text: &str, needle: &str) -> String {
    let offset = text.find(needle).unwrap_or_else(|| panic!("{needle:?} not in text"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap().chars().count() + 1;
    format!("r.toml:{line}:{col}")
}

fn assert_has(out: &str, parts: &[&str]) {
    for p in parts {
        assert!(out.contains(p), "expected {p:?} in:\n{out}");
    }
}

#[test]
fn the_base_recipe_is_valid_and_defaults_are_applied() {
    let f = Fixture::new();
    let r = f.parse(BASE, &[]).unwrap();
    assert_eq!(r.stages.len(), 2);
    let sft = r.stage("sft").unwrap();
    assert_eq!(sft.kind, StageKind::Sft);
    assert_eq!(sft.model.d_model, 64, "inherited from [model]");
    assert_eq!(sft.model.n_kv_heads, 4, "defaults to n_heads");
    assert_eq!(sft.model.vocab_size, 512, "follows the tokenizer");
    assert_eq!(sft.micro_batch_size, 8, "defaults to batch_size");
    assert_eq!(sft.data.loss_on.as_str(), "assistant", "sft defaults to assistant-only loss");
    assert_eq!(r.stage("pretrain").unwrap().data.loss_on.as_str(), "all");
    assert_eq!(r.source("books").unwrap().files.len(), 2);
}

#[test]
fn unknown_keys_are_reported_with_position_and_suggestion() {
    let f = Fixture::new();
    let text = replace(BASE, "steps = 100", "stepz = 100");
    let text = replace(&text, "d_model = 64", "d_modle = 64");
    let out = f.errors(&text);
    assert_has(
        &out,
        &[
            "error: unknown key `stepz` in `stages.pretrain`",
            &format!("--> {}", f.path().parent().unwrap().join(at(&text, "stepz")).display()),
            "stepz = 100\n",
            "^^^^^ expected one of: kind, after,",
            "help: did you mean `steps`?",
            "error: unknown key `d_modle` in `model`",
            "help: did you mean `d_model`?",
            "has 2 errors",
        ],
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    let f = Fixture::new();
    let text = replace(BASE, "n_layers = 2", "n_layers = \"two\"");
    let text = replace(&text, "seed = 3", "seed = 1.5");
    let out = f.errors(&text);
    assert_has(
        &out,
        &[
            "error: wrong type for `model.n_layers`: found a string",
            &at(&text, "\"two\""),
            "^^^^^ expected a non-negative integer",
            "error: wrong type for `recipe.seed`: found a float",
        ],
    );
}

#[test]
fn out_of_range_values_are_errors() {
    let f = Fixture::new();
    let cases: &[(&str, &str, &str)] = &[
        (
            "kind = \"pretrain\"\nsteps",
            "kind = \"pretrain\"\noptim = { lr = 0.0 }\nsteps",
            "`stages.pretrain.optim.lr` is out of range",
        ),
        (
            "kind = \"pretrain\"\nsteps",
            "kind = \"pretrain\"\noptim = { lr = -1e-3 }\nsteps",
            "expected a learning rate > 0, found -0.001",
        ),
        (
            "kind = \"pretrain\"\nsteps",
            "kind = \"pretrain\"\noptim = { betas = [0.9, 1.0] }\nsteps",
            "`stages.pretrain.optim.betas[1]` is out of range",
        ),
        ("rank = 4", "rank = 0", "expected an integer ≥ 1, found 0"),
        ("warmup = 10", "warmup = 100", "warmup (100) must be less than the stage's steps (100)"),
        ("mix = { books = 1.0 }", "mix = { books = 0 }", "expected a weight > 0, found 0"),
        ("n_heads = 4", "n_heads = 5", "n_heads (5) does not divide d_model (64)"),
        ("n_heads = 4", "n_heads = 4\nn_kv_heads = 3", "n_kv_heads (3) does not divide n_heads (4)"),
        ("n_heads = 4", "n_heads = 4\nhead_dim = 7", "head_dim (7) is odd"),
        (
            "batch_size = 8",
            "batch_size = 8\nmicro_batch_size = 3",
            "micro_batch_size (3) does not divide batch_size (8)",
        ),
        (
            "seq_len = 64\nbatch_size",
            "seq_len = 256\nbatch_size",
            "seq_len (256) exceeds the model's max_seq_len (128)",
        ),
        ("holdout = 0.1", "holdout = 1.0", "expected a fraction in [0, 1), found 1"),
        ("kind = \"sft\"", "kind = \"sft\"\nbatch_size = 0", "expected an integer ≥ 1, found 0"),
    ];
    for (from, to, message) in cases {
        let text = replace(BASE, from, to);
        let out = f.errors(&text);
        assert!(out.contains(message), "{to:?}: expected {message:?} in:\n{out}");
        assert!(out.contains("r.toml:"), "{to:?}: no position in:\n{out}");
    }
}

#[test]
fn distillation_checks_teacher_and_temperature() {
    let f = Fixture::new();
    let student = "\n[stages.student]\nkind = \"distill\"\nsteps = 10\nseq_len = 64\ndata = { mix = { books = 1 } }\n";
    let out = f.errors(&format!("{BASE}{student}"));
    assert_has(&out, &["error: distill stage `student` has no teacher", "help: for example `teacher = \"pretrain\"`"]);

    let text = format!("{BASE}{student}teacher = \"sfft\"\ndistill = {{ temperature = 0.0 }}\n");
    let out = f.errors(&text);
    assert_has(
        &out,
        &[
            "error: no stage named `sfft`",
            "help: did you mean `sft`?",
            "`stages.student.distill.temperature` is out of range",
            "expected a temperature > 0, found 0",
        ],
    );

    let out = f.errors(&replace(BASE, "kind = \"sft\"", "kind = \"sft\"\nteacher = \"pretrain\""));
    assert_has(&out, &["`stages.sft.teacher` only applies with kind = \"distill\""]);
}

#[test]
fn undefined_references_suggest_the_nearest_name() {
    let f = Fixture::new();
    let text = replace(BASE, "mix = { books = 1.0 }", "mix = { bokos = 1.0 }");
    let text = replace(&text, "after = \"pretrain\"", "after = \"pretrian\"");
    let out = f.errors(&text);
    assert_has(
        &out,
        &[
            "error: no source named `bokos`",
            &at(&text, "bokos"),
            "help: did you mean `books`?",
            "error: no stage named `pretrian`",
            "help: did you mean `pretrain`?",
        ],
    );
    let out = f.errors(&replace(BASE, "sources = [\"books\"]", "sources = [\"book\"]"));
    assert_has(&out, &["error: no source named `book`", "help: did you mean `books`?"]);
}

#[test]
fn cycles_are_named() {
    let f = Fixture::new();
    let text = replace(BASE, "kind = \"pretrain\"", "kind = \"pretrain\"\nafter = \"sft\"");
    let out = f.errors(&text);
    assert_has(&out, &["error: the stages form a cycle: pretrain → sft → pretrain", &at(&text, "\"sft\"\nsteps")]);
    let out = f.errors(&replace(BASE, "after = \"pretrain\"", "after = \"sft\""));
    assert_has(&out, &["error: stage `sft` refers to itself"]);
}

#[test]
fn peft_targets_must_name_modules() {
    let f = Fixture::new();
    let text = replace(BASE, "targets = [\"q_proj\", \"v_proj\"]", "targets = [\"q_proj\", \"vproj\", \"attention\"]");
    let out = f.errors(&text);
    assert_has(
        &out,
        &[
            "error: `vproj` names no module of the llama architecture",
            "help: did you mean `v_proj`?",
            "error: `attention` names no module of the llama architecture",
            "expected one of: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj",
        ],
    );
    let out = f.errors(&replace(BASE, "after = \"pretrain\"\n", ""));
    assert_has(&out, &["adapts a model with PEFT but starts from random weights"]);
}

#[test]
fn peft_methods_take_only_their_own_fields() {
    let f = Fixture::new();
    let peft = |with: &str| replace(BASE, "peft = { rank = 4, ", &format!("peft = {{ rank = 4, {with}, "));
    assert_has(
        &f.errors(&peft("method = \"vera\", alpha = 8")),
        &["`stages.sft.peft.alpha` only applies with `method` lora, dora or tied-lora"],
    );
    assert_has(
        &f.errors(&peft("method = \"dora\", relora = { every = 10 }")),
        &["`stages.sft.peft.relora` only applies with `method = \"lora\"`"],
    );
    assert_has(
        &f.errors(&peft("relora = { every = 50 }")),
        &["ReLoRA's first restart would come after step 50, but the stage has 50", "expected fewer than 50 steps"],
    );
    assert_has(&f.errors(&peft("relora = { every = 10, warmup = 10 }")), &["fewer steps than `every`"]);
    assert_has(&f.errors(&peft("relora = { warmup = 1 }")), &["missing key `every` in `stages.sft.peft.relora`"]);
    assert_has(&f.errors(&peft("method = \"tied_lora\"")), &["did you mean `tied-lora`?"]);
    assert_has(
        &f.errors(&peft("method = \"vera\", rslora = true, loraplus_lr_ratio = 16")),
        &[
            "`stages.sft.peft.rslora` only applies with `method` lora, dora or tied-lora",
            "`stages.sft.peft.loraplus_lr_ratio` only applies with `method` lora, dora or tied-lora",
        ],
    );
    assert_has(&f.errors(&peft("loraplus_lr_ratio = 0")), &["expected a number > 0"]);
    let fresh = "`stages.sft.peft.init` only applies with `method = \"lora\"` starting fresh";
    assert_has(&f.errors(&peft("method = \"dora\", init = \"pissa\"")), &[fresh]);
    assert_has(&f.errors(&peft("init = \"olora\", relora = { every = 10 }")), &[fresh]);
    assert_has(&f.errors(&peft("init = \"svd\"")), &["expected one of: pissa, olora"]);
    let averaged =
        replace(&peft("relora = { every = 10 }"), "[stages.sft]", "[stages.sft]\naverage = { kind = \"ema\" }");
    assert_has(&f.errors(&averaged), &["`stages.sft.average` only applies with adapters that do not restart"]);
    for ok in [
        "method = \"vera\"",
        "method = \"tied-lora\", alpha = 8",
        "relora = { every = 10, prune = 0.9 }",
        "method = \"dora\", rslora = true, loraplus_lr_ratio = 16",
        "init = \"pissa\"",
        "init = \"olora\", rslora = true",
    ] {
        f.parse(&peft(ok), &[]).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn globs_that_match_nothing_are_errors() {
    let f = Fixture::new();
    let text = replace(BASE, "path = \"data/*.txt\"", "path = \"dta/*.txt\"");
    let out = f.errors(&text);
    assert_has(&out, &["error: `dta/*.txt` matches no file", &at(&text, "\"dta/*.txt\"")]);
}

#[test]
fn values_out_of_place_are_not_silently_ignored() {
    let f = Fixture::new();
    let out = f.errors(&replace(BASE, "holdout = 0.1", "holdout = 0.1\nfield = \"text\""));
    assert_has(&out, &["`sources.books.field` only applies with format = \"jsonl\""]);
    let out = f.errors(&replace(BASE, "kind = \"cosine\"", "kind = \"cosine\", power = 2.0"));
    assert_has(&out, &["`stages.pretrain.schedule.power` only applies with kind = \"power\""]);
    let out = f.errors(&replace(BASE, "mix = { chat = 1.0 }", "mix = { books = 1.0 }"));
    assert_has(&out, &["loss_on = \"assistant\" needs chat data, but source `books` is text"]);
}

#[test]
fn bad_enum_values_suggest_a_word() {
    let f = Fixture::new();
    let out = f.errors(&replace(BASE, "kind = \"cosine\"", "kind = \"cosin\""));
    assert_has(
        &out,
        &["error: unknown value `cosin` for `stages.pretrain.schedule.kind`", "help: did you mean `cosine`?"],
    );
}

#[test]
fn a_stage_continuing_another_keeps_its_shape() {
    let f = Fixture::new();
    let out = f.errors(&replace(BASE, "kind = \"sft\"", "kind = \"sft\"\nmodel = { d_model = 128 }"));
    assert_has(&out, &["stage `sft` starts from `pretrain`'s weights but its d_model is 128 where `pretrain`'s is 64"]);
}

#[test]
fn every_error_in_the_file_is_reported_at_once() {
    let f = Fixture::new();
    let text = replace(BASE, "steps = 100", "stepz = 100");
    let text = replace(&text, "n_heads = 4", "n_heads = 5");
    let text = replace(&text, "mix = { chat = 1.0 }", "mix = { chatt = 1.0 }");
    let text = replace(&text, "rank = 4", "rank = 0");
    let out = f.errors(&text);
    assert_has(&out, &["has 4 errors"]);
    assert_eq!(
        out.matches("\nerror: ").count() + usize::from(out.starts_with("error: ")),
        5,
        "4 errors and a summary:\n{out}"
    );
}

#[test]
fn syntax_errors_point_at_the_broken_toml() {
    let f = Fixture::new();
    let out = f.errors(&replace(BASE, "seed = 3", "seed = = 3"));
    assert_has(&out, &["error: invalid TOML", "r.toml:3:"]);
}

#[test]
fn set_overrides_are_type_checked_and_blamed_on_the_argument() {
    let f = Fixture::new();
    let r = f.parse(BASE, &["stages.pretrain.steps=500", "model.d_model=128", "stages.sft.peft.rank=2"]).unwrap();
    assert_eq!(r.stage("pretrain").unwrap().steps, 500);
    assert_eq!(r.stage("sft").unwrap().model.d_model, 128);
    assert_eq!(r.stage("sft").unwrap().peft.as_ref().unwrap().rank, 2);

    let out = f.parse(BASE, &["stages.pretrain.steps=many"]).unwrap_err();
    assert_has(
        &out,
        &[
            "error: wrong type for `stages.pretrain.steps`: found a string",
            "--> --set argument 1",
            "stages.pretrain.steps=many",
            "                      ^^^^ expected a non-negative integer",
        ],
    );
    let out = f.parse(BASE, &["stages.pretrain.stepz=5"]).unwrap_err();
    assert_has(&out, &["unknown key `stepz` in `stages.pretrain`", "help: did you mean `steps`?"]);
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = Recipe::load(Path::new("/nonexistent/r.toml"), &[], &Headers).unwrap_err().to_string();
    assert_has(&out, &["cannot read /nonexistent/r.toml"]);
}

#[test]
fn tokenizer_files_give_the_vocabulary() {
    let f = Fixture::new();
    let tok = r#"{"model":{"type":"BPE","vocab":{"a":0,"b":1,"c":2}},"added_tokens":[{"id":5,"content":"<s>"},{"id":6,"content":"<|im_start|>"},{"id":7,"content":"<|im_end|>"}]}"#;
    std::fs::write(f.dir.path().join("tok.json"), tok).unwrap();
    let text = replace(BASE, "train = { vocab_size = 512, sources = [\"books\"] }", "path = \"tok.json\"");
    let r = f.parse(&text, &[]).unwrap();
    assert_eq!(r.stage("pretrain").unwrap().model.vocab_size, 8);
    let out = f.errors(&replace(&text, "d_model = 64", "d_model = 64\nvocab_size = 4"));
    assert_has(&out, &["`model.vocab_size` (4) is smaller than the tokenizer's vocabulary (8)"]);
    let out = f.errors(&replace(&text, "\"tok.json\"", "\"missing.json\""));
    assert_has(&out, &["cannot use tokenizer", "missing.json"]);
}

#[test]
fn chat_sources_need_their_templates_tokens() {
    let f = Fixture::new();
    let text = replace(
        BASE,
        "train = { vocab_size = 512, sources = [\"books\"] }",
        "train = { vocab_size = 512, sources = [\"books\"], special_tokens = [\"<|endoftext|>\"] }",
    );
    let out = f.errors(&text);
    assert_has(
        &out,
        &[
            "error: source `chat` is chat data, but the tokenizer lacks the chatml template's tokens",
            "the chatml template needs <|im_start|>, <|im_end|>",
            "help: add them to `tokenizer.train.special_tokens`",
        ],
    );
    // The default tokens are ChatML's, so Llama 3's template points back at it.
    let llama3 = replace(BASE, "format = \"chat-jsonl\"", "format = \"chat-jsonl\"\ntemplate = \"llama3\"");
    let out = f.errors(&llama3);
    assert_has(
        &out,
        &[
            "error: source `chat` is chat data, but the tokenizer lacks the llama3 template's tokens",
            &at(&llama3, "\"llama3\""),
            "the llama3 template needs <|begin_of_text|>, <|start_header_id|>, <|end_header_id|>, <|eot_id|>",
            "or `template = \"chatml\"`, whose tokens the tokenizer has",
        ],
    );
    let specials = r#"special_tokens = ["<|endoftext|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]"#;
    let with_tokens = replace(&llama3, "sources = [\"books\"] }", &format!("sources = [\"books\"], {specials} }}"));
    let r = f.parse(&with_tokens, &[]).unwrap();
    assert_eq!(r.source("chat").unwrap().template, Some(recipe_spec::ChatTemplate::Llama3));
}

/// `template = "tokenizer"` needs a tokenizer that has a template of its own: a trained one
/// never does; a file has one when `chat_template.jinja` or a `tokenizer_config.json` with a
/// `chat_template` is beside it, and then validation knows it.
#[test]
fn the_tokenizers_own_template_must_be_there() {
    let f = Fixture::new();
    let own = replace(BASE, "format = \"chat-jsonl\"", "format = \"chat-jsonl\"\ntemplate = \"tokenizer\"");
    let out = f.errors(&own);
    assert_has(
        &out,
        &[
            "error: source `chat` is chat data in the tokenizer's own template, but it has none",
            &at(&own, "\"tokenizer\""),
            "help: a trained tokenizer has no template of its own; name one, or `template = \"chatml\"`",
        ],
    );
    let tok = r#"{"model":{"type":"BPE","vocab":{"a":0,"b":1}},"added_tokens":[{"id":2,"content":"</s>"}]}"#;
    std::fs::write(f.dir.path().join("tokenizer.json"), tok).unwrap();
    let from_file = replace(&own, "train = { vocab_size = 512, sources = [\"books\"] }", "path = \"tokenizer.json\"");
    let out = f.errors(&from_file);
    assert_has(&out, &["but it has none", "help: put its `tokenizer_config.json` (or `chat_template.jinja`) beside"]);
    let config = r#"{"eos_token": {"content": "</s>"}, "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ messages }}"}]}"#;
    std::fs::write(f.dir.path().join("tokenizer_config.json"), config).unwrap();
    let r = f.parse(&from_file, &[]).unwrap();
    let recipe_spec::Tokenizer::File { own_template: Some(own), templates, .. } = &r.tokenizer else {
        panic!("the template beside the file")
    };
    assert_eq!((own.jinja.as_str(), own.tokens["eos_token"].as_str()), ("{{ messages }}", "</s>"));
    assert_eq!(templates, &[recipe_spec::ChatTemplate::Tokenizer]);
    std::fs::write(f.dir.path().join("chat_template.jinja"), "{{ bos_token }}").unwrap();
    let r = f.parse(&from_file, &[]).unwrap();
    let recipe_spec::Tokenizer::File { own_template: Some(own), .. } = &r.tokenizer else { panic!("a template") };
    assert_eq!(own.jinja, "{{ bos_token }}", "chat_template.jinja wins, as in transformers");

    // Its variables, set before it; a name that is none, a value Jinja cannot take, and a
    // trained tokenizer's, are errors.
    let args = |text: &str, args: &str| {
        replace(text, "[sources.books]", &format!("chat_template_args = {args}\n\n[sources.books]"))
    };
    let with_args = args(&from_file, r#"{ enable_thinking = false, name = "a \"b\"", n = 2 }"#);
    let r = f.parse(&with_args, &[]).unwrap();
    let recipe_spec::Tokenizer::File { own_template: Some(own), .. } = &r.tokenizer else { panic!("a template") };
    assert_eq!(
        own.jinja,
        "{%- set enable_thinking = false -%}\n{%- set name = \"a \\\"b\\\"\" -%}\n{%- set n = 2 -%}\n{{ bos_token }}"
    );
    let bad = args(&from_file, r#"{ 1x = true, list = [1] }"#);
    assert_has(
        &f.errors(&bad),
        &["`1x` is not a template variable's name", "`chat_template_args.list` cannot be a template value"],
    );
    let trained = args(BASE, "{ enable_thinking = false }");
    assert_has(&f.errors(&trained), &["a trained tokenizer has no chat template of its own"]);
}

#[test]
fn pre_tokenized_sources_need_an_index_and_dtype_belongs_to_them() {
    let f = Fixture::new();
    std::fs::write(f.dir.path().join("t.bin"), [1u8, 0]).unwrap();
    let text = replace(
        BASE,
        "[sources.chat]",
        "[sources.toks]\npath = \"t.bin\"\nformat = \"tokens\"\ndtype = \"u32\"\n\n[sources.chat]",
    );
    let out = f.errors(&text);
    assert_has(&out, &["t.bin has no document index", "t.idx"]);
    std::fs::write(f.dir.path().join("t.idx"), [0u8; 16]).unwrap();
    assert!(f.parse(&text, &[]).is_ok());
    let out = f.errors(&replace(BASE, "holdout = 0.1", "holdout = 0.1\ndtype = \"u16\""));
    assert_has(&out, &["`sources.books.dtype` only applies with format = \"tokens\""]);
}

/// A Hugging Face model folder `ckpt/` with a 3-layer, d_model 128 Llama and its own tokenizer.
fn write_checkpoint(f: &Fixture) {
    let dir = f.dir.path().join("ckpt");
    std::fs::create_dir(&dir).unwrap();
    let config = r#"{"model_type": "llama", "vocab_size": 600, "hidden_size": 128, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 256,
        "max_position_embeddings": 256, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": true}"#;
    std::fs::write(dir.join("config.json"), config).unwrap();
    let mut vocab: Vec<String> = (0..597).map(|i| format!("\"t{i}\": {i}")).collect();
    vocab.extend(["\"<|endoftext|>\": 597", "\"<|im_start|>\": 598", "\"<|im_end|>\": 599"].map(String::from));
    let tokenizer = format!(r#"{{"model": {{"type": "BPE", "vocab": {{{}}}, "merges": []}}}}"#, vocab.join(", "));
    std::fs::write(dir.join("tokenizer.json"), tokenizer).unwrap();
}

const IMPORTING: &str = r#"
[tokenizer]
path = "ckpt"

[sources.chat]
path = "chat.jsonl"
format = "chat-jsonl"

[stages.ft]
kind = "sft"
steps = 10
seq_len = 64
model = { from = "ckpt" }
data = { mix = { chat = 1.0 } }
peft = { rank = 4 }
"#;

#[test]
fn an_imported_checkpoint_gives_the_architecture() {
    let f = Fixture::new();
    write_checkpoint(&f);
    let r = f.parse(IMPORTING, &[]).unwrap();
    let m = &r.stage("ft").unwrap().model;
    assert_eq!((m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff), (128, 3, 4, 2, 256));
    assert_eq!((m.vocab_size, m.max_seq_len, m.tie_embeddings), (600, 256, true));
    assert!(m.import.is_some());
}

#[test]
fn a_stage_that_continues_an_importing_stage_inherits_its_architecture() {
    let f = Fixture::new();
    write_checkpoint(&f);
    // Declared first, decoded after the stage it continues.
    let more =
        "\n[stages.more]\nkind = \"sft\"\nafter = \"ft\"\nsteps = 5\nseq_len = 32\ndata = { mix = { chat = 1.0 } }\n";
    let text = more.to_string() + IMPORTING;
    let r = f.parse(&text, &[]).unwrap_or_else(|e| panic!("{e}"));
    let (ft, more) = (&r.stage("ft").unwrap().model, &r.stage("more").unwrap().model);
    assert_eq!((more.d_model, more.n_layers, more.n_kv_heads, more.vocab_size), (128, 3, 2, 600));
    assert_eq!((more.max_seq_len, more.rope_theta, more.norm_eps), (ft.max_seq_len, ft.rope_theta, ft.norm_eps));
    assert_eq!(r.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["more", "ft"], "declaration order");
    // Its own overrides still apply, and a shape change is still refused.
    let out = f.errors(&text.replace("after = \"ft\"", "after = \"ft\"\nmodel = { d_model = 64 }"));
    assert_has(&out, &["stage `more` starts from `ft`'s weights but its d_model is 64 where `ft`'s is 128"]);
}

#[test]
fn a_recipe_that_contradicts_its_checkpoint_names_both_values() {
    let f = Fixture::new();
    write_checkpoint(&f);
    let text = replace(
        IMPORTING,
        "model = { from = \"ckpt\" }",
        "model = { from = \"ckpt\", d_model = 64, max_seq_len = 512 }",
    );
    let out = f.errors(&text);
    assert_has(
        &out,
        &[
            "error: `stages.ft.model.d_model` is 64, but `ckpt` has d_model = 128",
            &at(&text, "64, max_seq_len"),
            "stage `ft` imports `ckpt`, so d_model must be 128",
            "help: remove `d_model`: the architecture comes from the checkpoint",
            "error: `stages.ft.model.max_seq_len` is 512, but `ckpt` has max_seq_len = 256",
        ],
    );
    let out = f.errors(&replace(IMPORTING, "from = \"ckpt\"", "from = \"ckpt/nope.gguf\""));
    assert_has(&out, &["error: cannot import `ckpt/nope.gguf`: no such file or folder"]);
}

#[test]
fn a_checkpoint_with_another_tokenizer_is_refused() {
    let f = Fixture::new();
    write_checkpoint(&f);
    // The recipe trains its own tokenizer, so the checkpoint's ids would mean other tokens.
    let text = format!(
        "{}\n[stages.student]\nkind = \"distill\"\nteacher = \"ckpt\"\nsteps = 10\nseq_len = 64\ndata = {{ mix = {{ books = 1 }} }}\n",
        BASE
    );
    let out = f.errors(&text);
    assert_has(
        &out,
        &[
            "error: stage `student` uses `ckpt`, whose tokenizer is not the recipe's",
            "the recipe tokenizes with the tokenizer this recipe trains (512 tokens)",
            "help: set `[tokenizer] path = \"ckpt\"`",
        ],
    );
    let qwen = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/qwen3/tokenizer.json");
    if qwen.is_file() {
        let text = replace(IMPORTING, "path = \"ckpt\"", &format!("path = {:?}", qwen.display().to_string()));
        assert_has(&f.errors(&text), &["error: stage `ft` uses `ckpt`, whose tokenizer is not the recipe's"]);
    }
}

#[test]
fn a_bare_safetensors_file_needs_the_head_count_from_the_recipe() {
    use candle_core::{Device, Tensor};
    let f = Fixture::new();
    // d_model 16, 1 layer, k/v width 8, vocab 600 (the trained tokenizer's 512 fit), untied.
    let zeros = |shape: &[usize]| Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap();
    let mut tensors = std::collections::HashMap::new();
    for (name, shape) in [
        ("model.embed_tokens.weight", vec![600, 16]),
        ("lm_head.weight", vec![600, 16]),
        ("model.layers.0.input_layernorm.weight", vec![16]),
        ("model.layers.0.self_attn.q_proj.weight", vec![16, 16]),
        ("model.layers.0.self_attn.k_proj.weight", vec![8, 16]),
        ("model.layers.0.mlp.gate_proj.weight", vec![48, 16]),
    ] {
        tensors.insert(name.to_string(), zeros(&shape));
    }
    candle_core::safetensors::save(&tensors, f.dir.path().join("w.safetensors")).unwrap();
    let pretrain_only = &BASE[..BASE.find("[stages.sft]").unwrap()];
    let importing =
        replace(pretrain_only, "kind = \"pretrain\"\n", "kind = \"pretrain\"\nmodel = { from = \"w.safetensors\" }\n");
    let text = replace(&replace(&importing, "d_model = 64\n", ""), "n_heads = 4\n", "");
    assert_has(
        &f.errors(&text),
        &["error: `w.safetensors` has no config.json beside it", "set `n_heads` in the stage's model"],
    );
    let text = replace(&text, "from = \"w.safetensors\"", "from = \"w.safetensors\", n_heads = 2");
    let r = f.parse(&text, &[]).unwrap();
    let m = &r.stage("pretrain").unwrap().model;
    assert_eq!((m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff), (16, 1, 2, 1, 48));
    assert_eq!((m.vocab_size, m.tie_embeddings), (600, false));
}

#[test]
fn names_cannot_leave_the_run_directory() {
    let f = Fixture::new();
    let long = "a".repeat(65);
    for bad in ["../escape", "/etc", "a/b", "a\\u0000b", ".hidden", long.as_str()] {
        let out = f.errors(&replace(BASE, "name = \"t\"", &format!("name = \"{bad}\"")));
        assert_has(&out, &["error: invalid name", "at most 64 in all"]);
    }
    let out = f.errors(&replace(BASE, "[stages.pretrain]", "[stages.\"..\"]"));
    assert_has(&out, &["error: invalid name `..`"]);
    let ok = "b".repeat(64);
    f.parse(&replace(BASE, "name = \"t\"", &format!("name = \"{ok}\"")), &[]).unwrap();
}

#[test]
fn rotary_scaling_is_read_and_checked() {
    let f = Fixture::new();
    let scaled =
        replace(BASE, "max_seq_len = 128", "max_seq_len = 128\nrope_scaling = { kind = \"linear\", factor = 4.0 }");
    let r = f.parse(&scaled, &[]).unwrap();
    assert_eq!(r.stage("sft").unwrap().model.rope_scaling, Some(recipe_spec::RopeScaling::Linear { factor: 4.0 }));
    let r =
        f.parse(BASE, &["model.rope_scaling={ kind = \"llama3\", factor = 8, original_max_seq_len = 64 }"]).unwrap();
    assert_eq!(
        r.stage("pretrain").unwrap().model.rope_scaling,
        Some(recipe_spec::RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_seq_len: 64
        }),
        "Llama 3.1's frequency factors are the defaults"
    );
    let r = f.parse(BASE, &["model.rope_scaling={ kind = \"yarn\", factor = 4, original_max_seq_len = 64 }"]).unwrap();
    assert_eq!(
        r.stage("pretrain").unwrap().model.rope_scaling,
        Some(recipe_spec::RopeScaling::Yarn {
            factor: 4.0,
            original_max_seq_len: 64,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 0.1 * 4f64.ln() + 1.0,
            truncate: true,
        }),
        "YaRN's paper's defaults"
    );
    let cases: &[(&str, &str)] = &[
        ("{ kind = \"llama3\", factor = 8.0 }", "missing key `original_max_seq_len` in `model.rope_scaling`"),
        ("{ kind = \"linear\", factor = 2.0, low_freq_factor = 1.0 }", "only applies with kind = \"llama3\""),
        ("{ kind = \"linear\", factor = 0.5 }", "expected a factor ≥ 1, found 0.5"),
        ("{ kind = \"yarn\", factor = 2.0 }", "missing key `original_max_seq_len` in `model.rope_scaling`"),
        (
            "{ kind = \"llama3\", factor = 8.0, original_max_seq_len = 64, beta_fast = 16 }",
            "only applies with kind = \"yarn\"",
        ),
        ("{ kind = \"ntk\", factor = 2.0 }", "expected one of"),
        ("{ kind = \"longrope\", original_max_seq_len = 64, factor = 4.0 }", "missing key `short_factor`"),
        (
            "{ kind = \"longrope\", original_max_seq_len = 64, short_factor = [1.0], long_factor = [2.0] }",
            "needs `attention_factor` or `factor`",
        ),
        (
            "{ kind = \"longrope\", original_max_seq_len = 64, factor = 2, short_factor = [1.0], long_factor = [2.0] }",
            "rope_scaling has 1 short and 1 long factors, but the rotary embedding turns 8 pairs of dimensions",
        ),
        (
            "{ kind = \"llama3\", factor = 8.0, original_max_seq_len = 64, high_freq_factor = 1.0 }",
            "low_freq_factor (1) below high_freq_factor (1)",
        ),
    ];
    for (table, message) in cases {
        let text = replace(BASE, "max_seq_len = 128", &format!("max_seq_len = 128\nrope_scaling = {table}"));
        let out = f.errors(&text);
        assert!(out.contains(message), "{table}: expected {message:?} in:\n{out}");
        assert!(out.contains("r.toml:"), "{table}: no position in:\n{out}");
    }
}

/// `head_dim` frees the head size from `d_model / n_heads` (Qwen3); written at its default,
/// it changes nothing, not even the key.
#[test]
fn head_dim_may_differ_from_d_model_over_n_heads() {
    let f = Fixture::new();
    let r = f.parse(BASE, &["model.n_heads=5", "model.head_dim=32", "model.arch=qwen3"]).unwrap();
    let m = &r.stage("pretrain").unwrap().model;
    assert_eq!((m.n_heads, m.head_dim(), m.projection_shape("q_proj")), (5, 32, (64, 160)));
    let plain = f.parse(BASE, &[]).unwrap();
    let spelled = f.parse(BASE, &["model.head_dim=16"]).unwrap();
    assert_eq!(plain.stage("pretrain").unwrap().model, spelled.stage("pretrain").unwrap().model);
}

/// `peft.from` takes the method, rank, alpha, scaling and targets from a `peft` adapter, refuses
/// fields that say otherwise, and checks that the adapter fits the model.
#[test]
fn a_peft_stage_may_start_from_an_adapter_that_fits() {
    use candle_core::{DType, Device, Tensor};
    let f = Fixture::new();
    let write_adapter = |dir: &str, input: usize| {
        let mut tensors = Vec::new();
        for layer in 0..2 {
            for module in ["q_proj", "v_proj"] {
                let stem = format!("model.layers.{layer}.self_attn.{module}");
                tensors.push((
                    format!("{stem}.lora_A.weight"),
                    Tensor::zeros((4, input), DType::F32, &Device::Cpu).unwrap(),
                ));
                tensors
                    .push((format!("{stem}.lora_B.weight"), Tensor::zeros((64, 4), DType::F32, &Device::Cpu).unwrap()));
            }
        }
        let targets = ["q_proj".to_string(), "v_proj".to_string()];
        let config = recipe_checkpoint::AdapterConfig {
            kind: recipe_checkpoint::AdapterKind::Lora { alpha: 8.0, dora: false, rslora: true },
            rank: 4,
            dropout: 0.0,
            targets: &targets,
            base_model: "",
        };
        let path = f.dir.path().join(dir);
        std::fs::create_dir_all(&path).unwrap();
        recipe_checkpoint::save_adapter(&path, &tensors, &[], &config).unwrap();
    };
    write_adapter("adapter", 64);
    let starting =
        replace(BASE, "peft = { rank = 4, targets = [\"q_proj\", \"v_proj\"] }", "peft = { from = \"adapter\" }");
    let r = f.parse(&starting, &[]).unwrap();
    let peft = r.stage("sft").unwrap().peft.as_ref().unwrap();
    assert_eq!(
        (peft.rank, peft.alpha, peft.rslora, peft.targets.as_slice()),
        (4, 8.0, true, ["q_proj", "v_proj"].map(String::from).as_slice())
    );

    let contradicting =
        replace(&starting, "from = \"adapter\"", "from = \"adapter\", rank = 8, method = \"dora\", rslora = false");
    assert_has(
        &f.errors(&contradicting),
        &[
            "error: `stages.sft.peft.rank` is 8, but adapter `adapter` has 4",
            &at(&contradicting, "8, method"),
            "help: remove `rank`: it comes from the adapter",
            "error: `stages.sft.peft.method` is dora, but adapter `adapter` has lora",
            "error: `stages.sft.peft.rslora` is false, but adapter `adapter` has true",
        ],
    );
    write_adapter("narrow", 32);
    let misfit = replace(&starting, "from = \"adapter\"", "from = \"narrow\"");
    assert_has(
        &f.errors(&misfit),
        &[
            "error: adapter `narrow` does not fit this stage's model: `model.layers.0.self_attn.q_proj.lora_A.weight` has shape [4, 32]",
            "q_proj of this model wants it at [4, 64]",
        ],
    );
    let missing = replace(&starting, "from = \"adapter\"", "from = \"nowhere\"");
    assert_has(&f.errors(&missing), &["error: cannot start from adapter `nowhere`: no such folder"]);
}

/// A `dpo` stage reads only preference sources, starts from trained weights, takes no
/// packing or loss mask of its own, and only it has a `preference` table; a preference source
/// is read by nothing else.
#[test]
fn a_dpo_stage_takes_pairs_after_a_trained_model() {
    let f = Fixture::new();
    std::fs::write(f.dir.path().join("prefs.jsonl"), r#"{"prompt":"hi","chosen":"hello","rejected":"go"}"#).unwrap();
    let with_prefs = replace(
        BASE,
        "[stages.pretrain]",
        "[sources.prefs]\npath = \"prefs.jsonl\"\nformat = \"preference-jsonl\"\n\n[stages.pretrain]",
    );
    let dpo = format!(
        "{with_prefs}\n[stages.dpo]\nkind = \"dpo\"\nafter = \"sft\"\nsteps = 10\ndata = {{ mix = {{ prefs = 1.0 }} }}\n"
    );
    let r = f.parse(&dpo, &[]).unwrap();
    let stage = r.stage("dpo").unwrap();
    assert_eq!(
        stage.preference,
        Some(recipe_spec::Preference {
            loss: recipe_spec::PreferenceLoss::Sigmoid,
            beta: 0.1,
            gamma: None,
            label_smoothing: None,
            desirable_weight: None,
            undesirable_weight: None,
        })
    );
    assert_eq!((stage.data.packing, stage.data.loss_on), (Packing::Pad, LossOn::Assistant));
    let ipo = replace(&dpo, "steps = 10\n", "steps = 10\npreference = { loss = \"ipo\", beta = 0.5 }\n");
    assert_eq!(f.parse(&ipo, &[]).unwrap().stage("dpo").unwrap().preference.as_ref().unwrap().beta, 0.5);
    let simpo = replace(&dpo, "steps = 10\n", "steps = 10\npreference = { loss = \"simpo\", beta = 2.0 }\n");
    let simpo = f.parse(&simpo, &[]).unwrap().stage("dpo").unwrap().preference.clone().unwrap();
    assert_eq!((simpo.gamma, simpo.needs_reference()), (Some(0.5), false));
    let gamma = replace(&dpo, "steps = 10\n", "steps = 10\npreference = { loss = \"orpo\", gamma = 1 }\n");
    assert_has(&f.errors(&gamma), &["`stages.dpo.preference.gamma` only applies with loss = \"simpo\""]);
    let smoothed = replace(&dpo, "steps = 10\n", "steps = 10\npreference = { label_smoothing = 0.1 }\n");
    assert_eq!(
        f.parse(&smoothed, &[]).unwrap().stage("dpo").unwrap().preference.as_ref().unwrap().label_smoothing,
        Some(0.1)
    );
    let misplaced =
        replace(&dpo, "steps = 10\n", "steps = 10\npreference = { loss = \"ipo\", label_smoothing = 0.6 }\n");
    assert_has(
        &f.errors(&misplaced),
        &["`stages.dpo.preference.label_smoothing` only applies with loss = \"sigmoid\"", "a share in [0, 0.5)"],
    );

    // KTO reads unpaired records, and only it; its weights are its own.
    std::fs::write(f.dir.path().join("fb.jsonl"), r#"{"prompt":"hi","completion":"hello","label":true}"#).unwrap();
    let unpaired = replace(
        &dpo,
        "[stages.pretrain]",
        "[sources.fb]\npath = \"fb.jsonl\"\nformat = \"unpaired-preference-jsonl\"\n\n[stages.pretrain]",
    );
    let kto = replace(
        &unpaired,
        "steps = 10\ndata = { mix = { prefs = 1.0 } }",
        "steps = 10\ndata = { mix = { fb = 1.0 } }\npreference = { loss = \"kto\", undesirable_weight = 1.33 }",
    );
    let p = f.parse(&kto, &[]).unwrap().stage("dpo").unwrap().preference.clone().unwrap();
    assert_eq!((p.desirable_weight, p.undesirable_weight, p.needs_reference()), (Some(1.0), Some(1.33), true));
    let paired_kto = replace(&kto, "mix = { fb = 1.0 }", "mix = { prefs = 1.0 }");
    assert_has(
        &f.errors(&paired_kto),
        &[
            "kto stage `stages.dpo` reads source `prefs`, which is preference-jsonl",
            "mix only unpaired-preference-jsonl",
        ],
    );
    let unpaired_dpo = replace(&unpaired, "mix = { prefs = 1.0 }", "mix = { fb = 1.0 }");
    assert_has(&f.errors(&unpaired_dpo), &["reads source `fb`, which is unpaired-preference-jsonl", "loss = \"kto\""]);
    let weighted = replace(&dpo, "steps = 10\n", "steps = 10\npreference = { desirable_weight = 2 }\n");
    assert_has(&f.errors(&weighted), &["`stages.dpo.preference.desirable_weight` only applies with loss = \"kto\""]);

    let unstarted = replace(&dpo, "after = \"sft\"\n", "");
    assert_has(&f.errors(&unstarted), &["dpo stage `dpo` starts from random weights", "set `after = \"STAGE\"`"]);
    let chat = replace(&dpo, "mix = { prefs = 1.0 }", "mix = { chat = 1.0 }");
    assert_has(
        &f.errors(&chat),
        &["dpo stage `stages.dpo` reads source `chat`, which is chat-jsonl", "mix only preference-jsonl sources"],
    );
    let packed = replace(&dpo, "mix = { prefs = 1.0 }", "mix = { prefs = 1.0 }, packing = \"best-fit\"");
    assert_has(&f.errors(&packed), &["`stages.dpo.data.packing` only applies with a stage whose kind is not dpo"]);
    let sft_on_pairs = replace(&with_prefs, "data = { mix = { chat = 1.0 } }", "data = { mix = { prefs = 1.0 } }");
    assert_has(
        &f.errors(&sft_on_pairs),
        &["source `prefs` is preference-jsonl, which only a dpo stage reads", "set `kind = \"dpo\"`"],
    );
    let misplaced = replace(&with_prefs, "steps = 50\n", "steps = 50\npreference = { beta = 0.2 }\n");
    assert_has(&f.errors(&misplaced), &["`stages.sft.preference` only applies with kind = \"dpo\""]);
    let bad = replace(&dpo, "steps = 10\n", "steps = 10\npreference = { loss = \"rso\", beta = 0 }\n");
    assert_has(&f.errors(&bad), &["expected one of: sigmoid, ipo, hinge, simpo, orpo, kto", "expected a number > 0"]);
}

/// NEFTune's alpha is a training stage's, and positive.
#[test]
fn neftune_alpha_must_be_positive() {
    let f = Fixture::new();
    let sft = |alpha: &str| replace(BASE, "steps = 50\n", &format!("steps = 50\nneftune_alpha = {alpha}\n"));
    let r = f.parse(&sft("5"), &[]).unwrap();
    assert_eq!(r.stage("sft").unwrap().neftune_alpha, Some(5.0));
    assert_eq!(r.stage("pretrain").unwrap().neftune_alpha, None);
    let zero = sft("0");
    assert_has(&f.errors(&zero), &["`stages.sft.neftune_alpha`", "expected a number > 0", &at(&zero, "neftune_alpha")]);
}

/// Activation checkpointing is a training stage's switch, part of its key only when on (so
/// recipes written before it keep their keys).
#[test]
fn activation_checkpointing_is_a_switch() {
    let f = Fixture::new();
    let sft = |on: &str| replace(BASE, "steps = 50\n", &format!("steps = 50\nactivation_checkpointing = {on}\n"));
    let r = f.parse(&sft("true"), &[]).unwrap();
    assert!(r.stage("sft").unwrap().activation_checkpointing);
    assert!(!r.stage("pretrain").unwrap().activation_checkpointing);
    let key = |text: &str| {
        let r = f.parse(text, &[]).unwrap();
        serde_json::to_value(r.stage("sft").unwrap()).unwrap().get("activation_checkpointing").cloned()
    };
    assert_eq!((key(&sft("false")), key(BASE)), (None, None));
    assert_eq!(key(&sft("true")), Some(serde_json::json!(true)));
    let word = sft("\"yes\"");
    assert_has(&f.errors(&word), &["`stages.sft.activation_checkpointing`", &at(&word, "\"yes\"")]);
}

/// Muon's fields, with their defaults; each is an error under AdamW.
#[test]
fn muon_takes_its_own_fields_and_adamw_refuses_them() {
    let f = Fixture::new();
    let muon = replace(
        BASE,
        "kind = \"pretrain\"\nsteps",
        "kind = \"pretrain\"\noptim = { kind = \"muon\", ns_steps = 3 }\nsteps",
    );
    let r = f.parse(&muon, &[]).unwrap();
    let settings = r.stage("pretrain").unwrap().optim.muon.clone().unwrap();
    assert_eq!(
        settings,
        recipe_spec::Muon {
            momentum: 0.95,
            nesterov: true,
            ns_steps: 3,
            adjust_lr: recipe_spec::MuonScale::MatchRmsAdamw,
            adamw_lr: None
        }
    );
    assert!(r.stage("sft").unwrap().optim.muon.is_none(), "AdamW by default");
    let adamw = replace(BASE, "kind = \"pretrain\"\nsteps", "kind = \"pretrain\"\noptim = { momentum = 0.9 }\nsteps");
    assert_has(
        &f.errors(&adamw),
        &["error: `stages.pretrain.optim.momentum` only applies with `kind = \"muon\"`", &at(&adamw, "0.9")],
    );
    let bad = replace(&muon, "ns_steps = 3", "momentum = 1.0, adjust_lr = \"spectral\"");
    assert_has(&f.errors(&bad), &["expected a momentum in [0, 1), found 1", "expected one of"]);
}

/// NoPE layers are layers of the model; a stack repeats them with their blocks.
#[test]
fn nope_layers_name_layers_and_follow_a_stack() {
    let f = Fixture::new();
    let text = replace(BASE, "max_seq_len = 128", "max_seq_len = 128\nnope_layers = [1]");
    let grown = format!(
        "{text}\n[stages.deeper]\nkind = \"pretrain\"\ninit = {{ kind = \"stack\", from = \"pretrain\", factor = 2 }}\ndata = {{ mix = {{ books = 1 }} }}\nseq_len = 64\n"
    );
    let r = f.parse(&grown, &[]).unwrap();
    assert_eq!(r.stage("pretrain").unwrap().model.nope_layers, Some(vec![1]));
    assert_eq!(r.stage("deeper").unwrap().model.nope_layers, Some(vec![1, 3]), "blocks 0 1 0 1");
    let beyond = replace(BASE, "max_seq_len = 128", "max_seq_len = 128\nnope_layers = [1, 2]");
    assert_has(&f.errors(&beyond), &["nope_layers names layer 2, but the model has 2 (0 to 1)"]);
    let unordered = replace(BASE, "max_seq_len = 128", "max_seq_len = 128\nnope_layers = [1, 0]");
    assert_has(&f.errors(&unordered), &["`model.nope_layers` must be layer numbers in increasing order"]);
}

/// Full-attention layers and a local rotary base qualify a sliding window; the local base and
/// `query_pre_attn_scalar` are Gemma's; a stack repeats the full-attention layers.
#[test]
fn per_layer_windows_need_a_window_and_follow_a_stack() {
    let f = Fixture::new();
    let gemma = "max_seq_len = 128\narch = \"gemma3\"\nsliding_window = 16\nfull_attention_layers = [1]\nlocal_rope_theta = 1e4\nquery_pre_attn_scalar = 12";
    let text = replace(BASE, "max_seq_len = 128", gemma);
    let grown = format!(
        "{text}\n[stages.deeper]\nkind = \"pretrain\"\ninit = {{ kind = \"stack\", from = \"pretrain\", factor = 2 }}\ndata = {{ mix = {{ books = 1 }} }}\nseq_len = 64\n"
    );
    let r = f.parse(&grown, &[]).unwrap();
    let model = &r.stage("pretrain").unwrap().model;
    assert_eq!((model.slides(0), model.slides(1), model.rotates_locally(0)), (true, false, true));
    assert_eq!(model.attention_scale(), 1.0 / 12f64.sqrt());
    assert_eq!(r.stage("deeper").unwrap().model.full_attention_layers, Some(vec![1, 3]), "blocks 0 1 0 1");
    let no_window = replace(BASE, "max_seq_len = 128", "max_seq_len = 128\nfull_attention_layers = [1]");
    assert_has(&f.errors(&no_window), &["full_attention_layers is set, but the model has no sliding_window"]);
    let beyond = replace(&text, "full_attention_layers = [1]", "full_attention_layers = [2]");
    assert_has(&f.errors(&beyond), &["full_attention_layers names layer 2, but the model has 2 (0 to 1)"]);
    let partial = replace(&text, "query_pre_attn_scalar = 12", "query_pre_attn_scalar = 12\nrotary_dim = 8");
    let out = f.errors(&partial);
    assert_has(&out, &["rotary_dim goes with `arch = \"llama\"`, not \"gemma3\""]);
    assert_eq!(out.matches("rotary_dim goes with").count(), 1, "said once, not once per stage:\n{out}");
    let llama = replace(&text, "arch = \"gemma3\"", "arch = \"llama\"");
    assert_has(
        &f.errors(&llama),
        &[
            "local_rope_theta is Gemma's, but the model's arch is \"llama\"",
            "query_pre_attn_scalar is Gemma's, but the model's arch is \"llama\"",
        ],
    );
}

/// Granite's four multipliers: read, applied where the model asks, refused on other
/// architectures, and a Granite has no window.
#[test]
fn granite_multipliers_belong_to_granite() {
    let f = Fixture::new();
    let granite = "max_seq_len = 128\narch = \"granite\"\nembedding_multiplier = 12.0\nresidual_multiplier = 0.22\nattention_multiplier = 0.015625\nlogits_scaling = 8.0";
    let text = replace(BASE, "max_seq_len = 128", granite);
    let r = f.parse(&text, &[]).unwrap();
    let model = &r.stage("pretrain").unwrap().model;
    assert_eq!((model.embedding_scale(), model.attention_scale()), (Some(12.0), 0.015625));
    assert_eq!((model.residual_multiplier, model.logits_scaling), (Some(0.22), Some(8.0)));
    let plain = replace(BASE, "max_seq_len = 128", "max_seq_len = 128\narch = \"granite\"");
    let model = f.parse(&plain, &[]).unwrap().stage("pretrain").unwrap().model.clone();
    assert_eq!((model.embedding_scale(), model.attention_scale()), (None, 1.0 / f64::from(model.head_dim()).sqrt()));
    let llama = replace(&text, "arch = \"granite\"", "arch = \"llama\"");
    assert_has(
        &f.errors(&llama),
        &[
            "embedding_multiplier is Granite's, but the model's arch is \"llama\"",
            "residual_multiplier is Granite's, but the model's arch is \"llama\"",
            "attention_multiplier is Granite's, but the model's arch is \"llama\"",
            "logits_scaling is Granite's, but the model's arch is \"llama\"",
            "set `arch = \"granite\"`, or remove it",
        ],
    );
    let windowed = replace(&text, "logits_scaling = 8.0", "logits_scaling = 8.0\nsliding_window = 16");
    assert_has(&f.errors(&windowed), &["sliding_window does not go with `arch = \"granite\"`"]);
    let negative = replace(&text, "logits_scaling = 8.0", "logits_scaling = -8.0");
    assert_has(&f.errors(&negative), &["a number > 0"]);
}

/// A hub id that is in no cache says where it was looked for and how to get it.
#[test]
fn a_hub_id_not_downloaded_says_how_to_get_it() {
    let f = Fixture::new();
    let text = replace(BASE, "max_seq_len = 128", "max_seq_len = 128\nfrom = \"Nobody/NoModel\"");
    assert_has(
        &f.errors(&text),
        &[
            "error: cannot import `Nobody/NoModel`: no such file or folder",
            "`huggingface-cli download Nobody/NoModel` puts it there",
        ],
    );
}
