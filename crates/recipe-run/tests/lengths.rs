//! A length that grows (`seq_len = [[0, 8], [4, 16], [8, 32]]`, GrowLength): each step's rows
//! have its phase's length, `keep = "tokens"` keeps the tokens per step those of the longest
//! length and `keep = "batch"` the rows; `plan` counts the tokens training takes, per source,
//! exactly; and an interrupt on either side of a switch resumes bit-identically (best-fit's
//! buffer of packed rows is carried across the switch).

use std::path::Path;

use common::{execute_until, step_lines, tiny_recipe, trained};
use recipe_checkpoint::Headers;
use recipe_graph::{Graph, RunDir};
use recipe_spec::Recipe;

mod common;

fn recipe(dir: &Path, keep: &str) -> Recipe {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/moby-dick");
    let head = tiny_recipe("grow", 1);
    let text = format!(
        r#"
{head}[sources.early]
path = "{0}/chapter_1*.txt"
holdout = 0.2
[sources.late]
path = "{0}/chapter_2*.txt"
[stages.grow]
kind = "pretrain"
steps = 12
seq_len = [[0, 8], [4, 16], [8, 32]]
keep = "{keep}"
batch_size = 4
micro_batch_size = 2
data = {{ mix = {{ early = 1, late = 1 }} }}
optim = {{ lr = 1e-2 }}
checkpoint_every = 2
eval = {{ every = 6, batches = 1 }}
"#,
        data.display()
    );
    Recipe::parse(&dir.join("r.toml"), &text, &[], &Headers).unwrap_or_else(|e| panic!("{e}"))
}

const TRAINED: &[&str] = &["step", "loss", "grad_norm", "tokens", "source_tokens"];

#[test]
fn each_step_has_its_phase_length_and_resumes_exactly_across_a_switch() {
    let straight = tempfile::tempdir().unwrap();
    let r = recipe(straight.path(), "tokens");
    let stage = r.stage("grow").unwrap();
    assert_eq!((stage.seq_len, stage.tokens()), (32, 12 * 4 * 32), "tokens per step as at the longest length");
    let shapes: Vec<(u32, u32, u32)> =
        [0, 4, 8].iter().map(|&s| stage.shape_at(s)).map(|s| (s.seq_len, s.batch_size, s.micro_batch_size)).collect();
    assert_eq!(shapes, [(8, 16, 8), (16, 8, 4), (32, 4, 2)]);
    let estimate = stage.estimate(&r);
    let phases: Vec<(u64, u64, u64)> = estimate.phases.iter().map(|p| (p.from, p.until, p.tokens)).collect();
    assert_eq!(phases, [(0, 4, 512), (4, 8, 512), (8, 12, 512)]);
    assert!(estimate.phases[0].flops < estimate.phases[2].flops, "attention costs more per token in longer rows");

    execute_until(&r, straight.path(), None, None);
    let lines = step_lines(straight.path(), &r, "grow");
    let lengths: Vec<u64> = lines.iter().map(|l| l["seq_len"].as_u64().unwrap()).collect();
    assert_eq!(lengths, [8, 8, 8, 8, 16, 16, 16, 16, 32, 32, 32, 32]);
    let tokens: Vec<u64> = lines.iter().map(|l| l["tokens"].as_u64().unwrap()).collect();
    assert_eq!(tokens, (1..=12).map(|s| s * 128).collect::<Vec<_>>());
    assert!(lines.iter().all(|l| l["loss"].as_f64().unwrap().is_finite() && l["loss_tokens"].as_u64().unwrap() > 0));

    // `plan`'s data facts pack the phases as training does: the same tokens per source.
    let graph = Graph::build(&r).unwrap();
    let stores = recipe_run::stage_stores(stage, &graph, &RunDir::new(straight.path(), &r.name)).unwrap().unwrap();
    let facts = recipe_data::data_facts(&r, stage, stores).unwrap();
    let last = lines.last().unwrap();
    for source in &facts.stats.sources {
        assert_eq!(source.tokens, last["source_tokens"][&source.name].as_u64().unwrap(), "{}", source.name);
    }

    for stop in [3, 4, 6, 8] {
        let crashed = tempfile::tempdir().unwrap();
        let r = recipe(crashed.path(), "tokens");
        execute_until(&r, crashed.path(), Some(("grow", stop)), None);
        execute_until(&r, crashed.path(), None, None);
        assert_eq!(
            trained(&step_lines(crashed.path(), &r, "grow"), TRAINED),
            trained(&lines, TRAINED),
            "interrupted after step {stop}"
        );
    }
}

#[test]
fn keep_batch_keeps_the_rows_and_lengths_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "batch");
    let stage = r.stage("grow").unwrap();
    assert_eq!(stage.tokens(), 4 * 4 * (8 + 16 + 32));
    execute_until(&r, dir.path(), None, None);
    let tokens: Vec<u64> = step_lines(dir.path(), &r, "grow").iter().map(|l| l["tokens"].as_u64().unwrap()).collect();
    assert_eq!(&tokens[..6], [32, 64, 96, 128, 192, 256]);

    let check = |seq_len: &str, keep: &str| {
        let base = format!(
            "[recipe]\nname = \"p\"\n[model]\nmax_seq_len = 64\n[tokenizer]\ntrain = {{ vocab_size = 300 }}\n\
             [sources.a]\npath = \"{}\"\n[stages.s]\nkind = \"pretrain\"\nsteps = 10\nseq_len = {seq_len}\n{keep}\
             data = {{ mix = {{ a = 1 }} }}\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/moby-dick/chapter_1.txt").display()
        );
        Recipe::parse(&dir.path().join("r.toml"), &base, &[], &Headers).err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert_eq!(check("[[0, 16], [5, 64]]", ""), "");
    assert!(check("[[0, 24], [5, 64]]", "").contains("length 24 does not divide the longest length, 64"));
    assert_eq!(check("[[0, 24], [5, 64]]", "keep = \"batch\"\n"), "");
    assert!(check("[[0, 16], [5, 128]]", "").contains("seq_len (128) exceeds the model's max_seq_len (64)"));
    assert!(check("[[2, 16], [5, 64]]", "").contains("the first length holds from step 0"));
    assert!(check("[[0, 16], [10, 64]]", "").contains("a step before the stage's last (10)"));
    assert!(check("[[0, 16], [5]]", "").contains("must be a pair [STEP, LENGTH]"));
    assert!(check("64", "keep = \"tokens\"\n").contains("`stages.s.keep` only applies with `seq_len` given in phases"));
    assert!(check("[[0, 16], [5, 64]]", "keep = \"token\"\n").contains("tokens"));
}
