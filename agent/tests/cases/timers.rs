//! The agent's timers on tokio's paused clock: no broker, no waiting. The
//! agent's clock reads tokio's time, so `tokio::time::sleep(window)` under
//! `start_paused` closes a telemetry window at once, and the window's
//! bounds are in the same (paused) time.

use std::time::Duration;

use drover_agent::store::{InstalledModel, Pointers, Store};
use drover_agent::{Agent, InferRequest};
use drover_protocol::testkit::TestKeys;
use drover_protocol::{DeviceId, Sha256, Sign as _, TrustState};

use crate::support::broker::free_port;
use crate::support::{ROWS, agent_config, classifier_manifest, unique_fleet, until};

const WINDOW_MS: u64 = 60_000;

#[tokio::test(start_paused = true)]
async fn windows_close_on_paused_time_while_offline() {
    let keys = TestKeys::new(7);
    let fleet = unique_fleet("timers");
    let device = DeviceId::new("dev-1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // v1 installed and active, as a finished deploy leaves the data directory.
    let (m, bytes) = classifier_manifest("sensor_clf_v1.onnx", 1);
    {
        let mut store = Store::open(dir.path()).unwrap();
        let sha = Sha256::of(&bytes);
        std::fs::write(store.model_path(&sha), &bytes).unwrap();
        let installed = InstalledModel {
            model: m.model_ref(),
            sha256: sha,
            size: bytes.len() as u64,
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
    // Nothing listens on the broker port: the link keeps retrying, offline.
    let url = format!("mqtt://127.0.0.1:{}", free_port());
    let mut config = agent_config(&url, &fleet, &device, &keys, dir.path());
    config.api = None;
    config.telemetry_window_ms = WINDOW_MS;
    let agent = Agent::start(config).await.unwrap();
    assert_eq!(agent.active_model(), Some(m.model_ref()));
    assert_eq!(agent.status().outbox_depth, 0);

    for window in 1..=3u64 {
        for r in ROWS {
            agent.infer(InferRequest::new(r.to_vec())).unwrap();
        }
        // A minute of paused time passes at once; the driver's window timer
        // fires with it. Less than a window later the window must be sealed.
        tokio::time::sleep(Duration::from_millis(WINDOW_MS)).await;
        until(
            &agent,
            "the window closed into the outbox",
            Duration::from_millis(WINDOW_MS / 2),
            || (agent.status().outbox_depth >= window).then_some(()),
        )
        .await;
        assert_eq!(agent.status().outbox_depth, window, "one window per minute");
    }
    let st = agent.status();
    assert!(!st.link.connected);
    assert_eq!(
        st.counters.get("inferences"),
        Some(&(3 * ROWS.len() as u64))
    );
    assert_eq!(st.telemetry_window_ms, WINDOW_MS);
    agent.shutdown().await.unwrap();
}
