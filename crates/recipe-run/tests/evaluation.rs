//! Held-out evaluation per source (`eval.by_source`): every evaluation line, the one before
//! training included, has each held-out source's loss alone, and a stage that mixes one source
//! gets exactly its overall held-out loss for it.

use std::path::Path;

use common::execute_until;
use recipe_checkpoint::Headers;
use recipe_graph::{Graph, RunDir};
use recipe_spec::Recipe;
use serde_json::Value;

mod common;

#[test]
fn each_held_out_source_is_evaluated_alone_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/moby-dick");
    let text = format!(
        r#"
[recipe]
name = "by-source"
[model]
d_model = 32
n_layers = 1
n_heads = 4
d_ff = 64
max_seq_len = 32
[tokenizer]
train = {{ vocab_size = 400 }}
[sources.early]
path = "{0}/chapter_1*.txt"
holdout = 0.2
[sources.late]
path = "{0}/chapter_2*.txt"
holdout = 0.2
[sources.unheld]
path = "{0}/chapter_3*.txt"
[stages.both]
kind = "pretrain"
steps = 6
seq_len = 32
batch_size = 4
data = {{ mix = {{ early = 1, late = 1, unheld = 1 }} }}
eval = {{ every = 3, batches = 2, by_source = true }}
[stages.one]
kind = "pretrain"
after = "both"
steps = 3
seq_len = 32
batch_size = 4
data = {{ mix = {{ late = 1 }} }}
eval = {{ every = 3, batches = 2, by_source = true }}
"#,
        data.display()
    );
    let recipe = Recipe::parse(&dir.path().join("r.toml"), &text, &[], &Headers).unwrap_or_else(|e| panic!("{e}"));
    execute_until(&recipe, dir.path(), None, None);
    let graph = Graph::build(&recipe).unwrap();
    let run = RunDir::new(dir.path(), &recipe.name);
    let evaluations = |stage: &str| -> Vec<Value> {
        let metrics = std::fs::read_to_string(run.node_dir(graph.node(stage).unwrap()).join("metrics.jsonl")).unwrap();
        metrics
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["eval_loss"].is_number())
            .collect()
    };
    let both = evaluations("both");
    assert_eq!(both.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 3, 6]);
    for line in &both {
        let by_source = line["eval_loss_by_source"].as_object().unwrap();
        let names: Vec<&str> = by_source.keys().map(String::as_str).collect();
        assert_eq!(names, ["early", "late"], "the sources that hold data out: {line}");
        assert!(by_source.values().all(|v| v.as_f64().unwrap().is_finite()), "{line}");
    }
    for line in evaluations("one") {
        assert_eq!(line["eval_loss_by_source"]["late"], line["eval_loss"], "one source alone is the whole: {line}");
    }

    let ignored = text.replace(
        "eval = { every = 3, batches = 2, by_source = true }\n[stages.one]",
        "eval = { by_source = true }\n[stages.one]",
    );
    let error = Recipe::parse(&dir.path().join("r.toml"), &ignored, &[], &Headers).unwrap_err().to_string();
    assert!(error.contains("`stages.both.eval.by_source` only applies with `eval.every` > 0"), "{error}");
}
