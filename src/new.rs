//! `recipe new KIND NAME [--from CHECKPOINT]`: a commented starter recipe that validates and
//! trains as written, with a small public-domain corpus beside it (three chapters of
//! Moby-Dick, a paragraph per document, and chat turns and preference pairs made from their
//! sentences), so a first
//! run needs nothing else: a small model trained from scratch, or a checkpoint (a folder or a
//! cached hub id) continued, fine-tuned, adapted or distilled.

use std::fmt::Write as _;
use std::path::Path;

use recipe_checkpoint::Headers;
use recipe_spec::{ChatTemplate, CheckpointReader};

use crate::Failure;

/// What the starter recipe trains.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// Pretraining from scratch on text.
    Pretrain,
    /// Pretraining, then supervised fine-tuning on chat turns.
    Sft,
    /// Pretraining, then LoRA fine-tuning on chat turns.
    Lora,
    /// Pretraining, supervised fine-tuning, then DPO on preference pairs.
    Dpo,
    /// Pretraining a teacher, then distilling it into a smaller student.
    Distill,
}

const CHAPTERS: [&str; 3] = [
    include_str!("../data/moby-dick/chapter_1.txt"),
    include_str!("../data/moby-dick/chapter_2.txt"),
    include_str!("../data/moby-dick/chapter_3.txt"),
];

pub fn run(kind: Kind, name: &str, dir: &Path, from: Option<&str>) -> Result<(), Failure> {
    if !recipe_spec::is_plain_name(name) {
        return Err(Failure::Invalid(format!(
            "error: invalid name `{name}`: expected a letter or digit, then letters, digits, `_` and `-`, at most {} in all\n",
            recipe_spec::MAX_NAME_LEN
        )));
    }
    let recipe = dir.join(format!("{name}.toml"));
    let data = dir.join(format!("{name}-data"));
    for taken in [&recipe, &data] {
        if taken.exists() {
            return Err(Failure::Invalid(format!("error: {} exists; choose another name\n", taken.display())));
        }
    }
    let body = match from {
        Some(written) => from_checkpoint(kind, name, &checkpoint(written)?),
        None => starter(kind, name),
    };
    let fail = |path: &Path, e: std::io::Error| Failure::Run(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(&data).map_err(|e| fail(&data, e))?;
    let text = data.join("text.jsonl");
    std::fs::write(&text, paragraphs()).map_err(|e| fail(&text, e))?;
    let chat = data.join("chat.jsonl");
    std::fs::write(&chat, chat_turns()).map_err(|e| fail(&chat, e))?;
    let pairs = data.join("pairs.jsonl");
    std::fs::write(&pairs, preference_pairs()).map_err(|e| fail(&pairs, e))?;
    std::fs::write(&recipe, body).map_err(|e| fail(&recipe, e))?;
    println!("wrote {} and {}/", recipe.display(), data.display());
    println!("next: recipe plan {0}, then recipe train {0}", recipe.display());
    Ok(())
}

/// The chapters' paragraphs, one JSON document per line.
fn paragraphs() -> String {
    let mut out = String::new();
    for chapter in CHAPTERS {
        for paragraph in chapter.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
            let _ = writeln!(out, "{}", serde_json::json!({ "text": paragraph }));
        }
    }
    out
}

/// The chapters' sentences of a usable length.
fn sentences() -> Vec<String> {
    let text: String = CHAPTERS.iter().map(|t| t.replace('\n', " ")).collect::<Vec<_>>().join(" ");
    text.split_inclusive(['.', '?', '!'])
        .map(str::trim)
        .filter(|s| s.len() > 20 && s.len() < 300)
        .map(str::to_string)
        .collect()
}

/// A sentence's first half (its words), the prompt of a chat turn and of a pair.
fn first_half(sentence: &str) -> (String, Vec<&str>) {
    let words: Vec<&str> = sentence.split_whitespace().collect();
    (words[..words.len() / 2].join(" "), words)
}

/// Chat turns from the chapters: the user gives the start of a sentence, the assistant
/// answers with the whole sentence (a fixed opening, then copying the start and finishing it).
fn chat_turns() -> String {
    let mut out = String::new();
    for sentence in sentences() {
        let (start, _) = first_half(&sentence);
        let turn = serde_json::json!({ "messages": [
            { "role": "user", "content": format!("Finish the sentence: {start} ...") },
            { "role": "assistant", "content": format!("The whole sentence reads: {sentence}") },
        ]});
        let _ = writeln!(out, "{turn}");
    }
    out
}

/// Preference pairs from the chapters: the chat turn's prompt, its answer chosen, and rejected
/// the same start finished with the next sentence's second half.
fn preference_pairs() -> String {
    let sentences = sentences();
    let mut out = String::new();
    for (sentence, next) in sentences.iter().zip(sentences.iter().cycle().skip(1)) {
        let (start, _) = first_half(sentence);
        let (_, next_words) = first_half(next);
        let wrong = next_words[next_words.len() / 2..].join(" ");
        let pair = serde_json::json!({
            "prompt": format!("Finish the sentence: {start} ..."),
            "chosen": format!("The whole sentence reads: {sentence}"),
            "rejected": format!("The whole sentence reads: {start} {wrong}"),
        });
        let _ = writeln!(out, "{pair}");
    }
    out
}

/// A checkpoint a starter recipe begins from: how the recipe names it, its longest context,
/// and the chat template its tokenizer has the tokens of (else the one stored with it).
struct Checkpoint {
    written: String,
    max_seq_len: u32,
    template: Option<ChatTemplate>,
}

/// `written` as a path from here (written into the recipe absolute, since the recipe may live
/// elsewhere) or a hub id in the Hugging Face cache (written as it is), read and checked.
fn checkpoint(written: &str) -> Result<Checkpoint, Failure> {
    let here = Path::new(written);
    let (path, written) = match here.exists() {
        true => {
            let absolute = std::path::absolute(here).map_err(|e| Failure::Run(format!("{written}: {e}")))?;
            (absolute.clone(), absolute.display().to_string())
        }
        false => (recipe_spec::hub::locate(Path::new(""), written), written.to_string()),
    };
    let invalid = |why: String| Failure::Invalid(format!("error: cannot start from `{written}`: {why}\n"));
    if !path.exists() {
        return Err(invalid("no such folder here, nor a model by that id in the Hugging Face cache".into()));
    }
    let info = Headers.inspect(&path).map_err(invalid)?;
    if info.kv_width_of_unknown_heads.is_some() {
        return Err(invalid("it has no config.json beside it".into()));
    }
    let tokenizer = info.tokenizer.ok_or_else(|| invalid("no tokenizer is stored with it".into()))?;
    Ok(Checkpoint {
        written,
        max_seq_len: info.arch.max_seq_len.unwrap_or(512),
        template: ChatTemplate::ALL.into_iter().find(|t| tokenizer.templates.contains(t)).map(|t| match t {
            ChatTemplate::Llama3 if dated(&path) => ChatTemplate::Llama31,
            t => t,
        }),
    })
}

/// Whether the model's own chat template writes Llama 3.1's dated system turn (Llama 3.1, 3.2
/// and 3.3 Instruct), whose tokens are Llama 3's: its `tokenizer_config.json` says so.
fn dated(model: &Path) -> bool {
    let folder = if model.is_dir() { model } else { model.parent().unwrap_or(Path::new("")) };
    std::fs::read_to_string(folder.join("tokenizer_config.json")).is_ok_and(|t| t.contains("Cutting Knowledge Date"))
}

/// A starter over `from`: its tokenizer and architecture, the stage `kind` asks for.
fn from_checkpoint(kind: Kind, name: &str, from: &Checkpoint) -> String {
    let Checkpoint { written, max_seq_len, template } = from;
    let seq_len = (*max_seq_len).min(512);
    let model = match kind {
        Kind::Distill => format!(
            "[model]                     # the small student, trained from scratch\n\
             d_model = 256\nn_layers = 4\nn_heads = 4\nmax_seq_len = {seq_len}\n"
        ),
        _ => format!("[model]\nfrom = \"{written}\"          # the architecture and starting weights\n"),
    };
    let mut r = format!(
        r#"# A starter recipe from `recipe new --from`: edit freely. `recipe plan {name}.toml` shows what
# a run costs (memory included); `recipe train {name}.toml` runs it (`--device cuda` on a GPU,
# where `precision = "bf16-mixed"` is the usual choice); README.md lists every field.

[recipe]
name = "{name}"
seed = 0

{model}
[tokenizer]
path = "{written}"          # the checkpoint's own tokenizer

[sources.text]               # one JSON object per line, its text in "text"
path = "{name}-data/text.jsonl"
format = "jsonl"
holdout = 0.1               # a tenth of the documents, by content hash, for evaluation
"#
    );
    let template = template.unwrap_or(ChatTemplate::ChatMl);
    if matches!(kind, Kind::Sft | Kind::Lora) {
        let _ = write!(
            r,
            r#"
[sources.chat]              # one JSON object per line: {{"messages": [{{"role", "content"}}, ...]}}
path = "{name}-data/chat.jsonl"
format = "chat-jsonl"
template = "{template}"       # the checkpoint's chat format ("tokenizer": the template stored with it)
holdout = 0.1
"#
        );
    }
    if matches!(kind, Kind::Dpo) {
        let _ = write!(r, "{}", pairs_source(name, Some(template)));
    }
    let stage = match kind {
        Kind::Pretrain => format!(
            r#"
[stages.continued]
kind = "pretrain"           # continued pretraining of the checkpoint on the text
steps = 100
seq_len = {seq_len}
batch_size = 8
micro_batch_size = 2        # gradient accumulation: 4 micro-batches a step
data = {{ mix = {{ text = 1.0 }} }}
optim = {{ lr = 2e-5 }}
schedule = {{ kind = "cosine", warmup = 10 }}
eval = {{ every = 50, batches = 4 }}
"#
        ),
        Kind::Sft => format!(
            r#"
[stages.sft]
kind = "sft"                # every weight trains; the loss counts the assistant's turns only
steps = 100
seq_len = {seq_len}
batch_size = 8
micro_batch_size = 2
# activation_checkpointing = true   # less memory: each block runs again in backward (~1/3 more compute)
data = {{ mix = {{ chat = 1.0 }} }}
optim = {{ lr = 1e-5 }}
schedule = {{ kind = "cosine", warmup = 10 }}
eval = {{ every = 50, batches = 4 }}
"#
        ),
        Kind::Lora => format!(
            r#"
[stages.lora]
kind = "sft"                # the base weights stay frozen; only the adapters train
steps = 100
seq_len = {seq_len}
batch_size = 8
micro_batch_size = 2
# activation_checkpointing = true   # less memory: each block runs again in backward (~1/3 more compute)
data = {{ mix = {{ chat = 1.0 }} }}
peft = {{ method = "lora", rank = 16, alpha = 32, targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] }}
optim = {{ lr = 2e-4, weight_decay = 0.0 }}
schedule = {{ kind = "cosine", warmup = 10 }}
eval = {{ every = 50, batches = 4 }}
"#
        ),
        Kind::Dpo => format!(
            r#"
[stages.dpo]
kind = "dpo"                # against a frozen copy of the checkpoint, its reference
steps = 100
seq_len = {seq_len}         # one pair a row: the chosen and the rejected conversation
batch_size = 8
micro_batch_size = 2
data = {{ mix = {{ pairs = 1.0 }} }}
preference = {{ loss = "sigmoid", beta = 0.1 }}    # DPO; or loss = "ipo"
peft = {{ method = "lora", rank = 16, alpha = 32, targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] }}
optim = {{ lr = 2e-4, weight_decay = 0.0 }}
schedule = {{ kind = "cosine", warmup = 10 }}
eval = {{ every = 50, batches = 4 }}
"#
        ),
        Kind::Distill => format!(
            r#"
[stages.student]
kind = "distill"
teacher = "{written}"       # the checkpoint teaches the student, which shares its tokenizer
distill = {{ loss = "forward-kl", temperature = 2.0, alpha = 0.5 }}      # alpha·KD + (1 − alpha)·CE
steps = 200
seq_len = {seq_len}
batch_size = 8
data = {{ mix = {{ text = 1.0 }} }}
optim = {{ lr = 3e-3 }}
eval = {{ every = 100, batches = 4 }}
"#
        ),
    };
    r.push_str(&stage);
    r
}

/// The starter's preference pairs, formatted with `template` when the checkpoint names one.
fn pairs_source(name: &str, template: Option<ChatTemplate>) -> String {
    let template = template.map_or(String::new(), |t| format!("template = \"{t}\"\n"));
    format!(
        r#"
[sources.pairs]             # one JSON object per line: {{"prompt", "chosen", "rejected"}}
path = "{name}-data/pairs.jsonl"
format = "preference-jsonl"
{template}holdout = 0.1
"#
    )
}

fn starter(kind: Kind, name: &str) -> String {
    let mut r = format!(
        r#"# A starter recipe from `recipe new`: edit freely. `recipe plan {name}.toml` shows what a
# run costs; `recipe train {name}.toml` runs it; README.md lists every field and its default.

[recipe]
name = "{name}"             # the run directory's name
seed = 0                    # seeds every random stream

[model]                     # a small Llama; a stage may override any field
d_model = 128
n_layers = 4
n_heads = 4
max_seq_len = 256

[tokenizer]                 # a byte-level BPE trained on the text below
train = {{ vocab_size = 1024, sources = ["text"] }}

[sources.text]               # one JSON object per line, its text in "text"
path = "{name}-data/text.jsonl"
format = "jsonl"
holdout = 0.1               # a tenth of the documents, by content hash, for evaluation
"#
    );
    if !matches!(kind, Kind::Pretrain | Kind::Distill) {
        let _ = write!(
            r,
            r#"
[sources.chat]              # one JSON object per line: {{"messages": [{{"role", "content"}}, ...]}}
path = "{name}-data/chat.jsonl"
format = "chat-jsonl"
holdout = 0.1
"#
        );
    }
    if matches!(kind, Kind::Dpo) {
        r.push_str(&pairs_source(name, None));
    }
    r.push_str(
        r#"
[stages.pretrain]
kind = "pretrain"
steps = 300
seq_len = 128
batch_size = 16
data = { mix = { text = 1.0 } }
optim = { lr = 3e-3 }
schedule = { kind = "cosine", warmup = 30 }
eval = { every = 100, batches = 4 }
"#,
    );
    let next = match kind {
        Kind::Pretrain => String::new(),
        Kind::Sft => SFT_STAGE.to_string(),
        Kind::Lora => r#"
[stages.lora]
kind = "sft"
after = "pretrain"
steps = 100
seq_len = 128
batch_size = 16
data = { mix = { chat = 1.0 } }
peft = { method = "lora", rank = 8, alpha = 16, targets = ["q_proj", "v_proj"] }   # base weights frozen
optim = { lr = 3e-3 }
eval = { every = 50, batches = 4 }
"#
        .to_string(),
        Kind::Dpo => format!("{SFT_STAGE}{DPO_STAGE}"),
        Kind::Distill => r#"
[stages.student]
kind = "distill"
teacher = "pretrain"        # one stage, or a list whose probabilities are averaged
model = { d_model = 64, n_layers = 2, n_heads = 4 }                    # the smaller student
distill = { loss = "forward-kl", temperature = 2.0, alpha = 0.5 }      # alpha·KD + (1 − alpha)·CE
steps = 200
seq_len = 128
batch_size = 16
data = { mix = { text = 1.0 } }
optim = { lr = 3e-3 }
eval = { every = 100, batches = 4 }
"#
        .to_string(),
    };
    r.push_str(&next);
    r
}

/// The starters' SFT stage after pretraining, and the DPO stage after it.
const SFT_STAGE: &str = r#"
[stages.sft]
kind = "sft"                # the loss counts the assistant's turns only
after = "pretrain"          # start from pretrain's final weights
steps = 100
seq_len = 128
batch_size = 16
data = { mix = { chat = 1.0 } }
optim = { lr = 3e-4 }
eval = { every = 50, batches = 4 }
"#;
const DPO_STAGE: &str = r#"
[stages.dpo]
kind = "dpo"                # against a frozen copy of the SFT model, its reference
after = "sft"
steps = 100
seq_len = 192               # one pair a row: the chosen and the rejected conversation
batch_size = 16
data = { mix = { pairs = 1.0 } }
preference = { loss = "sigmoid", beta = 0.1 }    # DPO; or loss = "ipo", "hinge", "simpo", "orpo"
optim = { lr = 1e-4 }
eval = { every = 50, batches = 4 }
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn llama31s_dated_template_is_told_by_the_tokenizer_config() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!super::dated(dir.path()));
        let config = r#"{"chat_template": "{{- \"Cutting Knowledge Date: December 2023\n\" }}"}"#;
        std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
        assert!(super::dated(dir.path()) && super::dated(&dir.path().join("model.safetensors")));
    }
}
