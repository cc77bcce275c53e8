//! Drover's latency on the conformance models, in-process (`Agent::infer`)
//! and over the agent's HTTP API (a keep-alive socket client, `.npz` and
//! JSON bodies), beside onnxruntime's single-thread numbers from the same
//! run of `scripts/bench_onnxruntime.py --drover` (which runs this bench).
//!
//! `cargo bench -p drover-agent --bench models -- [CASE_PREFIX...]`
//!
//! Measures what scripts/bench_onnxruntime.py measures: tabular cases at
//! batch 1 (the first fixture row) and batch 64 (the rows repeated), other
//! cases once per recorded run. Writes target/bench/drover_agent.json and
//! prints a table with onnxruntime's p50 when target/bench/onnxruntime.json
//! exists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drover_agent::infer::{InputValues, NamedInput};
use drover_agent::store::{InstalledModel, Pointers, Store};
use drover_agent::{Agent, AgentConfig, InferRequest};
use drover_onnx::npy::{self, NpyArray, NpyData};
use drover_onnx::{Dim, ElementType, LoadOptions, Model, Tensor};
use drover_protocol::manifest::{DType, LoadSpec, ModelManifest, Task, TensorSpec};
use drover_protocol::testkit::{self, TestKeys};
use drover_protocol::{DeviceId, FleetId, Sign as _, Timestamp, TrustState};
use serde_json::{Value, json};

const BIG_BATCH: usize = 64;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn dtype(e: ElementType) -> DType {
    match e {
        ElementType::F64 => DType::F64,
        ElementType::I64 => DType::I64,
        ElementType::I32 => DType::I32,
        ElementType::Bool => DType::Bool,
        ElementType::String => DType::String,
        _ => DType::F32,
    }
}

fn spec(s: &drover_onnx::TensorSpec) -> TensorSpec {
    TensorSpec {
        name: s.name.clone(),
        dtype: dtype(s.element),
        shape: s
            .shape
            .iter()
            .flatten()
            .map(|d| match d {
                Dim::Fixed(n) => Some(*n as u64),
                Dim::Symbol(_) => None,
            })
            .collect(),
    }
}

/// A manifest that loads `bytes` as a regressor on its first float output
/// (the task only shapes telemetry, not the cost of a run).
fn manifest(bytes: &[u8], model: &Model, fixed: &[String]) -> ModelManifest {
    let mut m = testkit::manifest("bench", 1, bytes, Timestamp(0));
    let schema = model.schema();
    m.inputs = schema.inputs.iter().map(spec).collect();
    m.outputs = schema.outputs.iter().map(|o| spec(&o.spec)).collect();
    let primary = schema
        .outputs
        .iter()
        .find(|o| matches!(o.spec.element, ElementType::F32 | ElementType::F64))
        .unwrap_or(&schema.outputs[0]);
    m.task = Task::Regression {
        output: primary.spec.name.clone(),
    };
    m.reference = Default::default();
    m.health_checks.samples.clear();
    m.load = LoadSpec {
        fix_inputs: fixed.to_vec(),
        input_shapes: vec![],
    };
    m
}

/// An agent whose data directory already holds the model as active (no
/// broker needed: the link keeps retrying in the background).
fn agent(rt: &tokio::runtime::Runtime, dir: &Path, bytes: &[u8], m: &ModelManifest) -> Agent {
    let keys = TestKeys::new(1);
    let device = DeviceId::new("bench").unwrap();
    {
        let mut store = Store::open(dir).unwrap();
        std::fs::write(store.model_path(&m.artifact.sha256), bytes).unwrap();
        let installed = InstalledModel {
            model: m.model_ref(),
            sha256: m.artifact.sha256,
            size: m.artifact.size,
            manifest: keys.sign_manifest(m),
        };
        let pointers = Pointers {
            active: Some(m.model_ref()),
            ..Pointers::default()
        };
        let trust = TrustState::new(keys.root.public_key(), device.clone());
        store
            .commit_install(&installed, &pointers, &trust, None)
            .unwrap();
    }
    let mut cfg = AgentConfig::new(
        device,
        FleetId::new("bench").unwrap(),
        "mqtt://127.0.0.1:1",
        keys.root.public_key(),
        dir,
    );
    cfg.api = Some("127.0.0.1:0".parse().unwrap());
    cfg.reconnect_min_ms = 10_000;
    cfg.reconnect_max_ms = 30_000;
    cfg.telemetry_window_ms = 3_600_000;
    rt.block_on(Agent::start(cfg)).unwrap()
}

/// A minimal keep-alive HTTP/1.1 client: measures the server, not a client library.
struct RawClient {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    fn connect(addr: std::net::SocketAddr) -> RawClient {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buf: Vec::with_capacity(1 << 16),
        }
    }

    fn post(&mut self, content_type: &str, body: &[u8]) {
        use std::io::{Read as _, Write as _};
        let head = format!(
            "POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req).unwrap();
        self.buf.clear();
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let text = String::from_utf8_lossy(&self.buf[..end]);
            let len: usize = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            if self.buf.len() >= end + 4 + len {
                assert!(
                    text.starts_with("HTTP/1.1 200"),
                    "{text} {}",
                    String::from_utf8_lossy(&self.buf[end..])
                );
                return;
            }
        }
    }
}

/// p50 µs of `f` after a warm-up.
fn p50(mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(75) {
        f();
    }
    let mut samples = vec![];
    let start = Instant::now();
    while samples.len() < 30
        || (start.elapsed() < Duration::from_millis(300) && samples.len() < 100_000)
    {
        let t0 = Instant::now();
        f();
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn rows(a: &NpyArray, n: usize) -> NpyArray {
    let have = a.shape[0].max(1);
    let per = a.data.len() / have;
    let pick = |i: usize| (i % have) * per..(i % have + 1) * per;
    let data = match &a.data {
        NpyData::F32(v) => NpyData::F32((0..n).flat_map(|i| v[pick(i)].to_vec()).collect()),
        NpyData::F64(v) => NpyData::F64((0..n).flat_map(|i| v[pick(i)].to_vec()).collect()),
        NpyData::I64(v) => NpyData::I64((0..n).flat_map(|i| v[pick(i)].to_vec()).collect()),
        NpyData::Bool(v) => NpyData::Bool((0..n).flat_map(|i| v[pick(i)].to_vec()).collect()),
        NpyData::String(v) => NpyData::String((0..n).flat_map(|i| v[pick(i)].to_vec()).collect()),
    };
    let mut shape = a.shape.clone();
    shape[0] = n;
    NpyArray { shape, data }
}

fn named(feeds: &[(String, NpyArray)]) -> Vec<NamedInput> {
    feeds
        .iter()
        .map(|(n, a)| NamedInput {
            name: n.clone(),
            shape: Some(a.shape.clone()),
            values: match &a.data {
                NpyData::F32(v) => InputValues::F32(v.clone()),
                NpyData::F64(v) => InputValues::F64(v.clone()),
                NpyData::I64(v) => InputValues::I64(v.clone()),
                NpyData::Bool(v) => InputValues::Bool(v.clone()),
                NpyData::String(v) => InputValues::String(v.clone()),
            },
        })
        .collect()
}

fn json_body(feeds: &[(String, NpyArray)]) -> Vec<u8> {
    let mut inputs = serde_json::Map::new();
    for (n, a) in feeds {
        let data = match &a.data {
            NpyData::F32(v) => json!(v),
            NpyData::F64(v) => json!(v),
            NpyData::I64(v) => json!(v),
            NpyData::Bool(v) => json!(v),
            NpyData::String(v) => json!(v),
        };
        inputs.insert(n.clone(), json!({"shape": a.shape, "data": data}));
    }
    serde_json::to_vec(&json!({ "inputs": inputs })).unwrap()
}

fn main() {
    let prefixes: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let dir = root().join("fixtures/conformance");
    let index: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let ort: HashMap<(String, String), f64> =
        std::fs::read_to_string(root().join("target/bench/onnxruntime.json"))
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
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut results = vec![];
    println!(
        "| case | measure | Drover in-process p50 µs | Drover HTTP .npz p50 µs | Drover HTTP JSON p50 µs | onnxruntime p50 µs | in-process / ort |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for case in &index {
        let name = case["name"].as_str().unwrap();
        if !prefixes.is_empty() && !prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            continue;
        }
        if name == "label_encoder_strings" {
            continue; // refused at push (no float output): nothing to serve
        }
        let fixed: Vec<String> = case["fixed_inputs"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| format!("{k}={v}")).collect())
            .unwrap_or_default();
        let bytes = std::fs::read(dir.join(case["model"].as_str().unwrap())).unwrap();
        let mut options = LoadOptions::default();
        for f in &fixed {
            options.fix_input(f).unwrap();
        }
        let model = Model::load(&bytes, &options).unwrap();
        let wanted: Vec<String> = model
            .schema()
            .inputs
            .iter()
            .map(|i| i.name.clone())
            .collect();
        let m = manifest(&bytes, &model, &fixed);
        let tmp = tempfile::tempdir().unwrap();
        let agent = agent(&rt, tmp.path(), &bytes, &m);
        let addr = agent.api_addr().unwrap();
        let load = |metas: &Value| -> Vec<(String, NpyArray)> {
            metas
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| wanted.iter().any(|w| m["name"] == w.as_str()))
                .map(|m| {
                    let p = dir.join(name).join(m["file"].as_str().unwrap());
                    let a = npy::read_npy(&std::fs::read(p).unwrap()).unwrap();
                    (m["name"].as_str().unwrap().to_string(), a)
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
                let feeds: Vec<_> = base.iter().map(|(k, a)| (k.clone(), rows(a, n))).collect();
                measures.push((label, feeds));
            }
        } else {
            for (r, run) in case["runs"].as_array().unwrap().iter().enumerate() {
                measures.push((format!("run{r}"), load(&run["inputs"])));
            }
        }
        for (label, feeds) in measures {
            let req = InferRequest::named(named(&feeds));
            let library = p50(|| {
                agent.infer(req.clone()).unwrap();
            });
            let tensors: Vec<(String, Tensor)> = feeds
                .iter()
                .map(|(n, a)| (n.clone(), a.to_tensor().unwrap()))
                .collect();
            let npz = npy::write_npz(tensors.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
            // A fresh connection per series: the server closes keep-alive
            // connections idle past its header-read timeout (a slow series).
            let mut http = RawClient::connect(addr);
            let http_npz = p50(|| http.post("application/x-npz", &npz));
            let body = json_body(&feeds);
            let mut http = RawClient::connect(addr);
            let http_json = p50(|| http.post("application/json", &body));
            let ort_p50 = ort.get(&(name.to_string(), label.clone())).copied();
            println!(
                "| {name} | {label} | {library:.1} | {http_npz:.1} | {http_json:.1} | {} | {} |",
                ort_p50.map(|o| format!("{o:.1}")).unwrap_or_default(),
                ort_p50
                    .map(|o| format!("{:.2}x", library / o))
                    .unwrap_or_default()
            );
            results.push(json!({
                "case": name, "measure": label,
                "library_p50_us": library, "http_npz_p50_us": http_npz, "http_json_p50_us": http_json,
                "onnxruntime_p50_us": ort_p50,
            }));
        }
        rt.block_on(agent.shutdown()).unwrap();
    }
    let out = root().join("target/bench/drover_agent.json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(
        &out,
        serde_json::to_string_pretty(
            &json!({"tool": "agent/benches/models.rs", "results": results}),
        )
        .unwrap(),
    )
    .unwrap();
    println!("wrote {}", out.display());
}
