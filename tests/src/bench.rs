//! `drover-sim bench`: a scale and throughput run of real agents against a
//! real controller and broker on this machine. Prints a table; not part of CI.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::bail;
use drover_controller::http::rollouts::StartBody;
use drover_controller::serve::{self, ServeConfig};
use drover_controller::telemetry::query::TelemetryFilter;

use crate::demo::{push, rollout_and_wait, train_model};
use crate::fleet::{Fleet, FleetConfig};

/// Bench options.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Agents to run.
    pub agents: usize,
    /// Inference requests per second per agent.
    pub rate: f64,
    /// Telemetry window.
    pub window_ms: u64,
    /// How long to measure steady-state ingest.
    pub steady: Duration,
}

/// Runs the benchmark and prints its table.
pub async fn run(opts: BenchOptions) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rss0 = crate::load::worker::rss_kib();
    let running = serve::start(ServeConfig::ephemeral(dir.path().join("controller"))).await?;
    let ctl = running.handle();
    let rollouts = running.rollouts();
    let rss_controller = crate::load::worker::rss_kib();

    let samples = crate::data::reference_samples(2000, 1);
    let (onnx, csv, _) = train_model(&samples, false)?;
    let v1 = push(&ctl, "sensor", onnx, csv.clone(), None, None).await?;

    let t = Instant::now();
    let fleet = Fleet::start(
        &ctl,
        running.mqtt_addr(),
        &FleetConfig {
            agents: opts.agents,
            inferences_per_sec: opts.rate,
            telemetry_window_ms: opts.window_ms,
            feedback_rate: 0.1,
            ..FleetConfig::default()
        },
        Some(dir.path().join("agents")),
    )
    .await?;
    let started = t.elapsed();
    loop {
        let (online, _) = ctl.devices_online().await?;
        if online as usize >= opts.agents {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("only {online} agents online after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connected = t.elapsed();
    let rss_fleet = crate::load::worker::rss_kib();

    let t = Instant::now();
    let (phase, _) = rollout_and_wait(
        &rollouts,
        StartBody {
            model: format!("sensor@{v1}"),
            waves: Some("50,100".into()),
            bake: Some(Duration::from_secs(1)),
            device_timeout: Some(Duration::from_secs(120)),
            metrics_interval: Some(Duration::from_secs(1)),
            ..StartBody::default()
        },
        Duration::from_secs(600),
        "rollout",
    )
    .await?;
    let dispatch = t.elapsed();

    let windows = |ctl: drover_controller::controller::Controller| async move {
        ctl.telemetry_summary(TelemetryFilter::default())
            .await
            .map(|s| s.merged.windows)
    };
    let w0 = windows(ctl.clone()).await?;
    let i0 = fleet.totals().0;
    let t = Instant::now();
    tokio::time::sleep(opts.steady).await;
    let w1 = windows(ctl.clone()).await?;
    let i1 = fleet.totals().0;
    let secs = t.elapsed().as_secs_f64();
    let rss_end = crate::load::worker::rss_kib();

    println!();
    println!(
        "drover-sim bench: {} agents, {} inf/s each, {} ms windows",
        opts.agents, opts.rate, opts.window_ms
    );
    let rows = [
        (
            "agents started (process)",
            format!("{:.1} s", started.as_secs_f64()),
        ),
        (
            "all agents online",
            format!("{:.1} s", connected.as_secs_f64()),
        ),
        (
            "rollout 50/100% to all (incl. 1 s bakes)",
            format!("{:.1} s ({phase})", dispatch.as_secs_f64()),
        ),
        (
            "inference rate (whole fleet)",
            format!("{:.0} /s", (i1 - i0) as f64 / secs),
        ),
        (
            "telemetry ingest",
            format!("{:.0} windows/s", (w1 - w0) as f64 / secs),
        ),
        (
            "expected window rate",
            format!(
                "{:.0} windows/s",
                opts.agents as f64 * 1000.0 / opts.window_ms as f64
            ),
        ),
        (
            "RSS: before / controller / fleet / end",
            format!(
                "{} / {} / {} / {} MiB",
                rss0 / 1024,
                rss_controller / 1024,
                rss_fleet / 1024,
                rss_end / 1024
            ),
        ),
        (
            "RSS per agent (approx.)",
            format!(
                "{:.0} KiB",
                (rss_fleet.saturating_sub(rss_controller)) as f64 / opts.agents.max(1) as f64
            ),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<44} {v}");
    }
    fleet.shutdown().await;
    running.shutdown().await;
    Ok(())
}
