//! `recipe sample`: generate text from a finished stage, a stage still training (its newest
//! checkpoint), or any checkpoint on disk.

use std::path::{Path, PathBuf};

use candle_core::Device;
use recipe_checkpoint::{Headers, load_checkpoint, training};
use recipe_data::{Message, Role, TOKENIZER_FILE, Tok, chat_prompt};
use recipe_graph::RunDir;
use recipe_model::{Llama, Sampling, generate};
use recipe_run::{load_tokenizer, recipe_tokenizer};
use recipe_spec::{CheckpointFormat, CheckpointReader, Peft, TokenizerFile};

use crate::{Failure, load};

/// What to sample.
pub enum From<'a> {
    Stage {
        recipe: &'a Path,
        sets: &'a [String],
        stage: &'a str,
    },
    /// A model, with a `peft` adapter on it or not.
    Checkpoint {
        model: PathBuf,
        adapter: Option<PathBuf>,
    },
}

pub struct SampleArgs<'a> {
    pub from: From<'a>,
    pub prompt: &'a str,
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    pub chat: bool,
    /// With `chat`: the system message.
    pub system: Option<&'a str>,
    /// With `chat`: the template, else the one the stage trained with, else the tokenizer's
    /// first.
    pub template: Option<recipe_spec::ChatTemplate>,
}

pub fn run(runs: &Path, a: &SampleArgs) -> Result<(), Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure::Run(e.to_string());
    let (model, tok, trained_with) = match a.from {
        From::Checkpoint { ref model, ref adapter } => {
            let (model, tok) = checkpoint(model, adapter.as_deref())?;
            (model, tok, None)
        }
        From::Stage { recipe, sets, stage } => stage_model(recipe, sets, stage, runs)?,
    };
    let (prompt, stop) = match a.chat {
        true => {
            let system = a.system.map(|s| Message { role: Role::System, content: s.to_string() });
            let turns: Vec<Message> =
                system.into_iter().chain([Message { role: Role::User, content: a.prompt.to_string() }]).collect();
            let template = a.template.or(trained_with).or_else(|| tok.chat_template()).ok_or_else(|| {
                Failure::Run(
                    "--chat needs a tokenizer with a chat template's tokens (ChatML's, Llama 3's or Gemma's) or a template of its own".into(),
                )
            })?;
            tracing::info!("prompting in the {template} chat template");
            let ids = chat_prompt(&tok, template, &turns).map_err(|e| fail(&e))?;
            (ids, tok.template_ids(template).and_then(|ids| ids.last().copied()))
        }
        false => (tok.encode_document(a.prompt).map_err(|e| fail(&e))?, Some(tok.eos())),
    };
    let sampling =
        Sampling { max_new_tokens: a.max_tokens, temperature: a.temperature, top_p: a.top_p, seed: a.seed, stop };
    let out = generate(&model, &prompt, &sampling).map_err(|e| fail(&e))?;
    match a.chat {
        true => println!("{}", tok.decode(&out)),
        false => println!("{}{}", a.prompt, tok.decode(&out)),
    }
    Ok(())
}

/// A finished stage's model; or, while it trains, its newest checkpoint's. With the tokenizer,
/// the chat template the stage's chat sources were formatted with, when it reads any.
fn stage_model(
    path: &Path,
    sets: &[String],
    name: &str,
    runs: &Path,
) -> Result<(Llama, Tok, Option<recipe_spec::ChatTemplate>), Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure::Run(e.to_string());
    let recipe = load::load(path, sets)?;
    let stage = load::stage(&recipe, name)?;
    let graph = load::graph(&recipe)?;
    let run = RunDir::new(runs, &recipe.name);
    let node = graph.node(name).expect("every stage has a node");
    if run.final_dir(node).is_dir() {
        let dir = run.final_dir(node);
        let tok = load_tokenizer(&TokenizerFile::Json(dir.join(TOKENIZER_FILE))).map_err(|e| fail(&e))?;
        let model = Llama::load_pretrained(&stage.model, &dir, &Device::Cpu).map_err(|e| fail(&e))?;
        return Ok((model, tok, load::trained_template(&recipe, stage)));
    }
    let warn = |text: String| tracing::warn!("{text}");
    let newest = training::latest_valid::<serde_json::Value>(&run.checkpoints_dir(node), &Device::Cpu, &warn)
        .map_err(|e| fail(&e))?;
    let Some(newest) = newest else { return Err(load::no_result(&recipe, stage)) };
    tracing::info!("`{name}` is still training: sampling its checkpoint {}", newest.dir.display());
    let start_from = stage.start_stage().map(|a| run.final_dir(graph.node(a).expect("validated")));
    let model =
        recipe_train::build_model(stage, start_from.as_deref(), recipe.seed, &Device::Cpu).map_err(|e| fail(&e))?;
    for p in &model.params {
        let t = newest.model.get(&p.name).ok_or_else(|| fail(&format!("the checkpoint lacks {}", p.name)))?;
        p.var.set(&t.to_dtype(p.var.dtype()).map_err(|e| fail(&e))?).map_err(|e| fail(&e))?;
    }
    let tok = recipe_tokenizer(&recipe, &graph, &run).map_err(|e| fail(&e))?;
    Ok((model, tok, load::trained_template(&recipe, stage)))
}

/// A checkpoint on disk, with the tokenizer stored with it, and a `peft` adapter on it if asked.
fn checkpoint(path: &Path, adapter: Option<&Path>) -> Result<(Llama, Tok), Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure::Run(format!("cannot sample {}: {e}", path.display()));
    let info = Headers.inspect(path).map_err(|e| fail(&e))?;
    if info.kv_width_of_unknown_heads.is_some() {
        return Err(fail(&"it has no config.json beside it, so its head count is unknown"));
    }
    let tokenizer = match info.format {
        _ if info.tokenizer.is_none() => return Err(fail(&"no tokenizer is stored with it")),
        CheckpointFormat::Gguf => TokenizerFile::Gguf(path.to_path_buf()),
        CheckpointFormat::HfDir => TokenizerFile::Json(path.join(TOKENIZER_FILE)),
        CheckpointFormat::Safetensors => TokenizerFile::Json(path.with_file_name(TOKENIZER_FILE)),
    };
    let config = info.arch.resolve(None);
    let weights = load_checkpoint(path, info.format, &config).map_err(|e| fail(&e))?;
    let model = match adapter {
        None => Llama::frozen(&config, weights, &Device::Cpu).map_err(|e| fail(&e))?,
        Some(dir) => {
            let fail = |e: &dyn std::fmt::Display| Failure::Run(format!("cannot apply adapter {}: {e}", dir.display()));
            let info = Headers.adapter(dir).map_err(|e| fail(&e))?;
            let peft = Peft::of_adapter(&dir.display().to_string(), dir, info);
            Llama::with_lora(&config, weights, &peft, 0, &Device::Cpu).map_err(|e| fail(&e))?
        }
    };
    Ok((model, load_tokenizer(&tokenizer).map_err(|e| fail(&e))?))
}
