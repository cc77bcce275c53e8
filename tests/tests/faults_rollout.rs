//! Controller faults around a rollout's end: a controller killed right
//! after a rollout completed must come back with it completed (state,
//! audit, `production` alias), not resume or pause it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use drover_controller::fleet::broker::BrokerChoice;
use drover_controller::http::rollouts::StartBody;
use drover_controller::serve::{self, ServeConfig};
use drover_protocol::ModelName;
use drover_sim::demo::{push, train_model};
use drover_sim::fleet::{Fleet, FleetConfig};
use drover_sim::net::SpawnedMosquitto;

fn config(dir: &std::path::Path, broker: &SpawnedMosquitto) -> ServeConfig {
    let mut c = ServeConfig::ephemeral(dir);
    c.broker = BrokerChoice::External {
        host: "127.0.0.1".into(),
        port: broker.addr().port(),
        tls: false,
    };
    c
}

/// Audit event kinds of a rollout as the database holds them.
fn audit_kinds(detail: &drover_controller::rollouts::RolloutDetail) -> Vec<String> {
    detail
        .audit
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_right_after_completion_restarts_with_rollout_completed() {
    let broker = SpawnedMosquitto::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("controller");
    let running = serve::start(config(&data, &broker)).await.unwrap();
    let ctl = running.handle();
    let fleet = Fleet::start(
        &ctl,
        running.mqtt_addr(),
        &FleetConfig {
            agents: 3,
            inferences_per_sec: 10.0,
            telemetry_window_ms: 1_000,
            ..FleetConfig::default()
        },
        Some(dir.path().join("agents")),
    )
    .await
    .unwrap();
    let samples = drover_sim::data::reference_samples(1000, 1);
    let (onnx, csv, _) = train_model(&samples, false).unwrap();
    let v1 = push(&ctl, "sensor", onnx, csv, None, None).await.unwrap();

    // A first install: no gates, advances on install success and the bake.
    let body = StartBody {
        model: format!("sensor@{v1}"),
        id: Some("finish-me".into()),
        waves: Some("50,100".into()),
        bake: Some(Duration::from_secs(1)),
        device_timeout: Some(Duration::from_secs(30)),
        metrics_interval: Some(Duration::from_millis(500)),
        ..StartBody::default()
    };
    let rollouts = running.rollouts();
    rollouts
        .create(body.to_spec().map_err(|e| e.body.detail).unwrap())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = rollouts.detail("finish-me", 1).await.unwrap();
        if !d.status.active {
            assert_eq!(d.status.phase.name(), "completed", "{:?}", d.status.phase);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never finished: {:?}",
            d.status.phase
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give the shell a moment to save what it has (it saves before acting),
    // then die without draining.
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.kill();

    let running = serve::start(config(&data, &broker)).await.unwrap();
    let ctl = running.handle();
    let rollouts = running.rollouts();
    let d = rollouts.detail("finish-me", 200).await.unwrap();
    assert_eq!(d.status.phase.name(), "completed", "{:?}", d.status.phase);
    assert!(!d.status.active);
    let kinds = audit_kinds(&d);
    assert!(
        kinds.iter().any(|k| k == "completed"),
        "no completed audit: {kinds:?}"
    );
    let prod = ctl
        .resolve_model(&ModelName::new("sensor").unwrap(), "production")
        .await
        .expect("production alias set by the completed rollout");
    assert_eq!(prod.manifest.version, v1);
    // Nothing resumes or pauses it after the restart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = rollouts.detail("finish-me", 200).await.unwrap();
    assert_eq!(d.status.phase.name(), "completed", "{:?}", d.status.phase);
    let kinds = audit_kinds(&d);
    assert!(
        !kinds.iter().any(|k| k == "restarted" || k == "paused"),
        "a finished rollout was resumed: {kinds:?}"
    );
    fleet.shutdown().await;
    running.shutdown().await;
}
