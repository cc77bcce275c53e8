//! Drift on a tensor (image) model through the real path: the reference
//! is an `.npz` pushed through the registry (per-channel mean and spread
//! profiled), a real agent over a real broker serves `.npz` requests, its
//! telemetry windows carry the same statistics computed on live inputs,
//! and the controller's drift report shows PSI on the shifted channel
//! only. Also: health checks of a tensor model use real reference samples,
//! and the `.npz` answer form.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_agent::{Agent, AgentConfig};
use drover_controller::DeviceEvent;
use drover_controller::registry::PushRequest;
use drover_controller::serve::{ServeConfig, start};
use drover_onnx::Tensor;
use drover_onnx::npy::{self, NpyData};
use drover_protocol::messages::DeployPhase;
use drover_protocol::{DeviceId, FleetId, ModelName};
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/image")
        .join(name)
}

fn psi_of(report: &Value, feature: &str) -> (f64, u64) {
    let f = report["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == feature)
        .unwrap_or_else(|| panic!("no feature {feature} in {report}"));
    (f["psi"].as_f64().unwrap(), f["samples"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shifted_image_channel_raises_psi_on_that_channel_only() {
    let dir = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let fleet = FleetId::new(format!(
        "tdrift{}-{}",
        std::process::id(),
        nanos % 1_000_000_000
    ))
    .unwrap();
    let mut cfg = ServeConfig::ephemeral(dir.path().join("controller"));
    cfg.fleet = fleet;
    let controller = start(cfg).await.unwrap();
    let c = controller.handle();
    let http = reqwest::Client::new();
    http.post(format!("{}/v1/keys/init", controller.http_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();

    // Push: the reference is 300 images in one .npz, split along the batch.
    let reference = std::fs::read(fixture("reference.npz")).unwrap();
    let stored = c
        .push_model(PushRequest {
            name: Some(ModelName::new("tiny-image").unwrap()),
            onnx: std::fs::read(fixture("image_tiny.onnx")).unwrap(),
            reference_arrays: vec![reference],
            ..PushRequest::default()
        })
        .await
        .unwrap();
    let m = &stored.manifest;
    let names: Vec<&str> = m
        .reference
        .features
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "image[0].mean",
            "image[0].std",
            "image[1].mean",
            "image[1].std",
            "image[2].mean",
            "image[2].std"
        ]
    );
    assert_eq!(m.reference.sources.len(), 6);
    assert_eq!(m.lineage.eval_metrics["reference_rows"], 300.0);
    // Health checks are real reference images (batch 1, 3 x 8 x 8).
    let hc = &m.health_checks.samples;
    assert!(!hc.is_empty());
    assert!(hc.iter().all(|s| s.inputs.len() == 1
        && s.inputs[0].shape == [1, 3, 8, 8]
        && s.expected.len() == 2));

    let device = DeviceId::new("cam-1").unwrap();
    let bundle = c
        .register_device(&device, Default::default())
        .await
        .unwrap();
    let mut agent_cfg = AgentConfig::from_toml(&bundle.agent_toml).unwrap();
    agent_cfg.data_dir = dir.path().join("agent");
    agent_cfg.api = Some("127.0.0.1:0".parse().unwrap());
    agent_cfg.telemetry_window_ms = 1_000;
    let mut events = c.subscribe();
    let agent = Agent::start(agent_cfg).await.unwrap();
    let api = format!("http://{}", agent.api_addr().unwrap());
    tokio::time::timeout(STEP, async {
        loop {
            if let Ok(DeviceEvent::Hello { device: d, .. }) = events.recv().await
                && d == device
            {
                return;
            }
        }
    })
    .await
    .expect("the agent did not say Hello");
    let d = c.deploy(&m.model_ref(), &device, false).await.unwrap();
    let phase = tokio::time::timeout(STEP, async {
        loop {
            if let Ok(DeviceEvent::DeployStatus { status, .. }) = events.recv().await
                && status.seq == d.seq
                && matches!(
                    status.phase,
                    DeployPhase::Active | DeployPhase::Failed(_) | DeployPhase::RolledBack { .. }
                )
            {
                return status.phase;
            }
        }
    })
    .await
    .expect("deploy status did not arrive");
    assert_eq!(phase, DeployPhase::Active, "the health checks must pass");

    // Live: 300 held-out images, channel 0 brightened by 0.5, sent one per
    // request as .npz (what np.savez writes), answers asked for as .npz.
    let live = npy::read_npz(&std::fs::read(fixture("live.npz")).unwrap(), 1 << 24).unwrap();
    let image = &live[0].1;
    let NpyData::F32(values) = &image.data else {
        panic!("live images are f32")
    };
    let per = 3 * 8 * 8;
    let n = image.shape[0];
    for r in 0..n {
        let mut one = values[r * per..(r + 1) * per].to_vec();
        for x in &mut one[..64] {
            *x += 0.5;
        }
        let t = Tensor::from_shape(&[1, 3, 8, 8], &one).unwrap();
        let body = npy::write_npz([("image", &t)]).unwrap();
        let resp = http
            .post(format!("{api}/v1/infer"))
            .header("content-type", "application/x-npz")
            .header("accept", "application/x-npz")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/x-npz"
        );
        assert!(resp.headers().contains_key("x-drover-request-id"));
        let outs = npy::read_npz(&resp.bytes().await.unwrap(), 1 << 20).unwrap();
        let names: Vec<&str> = outs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["label", "probabilities"]);
        assert_eq!(outs[1].1.shape, [1, 2]);
    }

    // Wait until the controller has stored windows covering every request.
    let mut counted = 0u64;
    tokio::time::timeout(STEP, async {
        while counted < n as u64 {
            if let Ok(DeviceEvent::TelemetryStored { window, .. }) = events.recv().await {
                counted += window.count;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {counted} of {n} inferences reached the controller"));

    let drift: Value = http
        .get(format!(
            "{}/v1/drift?model=tiny-image@1&window=1h",
            controller.http_url()
        ))
        .bearer_auth(controller.admin_token().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let report = &drift["reports"][0]["fleet"]["report"];
    assert!(report.is_object(), "no drift report: {drift}");
    let (shifted, samples) = psi_of(report, "image[0].mean");
    assert_eq!(samples, n as u64, "{report}");
    assert!(shifted > 1.0, "shifted channel PSI {shifted}: {report}");
    for other in [
        "image[0].std",
        "image[1].mean",
        "image[1].std",
        "image[2].mean",
        "image[2].std",
    ] {
        let (psi, _) = psi_of(report, other);
        assert!(psi < 0.1, "{other} PSI {psi} (unshifted): {report}");
    }
    assert_eq!(report["worst"], "image[0].mean");
    agent.shutdown().await.unwrap();
}
