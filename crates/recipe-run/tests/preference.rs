//! Preference stages end to end: a `dpo` stage after pretraining, on pairs that prefer a
//! stretch of the book's true continuation to the same words in upper case, starts at DPO's loss of ln 2 (the
//! policy is its reference), lowers it, comes to reward the chosen continuations, reports a
//! held-out accuracy, and resumes bit-identically; IPO, DPO over LoRA adapters, and the
//! reference-free SimPO and ORPO train too; and KTO, from the same answers unpaired, starts where
//! its formula says, comes to reward the desirable answers more, and resumes bit-identically.

use std::path::Path;

use common::{execute_until, step_lines, trained};
use recipe_checkpoint::Headers;
use recipe_spec::Recipe;
use serde_json::Value;

mod common;

/// Pairs from Moby-Dick: the prompt is a stretch's first five words, the chosen answer its next
/// six, the rejected one those six shouted (upper case, which the book seldom writes).
fn write_pairs(dir: &Path) {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/moby-dick/chapter_1.txt"))
            .unwrap();
    let words: Vec<&str> = text.split_whitespace().collect();
    let (mut lines, mut unpaired) = (String::new(), String::new());
    for chunk in words.chunks(11).take(240) {
        if chunk.len() < 11 {
            break;
        }
        let prompt = chunk[..5].join(" ");
        let chosen = chunk[5..].join(" ");
        let rejected = chosen.to_uppercase();
        let record = serde_json::json!({ "prompt": prompt, "chosen": chosen, "rejected": rejected });
        lines.push_str(&format!("{record}\n"));
        // KTO's records: each answer on its own, marked, as TRL unpairs a preference dataset.
        for (completion, label) in [(&chosen, true), (&rejected, false)] {
            let record = serde_json::json!({ "prompt": prompt, "completion": completion, "label": label });
            unpaired.push_str(&format!("{record}\n"));
        }
    }
    std::fs::write(dir.join("pairs.jsonl"), lines).unwrap();
    std::fs::write(dir.join("unpaired.jsonl"), unpaired).unwrap();
}

fn recipe(dir: &Path) -> Recipe {
    write_pairs(dir);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/moby-dick");
    let dpo = |name: &str, extra: &str| {
        let source = if extra.contains("kto") { "unpaired" } else { "pairs" };
        format!(
            "[stages.{name}]\nkind = \"dpo\"\nafter = \"base\"\nsteps = 40\nseq_len = 128\nbatch_size = 8\n\
             micro_batch_size = 4\ndata = {{ mix = {{ {source} = 1 }} }}\noptim = {{ lr = 1e-2, weight_decay = 0.0 }}\n\
             schedule = {{ kind = \"constant\" }}\ncheckpoint_every = 2\neval = {{ every = 20, batches = 4 }}\n{extra}"
        )
    };
    let text = format!(
        r#"[recipe]
name = "preference"
[model]
d_model = 32
n_layers = 2
n_heads = 4
d_ff = 64
max_seq_len = 128
[tokenizer]
train = {{ vocab_size = 400 }}
[sources.book]
path = "{0}/chapter_*.txt"
[sources.pairs]
path = "pairs.jsonl"
format = "preference-jsonl"
holdout = 0.1
[sources.unpaired]
path = "unpaired.jsonl"
format = "unpaired-preference-jsonl"
holdout = 0.1
[stages.base]
kind = "pretrain"
steps = 30
seq_len = 64
batch_size = 8
data = {{ mix = {{ book = 1 }} }}
optim = {{ lr = 1e-2 }}
{1}{2}{3}{4}{5}{6}"#,
        data.display(),
        dpo("dpo", ""),
        dpo("ipo", "preference = { loss = \"ipo\", beta = 0.5 }\n"),
        dpo("dpo_lora", "peft = { rank = 4, targets = [\"q_proj\", \"v_proj\", \"down_proj\"] }\n"),
        dpo("simpo", "preference = { loss = \"simpo\", beta = 2.0, gamma = 0.5 }\n"),
        dpo("orpo", "preference = { loss = \"orpo\", beta = 0.5 }\n"),
        dpo("kto", "preference = { loss = \"kto\", beta = 0.5, undesirable_weight = 1.5 }\n"),
    );
    Recipe::parse(&dir.join("r.toml"), &text, &[], &Headers).unwrap_or_else(|e| panic!("{e}"))
}

const TRAINED: &[&str] = &["step", "loss", "grad_norm", "chosen_reward", "rejected_reward", "reward_accuracy"];

#[test]
fn a_dpo_stage_learns_the_preferred_answers_and_resumes_exactly() {
    let straight = tempfile::tempdir().unwrap();
    let r = recipe(straight.path());
    execute_until(&r, straight.path(), None, None);
    let number = |l: &Value, key: &str| l[key].as_f64().unwrap_or_else(|| panic!("{key} in {l}"));
    for stage in ["dpo", "ipo", "dpo_lora", "simpo", "orpo"] {
        let lines = step_lines(straight.path(), &r, stage);
        let (first, last) = (&lines[0], lines.last().unwrap());
        if stage.starts_with("dpo") {
            // The policy is its reference at the first step: h = 0 and −log σ(0) = ln 2.
            assert!((number(first, "loss") - 2f64.ln()).abs() < 1e-4, "{stage}: {first}");
        }
        assert!(number(last, "loss") < number(first, "loss"), "{stage}: {first} → {last}");
        assert!(number(last, "reward_margin") > 0.0, "{stage}: {last}");
        assert!(number(last, "reward_accuracy") > 0.5, "{stage}: {last}");
        assert!(number(last, "eval_reward_accuracy") > 0.5, "{stage}: {last}");
    }
    // KTO, from the same answers unpaired: at the start the policy is its reference, every
    // reward and the KL estimate 0, and each response's loss its weight times 1 − σ(0): with
    // as many desirable responses (weight 1) as not (1.5), about 0.625.
    let lines = step_lines(straight.path(), &r, "kto");
    let (first, last) = (&lines[0], lines.last().unwrap());
    assert!((number(first, "loss") - 0.625).abs() < 0.1, "kto: {first}");
    assert_eq!((number(first, "kl"), number(first, "reward_margin")), (0.0, 0.0), "kto: {first}");
    assert!(number(last, "loss") < number(first, "loss") * 0.8, "kto: {first} → {last}");
    assert!(number(last, "reward_margin") > 0.0, "kto: {last}");
    assert!(number(last, "kl") >= 0.0 && last.get("reward_accuracy").is_none(), "kto: {last}");
    assert!(last["eval_loss"].as_f64().is_some() && last.get("eval_ppl").is_none(), "kto: {last}");

    for stage in ["dpo", "kto"] {
        let crashed = tempfile::tempdir().unwrap();
        let r = recipe(crashed.path());
        execute_until(&r, crashed.path(), Some((stage, 5)), Some(stage));
        execute_until(&r, crashed.path(), None, Some(stage));
        assert_eq!(
            trained(&step_lines(crashed.path(), &r, stage), TRAINED),
            trained(&step_lines(straight.path(), &r, stage), TRAINED),
            "{stage} interrupted after step 5"
        );
    }
}
