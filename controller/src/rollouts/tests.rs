//! The rollout shell against a fake clock: it sleeps until the engine's next
//! deadline and wakes when the clock is advanced past it, with no tick.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use drover_protocol::{DeviceId, FleetId, ModelName, Status, Timestamp};

use super::*;
use crate::clock::FakeClock;
use crate::controller::ControllerConfig;
use crate::registry::PushRequest;

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(rel),
    )
    .unwrap()
}

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..500 {
        if let Some(t) = f().await {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_silent_device_is_noticed_when_the_fake_clock_passes_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<FakeClock> = FakeClock::new(Timestamp(1_800_000_000_000));
    let ctl = Controller::open(
        ControllerConfig {
            // Tests enroll devices; the production cost only slows them.
            device_kdf_iterations: crate::fleet::credentials::SIMULATION_KDF_ITERATIONS,
            ..ControllerConfig::new(dir.path(), FleetId::new("plant").unwrap())
        },
        clock.clone(),
    )
    .unwrap();
    let mut out = ctl.capture_outbound();
    for id in ["dev-1", "dev-2"] {
        let dev = DeviceId::new(id).unwrap();
        let labels: BTreeMap<String, String> = [("region".to_string(), "eu".to_string())].into();
        ctl.register_device(&dev, labels).await.unwrap();
        ctl.handle_status(
            dev,
            Status::Online {
                agent_version: "test".into(),
                active: None,
            },
        )
        .await
        .unwrap();
    }
    ctl.push_model(PushRequest {
        name: Some(ModelName::new("sensor").unwrap()),
        onnx: fixture("models/sensor_clf_v1.onnx"),
        reference_csv: Some(fixture("data/sensor_reference.csv")),
        ..PushRequest::default()
    })
    .await
    .unwrap();

    let svc = RolloutService::start(ctl.clone()).await.unwrap();
    let mut spec = RolloutSpec::new("r1", ModelName::new("sensor").unwrap(), Version(1));
    spec.waves = vec![50.0, 100.0];
    spec.device_timeout_ms = 30_000;
    spec.max_attempts = 1;
    svc.create(spec).await.unwrap();

    // The deploy goes out on the create's wake-up.
    let sent = tokio::time::timeout(Duration::from_secs(5), out.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(sent.0.contains("/dev-"), "{}", sent.0);
    let status = svc.detail("r1", 0).await.unwrap().status;
    assert_eq!(status.waves[0].in_flight, 1);
    assert_eq!(status.waves[0].silent, 0);
    let (deadline, _) = status.next_timeout.clone().unwrap();

    // Nothing changes while the fake clock stands still, however long the
    // real wait.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(svc.detail("r1", 0).await.unwrap().status.waves[0].silent, 0);

    // Past the device timeout: the shell, asleep on the fake clock, wakes.
    clock.advance(deadline.ms_since(ctl.now()).max(30_000) + 1_000);
    let silent = wait_for("the device to be counted silent", async || {
        let s = svc.detail("r1", 0).await.ok()?.status;
        (s.waves[0].silent == 1).then_some(s)
    })
    .await;
    assert_eq!(silent.waves[0].in_flight, 0);
    svc.stop();
}
