//! Tokenization throughput of the cache node, in MB of text per second, on the committed
//! Moby-Dick (1.2 MB, 136 documents) with a 4096-token BPE trained on it.
//! `cargo bench -p recipe-data --bench tokenize`

use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use recipe_checkpoint::Headers;
use recipe_data::{Doc, Silent, Tok, read_source, tokenize_source};
use recipe_spec::Recipe;

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = format!(
        "[tokenizer]\ntrain = {{ vocab_size = 4096 }}\n[sources.moby]\npath = \"{}/data/moby-dick/*.txt\"\n\
         [stages.s]\nkind = \"pretrain\"\ndata = {{ mix = {{ moby = 1 }} }}\n",
        root.display()
    );
    let recipe = Recipe::parse(&root.join("bench.toml"), &text, &[], &Headers).expect("valid");
    let recipe_spec::Tokenizer::Train(cfg) = &recipe.tokenizer else { unreachable!() };
    let source = recipe.source("moby").expect("defined");
    let docs = read_source(source).expect("readable");
    let texts: Vec<String> = docs.docs.iter().map(Doc::text).collect();
    let bytes: u64 = texts.iter().map(|t| t.len() as u64).sum();
    let tok = Tok::train(cfg, texts.iter().map(String::as_str)).expect("trains");
    let out = tempfile::tempdir().expect("temp dir");

    let mut group = c.benchmark_group("tokenize");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    group.bench_function("moby-dick, 4096 BPE, read + encode + write", |b| {
        b.iter(|| tokenize_source(source, &tok, out.path(), &Silent).expect("tokenizes"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
