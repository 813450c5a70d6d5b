//! A mix that changes (`mix = [[0, {...}], [STEP, {...}]]`): each phase draws its own
//! proportions (from the next document drawn on; `concat` packing holds no buffer of drawn
//! documents, so the switch shows at once), a source only a later phase reads gives nothing
//! before it, and an interrupt on either side of the switch resumes bit-identically. Online
//! mixing (`mix = { kind = "online", ... }`) draws each step with the shares its bandit's
//! update rule gives from the losses logged before, and resumes bit-identically too.

use std::path::Path;

use common::{execute_until, step_lines, tiny_recipe, trained};
use recipe_checkpoint::Headers;
use recipe_graph::{Graph, RunDir};
use recipe_spec::Recipe;
use serde_json::Value;

mod common;

/// `NAME.jsonl` in `dir`: the paragraphs of the committed Moby-Dick chapters whose file names
/// start with `prefix`, a document each (a mix changes at document boundaries, and a whole
/// chapter would outlast the test's steps).
fn paragraphs(dir: &Path, name: &str, prefix: &str) {
    let chapters = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/moby-dick");
    let mut files: Vec<_> = std::fs::read_dir(chapters).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|f| f.file_name().unwrap().to_string_lossy().starts_with(prefix));
    files.sort();
    let mut lines = String::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for paragraph in text.split("\n\n").map(str::trim).filter(|p| p.len() > 40) {
            lines.push_str(&serde_json::json!({ "text": paragraph }).to_string());
            lines.push('\n');
        }
    }
    std::fs::write(dir.join(format!("{name}.jsonl")), lines).unwrap();
}

fn recipe(dir: &Path) -> Recipe {
    recipe_with(dir, &[])
}

fn recipe_with(dir: &Path, sets: &[&str]) -> Recipe {
    paragraphs(dir, "early", "chapter_1");
    paragraphs(dir, "late", "chapter_2");
    let data = dir.display();
    let head = tiny_recipe("phases", 1);
    let text = format!(
        r#"
{head}[sources.early]
path = "{0}/early.jsonl"
format = "jsonl"
holdout = 0.2
[sources.late]
path = "{0}/late.jsonl"
format = "jsonl"
[stages.curriculum]
kind = "pretrain"
steps = 30
seq_len = 32
batch_size = 8
data = {{ mix = [[0, {{ early = 1 }}], [6, {{ early = 1, late = 3 }}]], packing = "concat" }}
optim = {{ lr = 1e-2 }}
checkpoint_every = 2
eval = {{ every = 15, batches = 1 }}
"#,
        data
    );
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Recipe::parse(&dir.join("r.toml"), &text, &sets, &Headers).unwrap_or_else(|e| panic!("{e}"))
}

const TRAINED: &[&str] = &["step", "loss", "grad_norm", "source_tokens", "mix_weights"];

fn metrics(runs: &Path) -> Vec<Value> {
    step_lines(runs, &recipe(runs), "curriculum")
}

#[test]
fn each_phase_draws_its_own_mix_and_resumes_exactly_across_the_switch() {
    let straight = tempfile::tempdir().unwrap();
    let r = recipe(straight.path());
    let stage = r.stage("curriculum").unwrap();
    assert_eq!(stage.data.mix, [("early".to_string(), 0.25), ("late".to_string(), 0.75)], "the mix it ends on");
    assert_eq!((stage.data.weights_at(5), stage.data.weights_at(6)), (vec![1.0, 0.0], vec![0.25, 0.75]));
    execute_until(&r, straight.path(), None, None);
    let lines = metrics(straight.path());
    let tokens = |l: &Value, s: &str| l["source_tokens"][s].as_u64().unwrap_or(0);
    assert_eq!(tokens(&lines[5], "late"), 0, "`late` gives nothing before step 6: {}", lines[5]);
    // The rows of phase two (steps 7 to 30) take about three `late` tokens for each `early`
    // one: off by at most the document under way at the switch and the one under way at the end.
    let last = lines.last().unwrap();
    let (early, late) = (tokens(last, "early") - tokens(&lines[5], "early"), tokens(last, "late"));
    let share = late as f64 / (early + late) as f64;
    assert!((share - 0.75).abs() < 0.1, "phase two's share of `late` is {share} ({early} early, {late} late)");

    // `plan`'s data facts simulate the phases as training runs them: the same tokens per source.
    let graph = Graph::build(&r).unwrap();
    let stores = recipe_run::stage_stores(stage, &graph, &RunDir::new(straight.path(), &r.name)).unwrap().unwrap();
    let facts = recipe_data::data_facts(&r, stage, stores).unwrap();
    for source in &facts.stats.sources {
        assert_eq!(source.tokens, tokens(last, &source.name), "planned tokens of `{}`", source.name);
    }

    for stop in [4, 7] {
        let crashed = tempfile::tempdir().unwrap();
        let r = recipe(crashed.path());
        execute_until(&r, crashed.path(), Some(("curriculum", stop)), None);
        execute_until(&r, crashed.path(), None, None);
        assert_eq!(
            trained(&metrics(crashed.path()), TRAINED),
            trained(&lines, TRAINED),
            "interrupted after step {stop}"
        );
    }
}

#[test]
fn phases_must_start_at_zero_in_order_within_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let check = |mix: &str| {
        let path = dir.path().join("r.toml");
        let base = format!(
            "[recipe]\nname = \"p\"\n[tokenizer]\ntrain = {{ vocab_size = 300 }}\n[sources.a]\npath = \"{}\"\n\
             [stages.s]\nkind = \"pretrain\"\nsteps = 10\ndata = {{ mix = {mix} }}\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/moby-dick/chapter_1.txt").display()
        );
        Recipe::parse(&path, &base, &[], &Headers).err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(check("[[1, { a = 1 }]]").contains("expected the first phase starts at step 0"));
    assert!(check("[[0, { a = 1 }], [0, { a = 1 }]]").contains("each later than the last"));
    assert!(check("[[0, { a = 1 }], [10, { a = 1 }]]").contains("a step before the stage's last (10)"));
    assert!(check("[[0, { b = 1 }]]").contains("no source named `b`"));
    assert_eq!(check("[[0, { a = 1 }], [5, { a = 2 }]]"), "");
    assert!(check("{ kind = \"online\", sources = [\"a\"] }").contains("only one is listed"));
    assert!(check("{ kind = \"online\", sources = [\"a\", \"b\"] }").contains("no source named `b`"));
    assert!(check("{ kind = \"onlin\", sources = [\"a\"] }").contains("did you mean `online`"));
    assert!(check("{ kind = \"online\" }").contains("missing key `sources`"));
    assert!(check("{ kind = \"online\", sources = [\"a\", \"a\"], smoothing = 1 }").contains("listed twice"));
}

const ONLINE: &[&str] = &[
    "stages.curriculum.data.mix={ kind = \"online\", sources = [\"early\", \"late\"], smoothing = 0.5 }",
    "stages.curriculum.steps=16",
    "stages.curriculum.checkpoint_every=3",
];

#[test]
fn online_mixing_draws_with_the_bandits_shares_and_resumes_exactly() {
    let straight = tempfile::tempdir().unwrap();
    let r = recipe_with(straight.path(), ONLINE);
    execute_until(&r, straight.path(), None, None);
    let lines = step_lines(straight.path(), &r, "curriculum");
    assert_eq!(lines.len(), 16);
    // The shares each step logged are the policy of a bandit fed the per-source losses the
    // steps before it logged: the trainer follows the update rule.
    let mut bandit = recipe_data::Bandit::new(2);
    for line in &lines {
        let logged: Vec<f64> = ["early", "late"].iter().map(|s| line["mix_weights"][s].as_f64().unwrap()).collect();
        let policy = bandit.policy();
        assert!(logged.iter().zip(&policy).all(|(a, b)| (a - b).abs() < 1e-12), "{line}: {policy:?}");
        let losses: Vec<Option<f64>> = ["early", "late"].iter().map(|s| line["loss_by_source"][s].as_f64()).collect();
        assert!(losses.iter().flatten().all(|l| l.is_finite() && *l > 0.0), "{line}");
        bandit.update(&losses, &policy, 0.5);
    }
    assert_eq!(lines[0]["mix_weights"]["early"], 0.5, "equal shares before any loss is seen");
    assert_ne!(lines[15]["mix_weights"]["early"], 0.5, "the shares moved");
    let last = lines.last().unwrap();
    assert!(["early", "late"].iter().all(|s| last["source_tokens"][s].as_u64().unwrap() > 0), "{last}");

    for stop in [4, 7] {
        let crashed = tempfile::tempdir().unwrap();
        let r = recipe_with(crashed.path(), ONLINE);
        execute_until(&r, crashed.path(), Some(("curriculum", stop)), None);
        execute_until(&r, crashed.path(), None, None);
        let resumed = step_lines(crashed.path(), &r, "curriculum");
        assert_eq!(trained(&resumed, TRAINED), trained(&lines, TRAINED), "interrupted after step {stop}");
    }
}
