//! The conformance matrix: every case of fixtures/conformance/index.json is
//! loaded, run on its inputs and every output compared with onnxruntime's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::{compare, read_npy, workspace};
use drover_onnx::{ClassLabels, LoadOptions, Model, OutputKind, Tensor};
use serde_json::Value;

/// Runs one case; returns the differences found.
fn run_case(dir: &std::path::Path, case: &Value) -> Result<(), String> {
    let name = case["name"].as_str().ok_or("case without name")?;
    let model_file = case["model"]
        .as_str()
        .map(String::from)
        .unwrap_or(format!("{name}/model.onnx"));
    let bytes = std::fs::read(dir.join(&model_file)).map_err(|e| format!("{model_file}: {e}"))?;
    let mut options = LoadOptions::default();
    if let Some(fixed) = case.get("fixed_inputs").and_then(Value::as_object) {
        for (k, v) in fixed {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string().trim_matches(['[', ']']).to_string(),
            };
            options
                .fix_input(&format!("{k}={text}"))
                .map_err(|e| e.to_string())?;
        }
    }
    let model = Model::load(&bytes, &options).map_err(|e| format!("load: {e}"))?;
    if let Some(labels) = case.get("class_labels").and_then(Value::as_array) {
        let want: Vec<String> = labels
            .iter()
            .map(|l| l.as_str().map(String::from).unwrap_or(l.to_string()))
            .collect();
        let got = model.class_labels().map(ClassLabels::to_strings);
        if got.as_ref() != Some(&want) {
            return Err(format!("class labels {got:?}, expected {want:?}"));
        }
    }
    for out in &model.schema().outputs {
        if let OutputKind::ZipMap(labels) = &out.kind
            && model.class_labels() != Some(labels)
        {
            return Err(format!("zipmap labels {labels:?} differ from the model's"));
        }
    }
    let feedback: HashMap<String, String> = case
        .get("feedback")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let case_dir = dir.join(name);
    let runs = case["runs"].as_array().ok_or("no runs")?;
    if runs.is_empty() {
        return Err("no runs".into());
    }
    let mut previous: HashMap<String, Tensor> = HashMap::new();
    for (r, run) in runs.iter().enumerate() {
        let mut inputs = vec![];
        for spec in &model.schema().inputs {
            // A stream passes our own previous output back (feedback: input -> output).
            let fed = feedback.get(&spec.name).filter(|_| r > 0);
            let given = run["inputs"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["name"] == spec.name.as_str()));
            let t = match (fed, given) {
                (Some(out), _) => previous
                    .get(out)
                    .cloned()
                    .ok_or(format!("run {r}: no previous {out}"))?,
                (None, Some(i)) => {
                    read_npy(&case_dir.join(i["file"].as_str().ok_or("input without file")?))
                }
                (None, None) => return Err(format!("run {r}: no value for input {}", spec.name)),
            };
            inputs.push((spec.name.clone(), t));
        }
        let outputs = model.run(inputs).map_err(|e| format!("run {r}: {e}"))?;
        let by_name: HashMap<String, Tensor> = outputs.into_iter().collect();
        let expected = run["outputs"].as_array().ok_or("no outputs")?;
        for o in expected {
            let oname = o["name"].as_str().ok_or("output without name")?;
            let got = by_name
                .get(oname)
                .ok_or(format!("run {r}: no output {oname}"))?;
            let want = read_npy(&case_dir.join(o["file"].as_str().ok_or("output without file")?));
            compare(&format!("run {r} {oname}"), got, &want)?;
        }
        previous = by_name;
    }
    Ok(())
}

#[test]
fn conformance_matrix_matches_onnxruntime() {
    let dir = workspace().join("fixtures/conformance");
    let index = std::fs::read_to_string(dir.join("index.json")).unwrap_or_else(|e| {
        panic!(
            "{}/index.json is missing ({e}): the matrix must be committed",
            dir.display()
        )
    });
    let cases: Vec<Value> = serde_json::from_str(&index).expect("index.json parses");
    assert!(!cases.is_empty(), "index.json lists no case");
    let only = std::env::var("DROVER_CONFORMANCE_CASE").ok();
    let mut failures = vec![];
    let mut passed = 0;
    for case in &cases {
        let name = case["name"].as_str().unwrap_or("?");
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        match run_case(&dir, case) {
            Ok(()) => passed += 1,
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    eprintln!("conformance: {passed} cases pass, {} fail", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from onnxruntime:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
