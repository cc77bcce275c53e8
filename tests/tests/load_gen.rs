//! `drover-sim load` end to end: emulated devices (real MQTT, real
//! protocol) against a real controller in this process with its embedded
//! broker. Two `drover-sim load-worker` child processes hold 100 devices:
//! all come online, every window they made is stored exactly once and
//! acknowledged, and a model rollout completes on every one of them. A
//! smaller run, registered over the HTTP API, goes through the in-process
//! worker path and upgrades v1 to v2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use drover_controller::controller::Controller;
use drover_controller::http::rollouts::StartBody;
use drover_controller::serve::{self, RunningController, ServeConfig};
use drover_controller::telemetry::query::TelemetryFilter;
use drover_protocol::labels::Selector;
use drover_sim::demo::{push, rollout_and_wait, train_model};
use drover_sim::load::{self, LoadRun, Registrar, Spawn, WorkerArgs, WorkerStats};

/// The two tests run one after the other: each loads a debug-build
/// controller near what it ingests on a shared 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn controller(dir: &tempfile::TempDir) -> RunningController {
    serve::start(ServeConfig::ephemeral(dir.path().join("controller")))
        .await
        .unwrap()
}

fn worker_args(running: &RunningController, window_ms: u64) -> WorkerArgs {
    WorkerArgs {
        bundles: PathBuf::new(),
        broker: Some(running.mqtt_addr().to_string()),
        window_ms,
        ack_timeout_ms: 60_000,
        connect_rate: 1_000,
        stats_ms: 200,
        drain_ms: 60_000,
        idle_model: "load-idle@1".into(),
    }
}

/// Polls `f` until it holds, failing after `timeout` with `what`.
async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "{what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_online(ctl: &Controller, run: &LoadRun, n: u64) {
    wait_for(Duration::from_secs(120), "devices online", || async {
        let (online, _) = ctl.devices_online().await.unwrap();
        if online >= n {
            Ok(())
        } else {
            Err(format!("{online}/{n} online; workers: {:?}", run.stats()))
        }
    })
    .await;
}

async fn active_models(ctl: &Controller, prefix: &str) -> Vec<Option<String>> {
    ctl.devices(&Selector::parse("").unwrap())
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.id.starts_with(prefix))
        .map(|d| d.active)
        .collect()
}

async fn stored_windows(ctl: &Controller) -> u64 {
    ctl.telemetry_summary(TelemetryFilter::default())
        .await
        .unwrap()
        .merged
        .windows
}

/// A rollout to completion; on failure, the rollouts' status and audit.
async fn roll_out(running: &RunningController, run: &LoadRun, body: StartBody, timeout: Duration) {
    let rollouts = running.rollouts();
    match rollout_and_wait(&rollouts, body, timeout, "load").await {
        Ok((phase, status)) if phase == "completed" => {
            let _ = status;
        }
        other => {
            for r in rollouts.list().await {
                if let Ok(d) = rollouts.detail(&r.id, 30).await {
                    eprintln!(
                        "{}: {:#}\naudit: {:#}",
                        r.id,
                        serde_json::to_value(&d.status).unwrap(),
                        serde_json::Value::Array(d.audit)
                    );
                }
            }
            let metrics = drover_sim::metrics::scrape(
                &running.http_url(),
                running.admin_token().unwrap_or_default(),
            )
            .await
            .unwrap_or_default();
            for (k, v) in metrics {
                if k.contains("refus") || k.contains("command") || k.contains("uplink") {
                    eprintln!("{k} {v}");
                }
            }
            panic!(
                "rollout did not complete: {:?}; workers: {:?}",
                other.map(|(p, _)| p),
                run.stats()
            );
        }
    }
}

fn quick(model: String) -> StartBody {
    StartBody {
        model,
        waves: Some("20,100".into()),
        bake: Some(Duration::from_secs(1)),
        device_timeout: Some(Duration::from_secs(60)),
        metrics_interval: Some(Duration::from_secs(1)),
        ..StartBody::default()
    }
}

/// After a drain every window made was acknowledged, and the controller
/// holds each exactly once (it stores by (device, seq); a resend of a
/// stored window adds nothing).
async fn assert_stored_once(ctl: &Controller, totals: &WorkerStats) {
    assert!(totals.done, "{totals:?}");
    assert!(totals.windows_created > 0, "{totals:?}");
    assert_eq!(totals.windows_evicted, 0, "{totals:?}");
    assert_eq!(totals.windows_acked, totals.windows_created, "{totals:?}");
    assert_eq!(
        stored_windows(ctl).await,
        totals.windows_created,
        "{totals:?}"
    );
    assert_eq!(totals.acks_refused, 0, "{totals:?}");
    assert_eq!(totals.errors, 0, "{totals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_come_online_store_every_window_once_and_take_a_rollout() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let running = controller(&dir).await;
    let ctl = running.handle();
    let samples = drover_sim::data::reference_samples(2000, 1);
    let (onnx, csv, _) = train_model(&samples, false).unwrap();
    let v1 = push(&ctl, "sensor", onnx, csv, None, None).await.unwrap();

    let n = 100;
    let t = Instant::now();
    let bundles = load::register(&Registrar::InProcess(ctl.clone()), "ld", n, 64)
        .await
        .unwrap();
    assert_eq!(bundles.len(), n);
    eprintln!("registered {n} in {:?}", t.elapsed());

    let exe = PathBuf::from(env!("CARGO_BIN_EXE_drover-sim"));
    let run = LoadRun::start(bundles, 2, &worker_args(&running, 10_000), Spawn::Exe(exe))
        .await
        .unwrap();
    assert_eq!(run.procs(), 2);
    wait_online(&ctl, &run, n as u64).await;
    let inventory = ctl.devices(&Selector::parse("").unwrap()).await.unwrap();
    assert_eq!(inventory.iter().filter(|d| d.online).count(), n);
    assert!(
        inventory
            .iter()
            .all(|d| d.agent_version.is_some() && d.arch.is_some()),
        "every device said Hello"
    );

    // Windows flow (each worker reports its own counts).
    wait_for(Duration::from_secs(60), "windows acknowledged", || async {
        let s = run.stats();
        if s.windows_acked >= n as u64 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;

    roll_out(
        &running,
        &run,
        quick(format!("sensor@{v1}")),
        Duration::from_secs(180),
    )
    .await;
    let want = format!("sensor@{v1}");
    wait_for(Duration::from_secs(30), "all devices on v1", || async {
        let active = active_models(&ctl, "ld-").await;
        let on = active
            .iter()
            .filter(|a| a.as_deref() == Some(&want))
            .count();
        if on == n {
            Ok(())
        } else {
            Err(format!("{on}/{n} on {want}"))
        }
    })
    .await;
    let s = run.stats();
    assert!(s.deploys_done >= n as u64, "{s:?}");
    assert!(s.commands_accepted >= n as u64, "{s:?}");
    assert!(s.chunks_received >= n as u64, "{s:?}");

    let totals = run.stop(Duration::from_secs(120)).await.unwrap();
    eprintln!("totals: {totals:?}");
    assert_eq!(totals.devices, n as u64);
    assert_stored_once(&ctl, &totals).await;
    // Each device said Offline on its way out.
    wait_for(Duration::from_secs(30), "devices offline", || async {
        let (online, _) = ctl.devices_online().await.unwrap();
        if online == 0 {
            Ok(())
        } else {
            Err(format!("{online} still online"))
        }
    })
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_workers_take_an_upgrade() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let running = controller(&dir).await;
    let ctl = running.handle();
    let samples = drover_sim::data::reference_samples(2000, 1);
    let (onnx, csv, _) = train_model(&samples, false).unwrap();
    let v1 = push(&ctl, "sensor", onnx.clone(), csv.clone(), None, None)
        .await
        .unwrap();
    let v2 = push(&ctl, "sensor", onnx, csv, Some(v1), None)
        .await
        .unwrap();

    let n = 20;
    // Registered through the API, as against a separate `drover serve`.
    let http = Registrar::Http {
        url: running.http_url(),
        token: running.admin_token().unwrap().to_string(),
    };
    let bundles = load::register(&http, "lp", n, 16).await.unwrap();
    assert_eq!(bundles.len(), n);
    let run = LoadRun::start(bundles, 2, &worker_args(&running, 3_000), Spawn::InProcess)
        .await
        .unwrap();
    wait_online(&ctl, &run, n as u64).await;
    for v in [v1, v2] {
        // v2's gates compare windows that end within the bake: long
        // enough for both cohorts to report a few.
        let body = StartBody {
            bake: Some(Duration::from_secs(6)),
            ..quick(format!("sensor@{v}"))
        };
        roll_out(&running, &run, body, Duration::from_secs(150)).await;
    }
    let totals = run.stop(Duration::from_secs(90)).await.unwrap();
    assert_eq!(totals.devices, n as u64);
    assert!(totals.deploys_done >= 2 * n as u64, "{totals:?}");
    assert_stored_once(&ctl, &totals).await;
    let active = active_models(&ctl, "lp-").await;
    assert!(
        active
            .iter()
            .all(|a| a.as_deref() == Some(&format!("sensor@{v2}"))),
        "{active:?}"
    );
    running.shutdown().await;
}
