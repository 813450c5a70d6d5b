//! `recipe new KIND NAME`: a commented starter recipe that validates and trains as written,
//! with a small public-domain corpus beside it (three chapters of Moby-Dick, a paragraph per
//! document, and chat turns made from their sentences), so a first run needs nothing else.

use std::fmt::Write as _;
use std::path::Path;

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
    /// Pretraining a teacher, then distilling it into a smaller student.
    Distill,
}

const CHAPTERS: [&str; 3] = [
    include_str!("../data/moby-dick/chapter_1.txt"),
    include_str!("../data/moby-dick/chapter_2.txt"),
    include_str!("../data/moby-dick/chapter_3.txt"),
];

pub fn run(kind: Kind, name: &str, dir: &Path) -> Result<(), Failure> {
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
    let fail = |path: &Path, e: std::io::Error| Failure::Run(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(&data).map_err(|e| fail(&data, e))?;
    let text = data.join("text.jsonl");
    std::fs::write(&text, paragraphs()).map_err(|e| fail(&text, e))?;
    let chat = data.join("chat.jsonl");
    std::fs::write(&chat, chat_turns()).map_err(|e| fail(&chat, e))?;
    std::fs::write(&recipe, starter(kind, name)).map_err(|e| fail(&recipe, e))?;
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

/// Chat turns from the chapters: the user gives the start of a sentence, the assistant
/// answers with the whole sentence (a fixed opening, then copying the start and finishing it).
fn chat_turns() -> String {
    let text: String = CHAPTERS.iter().map(|t| t.replace('\n', " ")).collect::<Vec<_>>().join(" ");
    let sentences: Vec<&str> =
        text.split_inclusive(['.', '?', '!']).map(str::trim).filter(|s| s.len() > 20 && s.len() < 300).collect();
    let mut out = String::new();
    for sentence in sentences {
        let words: Vec<&str> = sentence.split_whitespace().collect();
        let start = words[..words.len() / 2].join(" ");
        let turn = serde_json::json!({ "messages": [
            { "role": "user", "content": format!("Finish the sentence: {start} ...") },
            { "role": "assistant", "content": format!("The whole sentence reads: {sentence}") },
        ]});
        let _ = writeln!(out, "{turn}");
    }
    out
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
        Kind::Pretrain => "",
        Kind::Sft => {
            r#"
[stages.sft]
kind = "sft"                # the loss counts the assistant's turns only
after = "pretrain"          # start from pretrain's final weights
steps = 100
seq_len = 128
batch_size = 16
data = { mix = { chat = 1.0 } }
optim = { lr = 3e-4 }
eval = { every = 50, batches = 4 }
"#
        }
        Kind::Lora => {
            r#"
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
        }
        Kind::Distill => {
            r#"
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
        }
    };
    r.push_str(next);
    r
}
