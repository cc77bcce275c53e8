//! The seeded chaos run: random faults from the fault matrix's list (agent
//! crash and restart, controller kill -9 and restart, broker restart, a
//! device's link cut) over an in-process fleet while rollouts of successive
//! versions run, for a bounded time; then a calm period and the shared
//! invariants. The same seed replays the same fault schedule
//! (`DROVER_CHAOS_SEED`); timing on a loaded machine still varies, so a
//! replay reproduces the schedule, not every interleaving.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use drover_controller::core::rollout::RolloutCommand;
use drover_controller::fleet::broker::BrokerChoice;
use drover_controller::http::rollouts::StartBody;
use drover_controller::serve::{self, ServeConfig};
use drover_protocol::Version;
use drover_protocol::testkit::SplitMix;

use crate::demo::{push, train_model};
use crate::fleet::{Fleet, FleetConfig};
use crate::invariants::{self, Violation};
use crate::net::SpawnedMosquitto;

/// One chaos run's shape.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The fault schedule's seed.
    pub seed: u64,
    /// Devices.
    pub agents: usize,
    /// How long faults are injected.
    pub duration: Duration,
    /// Pause between faults, drawn uniformly from this range.
    pub gap: (Duration, Duration),
}

/// What a run did and found.
#[derive(Debug, Default, Clone)]
pub struct ChaosReport {
    /// The seed.
    pub seed: u64,
    /// Faults injected, by class.
    pub faults: BTreeMap<&'static str, u64>,
    /// Rollouts started and how they ended (`id -> phase`).
    pub rollouts: BTreeMap<String, String>,
    /// Telemetry windows made by the agents (highest sequence, summed).
    pub windows_made: u64,
    /// Windows stored by the controller.
    pub windows_stored: u64,
    /// Windows the agents evicted from a full outbox.
    pub windows_evicted: u64,
    /// Windows still queued in outboxes at the end.
    pub windows_queued: u64,
    /// Devices not on the version the controller believes at the end.
    pub wrong_state: u64,
    /// From the end of the faults to every invariant holding.
    pub converge: Duration,
    /// Paused rollouts the calm period had to resume as an operator would.
    pub operator_resumes: u64,
    /// From the end of the faults until the outboxes hold no backlog (at
    /// most two windows per agent, the steady state), if within a minute.
    pub drained: Option<Duration>,
    /// The largest backlog (windows in all outboxes) seen after the faults.
    pub backlog_peak: u64,
    /// Broken invariants at the end (empty on success).
    pub violations: Vec<Violation>,
}

fn config(dir: &Path, broker: &SpawnedMosquitto) -> ServeConfig {
    let mut c = ServeConfig::ephemeral(dir);
    c.broker = BrokerChoice::External {
        host: "127.0.0.1".into(),
        port: broker.addr().port(),
        tls: false,
    };
    c
}

fn between(rng: &mut SplitMix, (lo, hi): (Duration, Duration)) -> Duration {
    lo + hi.saturating_sub(lo).mul_f64(rng.uniform())
}

const CLASSES: [&str; 4] = [
    "agent_crash",
    "controller_kill",
    "broker_restart",
    "link_cut",
];

/// Runs one seeded chaos run and reports; `Err` only when the run itself
/// could not be set up. Broken invariants are in the report.
pub async fn run(cfg: &ChaosConfig) -> anyhow::Result<ChaosReport> {
    let mut rng = SplitMix(cfg.seed ^ 0xc4a0_5eed);
    let mut report = ChaosReport {
        seed: cfg.seed,
        ..ChaosReport::default()
    };
    let mut broker = SpawnedMosquitto::start().await?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("controller");
    let mut running = serve::start(config(&data, &broker)).await?;
    let fleet = Fleet::start(
        &running.handle(),
        running.mqtt_addr(),
        &FleetConfig {
            agents: cfg.agents,
            inferences_per_sec: 10.0,
            telemetry_window_ms: 500,
            with_proxies: true,
            ..FleetConfig::default()
        },
        Some(dir.path().join("agents")),
    )
    .await?;
    let mut versions: Vec<Version> = Vec::new();
    for seed in 1..=3 {
        let samples = crate::data::reference_samples(1000, seed);
        let (onnx, csv, _) = train_model(&samples, false)?;
        versions.push(push(&running.handle(), "sensor", onnx, csv, None, None).await?);
    }
    let mut next = 0usize;
    let mut current: Option<String> = None;
    let end = Instant::now() + cfg.duration;
    while Instant::now() < end {
        // Keep a rollout going: the next version once the last one ended.
        let ended = match &current {
            None => true,
            Some(id) => !running.rollouts().detail(id, 1).await?.status.active,
        };
        // Each version once, in order (a lower one would be a downgrade the
        // agents refuse).
        if ended && next < versions.len() {
            let v = versions[next % versions.len()];
            let id = format!("chaos-{next}");
            let body = StartBody {
                model: format!("sensor@{v}"),
                id: Some(id.clone()),
                waves: Some("50,100".into()),
                bake: Some(Duration::from_millis(500)),
                device_timeout: Some(Duration::from_secs(5)),
                metrics_interval: Some(Duration::from_millis(500)),
                max_silent: Some("50%".into()),
                // Upgrades: faults are tested here, not gate statistics.
                gates: if next == 0 {
                    Vec::new()
                } else {
                    vec!["error_rate_delta<=1.0".into()]
                },
                min_samples: (next > 0).then_some(5),
                ..StartBody::default()
            };
            let spec = body.to_spec().map_err(|e| anyhow::anyhow!(e.body.detail))?;
            match running.rollouts().create(spec).await {
                Ok(_) => {
                    current = Some(id);
                    next += 1;
                }
                Err(e) => eprintln!("chaos: rollout {id} not started: {e}"),
            }
        }
        tokio::time::sleep(between(&mut rng, cfg.gap)).await;
        let class = CLASSES[(rng.next_u64() % CLASSES.len() as u64) as usize];
        *report.faults.entry(class).or_default() += 1;
        match class {
            "agent_crash" => {
                let d = &fleet.devices[(rng.next_u64() % fleet.devices.len() as u64) as usize];
                d.crash().await;
                tokio::time::sleep(between(
                    &mut rng,
                    (Duration::ZERO, Duration::from_millis(800)),
                ))
                .await;
                d.start_agent().await?;
            }
            "controller_kill" => {
                running.kill();
                running = serve::start(config(&data, &broker))
                    .await
                    .context("restarting the controller")?;
            }
            "broker_restart" => broker.restart().await?,
            _ => {
                let d = &fleet.devices[(rng.next_u64() % fleet.devices.len() as u64) as usize];
                if let Some(p) = &d.proxy {
                    p.cut();
                    tokio::time::sleep(between(
                        &mut rng,
                        (Duration::from_millis(200), Duration::from_secs(2)),
                    ))
                    .await;
                    p.restore();
                }
            }
        }
    }
    // Calm: a rollout that paused under the faults (silent devices) is
    // resumed by the operator, as the reason it shows asks.
    let calm = Instant::now();
    let rollouts = running.rollouts();
    let deadline = calm + Duration::from_secs(90);
    loop {
        let mut active = 0;
        for s in rollouts.list().await {
            if !s.active {
                continue;
            }
            active += 1;
            if s.phase == "paused"
                && rollouts
                    .command(&s.id, RolloutCommand::Resume)
                    .await
                    .is_ok()
            {
                report.operator_resumes += 1;
            }
        }
        if active == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ctl = running.handle();
    match invariants::converge(&ctl, Some(&rollouts), &fleet, Duration::from_secs(60)).await {
        Ok(_) => {}
        Err(v) => report.violations = v,
    }
    report.converge = calm.elapsed();
    // Backlogs: the windows made during the faults reach the controller by
    // themselves (a reconnect, an ack for later windows, the resend timer).
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let depth: u64 = invariants::fleet_states(&fleet)
            .await
            .iter()
            .filter_map(|s| s.status.as_ref().map(|st| st.outbox_depth))
            .sum();
        report.backlog_peak = report.backlog_peak.max(depth);
        if depth <= 2 * cfg.agents as u64 {
            report.drained = Some(calm.elapsed());
            break;
        }
        if Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in rollouts.list().await {
        report.rollouts.insert(s.id.clone(), s.phase.to_string());
    }
    for s in invariants::fleet_states(&fleet).await {
        let Some(st) = s.status else { continue };
        report.windows_evicted += st.outbox_evicted;
        report.windows_queued += st.outbox_depth;
    }
    let (stored, highest) = invariants::window_totals(&ctl).await?;
    report.windows_stored = stored;
    // Made: every sequence up to the highest stored, plus what still waits
    // in the outboxes (numbered above it).
    report.windows_made = highest + report.windows_queued;
    report.wrong_state = report
        .violations
        .iter()
        .filter(|v| v.invariant == "version")
        .count() as u64;
    fleet.shutdown().await;
    running.shutdown().await;
    if report.rollouts.is_empty() {
        bail!("seed {}: no rollout ever started", cfg.seed);
    }
    Ok(report)
}
