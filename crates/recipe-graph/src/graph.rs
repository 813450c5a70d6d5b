//! The stage graph: one node for tokenizer training (when asked), one per tokenized source,
//! one per stage; edges from `after`, `init`, `teacher`, data and tokenizer use; a content key per node.

use std::collections::BTreeMap;
use std::path::Path;

use recipe_spec::{ChatTemplate, MergeInput, OwnChatTemplate, Recipe, Source, Stage, Tokenizer, flatten};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What a node computes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum NodeKind {
    /// Train the recipe's BPE tokenizer.
    TrainTokenizer,
    /// Tokenize one source into cached token shards.
    Tokenize { source: String },
    /// Run one stage.
    Stage { stage: String },
}

/// Everything a node's key is computed from, kept so that a later diff can say which part
/// changed. Field names are neutral (`model.d_model`), each with the recipe path a person
/// would edit to change it (`model.d_model` or `stages.sft.model.d_model`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Material {
    pub fields: BTreeMap<String, Field>,
    /// Input files by their path as the recipe names them (relative to its folder), with
    /// the blake3 hash of their content.
    pub files: BTreeMap<String, String>,
    /// Upstream nodes by name, with their keys.
    pub inputs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Field {
    /// The dotted recipe path to edit to change this value.
    pub path: String,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// `tokenizer:train`, `tokenize:SOURCE`, or the stage's name (stage names cannot hold `:`).
    pub name: String,
    #[serde(flatten)]
    pub kind: NodeKind,
    /// blake3 over the material, hex.
    pub key: String,
    pub material: Material,
    /// Names of the nodes this one reads.
    pub deps: Vec<String>,
}

impl Node {
    /// The first 12 hex digits of the key: the name of the node's folder in the run directory.
    pub fn short_key(&self) -> &str {
        &self.key[..12]
    }

    pub fn stage_name(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Stage { stage } => Some(stage),
            _ => None,
        }
    }
}

/// The nodes of a recipe in topological order (every node after all of its inputs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
}

pub const TOKENIZER_NODE: &str = "tokenizer:train";

pub fn tokenize_node(source: &str) -> String {
    format!("tokenize:{source}")
}

impl Graph {
    /// Build the graph and compute every key. Reads (and hashes) every input file.
    pub fn build(recipe: &Recipe) -> std::io::Result<Graph> {
        let mut nodes: Vec<Node> = Vec::new();
        let key_of = |nodes: &[Node], name: &str| -> String {
            nodes.iter().find(|n| n.name == name).map(|n| n.key.clone()).expect("inputs come first")
        };

        let tokenizer_input = match &recipe.tokenizer {
            Tokenizer::Train(train) => {
                let mut m = Material::default();
                put_all(&mut m, "tokenizer", "tokenizer", &serde_json::to_value(&recipe.tokenizer).expect("plain"));
                for name in &train.sources {
                    let source = recipe.source(name).expect("validated reference");
                    put_source_reading(&mut m, source);
                    hash_files(&mut m, recipe, source)?;
                }
                nodes.push(finish(TOKENIZER_NODE.into(), NodeKind::TrainTokenizer, m));
                Some(TOKENIZER_NODE)
            }
            Tokenizer::File { .. } => None,
        };

        let used = |s: &Source| recipe.stages.iter().any(|st| st.sources_read().contains(&s.name.as_str()));
        for source in recipe.sources.iter().filter(|s| used(s)) {
            let mut m = Material::default();
            put_source_reading(&mut m, source);
            put(&mut m, "source.holdout", &format!("sources.{}.holdout", source.name), json!(source.holdout));
            hash_files(&mut m, recipe, source)?;
            match (&recipe.tokenizer, tokenizer_input) {
                (_, Some(node)) => {
                    m.inputs.insert(node.into(), key_of(&nodes, node));
                }
                (Tokenizer::File { written, file, bos, own_template, .. }, None) => {
                    m.files.insert(written.clone(), hash_file(file.path())?);
                    // Text documents start with it: tokens that the same file gave without it
                    // before it was added are not these.
                    if let Some(bos) = bos {
                        put(&mut m, "tokenizer.bos", "tokenizer.path", json!(bos));
                    }
                    // Kept beside the tokenizer file, so not in its hash.
                    if let (Some(ChatTemplate::Tokenizer), Some(own)) = (source.template, own_template) {
                        put(&mut m, "tokenizer.chat_template", "tokenizer.path", json!(fingerprint(own)));
                    }
                }
                (Tokenizer::Train(_), None) => unreachable!("a trained tokenizer always has a node"),
            }
            nodes.push(finish(tokenize_node(&source.name), NodeKind::Tokenize { source: source.name.clone() }, m));
        }

        for stage in topological_stages(recipe) {
            let mut m = stage_fields(recipe, stage);
            if let Some(from) = &stage.model.from {
                m.files.insert(from.clone(), hash_path(&recipe.resolve(from))?);
            }
            if let Some((path, _)) = stage.peft.as_ref().and_then(|p| p.adapter.as_ref()) {
                m.files.insert(stage.peft.as_ref().and_then(|p| p.from.clone()).unwrap_or_default(), hash_path(path)?);
            }
            for teacher in &stage.teacher_checkpoints {
                m.files.insert(teacher.written.clone(), hash_path(&teacher.path)?);
            }
            for input in stage.merge.iter().flat_map(|m| m.all_inputs()) {
                if let MergeInput::Checkpoint(import) = input {
                    m.files.insert(import.written.clone(), hash_path(&import.path)?);
                }
            }
            let mut inputs: Vec<String> = stage.data.mix.iter().map(|(s, _)| tokenize_node(s)).collect();
            inputs.extend(stage.upstream().into_iter().map(str::to_string));
            for input in inputs {
                let key = key_of(&nodes, &input);
                m.inputs.insert(input, key);
            }
            let mut node = finish(stage.name.clone(), NodeKind::Stage { stage: stage.name.clone() }, m);
            // Sources only evaluated are read, but (like all of `eval`) outside the key.
            for source in stage.sources_read() {
                let input = tokenize_node(source);
                if !node.deps.contains(&input) {
                    node.deps.push(input);
                }
            }
            nodes.push(node);
        }
        Ok(Graph { nodes })
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The named stage and every node it needs, in topological order.
    pub fn closure(&self, name: &str) -> Vec<&Node> {
        let mut wanted = std::collections::BTreeSet::from([name.to_string()]);
        for node in self.nodes.iter().rev() {
            if wanted.contains(&node.name) {
                wanted.extend(node.deps.iter().cloned());
            }
        }
        self.nodes.iter().filter(|n| wanted.contains(&n.name)).collect()
    }
}

/// Stages ordered so that each comes after the stages it starts from and learns from; ties keep the
/// recipe's order. The recipe was checked to be acyclic.
fn topological_stages(recipe: &Recipe) -> Vec<&Stage> {
    let mut done: Vec<&Stage> = Vec::new();
    while done.len() < recipe.stages.len() {
        let before = done.len();
        for s in &recipe.stages {
            let placed = |n: &str| done.iter().any(|d| d.name == n);
            if !placed(&s.name) && s.upstream().into_iter().all(placed) {
                done.push(s);
            }
        }
        assert!(done.len() > before, "recipe-spec rejects cyclic stage graphs");
    }
    done
}

fn finish(name: String, kind: NodeKind, material: Material) -> Node {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"recipe node key v1\n");
    hasher.update(serde_json::to_string(&kind).expect("plain").as_bytes());
    hasher.update(b"\n");
    // Only field values count, under their neutral names: where a value was written (the
    // display path) is not part of what the node computes.
    let values: BTreeMap<&String, &Value> = material.fields.iter().map(|(k, f)| (k, &f.value)).collect();
    hasher.update(serde_json::to_string(&values).expect("plain").as_bytes());
    hasher.update(serde_json::to_string(&material.files).expect("plain").as_bytes());
    hasher.update(serde_json::to_string(&material.inputs).expect("plain").as_bytes());
    let deps = material.inputs.keys().cloned().collect();
    Node { name, kind, key: hasher.finalize().to_hex().to_string(), material, deps }
}

fn put(m: &mut Material, name: &str, path: &str, value: Value) {
    m.fields.insert(name.to_string(), Field { path: path.to_string(), value });
}

/// Insert every leaf of `value` under `name_prefix` (neutral) and `path_prefix` (display).
fn put_all(m: &mut Material, name_prefix: &str, path_prefix: &str, value: &Value) {
    for (leaf, v) in flatten(value) {
        put(m, &format!("{name_prefix}.{leaf}"), &format!("{path_prefix}.{leaf}"), v);
    }
}

/// The fields that decide how a source's files are read into documents.
fn put_source_reading(m: &mut Material, source: &Source) {
    let s = serde_json::to_value(source).expect("plain");
    for field in ["format", "field", "on_error", "template"] {
        if let Some(v) = s.get(field) {
            put(m, &format!("source.{}.{field}", source.name), &format!("sources.{}.{field}", source.name), v.clone());
        }
    }
}

/// A stage's semantic fields: its own (less those that cannot change the result), its
/// resolved architecture, and the recipe seed.
fn stage_fields(recipe: &Recipe, stage: &Stage) -> Material {
    let mut m = Material::default();
    let mut own = serde_json::to_value(stage).expect("plain");
    let own_map = own.as_object_mut().expect("a struct");
    own_map.remove("model");
    for field in stage.non_semantic_fields() {
        own_map.remove(field);
    }
    put_all(&mut m, "stage", &format!("stages.{}", stage.name), &own);
    let model = serde_json::to_value(&stage.model).expect("plain");
    for (field, value) in model.as_object().expect("a struct") {
        if field == "from" && value.is_null() {
            continue;
        }
        put(&mut m, &format!("model.{field}"), &recipe.model_field_path(stage, field), value.clone());
    }
    put(&mut m, "recipe.seed", "recipe.seed", json!(recipe.seed));
    m
}

/// blake3 over a tokenizer's own chat template and the tokens it names.
fn fingerprint(own: &OwnChatTemplate) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in std::iter::once(&own.jinja).chain(own.tokens.iter().flat_map(|(k, v)| [k, v])) {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

fn hash_files(m: &mut Material, recipe: &Recipe, source: &Source) -> std::io::Result<()> {
    for file in &source.files {
        let shown = file.strip_prefix(&recipe.base_dir).unwrap_or(file).to_string_lossy().into_owned();
        m.files.insert(shown, hash_file(file)?);
    }
    Ok(())
}

/// blake3 of a file's bytes, hex; the error names the file.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    // Read through a buffer rather than mapped: mapped pages would count as resident memory,
    // which then grows with the size of the data.
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path).map_err(named)?).map_err(named)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// blake3 of a file, or of every file under a directory (names and contents, sorted).
fn hash_path(path: &Path) -> std::io::Result<String> {
    if !path.is_dir() {
        return hash_file(path);
    }
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() { stack.push(p) } else { files.push(p) }
        }
    }
    files.sort();
    let mut hasher = blake3::Hasher::new();
    for f in files {
        hasher.update(f.strip_prefix(path).unwrap_or(&f).to_string_lossy().as_bytes());
        hasher.update(hash_file(&f)?.as_bytes());
    }
    Ok(hasher.finalize().to_hex().to_string())
}
