//! Content keys, diffs and status on a small real recipe.

use std::collections::BTreeMap;
use std::path::Path;

use recipe_checkpoint::Headers;
use recipe_graph::{Graph, RecordedState, RunDir, State, diff, status};
use recipe_spec::Recipe;

const BASE: &str = r#"[recipe]
name = "g"
seed = 3

[model]
d_model = 64
n_layers = 2
n_heads = 4
max_seq_len = 128

[tokenizer]
train = { vocab_size = 512, sources = ["books"] }

[sources.books]
path = "data/*.txt"
holdout = 0.1

[sources.chat]
path = "chat.jsonl"
format = "chat-jsonl"

[stages.pretrain]
kind = "pretrain"
steps = 100
seq_len = 64
batch_size = 8
data = { mix = { books = 1.0 } }
schedule = { kind = "cosine", warmup = 10 }
log_every = 10

[stages.sft]
kind = "sft"
after = "pretrain"
steps = 50
seq_len = 64
data = { mix = { chat = 1.0 } }
peft = { rank = 4 }

[stages.distill]
kind = "distill"
teacher = "sft"
model = { d_model = 32, n_heads = 2 }
steps = 20
seq_len = 64
data = { mix = { books = 1.0 } }
"#;

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/a.txt"), "Call me Ishmael.").unwrap();
    std::fs::write(dir.path().join("data/b.txt"), "It was the best of times.").unwrap();
    std::fs::write(
        dir.path().join("chat.jsonl"),
        r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#,
    )
    .unwrap();
    dir
}

fn load(dir: &Path, text: &str) -> (Recipe, Graph) {
    let recipe = Recipe::parse(&dir.join("r.toml"), text, &[], &Headers).unwrap_or_else(|e| panic!("{e}"));
    let graph = Graph::build(&recipe).unwrap();
    (recipe, graph)
}

fn keys(g: &Graph) -> BTreeMap<String, String> {
    g.nodes.iter().map(|n| (n.name.clone(), n.key.clone())).collect()
}

fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "fixture lacks {from:?}");
    text.replacen(from, to, 1)
}

/// Which nodes a change invalidates, and the paths blamed for each.
fn invalidated(dir: &Path, old: &str, new: &str) -> BTreeMap<String, Vec<String>> {
    let (ra, ga) = load(dir, old);
    let (rb, gb) = load(dir, new);
    diff(&ra.canonical(), &ga, &rb.canonical(), &gb)
        .stages
        .into_iter()
        .filter(|s| s.invalidated)
        .map(|s| (s.name, s.because))
        .collect()
}

#[test]
fn graph_has_every_node_in_topological_order() {
    let dir = fixture();
    let (_, g) = load(dir.path(), BASE);
    let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["tokenizer:train", "tokenize:books", "tokenize:chat", "pretrain", "sft", "distill"]);
    assert_eq!(g.node("sft").unwrap().deps, ["pretrain", "tokenize:chat"]);
    assert_eq!(g.node("distill").unwrap().deps, ["sft", "tokenize:books"]);
    let closure: Vec<&str> = g.closure("sft").iter().map(|n| n.name.as_str()).collect();
    assert_eq!(closure, ["tokenizer:train", "tokenize:books", "tokenize:chat", "pretrain", "sft"]);
}

#[test]
fn keys_ignore_order_comments_and_spelled_out_defaults() {
    let dir = fixture();
    let (_, g) = load(dir.path(), BASE);
    assert_eq!(keys(&g), keys(&load(dir.path(), BASE).1), "same recipe, same keys");

    // Tables reordered, a comment, defaults written out, a number spelled differently, a
    // model field moved from [model] into a stage with the same value.
    let sft_first = BASE.find("[stages.sft]").unwrap();
    let distill = BASE.find("[stages.distill]").unwrap();
    let reordered = format!("{}\n# a comment\n{}{}", &BASE[sft_first..distill], &BASE[..sft_first], &BASE[distill..]);
    let explicit = replace(&reordered, "n_heads = 4\n", "n_heads = 4\ntie_embeddings = true\nrope_theta = 1e4\n");
    let explicit = replace(&explicit, "warmup = 10", "warmup = 10, min_lr_ratio = 1e-1");
    let explicit = replace(
        &explicit,
        "mix = { books = 1.0 } }\nschedule",
        "mix = { books = 5 }, packing = \"best-fit\" }\nschedule",
    );
    let explicit = replace(
        &explicit,
        "model = { d_model = 32, n_heads = 2 }",
        "model = { d_model = 32, n_heads = 2, n_layers = 2 }",
    );
    assert_eq!(keys(&g), keys(&load(dir.path(), &explicit).1));
    let (ra, ga) = load(dir.path(), BASE);
    let (rb, gb) = load(dir.path(), &explicit);
    let d = diff(&ra.canonical(), &ga, &rb.canonical(), &gb);
    assert!(d.changes.is_empty(), "{:?}", d.changes);
}

#[test]
fn every_semantic_change_changes_the_key() {
    let dir = fixture();
    let (_, g) = load(dir.path(), BASE);
    let base = keys(&g);
    let mutations = [
        ("seed = 3", "seed = 4"),
        ("steps = 100", "steps = 101"),
        ("seq_len = 64\nbatch_size", "seq_len = 32\nbatch_size"),
        ("batch_size = 8", "batch_size = 16"),
        ("warmup = 10", "warmup = 11"),
        ("kind = \"cosine\"", "kind = \"linear\""),
        ("mix = { books = 1.0 } }\nschedule", "mix = { books = 1.0 }, packing = \"concat\" }\nschedule"),
        ("d_model = 64", "d_model = 128"),
        ("max_seq_len = 128", "max_seq_len = 256"),
        ("batch_size = 8", "batch_size = 8\nprecision = \"bf16-mixed\""),
        ("batch_size = 8", "batch_size = 8\noptim = { lr = 1e-3 }"),
        ("batch_size = 8", "batch_size = 8\noptim = { weight_decay = 0.0 }"),
    ];
    for (from, to) in mutations {
        let (_, changed) = load(dir.path(), &replace(BASE, from, to));
        assert_ne!(changed.node("pretrain").unwrap().key, base["pretrain"], "{to:?} must change pretrain's key");
    }
}

#[test]
fn logging_and_checkpoint_frequency_invalidate_nothing() {
    let dir = fixture();
    let text = replace(BASE, "log_every = 10", "log_every = 1\ncheckpoint_every = 7\nkeep_checkpoints = 9");
    assert!(invalidated(dir.path(), BASE, &text).is_empty());
    let (ra, ga) = load(dir.path(), BASE);
    let (rb, gb) = load(dir.path(), &text);
    let d = diff(&ra.canonical(), &ga, &rb.canonical(), &gb);
    let paths: Vec<&str> = d.changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        ["stages.pretrain.checkpoint_every", "stages.pretrain.keep_checkpoints", "stages.pretrain.log_every"]
    );
}

#[test]
fn changing_the_tokenizer_invalidates_everything_after_it() {
    let dir = fixture();
    let text = replace(BASE, "vocab_size = 512", "vocab_size = 600");
    let inv = invalidated(dir.path(), BASE, &text);
    let names: Vec<&str> = inv.keys().map(String::as_str).collect();
    assert_eq!(names, ["distill", "pretrain", "sft", "tokenize:books", "tokenize:chat", "tokenizer:train"]);
    assert!(inv["tokenize:books"].contains(&"tokenizer.train.vocab_size".to_string()));
    assert!(inv["distill"].contains(&"tokenizer.train.vocab_size".to_string()), "{:?}", inv["distill"]);
}

#[test]
fn changing_only_sft_leaves_pretrain_valid() {
    let dir = fixture();
    let text = replace(BASE, "peft = { rank = 4 }", "peft = { rank = 8 }");
    let inv = invalidated(dir.path(), BASE, &text);
    assert_eq!(inv.keys().collect::<Vec<_>>(), ["distill", "sft"]);
    assert_eq!(inv["sft"], ["stages.sft.peft.rank"]);
    assert_eq!(inv["distill"], ["stages.sft.peft.rank"], "blamed through the teacher edge");
}

#[test]
fn inherited_model_fields_are_blamed_where_they_are_set() {
    let dir = fixture();
    let text = replace(BASE, "n_layers = 2", "n_layers = 3");
    let inv = invalidated(dir.path(), BASE, &text);
    assert_eq!(inv["pretrain"], ["model.n_layers"]);
    assert!(inv["distill"].contains(&"model.n_layers".to_string()));
    let text = replace(BASE, "model = { d_model = 32, n_heads = 2 }", "model = { d_model = 48, n_heads = 2 }");
    let inv = invalidated(dir.path(), BASE, &text);
    assert_eq!(inv.keys().collect::<Vec<_>>(), ["distill"]);
    assert_eq!(inv["distill"], ["stages.distill.model.d_model"]);
}

#[test]
fn changed_input_files_invalidate_their_tokenization_and_what_reads_it() {
    let dir = fixture();
    let (ra, ga) = load(dir.path(), BASE);
    std::fs::write(dir.path().join("chat.jsonl"), r#"{"messages":[{"role":"user","content":"yo"}]}"#).unwrap();
    let (rb, gb) = load(dir.path(), BASE);
    let d = diff(&ra.canonical(), &ga, &rb.canonical(), &gb);
    let inv: Vec<&str> = d.stages.iter().filter(|s| s.invalidated).map(|s| s.name.as_str()).collect();
    assert_eq!(inv, ["tokenize:chat", "sft", "distill"]);
    assert!(d.changes.is_empty(), "the recipe text did not change");
    assert_eq!(d.stages.iter().find(|s| s.name == "sft").unwrap().because, ["file:chat.jsonl"]);
}

#[test]
fn status_follows_the_run_directory_and_lock() {
    let dir = fixture();
    let runs = dir.path().join("runs");
    let (recipe, graph) = load(dir.path(), BASE);
    let run = RunDir::new(&runs, &recipe.name);
    let steps_of = |name: &str| recipe.stage(name).map(|s| s.steps);
    let canonical = recipe.canonical();

    let st = status(&graph, &canonical, &run, None, &steps_of);
    assert!(st.iter().all(|s| s.state == State::Pending));
    assert_eq!(st[3].reason, "never run; needs tokenize:books");

    // Finish every data node and pretrain; sft has a checkpoint at step 20.
    for node in &graph.nodes[..4] {
        std::fs::create_dir_all(run.final_dir(node)).unwrap();
        run.record(&canonical, node, RecordedState::Done, Some("2026-11-27T00:00:00Z".into())).unwrap();
    }
    let sft = graph.node("sft").unwrap();
    std::fs::create_dir_all(run.checkpoints_dir(sft).join("step-000020")).unwrap();
    std::fs::create_dir_all(run.checkpoints_dir(sft).join("step-000010")).unwrap();
    run.record(&canonical, sft, RecordedState::Partial, None).unwrap();

    let lock = run.read_lock().unwrap().unwrap();
    let st = status(&graph, &canonical, &run, Some(&lock), &steps_of);
    let states: Vec<State> = st.iter().map(|s| s.state).collect();
    use State::*;
    assert_eq!(states, [Done, Done, Done, Done, Partial, Pending]);
    assert_eq!((st[4].step, st[4].steps), (Some(20), Some(50)));
    assert_eq!(st[3].reason, "finished 2026-11-27T00:00:00Z");
    assert_eq!(st[5].reason, "never run; needs sft");

    // Change pretrain's steps: pretrain is stale and says why; sft is stale through it.
    let (changed, changed_graph) = load(dir.path(), &replace(BASE, "steps = 100", "steps = 200"));
    let steps_of = |name: &str| changed.stage(name).map(|s| s.steps);
    let st = status(&changed_graph, &changed.canonical(), &run, Some(&lock), &steps_of);
    let states: Vec<State> = st.iter().map(|s| s.state).collect();
    assert_eq!(states, [Done, Done, Done, Stale, Stale, Pending]);
    assert_eq!(st[3].reason, "changed since the last run: stages.pretrain.steps (100 → 200)");
    assert_eq!(st[4].because, ["stages.pretrain.steps"]);

    // Changing it back finds the earlier results again: keys are content addresses.
    let st = status(&graph, &canonical, &run, Some(&lock), &|n| recipe.stage(n).map(|s| s.steps));
    assert_eq!(st[3].state, Done);
}

#[test]
fn the_lock_records_enough_to_diff_against_the_last_run() {
    let dir = fixture();
    let runs = dir.path().join("runs");
    let (recipe, graph) = load(dir.path(), BASE);
    let run = RunDir::new(&runs, &recipe.name);
    for node in &graph.nodes {
        run.record(&recipe.canonical(), node, RecordedState::Done, None).unwrap();
    }
    let lock = run.read_lock().unwrap().unwrap();
    let recorded = RunDir::recorded_graph(&lock);
    let same = diff(&lock.recipe, &recorded, &recipe.canonical(), &graph);
    assert!(same.changes.is_empty() && same.stages.iter().all(|s| !s.invalidated));

    let (changed, changed_graph) = load(dir.path(), &replace(BASE, "rank = 4", "rank = 2"));
    let d = diff(&lock.recipe, &recorded, &changed.canonical(), &changed_graph);
    assert_eq!(d.changes.len(), 1);
    assert_eq!(d.changes[0].path, "stages.sft.peft.rank");
    let inv: Vec<&str> = d.stages.iter().filter(|s| s.invalidated).map(|s| s.name.as_str()).collect();
    assert_eq!(inv, ["sft", "distill"]);

    std::fs::write(run.lock_path(), "{ torn").unwrap();
    let err = run.read_lock().unwrap_err();
    assert!(err.contains("is damaged"), "{err}");
}
