//! The `drover-agent` binary: init validates (exit 64), install writes the
//! unit, run connects with env overrides, status asks the API, SIGTERM shuts
//! down gracefully.

use std::process::Command;
use std::time::Duration;

use drover_protocol::messages::Status;
use drover_protocol::testkit::TestKeys;
use drover_protocol::{DeviceId, Sign as _};

use crate::support::{
    Peer, TestBroker, bin_command, broker::free_port, eventually, tokio_bin_command, unique_fleet,
};

// Run through `DROVER_TEST_RUNNER` (qemu-user, set by cross/test.sh) when set.
const BIN: &str = env!("CARGO_BIN_EXE_drover-agent");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_install_run_status_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let keys = TestKeys::new(7);
    let key_file = dir.path().join("root.pub");
    std::fs::write(&key_file, keys.root.public_key().to_hex()).unwrap();
    let cfg = dir.path().join("agent.toml");
    let fleet = unique_fleet("cli");
    let port = free_port();
    let init = |device: &str, out: &std::path::Path| {
        bin_command(BIN)
            .args(["init", "--device-id", device, "--fleet", fleet.as_str()])
            .args(["--broker", "mqtt://127.0.0.1:1"])
            .arg("--root-key")
            .arg(&key_file)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--api", &format!("127.0.0.1:{port}")])
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let bad = init("Not A Valid Id", &dir.path().join("bad.toml"));
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("device"));
    let missing = bin_command(BIN)
        .args(["init", "--fleet", "x"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(64));
    let ok = init("dev-1", &cfg);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("# MQTT broker"));

    let root = dir.path().join("root");
    let inst = bin_command(BIN)
        .arg("install")
        .arg("--config")
        .arg(&cfg)
        .arg("--root")
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        inst.status.success(),
        "{}",
        String::from_utf8_lossy(&inst.stderr)
    );
    assert!(
        root.join("etc/systemd/system/drover-agent.service")
            .exists()
    );
    assert!(root.join("etc/drover/agent.toml").exists());

    // run: the broker in the file is wrong; the environment fixes it.
    let broker = TestBroker::start().await;
    let device = DeviceId::new("dev-1").unwrap();
    let peer = Peer::start(&broker.url(), &fleet, &device, keys).await;
    let mut child = tokio_bin_command(BIN)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("DROVER_AGENT_BROKER", broker.url())
        .env("DROVER_AGENT_TELEMETRY_WINDOW_MS", "250")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    peer.wait("Hello from the binary", Duration::from_secs(30), |st| {
        (st.hellos() > 0).then_some(())
    })
    .await;
    let status = eventually("status via the API", Duration::from_secs(20), || async {
        let out = tokio_bin_command(BIN)
            .args(["status", "--api", &format!("127.0.0.1:{port}")])
            .output()
            .await
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["device"], "dev-1");
    assert_eq!(v["telemetry_window_ms"], 250);

    let pid = child.id().unwrap();
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    peer.wait("Offline on SIGTERM", Duration::from_secs(10), |st| {
        matches!(st.statuses.last(), Some(Status::Offline)).then_some(())
    })
    .await;
}
