//! `recipe report`: the page's data covers two recipes, an earlier key and a partial stage,
//! the page needs no network, and headless Chromium renders it without a console error —
//! charts drawn, and hovering a chart shows the values under the pointer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;

use common::{root, small_recipe};

fn recipe(args: &[&str], runs: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_recipe"))
        .args(args)
        .arg("--runs")
        .arg(runs)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "recipe {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Two stages: `pretrain` with held-out evaluation and checkpoints, then `more` after it.
fn two_stage_recipe(dir: &Path, name: &str, lr: &str) -> PathBuf {
    let stages = format!(
        r#"holdout = 0.1
[stages.pretrain]
kind = "pretrain"
steps = 12
seq_len = 32
batch_size = 4
data = {{ mix = {{ moby = 1 }} }}
optim = {{ lr = {lr} }}
eval = {{ every = 6 }}
checkpoint_every = 4
[stages.more]
kind = "pretrain"
after = "pretrain"
steps = 8
seq_len = 32
batch_size = 4
data = {{ mix = {{ moby = 1 }} }}
checkpoint_every = 4
"#
    );
    small_recipe(dir, name, "chapter_1*.txt", &stages)
}

/// The JSON the page draws from.
fn page_data(html: &str) -> Value {
    let open = r#"<script id="report-data" type="application/json">"#;
    let start = html.find(open).expect("the data element") + open.len();
    let end = start + html[start..].find("</script>").unwrap();
    serde_json::from_str(&html[start..end]).unwrap()
}

fn stage<'a>(data: &'a Value, recipe: usize, name: &str) -> &'a Value {
    data["recipes"][recipe]["stages"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
}

#[test]
fn a_report_overlays_recipes_earlier_keys_and_a_partial_stage_and_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let a = two_stage_recipe(dir.path(), "report-a", "1e-2");
    let b = two_stage_recipe(dir.path(), "report-b", "3e-3");
    let (pa, pb) = (a.to_str().unwrap(), b.to_str().unwrap());
    // An earlier key of `more` in a's run directory, then the current one.
    recipe(&["train", pa, "--set", "stages.more.steps=6"], &runs);
    recipe(&["train", pa], &runs);
    // b's `more` is left partial, as a crash after its checkpoint of step 4 leaves it.
    recipe(&["train", pb], &runs);
    let more_b = std::fs::read_dir(runs.join("report-b/more")).unwrap().next().unwrap().unwrap().path();
    std::fs::remove_dir_all(more_b.join("final")).unwrap();

    let out_path = dir.path().join("out/report.html");
    let out = recipe(&["report", pa, pb, "--out", out_path.to_str().unwrap()], &runs);
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote"));
    let html = std::fs::read_to_string(&out_path).unwrap();
    for fetch in ["src=", "href=", "<link", "@import", "url("] {
        assert!(!html.contains(fetch), "the page must load nothing, yet has `{fetch}`");
    }

    let data = page_data(&html);
    let changes = &data["recipes"][1]["compared"]["diff"]["changes"];
    assert!(changes.as_array().unwrap().iter().any(|c| c["path"] == "stages.pretrain.optim.lr"), "{changes}");
    let pretrain = &stage(&data, 0, "pretrain")["keys"][0];
    assert_eq!(pretrain["state"], "done");
    let steps = &pretrain["curves"]["steps"];
    assert_eq!(steps["step"].as_array().unwrap().len(), 12);
    let tokens: Vec<f64> = steps["tokens"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
    assert!(tokens.windows(2).all(|w| w[1] > w[0]), "tokens trained grow every step: {tokens:?}");
    let held_out = pretrain["curves"]["eval"]["step"].as_array().unwrap();
    assert_eq!(held_out.iter().map(|s| s.as_u64().unwrap()).collect::<Vec<_>>(), [0, 6, 12]);
    assert_eq!(*tokens.last().unwrap(), 12.0 * 4.0 * 32.0, "steps × batch × seq_len, as `plan` counts");
    // A row holds seq_len + 1 tokens: its inputs and, one further, its last target.
    assert_eq!(pretrain["curves"]["source_tokens"]["moby"].as_u64(), Some(12 * 4 * 33));
    assert_eq!(pretrain["sessions"][0]["device"], "cpu");
    assert_eq!(stage(&data, 0, "pretrain")["plan"]["params"]["total"].as_u64().map(|n| n > 0), Some(true));

    let more_a = &stage(&data, 0, "more")["keys"];
    assert_eq!(more_a.as_array().unwrap().len(), 2, "the current key and the earlier one: {more_a}");
    assert_eq!(more_a[1]["current"], false);
    let earlier: Vec<_> = more_a[1]["changes_to_current"].as_array().unwrap().iter().map(|c| &c["path"]).collect();
    assert_eq!(earlier, ["stages.more.steps"]);
    let more_b = &stage(&data, 1, "more")["keys"][0];
    assert_eq!((more_b["state"].as_str(), more_b["curves"]["last_step"].as_u64()), (Some("partial"), Some(8)));

    render_in_chromium(&out_path, &data);
}

/// Chromium from `RECIPE_CHROMIUM`, else `chromium` on the PATH. CI installs Debian's and sets
/// `RECIPE_REQUIRE_BROWSER`, so that there a missing browser fails instead of skipping.
fn chromium() -> Option<PathBuf> {
    let named = std::env::var_os("RECIPE_CHROMIUM").map(PathBuf::from);
    let found = named.or_else(|| {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("chromium")).find(|p| p.is_file()))
    });
    if found.is_none() {
        assert!(std::env::var_os("RECIPE_REQUIRE_BROWSER").is_none(), "RECIPE_REQUIRE_BROWSER is set but no Chromium");
    }
    found
}

fn headless(browser: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(browser);
    // The closed network refuses Chromium's background connections; keep it from trying.
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

fn render_in_chromium(page: &Path, data: &Value) {
    let Some(browser) = chromium() else {
        eprintln!("skipped: no Chromium to render the report in (set RECIPE_CHROMIUM, or install Debian's `chromium`)");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}#selftest", page.display());
    let out = headless(&browser, profile.path()).arg("--dump-dom").arg(&url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the page wrote to the console: {console:#?}");
    let dom = String::from_utf8_lossy(&out.stdout);
    let attribute = |name: &str| -> String {
        let open = format!("{name}=\"");
        let start = dom.find(&open).unwrap_or_else(|| panic!("no {name} in the rendered page")) + open.len();
        dom[start..start + dom[start..].find('"').unwrap()].to_string()
    };
    assert_eq!(attribute("data-errors"), "");
    assert_eq!(attribute("data-status"), "ok");
    // pretrain: loss, LR, gradient norm, tokens/s; more: the same four.
    assert_eq!(attribute("data-charts"), "8");
    // Hovering the middle of the first chart (the loss of `pretrain`) shows each recipe's
    // training loss, with its raw value, near step 6.
    let tooltip = attribute("data-selftest");
    assert!(tooltip.starts_with("loss (train, and held-out dashed; averaged weights dotted) at step 6"), "{tooltip}");
    for name in ["report-a train: ", "report-b train: ", "report-a held-out: "] {
        assert!(tooltip.contains(name), "{name} in {tooltip}");
    }
    let held_out_at_6 = data["recipes"][0]["stages"][0]["keys"][0]["curves"]["eval"]["loss"][1].as_f64().unwrap();
    let shown: f64 = tooltip.split("report-a held-out: ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((shown - held_out_at_6).abs() < 1e-3 * held_out_at_6, "{shown} shown, {held_out_at_6} in the data");

    // A screenshot for a person to look at, in the test's target folder.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report.png");
    let _ = std::fs::remove_file(&shot);
    let out = headless(&browser, profile.path())
        .args(["--window-size=1300,1500", &format!("--screenshot={}", shot.display())])
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (width, height) =
        (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
    assert_eq!((width, height), (1300, 1500));
    assert!(png.len() > 50_000, "a blank page compresses to almost nothing; this one is {} bytes", png.len());
    eprintln!("screenshot: {}", shot.display());
}
