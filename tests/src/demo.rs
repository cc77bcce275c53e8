//! `drover-sim demo`: the whole story on the embedded defaults, narrated.
//!
//! Controller with its embedded broker on free ports → built-in dataset and a
//! v1 trained by the reference trainer → N real agents → v1 rolled out in
//! waves → steady telemetry → drift injected in one region → drift detected →
//! retraining job → v2 canary → promoted → a deliberately bad v3 stopped at
//! the canary gate and rolled back in stages → summary table. Every number
//! printed comes from the run.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use drover_controller::controller::Controller;
use drover_controller::core::rollout::RolloutSpec;
use drover_controller::http::rollouts::StartBody;
use drover_controller::registry::PushRequest;
use drover_controller::rollouts::RolloutService;
use drover_controller::serve::{self, ServeConfig};
use drover_controller::train::{self, Dataset, TrainOptions};
use drover_protocol::{ModelName, Version};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::data::{self, Drift};
use crate::fleet::{Fleet, FleetConfig};
pub use crate::summary::DemoSummary;

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of agents.
    pub agents: usize,
    /// Leave the fleet up at the end.
    pub keep_running: bool,
    /// Telemetry window of the agents.
    pub window_ms: u64,
    /// Bake time per rollout wave.
    pub bake: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            agents: 50,
            keep_running: false,
            window_ms: 2_000,
            bake: Duration::from_secs(6),
        }
    }
}

fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]") {
        pb.set_style(style);
    }
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Trains a model with the reference trainer on `samples`; `scramble`
/// permutes the labels first (the deliberately bad model).
pub fn train_model(
    samples: &[data::Sample],
    scramble: bool,
) -> anyhow::Result<(Vec<u8>, Vec<u8>, f64)> {
    let mut rows = samples.to_vec();
    if scramble {
        for s in rows.iter_mut() {
            s.label = (s.label + 1) % data::CLASSES.len();
        }
    }
    let mut csv = Vec::new();
    data::write_csv(&rows, &mut csv)?;
    let ds = Dataset::from_csv_reader(&csv[..], "label")?;
    let report = train::train(&ds, None, &TrainOptions::default())?;
    let onnx = train::to_onnx(&report.model);
    // The reference CSV always carries the true labels: it is what the model
    // is measured against.
    let mut reference = Vec::new();
    data::write_csv(samples, &mut reference)?;
    Ok((onnx, reference, report.holdout_accuracy))
}

/// Pushes a model version and returns it.
pub async fn push(
    ctl: &Controller,
    name: &str,
    onnx: Vec<u8>,
    reference: Vec<u8>,
    parent: Option<Version>,
    alias: Option<&str>,
) -> anyhow::Result<Version> {
    let req = PushRequest {
        name: Some(ModelName::new(name)?),
        onnx,
        reference_csv: Some(reference),
        labels: None,
        latency_budget_ms: Some(250),
        parent,
        alias: alias.map(str::to_string),
        ..PushRequest::default()
    };
    Ok(ctl.push_model(req).await?.manifest.version)
}

/// Starts a rollout from CLI-style fields and waits until it ends; returns
/// its final phase name and status JSON.
pub async fn rollout_and_wait(
    rollouts: &RolloutService,
    body: StartBody,
    timeout: Duration,
    label: &str,
) -> anyhow::Result<(String, Value)> {
    let spec: RolloutSpec = body
        .to_spec()
        .map_err(|e| anyhow::anyhow!("{}", e.body.detail))?;
    let created = rollouts.create(spec).await?;
    let pb = spinner(label);
    let deadline = Instant::now() + timeout;
    loop {
        let d = rollouts.detail(&created.id, 5).await?;
        let status = serde_json::to_value(&d.status)?;
        let phase = status["phase"]["phase"].as_str().unwrap_or("?").to_string();
        let updated: u64 = status["waves"]
            .as_array()
            .map(|w| w.iter().filter_map(|w| w["updated"].as_u64()).sum())
            .unwrap_or(0);
        pb.set_message(format!(
            "{label}: {phase}, {updated}/{} devices",
            status["devices"]
        ));
        if !d.status.active {
            pb.finish_and_clear();
            return Ok((phase, status));
        }
        if Instant::now() > deadline {
            pb.finish_and_clear();
            bail!("rollout {} still {phase} after {timeout:?}", created.id);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn gates_for_candidates() -> Vec<String> {
    vec![
        "p95_latency_ratio<=2.0".into(),
        "error_rate_delta<=0.02".into(),
        "accuracy_delta>=-0.1".into(),
    ]
}

/// Runs the demo.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    let mut summary = DemoSummary::default();
    let step = |name: &str, outcome: String, t: Instant| {
        println!("  ✓ {name}: {outcome} ({:.1}s)", t.elapsed().as_secs_f64());
        (name.to_string(), outcome, t.elapsed().as_secs_f64())
    };
    let dir = tempfile::tempdir()?;
    println!(
        "Drover demo: {} agents, embedded broker, SQLite in {}",
        opts.agents,
        dir.path().display()
    );

    let t = Instant::now();
    let bake = format!("{}ms", opts.bake.as_millis());
    let controller_dir = dir.path().join("controller");
    std::fs::create_dir_all(&controller_dir)?;
    std::fs::write(
        controller_dir.join("controller.toml"),
        crate::retrain_step::controller_toml(&bake),
    )?;
    let running = serve::start(ServeConfig::ephemeral(controller_dir.clone()))
        .await
        .context("starting the controller")?;
    let ctl = running.handle();
    let rollouts = running.rollouts();
    println!(
        "  controller API: {}   broker: {}",
        running.http_url(),
        running.mqtt_addr()
    );
    summary
        .steps
        .push(step("controller", "up with embedded broker".into(), t));

    // v1: the reference trainer on the built-in dataset.
    let t = Instant::now();
    let reference = data::reference_samples(3000, 1);
    let (onnx, ref_csv, acc) = train_model(&reference, false)?;
    let v1 = push(
        &ctl,
        "sensor",
        onnx,
        ref_csv.clone(),
        None,
        Some("production"),
    )
    .await?;
    summary.steps.push(step(
        "v1 trained and pushed",
        format!("sensor@{v1}, holdout accuracy {acc:.3}"),
        t,
    ));

    let t = Instant::now();
    let fleet_cfg = FleetConfig {
        agents: opts.agents,
        telemetry_window_ms: opts.window_ms,
        ..FleetConfig::default()
    };
    let fleet = Fleet::start(
        &ctl,
        running.mqtt_addr(),
        &fleet_cfg,
        Some(dir.path().join("agents")),
    )
    .await?;
    let pb = spinner("agents connecting");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (online, total) = ctl.devices_online().await?;
        pb.set_message(format!("agents online {online}/{total}"));
        if online as usize >= opts.agents {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {online} of {} agents came online", opts.agents);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pb.finish_and_clear();
    summary
        .steps
        .push(step("fleet", format!("{} agents online", opts.agents), t));

    let t = Instant::now();
    let (phase, _) = rollout_and_wait(
        &rollouts,
        StartBody {
            model: format!("sensor@{v1}"),
            waves: Some("10,50,100".into()),
            bake: Some(opts.bake),
            device_timeout: Some(Duration::from_secs(30)),
            metrics_interval: Some(Duration::from_secs(1)),
            ..StartBody::default()
        },
        Duration::from_secs(90),
        "v1 rollout",
    )
    .await?;
    summary
        .rollouts
        .insert(format!("sensor@{v1}"), phase.clone());
    summary
        .steps
        .push(step("v1 rolled out in waves 10/50/100%", phase, t));

    let t = Instant::now();
    let before = fleet.totals();
    tokio::time::sleep(Duration::from_millis(opts.window_ms * 2)).await;
    let after = fleet.totals();
    let summary_json = ctl
        .telemetry_summary(drover_controller::telemetry::query::TelemetryFilter {
            model: Some("sensor".into()),
            ..Default::default()
        })
        .await?;
    summary.steps.push(step(
        "steady telemetry",
        format!(
            "{} inferences/s, {} windows stored",
            ((after.0 - before.0) as f64 / t.elapsed().as_secs_f64()).round(),
            summary_json.merged.windows
        ),
        t,
    ));

    // Drift in one region.
    let t = Instant::now();
    let drift = Drift {
        feature: 0,
        shift_sigma: 1.5,
    };
    let mut drifted = 0;
    for d in fleet.with_label("region", "eu") {
        d.set_drift(Some(drift));
        drifted += 1;
    }
    summary.steps.push(step(
        "drift injected",
        format!("temp +1.5σ on {drifted} devices in region eu"),
        t,
    ));

    let v2 = crate::retrain_step::run(&running, &fleet, &rollouts, v1, &bake, &mut summary).await?;

    // A deliberately bad v3: labels scrambled.
    let t = Instant::now();
    let (onnx, _, _) = train_model(&reference, true)?;
    let v3 = push(&ctl, "sensor", onnx, ref_csv, Some(v2), Some("candidate")).await?;
    let (phase, status) = rollout_and_wait(
        &rollouts,
        StartBody {
            model: format!("sensor@{v3}"),
            waves: Some("10,50,100".into()),
            bake: Some(opts.bake),
            gates: gates_for_candidates(),
            min_samples: Some(100),
            device_timeout: Some(Duration::from_secs(30)),
            on_fail: Some("rollback".into()),
            metrics_interval: Some(Duration::from_secs(1)),
            rollback_rate_per_min: Some(600),
            ..StartBody::default()
        },
        Duration::from_secs(90),
        "v3 canary",
    )
    .await?;
    let why = status["last_gates"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["decision"] == "fail"))
        .map(|g| g["why"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    summary
        .rollouts
        .insert(format!("sensor@{v3}"), phase.clone());
    summary.steps.push(step(
        "bad v3 stopped at the canary",
        format!("{phase}: {why}"),
        t,
    ));

    // Where every device ended up.
    for d in &fleet.devices {
        let v = d.active().await.unwrap_or_else(|| "none".into());
        *summary.versions.entry(v).or_insert(0) += 1;
    }
    summary.totals = fleet.totals();
    summary.windows = ctl
        .telemetry_summary(drover_controller::telemetry::query::TelemetryFilter::default())
        .await?
        .merged
        .windows;
    summary.seconds = started.elapsed().as_secs_f64();
    print_summary(&summary);

    if opts.keep_running {
        println!();
        println!("Fleet left running. Dashboard (sign in with the admin token below):");
        println!("  {}/", running.http_url());
        println!("Or explore with the CLI:");
        println!("  export DROVER_CONTROLLER={}", running.http_url());
        println!(
            "  drover login --token-file {}",
            controller_dir.join("admin.token").display()
        );
        println!("  drover devices; drover model list; drover rollout list; drover drift sensor");
        println!("Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
    }
    fleet.shutdown().await;
    running.shutdown().await;
    Ok(summary)
}

fn print_summary(s: &DemoSummary) {
    println!();
    println!("Summary ({:.0}s)", s.seconds);
    println!("  {:<38} {:<60} {:>7}", "STEP", "OUTCOME", "SECONDS");
    for (name, outcome, secs) in &s.steps {
        println!("  {name:<38} {outcome:<60} {secs:>7.1}");
    }
    println!();
    println!(
        "  rollouts: {}",
        s.rollouts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  devices by active model: {}",
        s.versions
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (n, e, f, c) = s.totals;
    println!(
        "  inferences {n}, errors {e}, feedback {f}, agent-side accuracy {:.3}, telemetry windows stored {}",
        if n > 0 { c as f64 / n as f64 } else { 0.0 },
        s.windows
    );
    if let Some(j) = &s.retrain_job {
        println!("  retraining job: {j}");
    }
}
