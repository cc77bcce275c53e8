//! Inference cost: bare tract vs `Agent::infer` on the same model and row
//! (goal: ratio ≤ 1.05), and HTTP vs the library (goal: ≤ 50 µs extra at
//! p50). Criterion measures each path; a final interleaved run prints the
//! ratios.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::Path;
use std::time::{Duration, Instant};

use std::hint::black_box;

use criterion::Criterion;
use tract_onnx::prelude::*;

use drover_agent::store::{InstalledModel, Pointers, Store};
use drover_agent::{Agent, AgentConfig, InferRequest};
use drover_protocol::manifest::{BinnedProfile, ModelManifest, Task};
use drover_protocol::testkit::{self, TestKeys};
use drover_protocol::{DeviceId, FleetId, Sign as _, Timestamp, TrustState};

const ROW: [f32; 4] = [58.3, 1.8, 11.3, 61.0];

fn fixture() -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models/sensor_clf_v1.onnx"),
    )
    .unwrap()
}

/// A manifest with a realistic reference profile: 20 bins per feature.
fn manifest(bytes: &[u8]) -> ModelManifest {
    let mut m = testkit::manifest("sensor", 1, bytes, Timestamp(0));
    if let Task::Classification { labels, .. } = &mut m.task {
        *labels = vec!["fault".into(), "normal".into(), "warning".into()];
    }
    for f in &mut m.reference.features {
        f.bins = BinnedProfile {
            edges: (0..19).map(|i| i as f32 * 5.0).collect(),
            frequencies: vec![0.05; 20],
        };
    }
    m.health_checks.samples.clear();
    m
}

fn bare_plan(bytes: &[u8]) -> Arc<TypedRunnableModel> {
    tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .with_input_fact(0, f32::fact([1, 4]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap()
}

fn bare_run(plan: &Arc<TypedRunnableModel>, row: &[f32]) -> TVec<TValue> {
    let t = Tensor::from_shape(&[1, 4], row).unwrap();
    plan.run(tvec!(t.into())).unwrap()
}

/// An agent whose data directory already holds the model as active (no
/// broker needed: the link keeps retrying in the background).
fn agent(rt: &tokio::runtime::Runtime, dir: &Path, bytes: &[u8]) -> Agent {
    let keys = TestKeys::new(1);
    let device = DeviceId::new("bench").unwrap();
    let m = manifest(bytes);
    {
        let mut store = Store::open(dir).unwrap();
        std::fs::write(store.model_path(&m.artifact.sha256), bytes).unwrap();
        let installed = InstalledModel {
            model: m.model_ref(),
            sha256: m.artifact.sha256,
            size: m.artifact.size,
            manifest: keys.sign_manifest(&m),
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
    rt.block_on(Agent::start(cfg)).unwrap()
}

/// A minimal keep-alive HTTP/1.1 client (what a lean local app would use):
/// measures the server, not reqwest.
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
            buf: Vec::with_capacity(4096),
        }
    }

    fn post(&mut self, content_type: &str, body: &[u8]) -> usize {
        use std::io::{Read as _, Write as _};
        let head = format!(
            "POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req).unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&self.buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if self.buf.len() >= end + 4 + len {
                    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                    return len;
                }
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Per-call µs of `f`, median over batches of 200 calls.
fn batched_us(mut f: impl FnMut(), batches: usize) -> f64 {
    let mut per = Vec::with_capacity(batches);
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..200 {
            f();
        }
        per.push(t.elapsed().as_secs_f64() * 1e6 / 200.0);
    }
    median(per)
}

fn main() {
    let bytes = fixture();
    let plan = bare_plan(&bytes);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(&rt, dir.path(), &bytes);
    let url = format!("http://{}/v1/infer", agent.api_addr().unwrap());
    let http = reqwest::Client::new();
    let body = serde_json::to_vec(&serde_json::json!({"data": ROW})).unwrap();
    let raw: Vec<u8> = ROW.iter().flat_map(|v| v.to_le_bytes()).collect();

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("inference");
        g.bench_function("bare_tract", |b| {
            b.iter(|| black_box(bare_run(&plan, black_box(&ROW))))
        });
        g.bench_function("library", |b| {
            b.iter(|| {
                black_box(
                    agent
                        .infer(InferRequest::new(black_box(ROW).to_vec()))
                        .unwrap(),
                )
            })
        });
        g.bench_function("http_json", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let r = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    black_box(r.bytes().await.unwrap())
                })
            })
        });
        g.bench_function("http_binary", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let r = http
                        .post(&url)
                        .header("content-type", "application/octet-stream")
                        .body(raw.clone())
                        .send()
                        .await
                        .unwrap();
                    black_box(r.bytes().await.unwrap())
                })
            })
        });
        g.finish();
    }
    c.final_summary();

    // Interleaved, so both sides see the same machine load.
    let mut bare = Vec::new();
    let mut lib = Vec::new();
    for _ in 0..30 {
        bare.push(batched_us(|| drop(black_box(bare_run(&plan, &ROW))), 5));
        lib.push(batched_us(
            || {
                drop(black_box(
                    agent.infer(InferRequest::new(ROW.to_vec())).unwrap(),
                ))
            },
            5,
        ));
    }
    let (bare, lib) = (median(bare), median(lib));
    let (mut lib_lat, mut json_lat, mut bin_lat) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..3000 {
            let t = Instant::now();
            black_box(agent.infer(InferRequest::new(ROW.to_vec())).unwrap());
            lib_lat.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            black_box(r.bytes().await.unwrap());
            json_lat.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let r = http
                .post(&url)
                .header("content-type", "application/octet-stream")
                .body(raw.clone())
                .send()
                .await
                .unwrap();
            black_box(r.bytes().await.unwrap());
            bin_lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
    });
    let (lib_p50, json_p50, bin_p50) = (median(lib_lat), median(json_lat), median(bin_lat));
    let mut raw_client = RawClient::connect(agent.api_addr().unwrap());
    let (mut lib2, mut raw_json, mut raw_bin) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5000 {
        let t = Instant::now();
        black_box(agent.infer(InferRequest::new(ROW.to_vec())).unwrap());
        lib2.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        black_box(raw_client.post("application/json", &body));
        raw_json.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        black_box(raw_client.post("application/octet-stream", &raw));
        raw_bin.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (lib2, raw_json, raw_bin) = (median(lib2), median(raw_json), median(raw_bin));
    println!();
    println!("== drover-agent inference summary ==");
    println!("bare tract            {bare:8.2} µs/inference");
    println!("library (Agent::infer){lib:8.2} µs/inference");
    println!("library / bare tract  {:8.3}   (goal <= 1.05)", lib / bare);
    println!("library p50           {lib_p50:8.2} µs");
    println!(
        "HTTP JSON p50         {json_p50:8.2} µs   extra {:6.2} µs (goal <= 50)",
        json_p50 - lib_p50
    );
    println!(
        "HTTP binary p50       {bin_p50:8.2} µs   extra {:6.2} µs (goal <= 50)",
        bin_p50 - lib_p50
    );
    println!("  (the two lines above include reqwest's own client cost)");
    println!("library p50           {lib2:8.2} µs");
    println!(
        "HTTP JSON p50, raw    {raw_json:8.2} µs   extra {:6.2} µs (goal <= 50; keep-alive socket client)",
        raw_json - lib2
    );
    println!(
        "HTTP binary p50, raw  {raw_bin:8.2} µs   extra {:6.2} µs (goal <= 50; keep-alive socket client)",
        raw_bin - lib2
    );
    rt.block_on(agent.shutdown()).unwrap();
}
