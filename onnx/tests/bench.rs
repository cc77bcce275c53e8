//! Drover's p50 latency per conformance case, beside onnxruntime's.
//!
//! `cargo test --release -p drover-onnx --test bench -- --ignored --nocapture`
//! (optionally `DROVER_BENCH_CASES=bench_rf,rf_` to select by prefix). It
//! measures what scripts/bench_onnxruntime.py measures, in the same way:
//! tabular cases at batch 1 (the first fixture row) and batch 64 (the rows
//! repeated), other cases once per recorded run; in-process calls only.
//! Writes target/bench/drover.json and, when target/bench/onnxruntime.json
//! exists, prints onnxruntime's p50 and the ratio beside Drover's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{read_npy, workspace};
use drover_onnx::{LoadOptions, Model, Tensor};
use serde_json::{Value, json};

const BIG_BATCH: usize = 64;

fn rows(t: &Tensor, n: usize) -> Tensor {
    let have = t.shape()[0];
    let picked: Vec<Tensor> = (0..n)
        .map(|i| t.slice(0, i % have, i % have + 1).unwrap())
        .collect();
    Tensor::stack_tensors(0, &picked).unwrap()
}

/// p50, p90 (µs) and the count of timed calls after a warm-up.
fn time_calls(model: &Model, feeds: &[(String, Tensor)]) -> (f64, f64, usize) {
    let run = || model.run(feeds.to_vec()).unwrap();
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(75) {
        run();
    }
    let mut samples = vec![];
    let start = Instant::now();
    while samples.len() < 30
        || (start.elapsed() < Duration::from_millis(300) && samples.len() < 100_000)
    {
        let t0 = Instant::now();
        run();
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.9), samples.len())
}

#[test]
#[ignore = "benchmark: run in release with --ignored"]
fn bench_conformance_cases() {
    let dir = workspace().join("fixtures/conformance");
    let index: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let prefixes: Vec<String> = std::env::var("DROVER_BENCH_CASES")
        .map(|v| v.split(',').map(String::from).collect())
        .unwrap_or_default();
    let ort: HashMap<(String, String), f64> =
        std::fs::read_to_string(workspace().join("target/bench/onnxruntime.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["results"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| {
                Some((
                    (
                        r["case"].as_str()?.to_string(),
                        r["measure"].as_str()?.to_string(),
                    ),
                    r["p50_us"].as_f64()?,
                ))
            })
            .collect();
    let mut results = vec![];
    println!(
        "{:45} {:9} {:>12} {:>12} {:>8}",
        "case", "measure", "drover p50", "ort p50", "ratio"
    );
    for case in &index {
        let name = case["name"].as_str().unwrap();
        if !prefixes.is_empty() && !prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            continue;
        }
        let mut options = LoadOptions::default();
        if let Some(fixed) = case.get("fixed_inputs").and_then(Value::as_object) {
            for (k, v) in fixed {
                options
                    .fix_input(&format!(
                        "{k}={}",
                        v.as_str().map(String::from).unwrap_or(v.to_string())
                    ))
                    .unwrap();
            }
        }
        let bytes = std::fs::read(dir.join(case["model"].as_str().unwrap())).unwrap();
        let model = Model::load(&bytes, &options).unwrap();
        let wanted: Vec<String> = model
            .schema()
            .inputs
            .iter()
            .map(|i| i.name.clone())
            .collect();
        let load = |metas: &Value| -> Vec<(String, Tensor)> {
            metas
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| wanted.iter().any(|w| m["name"] == w.as_str()))
                .map(|m| {
                    (
                        m["name"].as_str().unwrap().to_string(),
                        read_npy(&dir.join(name).join(m["file"].as_str().unwrap())),
                    )
                })
                .collect()
        };
        let tabular = case["source"]
            .as_str()
            .unwrap_or("")
            .starts_with("scikit-learn")
            && case["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["shape"].as_array().map(Vec::len) == Some(2));
        let mut measures = vec![];
        if tabular {
            let base = load(&case["inputs"]);
            for (label, n) in [
                ("batch1".to_string(), 1),
                (format!("batch{BIG_BATCH}"), BIG_BATCH),
            ] {
                let feeds = base
                    .iter()
                    .map(|(k, t)| (k.clone(), rows(t, n)))
                    .collect::<Vec<_>>();
                measures.push((label, Some(n), feeds));
            }
        } else {
            for (r, run) in case["runs"].as_array().unwrap().iter().enumerate() {
                measures.push((format!("run{r}"), None, load(&run["inputs"])));
            }
        }
        for (label, batch, feeds) in measures {
            let (p50, p90, iters) = time_calls(&model, &feeds);
            let ort_p50 = ort.get(&(name.to_string(), label.clone())).copied();
            let ratio = ort_p50
                .map(|o| format!("{:.2}x", p50 / o))
                .unwrap_or_default();
            let ort_text = ort_p50.map(|o| format!("{o:.1}")).unwrap_or_default();
            println!("{name:45} {label:9} {p50:>12.1} {ort_text:>12} {ratio:>8}");
            results.push(json!({
                "case": name, "measure": label, "batch": batch,
                "p50_us": (p50 * 1000.0).round() / 1000.0, "p90_us": (p90 * 1000.0).round() / 1000.0,
                "iters": iters, "onnxruntime_p50_us": ort_p50,
            }));
        }
    }
    let out = workspace().join("target/bench/drover.json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let report = json!({"tool": "onnx/tests/bench.rs", "profile": if cfg!(debug_assertions) { "debug" } else { "release" }, "results": results});
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("wrote {}", out.display());
}
