//! PEFT stages end to end: VeRA and Tied-LoRA train (loss falls) and publish a merged model,
//! ReLoRA resumes bit-identically across a restart (the merged base weights are in the
//! checkpoint) with the learning rate re-warmed after each restart, and rsLoRA with LoRA+,
//! adapter dropout and NEFTune's noise, under activation checkpointing, resumes bit-identically
//! too (every draw seeded by the step, and drawn again alike when a block runs again).

use std::path::Path;

use common::{execute_until, step_lines, tiny_recipe, trained};
use recipe_checkpoint::Headers;
use recipe_spec::Recipe;
use serde_json::Value;

mod common;

fn recipe(dir: &Path) -> Recipe {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/moby-dick");
    let stage = |name: &str, peft: &str| {
        format!(
            "[stages.{name}]\nkind = \"pretrain\"\nafter = \"base\"\nsteps = 12\nseq_len = 32\nbatch_size = 4\n\
             data = {{ mix = {{ late = 1 }} }}\noptim = {{ lr = 1e-2, weight_decay = 0.0 }}\n\
             schedule = {{ kind = \"constant\" }}\ncheckpoint_every = 2\npeft = {peft}\n"
        )
    };
    let all = r#"targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]"#;
    let noised = stage(
        "noised",
        &format!("{{ method = \"lora\", rank = 4, {all}, rslora = true, loraplus_lr_ratio = 4, dropout = 0.1 }}"),
    ) + "neftune_alpha = 5\nactivation_checkpointing = true\n";
    let head = tiny_recipe("adapters", 2);
    let text = format!(
        r#"
{head}[sources.early]
path = "{0}/chapter_1*.txt"
[sources.late]
path = "{0}/chapter_2*.txt"
[stages.base]
kind = "pretrain"
steps = 20
seq_len = 32
batch_size = 4
data = {{ mix = {{ early = 1 }} }}
optim = {{ lr = 1e-2 }}
{1}{2}{3}{4}"#,
        data.display(),
        stage("vera", &format!("{{ method = \"vera\", rank = 16, {all} }}")),
        stage("tied", &format!("{{ method = \"tied-lora\", rank = 4, {all} }}")),
        stage("relora", &format!("{{ method = \"lora\", rank = 4, {all}, relora = {{ every = 4, warmup = 2 }} }}")),
        noised,
    );
    Recipe::parse(&dir.join("r.toml"), &text, &[], &Headers).unwrap_or_else(|e| panic!("{e}"))
}

const TRAINED: &[&str] = &["step", "loss", "grad_norm", "lr"];

#[test]
fn every_method_trains_and_relora_resumes_exactly_across_a_restart() {
    let straight = tempfile::tempdir().unwrap();
    let r = recipe(straight.path());
    execute_until(&r, straight.path(), None, None);
    for stage in ["vera", "tied", "relora", "noised"] {
        let lines = step_lines(straight.path(), &r, stage);
        let loss = |l: &Value| l["loss"].as_f64().unwrap();
        let (first, last) = (loss(&lines[0]), loss(lines.last().unwrap()));
        assert!(last < first, "{stage}: loss {first} → {last}");
    }
    let relora = step_lines(straight.path(), &r, "relora");
    // Restarts before steps 4 and 8 (0-based) re-warm from 0 over 2 steps.
    let lrs: Vec<f64> = relora.iter().map(|l| l["lr"].as_f64().unwrap()).collect();
    assert_eq!(&lrs[3..7], [1e-2, 0.0, 5e-3, 1e-2]);
    assert_eq!(&lrs[8..10], [0.0, 5e-3]);

    for (stage, stop) in [("relora", 4), ("relora", 5), ("noised", 5)] {
        let crashed = tempfile::tempdir().unwrap();
        let r = recipe(crashed.path());
        execute_until(&r, crashed.path(), Some((stage, stop)), None);
        execute_until(&r, crashed.path(), None, None);
        assert_eq!(
            trained(&step_lines(crashed.path(), &r, stage), TRAINED),
            trained(&step_lines(straight.path(), &r, stage), TRAINED),
            "{stage} interrupted after step {stop}"
        );
    }
}
