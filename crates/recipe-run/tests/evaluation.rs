//! Held-out evaluation per source (`eval.by_source`): every evaluation line, the one before
//! training included, has each held-out source's loss alone, and a stage that mixes one source
//! gets exactly its overall held-out loss for it; `eval.sources` evaluates a source the mix has
//! left (the old data of continual pre-training) without making it part of the stage's key.

use std::path::Path;

use common::{execute_until, tiny_recipe};
use recipe_checkpoint::Headers;
use recipe_graph::{Graph, RunDir};
use recipe_spec::Recipe;
use serde_json::Value;

mod common;

#[test]
fn each_held_out_source_is_evaluated_alone_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/moby-dick");
    let head = tiny_recipe("by-source", 1);
    let text = format!(
        r#"
{head}[sources.early]
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
[stages.moved_on]
kind = "pretrain"
after = "both"
steps = 3
seq_len = 32
batch_size = 4
data = {{ mix = {{ late = 1 }} }}
eval = {{ every = 3, batches = 2, by_source = true, sources = ["early", "late"] }}
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

    for (line, one) in evaluations("moved_on").iter().zip(evaluations("one")) {
        let names: Vec<&String> = line["eval_loss_by_source"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["early", "late"], "{line}");
        assert_eq!(line["eval_loss_by_source"]["late"], one["eval_loss_by_source"]["late"], "same training as `one`");
        assert!(line["eval_loss_by_source"]["early"].as_f64().unwrap().is_finite());
    }
    // Which sources are evaluated is outside the key, as all of `eval` is.
    let unnamed = text.replace(", sources = [\"early\", \"late\"]", "");
    let unnamed = Graph::build(&Recipe::parse(&dir.path().join("r.toml"), &unnamed, &[], &Headers).unwrap()).unwrap();
    assert_eq!(graph.node("moved_on").unwrap().key, unnamed.node("moved_on").unwrap().key);
    assert!(graph.node("moved_on").unwrap().deps.contains(&"tokenize:early".to_string()));

    let error = |from: &str, to: &str| {
        let changed = text.replace(from, to);
        assert_ne!(changed, text, "{from}");
        Recipe::parse(&dir.path().join("r.toml"), &changed, &[], &Headers).unwrap_err().to_string()
    };
    let named = "by_source = true, sources = [\"early\", \"late\"]";
    let e = error(named, "sources = [\"early\"]");
    assert!(e.contains("`stages.moved_on.eval.sources` only applies with `by_source = true`"), "{e}");
    let e = error(named, "by_source = true, sources = [\"unheld\"]");
    assert!(e.contains("source `unheld` holds no data out") && e.contains("[sources.unheld]"), "{e}");
    let e = error(named, "by_source = true, sources = [\"erly\"]");
    assert!(e.contains("no source named `erly`") && e.contains("early"), "{e}");

    let ignored = text.replace(
        "eval = { every = 3, batches = 2, by_source = true }\n[stages.one]",
        "eval = { by_source = true }\n[stages.one]",
    );
    let error = Recipe::parse(&dir.path().join("r.toml"), &ignored, &[], &Headers).unwrap_err().to_string();
    assert!(error.contains("`stages.both.eval.by_source` only applies with `eval.every` > 0"), "{error}");
}
