//! The `recipe` command line: thin glue from clap to the library crates, one module per verb.

mod diff;
mod export;
mod load;
mod new;
mod plan;
mod prepare;
mod progress;
mod render;
mod report;
mod runs;
mod sample;
mod smoke;
mod status;
mod tensorboard;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

/// Declarative, resumable training recipes: one TOML file describes data, tokenizer and every
/// training stage; `recipe` plans, checks and runs the graph of stages it implies.
#[derive(Parser)]
#[command(name = "recipe", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
    /// Folder that holds one run directory per recipe name.
    #[arg(long, global = true, env = "RECIPE_RUNS", default_value = "runs")]
    runs: PathBuf,
    /// Log more (-v: debug, -vv: trace); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Verb {
    /// Parse and check a recipe; print every error, or nothing.
    Validate(RecipeArgs),
    /// Print the stage graph and, per stage, parameters, tokens, FLOPs, memory, the LR curve,
    /// and whether it would run now.
    Plan {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Plan for this many data-parallel ranks (processes under mpirun, torchrun or srun):
        /// each stage's rows, micro-batch, tokens and memory per rank, and the bytes each rank
        /// sends per step to sum the gradients.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        world_size: u32,
        #[command(flatten)]
        output: Output,
    },
    /// Run every stage whose result is missing or stale, in graph order; resume partial ones.
    Train {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Only this stage and what it needs.
        #[arg(long)]
        stage: Option<String>,
        /// cpu, cuda (the first GPU), cuda:N, metal, or auto (a GPU when this build has
        /// CUDA or Metal and one answers, else the CPU). GPUs need a build with
        /// `--features cuda` or `--features metal`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Also write every step's scalars as TensorBoard event files, a folder per stage
        /// under `RUNS/NAME/_tensorboard/` (`tensorboard --logdir RUNS/NAME/_tensorboard`).
        #[arg(long)]
        tensorboard: bool,
    },
    /// Generate text from a finished stage.
    Sample {
        /// The recipe whose stage to sample.
        #[arg(required_unless_present = "model")]
        recipe: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
        /// The stage whose result to load; a stage still training is sampled from its newest
        /// checkpoint.
        #[arg(long, required_unless_present = "model")]
        stage: Option<String>,
        /// A checkpoint to sample instead of a stage: a Hugging Face model folder (or the hub
        /// id of one in the Hugging Face cache, `ORG/NAME`), a `.safetensors` file with its
        /// `config.json` beside it, or a `.gguf` file.
        #[arg(long, conflicts_with_all = ["recipe", "stage"])]
        model: Option<String>,
        /// With `--model`: a `peft` LoRA or DoRA adapter folder (or a cached hub id) to sample
        /// the model with, as `peft` applies it.
        #[arg(long, requires = "model")]
        adapter: Option<String>,
        /// The text to continue.
        #[arg(long)]
        prompt: String,
        /// New tokens at most.
        #[arg(long, default_value_t = 200)]
        max_tokens: usize,
        /// 0 decodes greedily.
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// Nucleus sampling: keep the most likely tokens up to this total probability.
        #[arg(long, default_value_t = 0.95)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Send the prompt as a user turn and print the assistant's answer, stopping where the
        /// turn ends: in the first template whose tokens the tokenizer has (ChatML, Llama 3,
        /// Gemma), or in `--template`'s.
        #[arg(long)]
        chat: bool,
        /// With `--chat`: a system message before the user's turn.
        #[arg(long, requires = "chat")]
        system: Option<String>,
        /// With `--chat`: the chat template (chatml, llama3, llama3.1, gemma, or tokenizer: the
        /// one stored with the tokenizer) instead of the one the stage's chat sources were
        /// formatted with, else the first whose tokens the tokenizer has, else its own.
        #[arg(long, requires = "chat", value_parser = chat_template)]
        template: Option<recipe_spec::ChatTemplate>,
    },
    /// Write a finished stage's model as a Hugging Face directory (config.json,
    /// model.safetensors with any LoRA merged in, tokenizer.json) and check that it loads
    /// back identically.
    Export {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// The stage whose result to export.
        #[arg(long)]
        stage: String,
        /// The folder to write (created if missing; refused when it holds anything, unless
        /// `--force`); or a file ending in `.gguf`: the merged model for llama.cpp.
        #[arg(long)]
        out: PathBuf,
        /// Write into `--out` even when it is not empty, replacing the files the export writes.
        #[arg(long)]
        force: bool,
        /// For a LoRA stage: write the adapter alone, PEFT-style (adapter_model.safetensors,
        /// adapter_config.json), instead of the merged weights.
        #[arg(long)]
        adapter: bool,
        /// f32, bf16 or f16 (and `config.json`'s `torch_dtype` says so); into a `.gguf` also
        /// q8_0, q6_k, q5_k, q4_k or q4_0. Default: the compute dtype of a bf16-mixed or
        /// f16-mixed stage, else f32.
        #[arg(long)]
        dtype: Option<String>,
    },
    /// Train a shrunken copy of the recipe (same graph and features, tiny sizes) and fail
    /// unless every stage's loss is finite and falls. Runs in `RUNS/NAME-smoke`.
    Smoke {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Where to train, as for `train`.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Train the tokenizer and tokenize the sources that the recipe (or one stage) needs,
    /// skipping what is already cached.
    Prepare {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Only what this stage needs.
        #[arg(long)]
        stage: Option<String>,
    },
    /// Show each node as done, partial (step k of N), stale (and why) or pending.
    Status {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[command(flatten)]
        output: Output,
    },
    /// Write one self-contained HTML page (no network needed to view it) with every stage's
    /// curves against steps or tokens, the data trained per source against the asked mix,
    /// the effective config and `plan`'s facts; several recipes, and each stage's earlier
    /// keys, overlay on the same axes, with their field changes listed.
    Report {
        /// The recipes to show; the first is the one the others' changes are listed against.
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
        /// The page to write.
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
        /// Earlier keys of each stage to overlay beside its current one, newest first (0: none).
        #[arg(long, default_value_t = 3)]
        earlier: usize,
    },
    /// Write a commented starter recipe, NAME.toml, with a small public-domain corpus in
    /// NAME-data/, that validates and trains as written.
    New {
        /// What it trains.
        kind: new::Kind,
        /// The recipe's name.
        name: String,
        /// The folder to write into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Start from this checkpoint instead of pretraining a small model: a Hugging Face
        /// model folder, or the hub id of one in the Hugging Face cache (`Qwen/Qwen3-0.6B`).
        /// Its tokenizer is the recipe's; chat data takes the chat template it has the tokens
        /// of. `pretrain` continues its pretraining, `sft` fine-tunes it, `lora` trains LoRA
        /// adapters on all seven projections, `distill` distils it into a small student.
        #[arg(long)]
        from: Option<String>,
    },
    /// List the run directories under `--runs`: each node's state and key, and the disk used.
    Runs {
        #[command(flatten)]
        output: Output,
    },
    /// Remove the results in the recipes' run directories that no current key of theirs
    /// refers to (earlier keys, stages and sources since removed). Lists them unless `--yes`.
    Gc {
        /// The recipes whose results to keep (recipes sharing a run directory keep each
        /// other's).
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
        /// Delete instead of listing.
        #[arg(long)]
        yes: bool,
    },
    /// Print a completion script for a shell: `recipe completions bash > /etc/bash_completion.d/recipe`,
    /// or `source <(recipe completions bash)` (zsh: `recipe completions zsh > "${fpath[1]}/_recipe"`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `recipe man > recipe.1 && man ./recipe.1`.
    Man,
    /// Compare two recipes after defaults and inheritance, or one recipe against its last run,
    /// and say which nodes each change invalidates.
    Diff {
        /// The old recipe; or, alone, the recipe to compare with what its last run recorded.
        old: PathBuf,
        /// The new recipe.
        new: Option<PathBuf>,
        /// Overrides of the new recipe's fields.
        #[command(flatten)]
        overrides: Overrides,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Args)]
struct RecipeArgs {
    /// The recipe file.
    recipe: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Args)]
struct Overrides {
    /// Override any field: `--set stages.pretrain.steps=500`, `--set model.d_model=384`
    /// (repeatable; the value is read as TOML, else as a string).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    sets: Vec<String>,
}

#[derive(Args)]
struct Output {
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[global_allocator]
static ALLOCATOR: recipe_kernels::Allocator = recipe_kernels::Allocator;

/// How a verb failed, which decides the exit code.
pub enum Failure {
    /// An invalid recipe or command line: exit 2.
    Invalid(String),
    /// Something went wrong while running: exit 1.
    Run(String),
    /// A signal stopped training after a checkpoint: exit with this code (130 for Ctrl-C, 143
    /// for SIGTERM), as a shell does.
    Stopped(u8),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Of several ranks, the leader logs the run; the others say only what goes wrong.
    let follower = recipe_dist::Launch::from_env().is_ok_and(|l| l.rank > 0);
    let level = match cli.verbose {
        0 if follower => tracing::Level::WARN,
        0 => tracing::Level::INFO,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();

    let result = match &cli.verb {
        Verb::Validate(r) => load::load(&r.recipe, &r.overrides.sets).map(|loaded| {
            println!(
                "{}: valid ({} stages, {} sources)",
                r.recipe.display(),
                loaded.stages.len(),
                loaded.sources.len()
            );
        }),
        Verb::Plan { recipe, world_size, output } => {
            plan::run(&recipe.recipe, &recipe.overrides.sets, &cli.runs, *world_size, output.json)
        }
        Verb::Train { recipe, stage, device, tensorboard } => {
            train::run(&recipe.recipe, &recipe.overrides.sets, &cli.runs, stage.as_deref(), device, *tensorboard)
        }
        Verb::Sample {
            recipe,
            overrides,
            stage,
            model,
            adapter,
            prompt,
            max_tokens,
            temperature,
            top_p,
            seed,
            chat,
            system,
            template,
        } => {
            let here = |written: &String| recipe_spec::hub::locate(Path::new(""), written);
            let from = match (model, recipe, stage) {
                (Some(written), _, _) => {
                    sample::From::Checkpoint { model: here(written), adapter: adapter.as_ref().map(here) }
                }
                (None, Some(recipe), Some(stage)) => sample::From::Stage { recipe, sets: &overrides.sets, stage },
                _ => unreachable!("clap requires a recipe and a stage, or a model"),
            };
            let args = sample::SampleArgs {
                from,
                prompt,
                max_tokens: *max_tokens,
                temperature: *temperature,
                top_p: *top_p,
                seed: *seed,
                chat: *chat,
                system: system.as_deref(),
                template: *template,
            };
            sample::run(&cli.runs, &args)
        }
        Verb::Export { recipe, stage, out, force, adapter, dtype } => {
            let target = export::Target { dir: out, force: *force, adapter: *adapter, dtype: dtype.as_deref() };
            export::run(&recipe.recipe, &recipe.overrides.sets, &cli.runs, stage, &target)
        }
        Verb::Smoke { recipe: r, device } => smoke::run(&r.recipe, &r.overrides.sets, &cli.runs, device),
        Verb::Prepare { recipe, stage } => {
            prepare::run(&recipe.recipe, &recipe.overrides.sets, &cli.runs, stage.as_deref())
        }
        Verb::Status { recipe, output } => status::run(&recipe.recipe, &recipe.overrides.sets, &cli.runs, output.json),
        Verb::Report { recipes, overrides, out, earlier } => {
            report::run(&report::ReportArgs { recipes, sets: &overrides.sets, runs: &cli.runs, out, earlier: *earlier })
        }
        Verb::New { kind, name, dir, from } => new::run(*kind, name, dir, from.as_deref()),
        Verb::Runs { output } => runs::list(&cli.runs, output.json),
        Verb::Gc { recipes, overrides, yes } => runs::gc(recipes, &overrides.sets, &cli.runs, *yes),
        Verb::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "recipe", &mut std::io::stdout());
            Ok(())
        }
        Verb::Man => match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
            // `recipe man | head` closes the pipe early; that is not a failure.
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(Failure::Run(format!("cannot write the manual page: {e}")))
            }
            _ => Ok(()),
        },
        Verb::Diff { old, new, overrides, output } => {
            diff::run(old, new.as_deref(), &overrides.sets, &cli.runs, output.json)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Stopped(code)) => ExitCode::from(code),
        Err(Failure::Invalid(msg)) => {
            eprint!("{msg}");
            ExitCode::from(2)
        }
        Err(Failure::Run(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

/// `--template`'s value, one of the templates' names.
fn chat_template(name: &str) -> Result<recipe_spec::ChatTemplate, String> {
    recipe_spec::ChatTemplate::from_word(name)
        .ok_or_else(|| format!("expected one of {}", recipe_spec::ChatTemplate::WORDS.join(", ")))
}
