//! `recipe sample`: generate text from a finished stage.

use std::path::Path;

use recipe_data::{Message, Role, TOKENIZER_FILE, chatml_prompt};
use recipe_model::{Llama, Sampling, generate};
use recipe_run::load_tokenizer;
use recipe_spec::TokenizerFile;

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
    let stage = load::stage(&recipe, a.stage)?;
    let dir = load::stage_result(&recipe, stage, runs)?;
    let fail = |e: &dyn std::fmt::Display| Failure::Run(e.to_string());
    let tok = load_tokenizer(&TokenizerFile::Json(dir.join(TOKENIZER_FILE))).map_err(|e| fail(&e))?;
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
