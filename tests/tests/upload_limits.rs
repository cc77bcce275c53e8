//! Streamed model uploads against a real controller over HTTP (issue #13):
//! the model goes to a file in `DATA_DIR/uploads` while it arrives, never
//! into memory; the per-upload cap holds while streaming (also without
//! `Content-Length`), a controller-wide budget of upload bytes refuses
//! (never queues) what does not fit, a stalled upload is cut off, and a
//! normal streamed push (the CLI's) deploys as before. Every refusal
//! asserts that no version, artifact or upload file was left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser as _;
use drover_agent::{Agent, AgentConfig};
use drover_controller::DeviceEvent;
use drover_controller::cli::{ApiClient, Cli, Ctx, Output, dispatch};
use drover_controller::serve::{RunningController, ServeConfig, start};
use drover_protocol::messages::DeployPhase;
use drover_protocol::{DeviceId, Sha256};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Upper bound for any awaited step (the machine may be loaded).
const STEP: Duration = Duration::from_secs(60);
const KIB: usize = 1024;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
}

fn varint(mut v: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// A valid model of exactly `total` bytes: sensor_clf_v1.onnx followed by
/// an unknown length-delimited field (number 1000), which protobuf readers
/// skip.
fn padded_model(total: usize) -> Vec<u8> {
    let mut m = std::fs::read(fixture("models/sensor_clf_v1.onnx")).unwrap();
    let tag = varint((1000 << 3) | 2);
    for len_len in 1..=5 {
        let pad = total - m.len() - tag.len() - len_len;
        if varint(pad).len() == len_len {
            m.extend_from_slice(&tag);
            m.extend_from_slice(&varint(pad));
            m.resize(total, 0);
            return m;
        }
    }
    unreachable!("no padding fits {total} bytes")
}

/// Caps small enough to cross in a test: 64 KiB per upload, 96 KiB in
/// flight together.
fn small_limits(dir: &Path, idle: Duration) -> ServeConfig {
    let mut cfg = ServeConfig::ephemeral(dir);
    cfg.shutdown_grace = Duration::from_secs(1);
    cfg.max_upload_bytes = 64 * KIB as u64;
    cfg.upload_budget_bytes = 96 * KIB as u64;
    cfg.upload_idle_timeout = idle;
    cfg
}

struct Api {
    running: RunningController,
    dir: tempfile::TempDir,
    url: String,
    admin: String,
    http: reqwest::Client,
}

/// What a refused upload must not change.
#[derive(Debug, PartialEq)]
struct State {
    models: Value,
    artifacts: Vec<String>,
}

impl Api {
    async fn start(cfg: impl FnOnce(&Path) -> ServeConfig) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let running = start(cfg(dir.path())).await.unwrap();
        let admin = running.admin_token().unwrap().to_string();
        let url = running.http_url();
        Api {
            running,
            dir,
            url,
            admin,
            http: reqwest::Client::new(),
        }
    }

    fn files(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path().join(sub))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Upload files in `DATA_DIR/uploads`.
    fn uploads(&self) -> Vec<String> {
        self.files("uploads")
    }

    async fn state(&self) -> State {
        let r = self
            .http
            .get(format!("{}/v1/models", self.url))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        State {
            models: r.json().await.unwrap(),
            artifacts: self.files("artifacts"),
        }
    }

    /// A streamed push with reqwest (it sends `Content-Length`).
    async fn push(&self, query: &str, body: Vec<u8>) -> (u16, Value, Option<String>) {
        let r = self
            .http
            .post(format!("{}/v1/models?{query}", self.url))
            .bearer_auth(&self.admin)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .unwrap();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), r.json().await.unwrap(), retry)
    }

    /// Opens a raw upload: headers sent, no body yet. `len: None` sends the
    /// body chunked (no `Content-Length`).
    async fn raw(&self, query: &str, content_type: &str, len: Option<usize>) -> TcpStream {
        let mut s = TcpStream::connect(self.running.http_addr()).await.unwrap();
        let framing = match len {
            Some(n) => format!("Content-Length: {n}\r\n"),
            None => "Transfer-Encoding: chunked\r\n".to_string(),
        };
        let head = format!(
            "POST /v1/models?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Bearer {}\r\nContent-Type: {content_type}\r\n{framing}\r\n",
            self.admin
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s
    }

    /// Waits until an upload file exists: the upload was admitted (holds
    /// its share of the budget) and is being streamed.
    async fn wait_upload_file(&self) {
        let deadline = Instant::now() + STEP;
        while self.uploads().is_empty() {
            assert!(Instant::now() < deadline, "the upload never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Reads the response until the server closes; returns status and text.
async fn response(mut s: TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    tokio::time::timeout(STEP, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the server kept the connection open");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_streamed_upload_is_refused_and_leaves_nothing() {
    let api = Api::start(|d| small_limits(d, Duration::from_secs(10))).await;
    let before = api.state().await;
    // Declared too large: refused before a byte of the body is read.
    let (status, body, _) = api.push("name=big", vec![7u8; 65 * KIB]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "too_large");
    // Unsized (chunked): refused as soon as the stream crosses 64 KiB.
    let mut s = api.raw("name=big", "application/octet-stream", None).await;
    let chunk = padded_model(KIB);
    for _ in 0..65 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if s.write_all(&frame).await.is_err() {
            break;
        }
    }
    let (status, text) = response(s).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("too_large"), "{text}");
    // Reference bytes declared beyond the cap: refused before reading.
    let (status, body, _) = api
        .push("name=big&reference_csv_bytes=70000", padded_model(KIB))
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(api.uploads().is_empty(), "{:?}", api.uploads());
    assert_eq!(api.state().await, before, "state changed");
    api.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_pushes_are_capped_far_below_streamed_ones() {
    // Default limits: 512 MiB per streamed upload, 16 MiB for JSON.
    let api = Api::start(|d| {
        let mut c = ServeConfig::ephemeral(d);
        c.shutdown_grace = Duration::from_secs(1);
        c
    })
    .await;
    let before = api.state().await;
    let len = 16 * KIB * KIB + 1;
    let s = api.raw("", "application/json", Some(len)).await;
    let (status, text) = response(s).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("too_large"), "{text}");
    // The same size streamed is admitted: its file appears, and goes away
    // when the client gives up.
    let s = api
        .raw("name=big", "application/octet-stream", Some(len))
        .await;
    api.wait_upload_file().await;
    drop(s);
    let deadline = Instant::now() + STEP;
    while !api.uploads().is_empty() {
        assert!(Instant::now() < deadline, "{:?} left behind", api.uploads());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(api.state().await, before, "state changed");
    api.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_budget_are_refused_while_others_complete() {
    let api = Api::start(|d| small_limits(d, Duration::from_secs(30))).await;
    let before = api.state().await;
    // A holds 60 KiB of the 96 KiB budget: half its body sent.
    let a_model = padded_model(60 * KIB);
    let mut a = api
        .raw(
            "name=big-a",
            "application/octet-stream",
            Some(a_model.len()),
        )
        .await;
    a.write_all(&a_model[..30 * KIB]).await.unwrap();
    api.wait_upload_file().await;
    // B needs 50 KiB: refused at once with Retry-After, not queued.
    let b_model = padded_model(50 * KIB);
    let (status, body, retry) = api.push("name=big-b", b_model.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "uploads_busy");
    assert!(retry.is_some(), "no Retry-After");
    assert_eq!(api.state().await, before, "state changed");
    // C fits in what is left and completes while A is still uploading.
    let c_model = std::fs::read(fixture("models/sensor_clf_v1.onnx")).unwrap();
    let (status, body, _) = api.push("name=sensor", c_model).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["model"], "sensor@1");
    // A finishes and is registered.
    a.write_all(&a_model[30 * KIB..]).await.unwrap();
    let (status, text) = response(a).await;
    assert_eq!(status, 201, "{text}");
    assert!(text.contains("big-a@1"), "{text}");
    // Its budget is free again: B now goes through.
    let (status, body, _) = api.push("name=big-b", b_model.clone()).await;
    assert_eq!(status, 201, "{body}");
    let want = Sha256::of(&b_model).to_hex();
    assert_eq!(body["manifest"]["sha256"], want.as_str(), "{body}");
    assert!(api.uploads().is_empty(), "{:?}", api.uploads());
    api.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_times_out_leaves_no_file_and_frees_its_budget() {
    let api = Api::start(|d| small_limits(d, Duration::from_millis(500))).await;
    let before = api.state().await;
    let model = padded_model(60 * KIB);
    let mut s = api
        .raw("name=slow", "application/octet-stream", Some(model.len()))
        .await;
    s.write_all(&model[..10 * KIB]).await.unwrap();
    api.wait_upload_file().await;
    let started = Instant::now();
    // Then nothing: the server answers 408 and closes.
    let (status, text) = response(s).await;
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("upload_stalled"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(api.uploads().is_empty(), "{:?}", api.uploads());
    assert_eq!(api.state().await, before, "state changed");
    // Its 60 KiB are free again: a 50 KiB upload completes.
    let (status, body, _) = api.push("name=next", padded_model(50 * KIB)).await;
    assert_eq!(status, 201, "{body}");
    api.running.shutdown().await;
}

async fn wait_event(
    rx: &mut tokio::sync::broadcast::Receiver<DeviceEvent>,
    mut pick: impl FnMut(&DeviceEvent) -> bool,
) -> DeviceEvent {
    tokio::time::timeout(STEP, async {
        loop {
            match rx.recv().await {
                Ok(e) if pick(&e) => return e,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream closed: {e}"),
            }
        }
    })
    .await
    .expect("event did not arrive in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_push_from_the_cli_deploys_as_before() {
    let api = Api::start(|d| {
        let mut c = ServeConfig::ephemeral(d.join("controller"));
        c.shutdown_grace = Duration::from_secs(1);
        c
    })
    .await;
    let model_path = fixture("models/sensor_clf_v1.onnx");
    let cli = Cli::try_parse_from([
        "drover".as_ref(),
        "model".as_ref(),
        "push".as_ref(),
        model_path.as_os_str(),
        "--name".as_ref(),
        "sensor".as_ref(),
        "--reference".as_ref(),
        fixture("data/sensor_reference.csv").as_os_str(),
        "--alias".as_ref(),
        "production".as_ref(),
    ])
    .unwrap();
    let ctx = Ctx {
        client: ApiClient::with_auth(&api.url, Some(api.admin.clone()), None).unwrap(),
        output: Output::Json,
        ca: None,
    };
    dispatch(cli.command, &ctx).await.unwrap();
    // Registered as a JSON push would have: profile from the CSV, labels
    // from its label column, the exact bytes as the artifact.
    let show: Value = ctx
        .client
        .get("show", "/v1/models/sensor/production", &[])
        .await
        .unwrap();
    let onnx = std::fs::read(&model_path).unwrap();
    assert_eq!(show["version"], 1);
    assert_eq!(show["sha256"], Sha256::of(&onnx).to_hex().as_str());
    assert_eq!(
        show["task"]["Classification"]["labels"],
        json!(["fault", "normal", "warning"])
    );
    assert!(
        show["eval_metrics"]["accuracy"].as_f64().unwrap() > 0.5,
        "{show}"
    );
    let artifact = ctx
        .client
        .get_bytes("artifact", "/v1/models/sensor/1/artifact")
        .await
        .unwrap();
    assert_eq!(artifact, onnx);
    assert!(
        api.files("controller/uploads").is_empty(),
        "upload file left"
    );

    // Deploy it to a real agent.
    let c = api.running.handle();
    let device = DeviceId::new("dev-1").unwrap();
    let bundle = c
        .register_device(&device, Default::default())
        .await
        .unwrap();
    let mut agent_cfg = AgentConfig::from_toml(&bundle.agent_toml).unwrap();
    agent_cfg.data_dir = api.dir.path().join("agent");
    agent_cfg.api = None;
    let mut events = c.subscribe();
    let agent = Agent::start(agent_cfg).await.unwrap();
    wait_event(
        &mut events,
        |e| matches!(e, DeviceEvent::Hello { device: d, .. } if d == &device),
    )
    .await;
    let d: Value = ctx
        .client
        .post(
            "deploy",
            "/v1/deploy",
            &json!({"model": "sensor@production", "device": "dev-1"}),
        )
        .await
        .unwrap();
    let seq = d["seq"].as_u64().unwrap();
    let e = wait_event(&mut events, |e| {
        matches!(e, DeviceEvent::DeployStatus { status, .. }
            if status.seq == seq
                && matches!(status.phase, DeployPhase::Active | DeployPhase::Failed(_) | DeployPhase::RolledBack { .. }))
    })
    .await;
    let DeviceEvent::DeployStatus { status, .. } = e else {
        unreachable!()
    };
    assert_eq!(status.phase, DeployPhase::Active, "{status:?}");
    assert_eq!(
        agent.active_model().map(|m| m.to_string()),
        Some("sensor@1".to_string())
    );
    agent.shutdown().await.unwrap();
    api.running.shutdown().await;
}
