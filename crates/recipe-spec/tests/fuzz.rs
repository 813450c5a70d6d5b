//! Property tests: whatever the input, loading a recipe returns a recipe or diagnostics, never a
//! panic. Three generators: arbitrary bytes, arbitrary TOML documents built from the
//! language's own keys and values, and valid recipes with a few random edits.

use proptest::prelude::*;
use recipe_checkpoint::Headers;
use recipe_spec::Recipe;

const KEYS: &[&str] = &[
    "recipe",
    "name",
    "seed",
    "model",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "d_ff",
    "vocab_size",
    "max_seq_len",
    "tie_embeddings",
    "from",
    "tokenizer",
    "path",
    "train",
    "sources",
    "format",
    "field",
    "holdout",
    "stages",
    "kind",
    "after",
    "teacher",
    "steps",
    "seq_len",
    "batch_size",
    "micro_batch_size",
    "data",
    "mix",
    "packing",
    "loss_on",
    "optim",
    "lr",
    "betas",
    "schedule",
    "warmup",
    "decay",
    "min_lr_ratio",
    "power",
    "peft",
    "rank",
    "targets",
    "distill",
    "temperature",
    "alpha",
    "eval",
    "every",
    "a",
    "b",
    "pretrain",
    "x",
];

const SCALARS: &[&str] = &[
    "0",
    "1",
    "-1",
    "3",
    "9223372036854775807",
    "0.5",
    "1e-3",
    "-0.0",
    "nan",
    "inf",
    "true",
    "\"\"",
    "\"a\"",
    "\"pretrain\"",
    "\"sft\"",
    "\"distill\"",
    "\"*.txt\"",
    "\"../\"",
    "\"wsd\"",
    "\"lora\"",
    "[]",
    "[1, 2]",
    "[\"q_proj\"]",
    "{}",
    "{ a = 1 }",
    "{ mix = { a = 1 } }",
    "1979-05-27",
];

fn arb_value() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(SCALARS).prop_map(str::to_string);
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..4).prop_map(|kv| {
                let mut seen = std::collections::BTreeSet::new();
                let body: Vec<String> =
                    kv.into_iter().filter(|(k, _)| seen.insert(*k)).map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

fn arb_document() -> impl Strategy<Value = String> {
    let header = prop::collection::vec(prop::sample::select(KEYS), 1..4).prop_map(|p| format!("[{}]", p.join(".")));
    let entry = (prop::sample::select(KEYS), arb_value()).prop_map(|(k, v)| format!("{k} = {v}"));
    prop::collection::vec((header, prop::collection::vec(entry, 0..5)), 0..6).prop_map(|tables| {
        tables.into_iter().map(|(h, entries)| format!("{h}\n{}\n", entries.join("\n"))).collect::<Vec<_>>().join("\n")
    })
}

const VALID: &str = include_str!("../../../recipes/quickstart.toml");

fn check(text: &str, sets: &[String]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/fuzz.toml");
    match Recipe::parse(&path, text, sets, &Headers) {
        Ok(r) => {
            // A valid recipe must also canonicalise and estimate without panicking.
            let _ = r.canonical();
            for s in &r.stages {
                let _ = s.estimate(&r);
            }
        }
        Err(e) => {
            let rendered = e.to_string();
            assert!(rendered.contains("error"), "{rendered}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes), &[]);
    }

    #[test]
    fn arbitrary_toml_never_panics(doc in arb_document()) {
        check(&doc, &[]);
    }

    #[test]
    fn edited_valid_recipes_never_panic(
        cut in 0..VALID.len(),
        insert in "[ -~\n]{0,12}",
        set_key in prop::collection::vec(prop::sample::select(KEYS), 1..4),
        set_value in arb_value(),
    ) {
        let cut = (0..=cut).rev().find(|i| VALID.is_char_boundary(*i)).unwrap_or(0);
        let text = format!("{}{insert}{}", &VALID[..cut], &VALID[cut..]);
        check(&text, &[]);
        check(VALID, &[format!("{}={set_value}", set_key.join("."))]);
    }
}

#[test]
fn extreme_numbers_in_every_numeric_field_never_panic() {
    let fields = [
        "model.vocab_size",
        "model.d_model",
        "model.n_layers",
        "model.n_heads",
        "model.n_kv_heads",
        "model.d_ff",
        "model.max_seq_len",
        "model.rope_theta",
        "model.init_std",
        "recipe.seed",
        "stages.pretrain.steps",
        "stages.pretrain.seq_len",
        "stages.pretrain.batch_size",
        "stages.pretrain.micro_batch_size",
        "stages.pretrain.optim.lr",
        "stages.pretrain.schedule.warmup",
        "stages.pretrain.eval.every",
        "stages.pretrain.eval.batches",
        "stages.pretrain.checkpoint_every",
        "tokenizer.train.vocab_size",
        "sources.moby.holdout",
    ];
    let values = ["0", "1", "-1", "4294967295", "4294967296", "9223372036854775807", "1e300", "-1e-300", "65536"];
    for f in fields {
        for v in values {
            check(VALID, &[format!("{f}={v}")]);
            check(
                VALID,
                &[format!("{f}={v}"), format!("model.d_model={v}"), format!("stages.pretrain.batch_size={v}")],
            );
        }
    }
    // The largest sizes the language accepts, all at once.
    let huge = [
        "model.d_model=65536",
        "model.n_heads=4096",
        "model.n_kv_heads=4096",
        "model.n_layers=4096",
        "model.d_ff=1048576",
        "model.max_seq_len=4194304",
        "model.vocab_size=16777216",
        "stages.pretrain.seq_len=4194304",
        "stages.pretrain.batch_size=1048576",
        "stages.pretrain.steps=1000000000000",
    ];
    check(VALID, &huge.map(String::from));
}
