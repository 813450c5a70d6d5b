//! `recipe sample`: generate text from a finished stage.

use std::path::Path;

use recipe_data::{Message, Role, Tok, chatml_prompt};
use recipe_graph::RunDir;
use recipe_model::Llama;
use recipe_spec::checkpoint::TokenizerFile;
use recipe_train::{Sampling, generate};

use crate::{Failure, load};

pub struct SampleArgs<'a> {
    pub stage: &'a str,
    pub prompt: &'a str,
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    pub chat: bool,
}

pub fn run(path: &Path, sets: &[String], runs: &Path, a: &SampleArgs) -> Result<(), Failure> {
    let recipe = load::load(path, sets)?;
    let Some(stage) = recipe.stage(a.stage) else {
        let hint = recipe_spec::did_you_mean(a.stage, recipe.stages.iter().map(|s| s.name.as_str()))
            .map_or(String::new(), |s| format!("; did you mean `{s}`?"));
        return Err(Failure::Invalid(format!("error: no stage named `{}`{hint}\n", a.stage)));
    };
    let graph = load::graph(&recipe)?;
    let run = RunDir::new(runs, &recipe.name);
    let dir = run.final_dir(graph.node(a.stage).expect("every stage has a node"));
    if !dir.is_dir() {
        return Err(Failure::Run(format!(
            "stage `{}` has no result for its current key; run `recipe train {} --stage {}` first",
            a.stage,
            path.display(),
            a.stage
        )));
    }
    let fail = |e: &dyn std::fmt::Display| Failure::Run(e.to_string());
    let tok = Tok::load(&TokenizerFile::Json(dir.join("tokenizer.json"))).map_err(|e| fail(&e))?;
    let device = candle_core::Device::Cpu;
    let model = Llama::load_pretrained(&stage.model, &dir, &device).map_err(|e| fail(&e))?;
    let (prompt, stop) = match a.chat {
        true => {
            let user = Message { role: Role::User, content: a.prompt.to_string() };
            let ids = chatml_prompt(&tok, &[user]).map_err(|e| fail(&e))?;
            (ids, tok.chatml().map(|[_, end]| end))
        }
        false => (tok.encode(a.prompt).map_err(|e| fail(&e))?, Some(tok.eos())),
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
