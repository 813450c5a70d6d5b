//! Checks across stages: `after`, `init` and `teacher` form no cycle, a stage that continues
//! another keeps its shape (a grown one only deepens), teachers and students share a vocabulary, and PEFT has weights to adapt.

use std::collections::BTreeMap;

use crate::decode::Cx;
use crate::diag::Diagnostic;
use crate::merge::MergeInput;
use crate::model::{SHAPE_FIELDS, model_field_path};
use crate::stage::Stage;
use crate::vocab::StageKind;

/// The stages each stage needs (`after`, `init.from`, `teacher`, a merge's inputs) must form no
/// cycle; a cycle is named in full.
pub(crate) fn check_stage_graph(cx: &mut Cx, stages: &[Stage]) {
    let deps =
        |s: &Stage| -> Vec<String> { s.upstream().into_iter().filter(|d| *d != s.name).map(str::to_string).collect() };

    // 0 = unvisited, 1 = on the current path, 2 = done
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    let mut reported = false;
    fn visit<'a>(
        name: &'a str,
        stages: &'a [Stage],
        deps: &dyn Fn(&Stage) -> Vec<String>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
        found: &mut Option<Vec<String>>,
    ) {
        if found.is_some() {
            return;
        }
        match state.get(name) {
            Some(2) => return,
            Some(1) => {
                let start = path.iter().position(|p| *p == name).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(name.to_string());
                *found = Some(cycle);
                return;
            }
            _ => {}
        }
        let Some(stage) = stages.iter().find(|s| s.name == name) else { return };
        state.insert(name, 1);
        path.push(name);
        for d in deps(stage) {
            if let Some(target) = stages.iter().find(|s| s.name == d) {
                visit(&target.name, stages, deps, state, path, found);
            }
        }
        path.pop();
        state.insert(name, 2);
    }
    for s in stages {
        let mut found = None;
        visit(&s.name, stages, &deps, &mut state, &mut Vec::new(), &mut found);
        if let (Some(cycle), false) = (found, reported) {
            reported = true;
            let first = &cycle[0];
            let origin = cx
                .origins
                .get(&format!("stages.{first}.after"))
                .or_else(|| cx.origins.get(&format!("stages.{first}.init.from")))
                .or_else(|| cx.origins.get(&format!("stages.{first}.teacher")))
                .cloned()
                .unwrap_or_default();
            cx.diags.push(
                Diagnostic::new(&origin, format!("the stages form a cycle: {}", cycle.join(" → ")))
                    .label("`after`, `init.from` and `teacher` must point to earlier stages"),
            );
        }
    }
}

/// A stage that starts from another's weights must share its shape, and PEFT needs weights to
/// adapt.
pub(crate) fn check_starting_weights(cx: &mut Cx, stages: &[Stage]) {
    for s in stages {
        if let Some(parent) = s.start_stage().and_then(|a| stages.iter().find(|p| p.name == a)) {
            let mine = serde_json::to_value(&s.model).expect("plain struct");
            let mut theirs = serde_json::to_value(&parent.model).expect("plain struct");
            let (how, label) = match &s.init {
                Some(init) => {
                    theirs["n_layers"] = (parent.model.n_layers * init.factor).into();
                    ("grows", format!("stacking {}×, a stage keeps the rest of the architecture", init.factor))
                }
                None => ("starts from", "a stage that continues another must keep its architecture".to_string()),
            };
            for field in SHAPE_FIELDS {
                if mine[field] != theirs[field] {
                    let path = model_field_path(&s.name, &s.model_overrides, field);
                    let origin = cx
                        .origins
                        .get(&path)
                        .or_else(|| cx.origins.get(&format!("stages.{}.after", s.name)))
                        .or_else(|| cx.origins.get(&format!("stages.{}.init", s.name)))
                        .cloned()
                        .unwrap_or_default();
                    cx.diags.push(
                        Diagnostic::new(
                            &origin,
                            format!(
                                "stage `{}` {how} `{}`'s weights but its {field} is {} where {}",
                                s.name,
                                parent.name,
                                mine[field],
                                match s.init {
                                    Some(_) if *field == "n_layers" => format!("{} is expected", theirs[field]),
                                    _ => format!("`{}`'s is {}", parent.name, theirs[field]),
                                }
                            ),
                        )
                        .label(label.clone()),
                    );
                }
            }
        }
        let teachers =
            s.teacher.iter().filter_map(|t| stages.iter().find(|p| &p.name == t)).map(|p| (&p.name, &p.model));
        let imported = s.teacher_checkpoints.iter().map(|t| (&t.written, &t.model));
        for (teacher, model) in teachers.chain(imported) {
            if model.vocab_size != s.model.vocab_size {
                let origin = cx.origins.get(&format!("stages.{}.teacher", s.name)).cloned().unwrap_or_default();
                cx.diags.push(
                    Diagnostic::new(
                        &origin,
                        format!(
                            "teacher `{teacher}` has {} logits per token but student `{}` has {}",
                            model.vocab_size, s.name, s.model.vocab_size
                        ),
                    )
                    .label("distillation compares their distributions token by token")
                    .help("give the student the teacher's `vocab_size`"),
                );
            }
        }
        if s.kind == StageKind::Dpo && s.start_stage().is_none() && s.model.from.is_none() {
            let origin = cx.origins.get(&format!("stages.{}.kind", s.name)).cloned().unwrap_or_default();
            cx.diags.push(
                Diagnostic::new(&origin, format!("dpo stage `{}` starts from random weights", s.name))
                    .label("preference tuning adjusts a trained model (DPO's reference is that model as it starts)")
                    .help("set `after = \"STAGE\"` (an SFT stage, usually) or `model.from = \"path\"`"),
            );
        }
        if s.peft.is_some() && s.start_stage().is_none() && s.model.from.is_none() {
            let origin = cx.origins.get(&format!("stages.{}.peft", s.name)).cloned().unwrap_or_default();
            cx.diags.push(
                Diagnostic::new(
                    &origin,
                    format!("stage `{}` adapts a model with PEFT but starts from random weights", s.name),
                )
                .label("PEFT freezes the base weights, so they must come from somewhere")
                .help("set `after = \"STAGE\"` or `model.from = \"path\"`"),
            );
        }
    }
}

/// A merge's inputs must share one architecture (the first input's, which the merge takes);
/// a mismatch names both.
pub(crate) fn check_merges(cx: &mut Cx, stages: &[Stage]) {
    for s in stages {
        let Some(merge) = &s.merge else { continue };
        let Some(first) = merge.inputs.first() else { continue };
        for input in merge.all_inputs() {
            let model = match input {
                MergeInput::Stage(name) => match stages.iter().find(|p| &p.name == name) {
                    Some(p) => &p.model,
                    None => continue,
                },
                MergeInput::Checkpoint(import) => &import.model,
            };
            let (mine, theirs) =
                (serde_json::to_value(&s.model).expect("plain"), serde_json::to_value(model).expect("plain"));
            let Some(field) = SHAPE_FIELDS.iter().find(|f| mine[**f] != theirs[**f]) else { continue };
            let key = if merge.base.as_ref() == Some(input) { "base" } else { "inputs" };
            let origin = cx.origins.get(&format!("stages.{}.{key}", s.name)).cloned().unwrap_or_default();
            cx.diags.push(
                Diagnostic::new(
                    &origin,
                    format!(
                        "merge `{}`: `{}` has {field} = {} but `{}` has {field} = {}",
                        s.name,
                        input.written(),
                        theirs[*field],
                        first.written(),
                        mine[*field]
                    ),
                )
                .label("a merge averages weights tensor by tensor, so its inputs need one architecture"),
            );
        }
    }
}
