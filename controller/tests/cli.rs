//! The `drover` binary against an in-process controller: the registry,
//! device and broker flows, deploys to a scripted device, bad input that
//! changes nothing, taken ports, and a restart on the same data dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;

use drover_protocol::messages::{
    ChunkRequest, CommandAck, DeployPhase, DeployStatus, Down, Hello, Reason, Up,
};
use drover_protocol::testkit::realistic_window;
use drover_protocol::{Action, ReasonCode, Sha256};
use support::{Peer, TestController, drover, external_broker, fixtures, stderr, stdout};

fn path(rel: &str) -> String {
    fixtures().join(rel).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_device_and_broker_flows() {
    let t = TestController::start().await;
    let url = t.url();
    let c = t.running.handle();

    let o = drover(&url, &["keys", "init"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("already exist"), "{}", stdout(&o));
    assert!(stdout(&o).contains(&c.keys_info().root_public_key));

    let o = drover(
        &url,
        &[
            "model",
            "push",
            &path("models/sensor_clf_v1.onnx"),
            "--name",
            "sensor",
            "--reference",
            &path("data/sensor_reference.csv"),
            "--latency-budget-ms",
            "50",
            "--alias",
            "candidate",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("pushed sensor@1 "), "{}", stdout(&o));
    let o = drover(
        &url,
        &[
            "--output",
            "json",
            "model",
            "push",
            &path("models/sensor_clf_v2.onnx"),
            "--name",
            "sensor",
            "--parent",
            "1",
            "--labels",
            "fault,normal,warning",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model"], "sensor@2");
    assert_eq!(v["manifest"]["parent"], 1);

    let o = drover(&url, &["--output", "json", "model", "list"]).await;
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["aliases"][0], "candidate");
    let o = drover(&url, &["model", "list"]).await;
    assert!(
        stdout(&o).lines().nth(1).unwrap().starts_with("sensor  1"),
        "{}",
        stdout(&o)
    );

    let o = drover(&url, &["--output", "json", "model", "show", "sensor@1"]).await;
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["reference"]["features"].as_array().unwrap().len(), 4);
    assert_eq!(m["latency_budget_us"], 50_000);
    assert_eq!(m["inputs"][0]["name"], "input");
    assert!(m["eval_metrics"]["accuracy"].as_f64().unwrap() > 0.7);
    let o = drover(&url, &["model", "show", "sensor@1"]).await;
    assert!(
        stdout(&o).contains("classification (fault, normal, warning)"),
        "{}",
        stdout(&o)
    );

    let o = drover(&url, &["model", "alias", "sensor@2", "production"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = drover(
        &url,
        &["--output", "json", "model", "show", "sensor@production"],
    )
    .await;
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["version"], 2);
    drover(&url, &["model", "alias", "sensor@1", "production"]).await;
    let o = drover(
        &url,
        &["--output", "json", "model", "show", "sensor@production"],
    )
    .await;
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["version"], 1, "aliases move");

    let out = tempfile::tempdir().unwrap();
    let bundle_dir = out.path().join("dev-1");
    let o = drover(
        &url,
        &[
            "device",
            "add",
            "dev-1",
            "--labels",
            "site=a,region=eu",
            "--out",
            bundle_dir.to_str().unwrap(),
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let toml_text = std::fs::read_to_string(bundle_dir.join("agent.toml")).unwrap();
    let cfg: toml::Value = toml::from_str(&toml_text).unwrap();
    assert_eq!(cfg["device_id"].as_str(), Some("dev-1"));
    assert_eq!(cfg["fleet"].as_str(), Some(t.fleet.as_str()));
    assert_eq!(cfg["broker"].as_str(), Some(t.running.mqtt_addr()));
    assert_eq!(
        cfg["root_key"].as_str().unwrap(),
        c.keys_info().root_public_key
    );
    assert_eq!(cfg["labels"]["site"].as_str(), Some("a"));
    assert!(cfg["password"].as_str().unwrap().len() >= 20);
    // The device key: its private half only in the bundle, the public half
    // registered with the controller.
    let seed = cfg["device_key"].as_str().unwrap();
    let mut raw = [0u8; 32];
    hex::decode_to_slice(seed, &mut raw).unwrap();
    use drover_protocol::Sign as _;
    assert_eq!(
        c.device_key(&drover_protocol::DeviceId::new("dev-1").unwrap()),
        Some(drover_protocol::Ed25519Signer::from_seed(raw).public_key())
    );
    assert!(
        std::fs::read_to_string(bundle_dir.join("README"))
            .unwrap()
            .contains("drover-agent run")
    );
    let again = drover(
        &url,
        &[
            "device",
            "add",
            "dev-1",
            "--out",
            bundle_dir.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already registered"),
        "{}",
        stderr(&again)
    );
    drover(
        &url,
        &[
            "device",
            "add",
            "dev-2",
            "--labels",
            "site=b",
            "--out",
            out.path().join("d2").to_str().unwrap(),
        ],
    )
    .await;

    let o = drover(&url, &["--output", "json", "devices"]).await;
    let devs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(devs.as_array().unwrap().len(), 2);
    assert_eq!(devs[0]["registered"], true);
    assert_eq!(devs[0]["online"], false);
    let o = drover(&url, &["devices", "--selector", "site=a"]).await;
    let text = stdout(&o);
    assert!(text.contains("dev-1") && !text.contains("dev-2"), "{text}");
    assert!(text.starts_with("DEVICE"), "{text}");

    let o = drover(&url, &["broker", "acl"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let acl = stdout(&o);
    assert!(
        acl.contains(&format!(
            "user dev-1\ntopic write drover/{}/d/dev-1/up",
            t.fleet
        )),
        "{acl}"
    );
    // The test config's cost (ServeConfig::ephemeral); `drover serve` uses 600,000.
    assert!(
        acl.contains(&format!(
            "dev-2:$7${}$",
            drover_controller::fleet::credentials::SIMULATION_KDF_ITERATIONS
        )),
        "{acl}"
    );
    let o = drover(&url, &["--output", "json", "broker", "acl"]).await;
    let acl: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        acl["acl_file"]
            .as_str()
            .unwrap()
            .contains("topic read drover/")
    );

    let o = drover(&url, &["--output", "json", "keys", "show"]).await;
    let keys: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(keys["key_list_version"], 1);

    let o = drover(&url, &["keys", "rotate", "--role", "commands"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("key list version 2"), "{}", stdout(&o));
    let o = drover(&url, &["keys", "rotate", "--role", "root"]).await;
    assert!(!o.status.success(), "the root key is not rotated online");

    // Offline key creation on a data dir, before any controller runs there.
    let offline = tempfile::tempdir().unwrap();
    let dir = offline.path().to_str().unwrap();
    let o = drover(&url, &["keys", "init", "--data-dir", dir]).await;
    assert!(stdout(&o).contains("created keys"), "{}", stdout(&o));
    let o = drover(
        &url,
        &["--output", "json", "keys", "init", "--data-dir", dir],
    )
    .await;
    let init: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(init["created"], false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(offline.path().join("keys/root.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let o = drover(&url, &["completions", "bash"]).await;
    assert!(o.status.success() && stdout(&o).contains("drover"));
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let t = TestController::start().await;
    let url = t.url();
    let c = t.running.handle();
    let artifacts = t.dir.path().join("artifacts");

    let cases: [(&[&str], &[&str]); 4] = [
        (
            &[&path("data/sensor_reference.csv")],
            &["not_onnx", "not an ONNX model"],
        ),
        (
            &[&path("models/unknown_op.onnx")],
            &["unsupported_operator", "FusedMatMul", "fused_matmul_0"],
        ),
        (
            &[
                &path("models/sensor_clf_v1.onnx"),
                "--reference",
                &path("data/sensor_reference_3cols.csv"),
            ],
            &["bad_reference_csv", "expected 4", "found 3"],
        ),
        (
            &[&path("models/sensor_clf_v1.onnx"), "--labels", "a,b"],
            &["invalid_request", "2 classes"],
        ),
    ];
    for (args, needles) in cases {
        let mut full = vec!["model", "push", "--name", "sensor"];
        full.extend_from_slice(args);
        let o = drover(&url, &full).await;
        assert!(!o.status.success(), "{full:?} must fail");
        let err = stderr(&o);
        for n in needles {
            assert!(err.contains(n), "{full:?}: {err:?} lacks {n:?}");
        }
    }
    assert!(c.models().await.unwrap().is_empty(), "nothing stored");
    assert_eq!(
        std::fs::read_dir(&artifacts).unwrap().count(),
        0,
        "no artifact left"
    );

    let o = drover(&url, &["model", "push", "/nonexistent.onnx", "--name", "x"]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent.onnx"));

    let o = drover(&url, &["devices", "--selector", "site"]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad_selector"), "{}", stderr(&o));
    let o = drover(
        &url,
        &[
            "device",
            "add",
            "Bad/Id",
            "--out",
            t.dir.path().join("x").to_str().unwrap(),
        ],
    )
    .await;
    assert!(!o.status.success());
    assert!(c.devices(&Default::default()).await.unwrap().is_empty());

    drover(
        &url,
        &[
            "model",
            "push",
            &path("models/sensor_clf_v1.onnx"),
            "--name",
            "sensor",
        ],
    )
    .await;
    let o = drover(&url, &["deploy", "sensor@1", "--device", "ghost"]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown device"), "{}", stderr(&o));
    let o = drover(&url, &["deploy", "sensor@7", "--device", "ghost"]).await;
    assert!(!o.status.success());
    assert_eq!(
        c.metrics().commands_sent.load(Ordering::Relaxed),
        0,
        "nothing sent"
    );

    let o = drover("http://127.0.0.1:1", &["model", "list"]).await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot reach the controller"),
        "{}",
        stderr(&o)
    );

    // A bad configuration exits 64.
    let o = drover(
        &url,
        &[
            "serve",
            "--fleet",
            "Bad Fleet",
            "--data-dir",
            t.dir.path().join("x").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_controller_on_taken_ports_exits_naming_the_flags() {
    let t = TestController::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let http = t.running.http_addr().to_string();
    // HTTP port taken.
    let o = drover(
        "",
        &[
            "serve",
            "--data-dir",
            data,
            "--http",
            &http,
            "--mqtt-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--http"), "{}", stderr(&o));
    // MQTT port taken (by the first controller's broker, or a plain listener
    // when the tests run against an external broker).
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mqtt = match external_broker() {
        Some(_) => holder.local_addr().unwrap().to_string(),
        None => t
            .running
            .mqtt_addr()
            .trim_start_matches("mqtt://")
            .to_string(),
    };
    let o = drover(
        "",
        &[
            "serve",
            "--data-dir",
            data,
            "--http",
            "127.0.0.1:0",
            "--mqtt-listen",
            &mqtt,
        ],
    )
    .await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("--broker") && err.contains("--mqtt-listen"),
        "{err}"
    );
    t.running.shutdown().await;
}

/// A scripted device that fetches the artifact in chunks and reports like
/// an agent; `fail` makes it report a failed health check instead.
async fn scripted_agent(mut peer: Peer, fail: bool) {
    loop {
        let Down::Command(signed) = peer.next_down().await else {
            continue;
        };
        let cmd = signed.decode_unverified().unwrap();
        let Action::Deploy { manifest } = cmd.action else {
            continue;
        };
        let m = manifest.decode_unverified().unwrap();
        peer.send_up(&Up::Ack(CommandAck {
            seq: cmd.seq,
            result: Ok(()),
        }))
        .await;
        let size = m.artifact.size;
        let mut got = Vec::new();
        while (got.len() as u64) < size {
            peer.send_up(&Up::ChunkRequest(ChunkRequest {
                sha256: m.artifact.sha256,
                offset: got.len() as u64,
                len: 65_536,
            }))
            .await;
            let ch = peer
                .wait_for(|d| match d {
                    Down::Chunk(c) => Some(c),
                    _ => None,
                })
                .await;
            got.extend_from_slice(&ch.data);
            peer.send_up(&Up::DeployStatus(DeployStatus {
                seq: cmd.seq,
                model: m.model_ref(),
                phase: DeployPhase::Downloading {
                    received: got.len() as u64,
                    total: size,
                },
            }))
            .await;
        }
        assert_eq!(Sha256::of(&got), m.artifact.sha256);
        let phase = if fail {
            DeployPhase::Failed(Reason::new(
                ReasonCode::HealthCheckFailed,
                "sample 3 differs by 0.5",
            ))
        } else {
            DeployPhase::Active
        };
        peer.send_up(&Up::DeployStatus(DeployStatus {
            seq: cmd.seq,
            model: m.model_ref(),
            phase,
        }))
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_waits_for_the_device_and_reports_failures() {
    let t = TestController::start().await;
    let url = t.url();
    let c = t.running.handle();
    let out = tempfile::tempdir().unwrap();
    drover(
        &url,
        &[
            "model",
            "push",
            &path("models/sensor_clf_slow.onnx"),
            "--name",
            "sensor",
        ],
    )
    .await;
    for (dev, fail) in [("good-1", false), ("bad-1", true)] {
        let o = drover(
            &url,
            &[
                "device",
                "add",
                dev,
                "--out",
                out.path().join(dev).to_str().unwrap(),
            ],
        )
        .await;
        assert!(o.status.success(), "{}", stderr(&o));
        let creds = support::bundle_credentials(&out.path().join(dev));
        let mut peer = Peer::connect(t.running.mqtt_addr(), &t.fleet, dev, creds).await;
        peer.set_key(&support::bundle_key(&out.path().join(dev)));
        peer.send_up(&Up::Hello(Hello {
            agent_version: "0.1.0".into(),
            key_list_version: 1,
            ..Hello::default()
        }))
        .await;
        tokio::spawn(scripted_agent(peer, fail));
    }
    let o = drover(
        &url,
        &[
            "deploy",
            "sensor@1",
            "--device",
            "good-1",
            "--timeout-secs",
            "60",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("sensor@1 is active on good-1"),
        "{}",
        stdout(&o)
    );
    let d = c
        .device(&drover_protocol::DeviceId::new("good-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.active.as_deref(), Some("sensor@1"));
    assert_eq!(d.deploy.unwrap().phase, "active");

    let o = drover(
        &url,
        &[
            "deploy",
            "sensor@1",
            "--device",
            "bad-1",
            "--timeout-secs",
            "60",
        ],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("sample 3 differs"), "{}", stderr(&o));
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_data_dir_keeps_everything() {
    let t = TestController::start().await;
    let url = t.url();
    let c = t.running.handle();
    let root = c.keys_info().root_public_key;
    drover(
        &url,
        &[
            "model",
            "push",
            &path("models/sensor_clf_v1.onnx"),
            "--name",
            "sensor",
            "--reference",
            &path("data/sensor_reference.csv"),
            "--alias",
            "production",
        ],
    )
    .await;
    drover(
        &url,
        &[
            "device",
            "add",
            "dev-1",
            "--labels",
            "site=a",
            "--out",
            t.dir.path().join("b").to_str().unwrap(),
        ],
    )
    .await;
    let creds = support::bundle_credentials(&t.dir.path().join("b"));
    let mut peer = Peer::connect(t.running.mqtt_addr(), &t.fleet, "dev-1", creds.clone()).await;
    peer.set_key(&support::bundle_key(&t.dir.path().join("b")));
    // A recent window (retention prunes old ones at startup).
    let mut w = realistic_window(5);
    w.end = c.now();
    w.start = drover_protocol::Timestamp(w.end.0 - 10_000);
    peer.send_up(&Up::Telemetry(w)).await;
    peer.wait_for(|d| matches!(d, Down::SignedTelemetryAck(_)).then_some(()))
        .await;
    let seq = c
        .send_command(&peer.device, Action::StopShadow)
        .await
        .unwrap();
    let fleet = t.fleet.clone();
    let TestController { dir, running, .. } = t;
    running.shutdown().await;

    let again = drover_controller::serve::start(support::config(dir.path(), &fleet))
        .await
        .unwrap();
    support::register(&again);
    let url = again.http_url();
    let c = again.handle();
    assert_eq!(c.keys_info().root_public_key, root, "keys persist");
    assert_eq!(c.keys_info().key_list_version, 1, "no needless key list");
    let o = drover(
        &url,
        &["--output", "json", "model", "show", "sensor@production"],
    )
    .await;
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["version"], 1, "{}", stderr(&o));
    let o = drover(
        &url,
        &["--output", "json", "devices", "--selector", "site=a"],
    )
    .await;
    let devs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(devs[0]["id"], "dev-1");
    assert_eq!(devs[0]["registered"], true);
    let body: serde_json::Value = support::get(format!("{url}/v1/telemetry?device=dev-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["merged"]["count"], 6000, "telemetry persists");
    let _peer = Peer::connect(again.mqtt_addr(), &fleet, "dev-1", creds).await;
    assert_eq!(
        c.send_command(&peer.device, Action::StopShadow)
            .await
            .unwrap(),
        seq + 1,
        "sequence persists"
    );
    again.shutdown().await;
}
