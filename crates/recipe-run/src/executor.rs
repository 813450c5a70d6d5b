//! The executor behind `recipe train` and `recipe prepare`: every node that is missing or
//! stale runs, in graph order; finished ones are skipped; a stage with a checkpoint resumes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use recipe_checkpoint::{load_checkpoint, read_own_template, read_tokenizer, write_own_template};
use recipe_data::{DataError, Mix, Progress, TOKENIZER_FILE, Tok, TokenStore, tokenize, train_tokenizer};
use recipe_dist::Communicator;
use recipe_graph::{Graph, Node, NodeKind, RecordedState, RunDir, TOKENIZER_NODE, tokenize_node};
use recipe_model::{Dtypes, Llama};
use recipe_spec::{
    CheckpointFormat, MergeInput, MergeMethod, OwnChatTemplate, Recipe, Stage, Tokenizer, TokenizerFile,
};
use recipe_train::{MergeRun, Observer, Outcome, StageRun, merge_stage, train_stage};

/// Why a node could not run.
#[derive(Debug)]
pub enum Error {
    Data(DataError),
    Train(recipe_train::Error),
    /// The run directory or its lock could not be written.
    RunDir(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Data(e) => write!(f, "{e}"),
            Error::Train(e) => write!(f, "{e}"),
            Error::RunDir(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for Error {}

impl From<DataError> for Error {
    fn from(e: DataError) -> Self {
        Error::Data(e)
    }
}

impl From<recipe_train::Error> for Error {
    fn from(e: recipe_train::Error) -> Self {
        Error::Train(e)
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Train(e.into())
    }
}

type Result<T> = std::result::Result<T, Error>;

/// What happened to each node.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeReport {
    /// Its result was already there.
    Skipped,
    /// It ran; with a one-line summary.
    Ran(String),
    /// A stage stopped by an interrupt after writing a checkpoint at this step.
    Interrupted(u64),
}

/// How a run reports progress and learns it should stop.
pub struct Hooks<'a> {
    /// Set (by a Ctrl-C handler) to checkpoint after the current step and stop.
    pub interrupt: &'a AtomicBool,
    pub observer: &'a dyn Observer,
    pub data_progress: &'a dyn Progress,
}

/// Run the recipe's graph, or only what stage `only` needs, training stages on `device`
/// with the ranks of `comm`. Stops after the first interrupted stage.
///
/// Of several ranks, the leader alone holds the lock and writes: it prepares the data and
/// publishes each stage, which every rank trains. The others follow node by node, meeting it
/// after each, so that what a node needs is published before any rank reads it.
pub fn execute(
    recipe: &Recipe,
    graph: &Graph,
    run: &RunDir,
    only: Option<&str>,
    device: &Device,
    comm: &dyn Communicator,
    hooks: &Hooks,
) -> Result<Vec<(String, NodeReport)>> {
    let _writer = comm.leads().then(|| hold(run)).transpose()?;
    let meet = || comm.barrier().map_err(|e| Error::RunDir(e.to_string()));
    meet()?;
    let mut reports = Vec::new();
    for node in nodes(graph, only) {
        let report = match &node.kind {
            NodeKind::Stage { stage } => {
                let stage = recipe.stage(stage).expect("graph nodes come from the recipe");
                let train =
                    |staging: Option<&Path>| run_stage(recipe, graph, run, node, stage, staging, device, comm, hooks);
                match comm.leads() {
                    true => lifecycle(recipe, run, node, |staging| train(Some(staging)))?,
                    false if run.final_dir(node).is_dir() => NodeReport::Skipped,
                    false => train(None)?,
                }
            }
            _ if comm.leads() => run_data_node(recipe, graph, run, node, hooks.data_progress)?,
            _ => NodeReport::Skipped,
        };
        meet()?;
        let interrupted = matches!(report, NodeReport::Interrupted(_));
        reports.push((node.name.clone(), report));
        if interrupted {
            break;
        }
    }
    Ok(reports)
}

/// Run the data nodes (tokenizer training, tokenization) of the recipe or of what stage
/// `only` needs.
pub fn prepare(
    recipe: &Recipe,
    graph: &Graph,
    run: &RunDir,
    only: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<(String, NodeReport)>> {
    let _writer = hold(run)?;
    let data = nodes(graph, only).into_iter().filter(|n| !matches!(n.kind, NodeKind::Stage { .. }));
    data.map(|node| Ok((node.name.clone(), run_data_node(recipe, graph, run, node, progress)?))).collect()
}

/// The sole right to write the run directory, with what earlier writers left half-written
/// removed.
fn hold(run: &RunDir) -> Result<recipe_graph::Writer> {
    let writer = run.hold().map_err(Error::RunDir)?;
    run.sweep(&writer).map_err(|e| Error::RunDir(format!("cannot clean {}: {e}", run.root.display())))?;
    Ok(writer)
}

fn nodes<'g>(graph: &'g Graph, only: Option<&str>) -> Vec<&'g Node> {
    match only {
        Some(name) => graph.closure(name),
        None => graph.nodes.iter().collect(),
    }
}

/// The one lifecycle of every node: nothing to do when its `final/` exists (but to record it
/// done, if a run died between publishing and recording); otherwise build it in a fresh
/// staging folder, record in the lock that it started, and once `build` has finished, publish
/// the folder atomically as `final/` and record the node done. A build that was interrupted
/// publishes nothing.
fn lifecycle(
    recipe: &Recipe,
    run: &RunDir,
    node: &Node,
    build: impl FnOnce(&Path) -> Result<NodeReport>,
) -> Result<NodeReport> {
    if run.final_dir(node).is_dir() {
        let lock = run.read_lock().map_err(Error::RunDir)?;
        let recorded = lock.as_ref().and_then(|l| l.nodes.get(&node.name));
        if !recorded.is_some_and(|e| e.key == node.key && e.state == RecordedState::Done) {
            run.record(&recipe.canonical(), node, RecordedState::Done, Some(now())).map_err(Error::RunDir)?;
        }
        return Ok(NodeReport::Skipped);
    }
    let node_dir = run.node_dir(node);
    let io = |e: std::io::Error| Error::RunDir(format!("{}: {e}", node_dir.display()));
    let staging = run.staging_dir(node).map_err(io)?;
    run.record(&recipe.canonical(), node, RecordedState::Partial, None).map_err(Error::RunDir)?;
    let report = build(&staging)?;
    if let NodeReport::Ran(_) = report {
        run.publish(node, &staging).map_err(io)?;
        run.record(&recipe.canonical(), node, RecordedState::Done, Some(now())).map_err(Error::RunDir)?;
    }
    Ok(report)
}

/// Train the tokenizer or tokenize a source, unless its result is there. A token cache that
/// no longer matches its checksums is removed and rebuilt, never trained on.
fn run_data_node(
    recipe: &Recipe,
    graph: &Graph,
    run: &RunDir,
    node: &Node,
    progress: &dyn Progress,
) -> Result<NodeReport> {
    let cached = run.final_dir(node);
    let mut damage = None;
    if matches!(node.kind, NodeKind::Tokenize { .. })
        && cached.is_dir()
        && let Err(e) = TokenStore::verify(&cached)
    {
        std::fs::remove_dir_all(&cached).map_err(|e| Error::RunDir(format!("{}: {e}", cached.display())))?;
        damage = Some(e);
    }
    let report = lifecycle(recipe, run, node, |staging| build_data_node(recipe, graph, run, node, staging, progress))?;
    Ok(match (report, damage) {
        (NodeReport::Ran(summary), Some(e)) => {
            NodeReport::Ran(format!("rebuilt, the cache was damaged ({e}): {summary}"))
        }
        (report, _) => report,
    })
}

fn build_data_node(
    recipe: &Recipe,
    graph: &Graph,
    run: &RunDir,
    node: &Node,
    staging: &Path,
    progress: &dyn Progress,
) -> Result<NodeReport> {
    let summary = match &node.kind {
        NodeKind::TrainTokenizer => {
            let Tokenizer::Train(config) = &recipe.tokenizer else { unreachable!("the node exists only for train") };
            train_tokenizer(recipe, config, staging, progress)?
        }
        NodeKind::Tokenize { source } => {
            tokenize(recipe, source, &recipe_tokenizer(recipe, graph, run)?, staging, progress)?
        }
        NodeKind::Stage { .. } => unreachable!("a stage is not a data node"),
    };
    Ok(NodeReport::Ran(summary))
}

/// Train a stage, resuming from its checkpoints (or merge its inputs), and write its model and
/// tokenizer into `staging` in the Hugging Face layout. A rank without `staging` (not the
/// leader) trains its share and writes nothing; a merge is the leader's alone.
#[allow(clippy::too_many_arguments)]
fn run_stage(
    recipe: &Recipe,
    graph: &Graph,
    run: &RunDir,
    node: &Node,
    stage: &Stage,
    staging: Option<&Path>,
    device: &Device,
    comm: &dyn Communicator,
    hooks: &Hooks,
) -> Result<NodeReport> {
    if staging.is_none() && stage.merge.is_some() {
        return Ok(NodeReport::Skipped);
    }
    if staging.is_some() {
        run.write_stage_config(node).map_err(|e| Error::RunDir(format!("{}: {e}", run.node_dir(node).display())))?;
    }
    let unprepared = || match comm.leads() {
        true => DataError::new("the stage's data is not prepared"),
        false => DataError::new(format!(
            "the data rank 0 prepared is not in {}: every rank must see the same run directory (a shared \
             filesystem across nodes)",
            run.root.display()
        )),
    };
    let stores = stage_stores(stage, graph, run)?.ok_or_else(unprepared)?;
    let evaluated = open_stores(&stage.sources_evaluated(&recipe.sources), graph, run)?.ok_or_else(unprepared)?;
    let tokenizer = recipe_tokenizer(recipe, graph, run)?;
    let work_dir = run.node_dir(node);
    if let Some(merge) = &stage.merge {
        let place = |input: &MergeInput| match input {
            MergeInput::Stage(name) => {
                (run.final_dir(graph.node(name).expect("validated input")), CheckpointFormat::HfDir)
            }
            MergeInput::Checkpoint(import) => (import.path.clone(), import.format),
        };
        let merge_run = MergeRun {
            recipe,
            stage,
            inputs: merge.inputs.iter().map(place).collect(),
            base: merge.base.as_ref().map(place),
            stores: (merge.method == MergeMethod::Greedy).then_some(stores),
            work_dir: &work_dir,
            device,
            observer: hooks.observer,
        };
        let model = merge_stage(&merge_run)?;
        if let Some(staging) = staging {
            save_stage_result(recipe, stage, &model, &tokenizer, staging)?;
        }
        return Ok(NodeReport::Ran(format!("{} of {} inputs", merge.method, merge.inputs.len())));
    }
    let stage_run = StageRun {
        recipe,
        stage,
        work_dir: &work_dir,
        start_from: stage.start_stage().map(|a| run.final_dir(graph.node(a).expect("validated"))),
        teachers: load_teachers(recipe, graph, run, stage, device)?,
        stores,
        evaluated,
        device,
        comm,
        interrupt: hooks.interrupt,
        observer: hooks.observer,
    };
    let model = match train_stage(&stage_run)? {
        Outcome::Finished(model) => model,
        Outcome::Interrupted(step) => return Ok(NodeReport::Interrupted(step)),
    };
    if let Some(staging) = staging {
        save_stage_result(recipe, stage, &model, &tokenizer, staging)?;
    }
    Ok(NodeReport::Ran(format!("{} steps", stage.steps)))
}

/// A stage's model and the recipe's tokenizer in the Hugging Face layout.
fn save_stage_result(recipe: &Recipe, stage: &Stage, model: &Llama, tokenizer: &Tok, staging: &Path) -> Result<()> {
    let base_model = match (stage.start_stage(), &stage.model.from) {
        (Some(after), _) => format!("{}/{after}", recipe.name),
        (None, Some(from)) => from.clone(),
        (None, None) => String::new(),
    };
    let mut eos = vec![tokenizer.eos()];
    eos.extend(tokenizer.turn_ends());
    model.save_pretrained(staging, tokenizer.bos(), &eos, &base_model)?;
    tokenizer.save(&staging.join(TOKENIZER_FILE))?;
    if let Some(own) = tokenizer.own_template() {
        write_own_template(staging, own).map_err(|e| DataError::in_file(staging, e))?;
    }
    Ok(())
}

/// A distillation stage's teachers, frozen: the finished stages it names, then the
/// checkpoints.
fn load_teachers(recipe: &Recipe, graph: &Graph, run: &RunDir, stage: &Stage, device: &Device) -> Result<Vec<Llama>> {
    let stages = stage.teacher.iter().map(|name| {
        let dir = run.final_dir(graph.node(name).expect("validated teacher"));
        (dir, CheckpointFormat::HfDir, &recipe.stage(name).expect("validated teacher").model)
    });
    let imports = stage.teacher_checkpoints.iter().map(|t| (t.path.clone(), t.format, &t.model));
    let fail = |what: String| Error::Train(recipe_train::Error::Run(what));
    stages
        .chain(imports)
        .map(|(path, format, config)| {
            let tensors = load_checkpoint(&path, format, config)
                .map_err(|e| fail(format!("cannot load teacher {}: {e}", path.display())))?;
            // Teachers compute in the student's dtype.
            Llama::frozen(config, tensors, device)
                .and_then(|t| t.in_precision(Dtypes::on(stage.precision, device)))
                .map_err(|e| fail(format!("teacher {} does not fit its config: {e}", path.display())))
        })
        .collect()
}

/// The tokenizer in a file, with the chat template stored with it.
pub fn load_tokenizer(file: &TokenizerFile) -> std::result::Result<Tok, DataError> {
    let own = read_own_template(file).map_err(|e| DataError::in_file(file.path(), e))?;
    tokenizer_with(file, own)
}

/// The tokenizer in a file, with `own` as its chat template.
fn tokenizer_with(file: &TokenizerFile, own: Option<OwnChatTemplate>) -> std::result::Result<Tok, DataError> {
    let inner = read_tokenizer(file).map_err(|e| DataError::in_file(file.path(), e))?;
    Ok(Tok::new(inner).map_err(|e| DataError::in_file(file.path(), e.message))?.with_own_template(own))
}

/// The recipe's tokenizer: its file, with the chat template validation read beside it (and
/// `chat_template_args` set in it), or the trained tokenizer node's result.
pub fn recipe_tokenizer(recipe: &Recipe, graph: &Graph, run: &RunDir) -> std::result::Result<Tok, DataError> {
    match &recipe.tokenizer {
        Tokenizer::File { file, own_template, .. } => tokenizer_with(file, own_template.clone()),
        Tokenizer::Train(_) => {
            let node = graph.node(TOKENIZER_NODE).expect("a trained tokenizer has a node");
            let path = run.final_dir(node).join(TOKENIZER_FILE);
            if !path.is_file() {
                return Err(DataError::new("the tokenizer has not been trained yet"));
            }
            load_tokenizer(&TokenizerFile::Json(path))
        }
    }
}

/// The token stores of a stage's mix with their weights, or `None` while any is missing.
pub fn stage_stores(stage: &Stage, graph: &Graph, run: &RunDir) -> std::result::Result<Option<Mix>, DataError> {
    let names: Vec<&str> = stage.data.mix.iter().map(|(n, _)| n.as_str()).collect();
    let weights = stage.data.mix.iter().map(|(_, w)| *w);
    Ok(open_stores(&names, graph, run)?.map(|stores| stores.into_iter().zip(weights).collect()))
}

/// The token stores of these sources, or `None` while any is missing.
fn open_stores(
    names: &[&str],
    graph: &Graph,
    run: &RunDir,
) -> std::result::Result<Option<Vec<Arc<TokenStore>>>, DataError> {
    let mut out = Vec::new();
    for name in names {
        let node = graph.node(&tokenize_node(name)).expect("every source a stage reads has a node");
        let dir = run.final_dir(node);
        if !dir.is_dir() {
            return Ok(None);
        }
        out.push(Arc::new(TokenStore::open(&dir)?));
    }
    Ok(Some(out))
}

/// Now, as RFC 3339 UTC: when a node finished.
fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
