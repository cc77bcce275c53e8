//! The demo's drift → retraining → v2 canary step: the controller's own
//! retraining loop does the work (configured by the demo's controller.toml);
//! this narrates it and waits for each stage.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::bail;
use drover_controller::retraining::JobState;
use drover_controller::rollouts::RolloutService;
use drover_controller::serve::RunningController;
use drover_protocol::{ModelName, Version};

use crate::demo::DemoSummary;
use crate::fleet::Fleet;

/// The retraining policy the demo runs with: fast evaluations over short
/// windows so the story fits in a few minutes, the builtin reference
/// trainer, and an automatic canary rollout of the result.
pub fn controller_toml(bake: &str) -> String {
    format!(
        r#"[retrain.sensor]
psi_threshold = 0.1
consecutive = 2
min_samples = 400
cooldown_secs = 3600
interval = "2s"
window = "6s"
cohort_key = "region"

[retrain.sensor.capture]
devices = 4
samples_per_device = 400
max_bytes_per_device = 262144
timeout = "20s"

[retrain.sensor.dataset]
label_column = "label"
min_labelled_rows = 300
max_reference_rows = 3000

[retrain.sensor.hook]
kind = "builtin"

[retrain.sensor.auto_rollout]
enabled = true
waves = [10, 50, 100]
bake = "{bake}"
gates = ["p95_latency_ratio<=2.0", "error_rate_delta<=0.02"]
"#
    )
}

fn line(name: &str, outcome: String, t: Instant, summary: &mut DemoSummary) {
    println!("  ✓ {name}: {outcome} ({:.1}s)", t.elapsed().as_secs_f64());
    summary
        .steps
        .push((name.to_string(), outcome, t.elapsed().as_secs_f64()));
}

/// Waits for drift detection, the retraining job, and the v2 rollout.
/// Returns v2.
pub async fn run(
    running: &RunningController,
    _fleet: &Fleet,
    rollouts: &RolloutService,
    v1: Version,
    _bake: &str,
    summary: &mut DemoSummary,
) -> anyhow::Result<Version> {
    let retrain = running.retrain();
    let model = ModelName::new("sensor")?;
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let jobs = retrain.jobs(Some(model.clone()), 1).await?;
        if let Some(j) = jobs.first() {
            break j.id;
        }
        if Instant::now() > deadline {
            bail!("no retraining job within 60 s of the drift");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let overview = retrain
        .drift(drover_controller::retraining::DriftRequest {
            model: Some(model.clone()),
            version: Some(v1),
            cohort_key: Some("region".into()),
            window_ms: Some(6_000),
        })
        .await
        .ok()
        .and_then(|o| o.into_iter().next());
    // The worst cohort's score is what the policy acted on.
    let score = overview
        .as_ref()
        .and_then(|o| {
            o.cohorts
                .iter()
                .filter_map(|c| {
                    Some((
                        c.cohort.as_ref()?.value().to_owned(),
                        c.report.as_ref()?.fleet_score,
                    ))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1))
        })
        .map(|(cohort, s)| format!("worst cohort {cohort}: PSI {s:.3}"))
        .unwrap_or_default();
    line(
        "drift detected",
        format!("retraining job {job} created; {score}"),
        t,
        summary,
    );
    summary.retrain_job = Some(job.to_string());

    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    let j = loop {
        let Some(j) = retrain.job(job).await? else {
            bail!("retraining job {job} vanished");
        };
        match j.state {
            JobState::RolledOut | JobState::Pushed => break j,
            JobState::Failed => bail!(
                "retraining job {job} failed: {}",
                j.failure.unwrap_or_default()
            ),
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("retraining job {job} still {} after 90 s", j.state.as_str());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let Some(v2) = j.result_version else {
        bail!("retraining job {job} pushed no version");
    };
    let rows = j.dataset.as_ref().map(|d| d.rows).unwrap_or(0);
    line(
        "retrained on captured data",
        format!("sensor@{v2} (parent {v1}) from {rows} rows"),
        t,
        summary,
    );

    let t = Instant::now();
    let Some(rollout_id): Option<String> = j.rollout_id.clone() else {
        bail!(
            "retraining job {job} started no rollout: {}",
            j.rollout_error.unwrap_or_default()
        );
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let (phase, why) = loop {
        let d = rollouts.detail(&rollout_id, 1).await?;
        if !d.status.active {
            // Why it stopped, in the gates' own words, for a failure message
            // that can be acted on without the audit log.
            let mut why = match &d.status.phase {
                drover_controller::core::rollout::Phase::RolledBack { reason, .. } => {
                    reason.clone()
                }
                _ => String::new(),
            };
            for g in &d.status.last_gates {
                why.push_str(&format!("; {:?}: {}", g.decision, g.why));
            }
            break (d.status.phase.name().to_string(), why);
        }
        if Instant::now() > deadline {
            bail!(
                "v2 rollout {rollout_id} still {} after 120 s",
                d.status.phase.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    summary
        .rollouts
        .insert(format!("sensor@{v2}"), phase.clone());
    if phase != "completed" {
        bail!("v2 rollout ended {phase}: {why}");
    }
    line("v2 canary promoted to 100%", phase, t, summary);
    Ok(v2)
}
