//! End to end: a real controller (in-process, embedded broker or
//! `DROVER_TEST_BROKER`) and a real agent started from the bundle that
//! `device add` produces. keys → model push → device add → agent run →
//! deploy → inference through the agent's HTTP API matches the model run
//! directly with tract → telemetry visible through the controller's API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_agent::{Agent, AgentConfig};
use drover_controller::DeviceEvent;
use drover_controller::fleet::broker::BrokerChoice;
use drover_controller::registry::PushRequest;
use drover_controller::serve::{ServeConfig, start};
use drover_protocol::messages::DeployPhase;
use drover_protocol::{DeviceId, FleetId, ModelName};
use tract_onnx::prelude::*;

const STEP: Duration = Duration::from_secs(60);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn unique_fleet() -> FleetId {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    FleetId::new(format!(
        "e2e{}-{}",
        std::process::id(),
        nanos % 1_000_000_000
    ))
    .unwrap()
}

fn reference_rows(n: usize) -> Vec<Vec<f32>> {
    let text = std::fs::read_to_string(fixtures().join("data/sensor_reference.csv")).unwrap();
    text.lines()
        .skip(1)
        .take(n)
        .map(|l| l.split(',').take(4).map(|v| v.parse().unwrap()).collect())
        .collect()
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
async fn push_add_run_deploy_infer_and_see_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = unique_fleet();
    let mut cfg = ServeConfig::ephemeral(dir.path().join("controller"));
    cfg.fleet = fleet.clone();
    if let Ok(url) = std::env::var("DROVER_TEST_BROKER") {
        cfg.broker = BrokerChoice::parse(&url, "127.0.0.1:0".parse().unwrap()).unwrap();
    }
    let controller = start(cfg).await.unwrap();
    let c = controller.handle();
    let api = controller.http_url();
    // Every controller route needs a token: use the admin token the first
    // start created.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", controller.admin_token().unwrap())
            .parse()
            .unwrap(),
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();

    // keys init: idempotent; the root key it reports is what agents pin.
    let keys: serde_json::Value = http
        .post(format!("{api}/v1/keys/init"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let root = keys["root_public_key"].as_str().unwrap().to_string();

    // model push with a reference CSV.
    let model_path = fixtures().join("models/sensor_clf_v1.onnx");
    let stored = c
        .push_model(PushRequest {
            name: Some(ModelName::new("sensor").unwrap()),
            onnx: std::fs::read(&model_path).unwrap(),
            reference_csv: Some(
                std::fs::read(fixtures().join("data/sensor_reference.csv")).unwrap(),
            ),
            ..PushRequest::default()
        })
        .await
        .unwrap();
    let model = stored.manifest.model_ref();
    let show: serde_json::Value = http
        .get(format!("{api}/v1/models/sensor/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let labels: Vec<String> =
        serde_json::from_value(show["task"]["Classification"]["labels"].clone()).unwrap();
    assert_eq!(labels, ["fault", "normal", "warning"]);

    // device add → the bundle is a valid agent config.
    let device = DeviceId::new("dev-1").unwrap();
    let bundle = c
        .register_device(&device, [("site".to_string(), "lab".to_string())].into())
        .await
        .unwrap();
    assert_eq!(bundle.root_key, root);
    let mut agent_cfg = AgentConfig::from_toml(&bundle.agent_toml).unwrap();
    assert_eq!(agent_cfg.device_id, device);
    assert_eq!(agent_cfg.fleet, fleet);
    agent_cfg.data_dir = dir.path().join("agent");
    agent_cfg.api = Some("127.0.0.1:0".parse().unwrap());
    agent_cfg.telemetry_window_ms = 200;

    // agent run: it says Hello and the inventory shows it.
    let mut events = c.subscribe();
    let agent = Agent::start(agent_cfg).await.unwrap();
    wait_event(
        &mut events,
        |e| matches!(e, DeviceEvent::Hello { device: d, .. } if d == &device),
    )
    .await;
    let info = c.device(&device).await.unwrap().unwrap();
    assert!(info.registered && info.online);
    assert_eq!(info.labels.get("site").map(String::as_str), Some("lab"));

    // deploy: the agent fetches, verifies, checks and activates.
    let deployment = c.deploy(&model, &device, false).await.unwrap();
    let e = wait_event(&mut events, |e| {
        matches!(e, DeviceEvent::DeployStatus { status, .. }
            if status.seq == deployment.seq
                && matches!(status.phase, DeployPhase::Active | DeployPhase::Failed(_) | DeployPhase::RolledBack { .. }))
    })
    .await;
    let DeviceEvent::DeployStatus { status, .. } = e else {
        unreachable!()
    };
    assert_eq!(
        status.phase,
        DeployPhase::Active,
        "deploy failed: {status:?}"
    );
    let d = c.deployment(deployment.id).await.unwrap().unwrap();
    assert!(d.done && d.ok, "{d:?}");
    assert_eq!(agent.active_model(), Some(model.clone()));

    // infer through the agent's HTTP API == the model run directly with tract.
    let plan = tract_onnx::onnx()
        .model_for_path(&model_path)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let agent_api = format!("http://{}", agent.api_addr().unwrap());
    let rows = reference_rows(20);
    for row in &rows {
        let input = Tensor::from_shape(&[1, 4], row).unwrap();
        let out = plan.run(tvec!(input.into())).unwrap();
        let direct = out[0].to_plain_array_view::<i64>().unwrap()[0] as usize;
        let reply: serde_json::Value = http
            .post(format!("{agent_api}/v1/infer"))
            .json(&serde_json::json!({ "data": row }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            reply["label"].as_str(),
            Some(labels[direct].as_str()),
            "row {row:?}: {reply}"
        );
        assert_eq!(reply["model"], "sensor");
        assert_eq!(reply["version"], 1);
    }

    // telemetry: windows arrive, are stored, and add up to what we sent.
    let mut count = 0;
    while count < rows.len() as u64 {
        wait_event(
            &mut events,
            |e| matches!(e, DeviceEvent::TelemetryStored { device: d, .. } if d == &device),
        )
        .await;
        let summary: serde_json::Value = http
            .get(format!("{api}/v1/telemetry?model=sensor@1&device=dev-1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        count = summary["merged"]["count"].as_u64().unwrap();
        assert!(count <= rows.len() as u64, "{summary}");
        if count == rows.len() as u64 {
            assert_eq!(summary["devices"]["dev-1"]["count"], rows.len() as u64);
            assert_eq!(summary["merged"]["errors"], 0);
            assert!(summary["merged"]["p50_us"].as_u64().is_some());
            let outputs: u64 = summary["merged"]["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .sum();
            assert_eq!(outputs, rows.len() as u64);
        }
    }

    agent.shutdown().await.unwrap();
    controller.shutdown().await;
}
