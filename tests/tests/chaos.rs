//! The seeded chaos test: random faults (agent crash, controller kill -9,
//! broker restart, link cut) over a simulated fleet for a bounded time,
//! the shared invariants checked at the end. CI runs a fixed seed list for a
//! short time each; `DROVER_CHAOS_SEED=N` replays one seed and
//! `DROVER_CHAOS_SECS=S` changes the duration. The long run is `#[ignore]`d
//! (BENCHMARKS.md, Faults).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use drover_sim::chaos::{ChaosConfig, ChaosReport, run};

/// Prints the seed if the test fails (panics) while it is alive.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "chaos: FAILED; replay with DROVER_CHAOS_SEED={} cargo test -p drover-sim --test chaos",
                self.0
            );
        }
    }
}

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("DROVER_CHAOS_SEED") {
        Ok(s) => s
            .split(',')
            .map(|s| s.trim().parse().expect("DROVER_CHAOS_SEED: a number"))
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn secs(default: u64) -> Duration {
    Duration::from_secs(
        std::env::var("DROVER_CHAOS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

async fn check(cfg: ChaosConfig) -> ChaosReport {
    let _guard = SeedGuard(cfg.seed);
    eprintln!("chaos: seed {} for {:?}", cfg.seed, cfg.duration);
    let r = run(&cfg).await.unwrap();
    eprintln!(
        "[chaos] seed {}: faults {:?}; rollouts {:?}; windows made {} stored {} evicted {} queued {}; \
         wrong state {}; converged {:?} after the faults; operator resumes {}; \
         backlog peak {} drained {:?}",
        r.seed,
        r.faults,
        r.rollouts,
        r.windows_made,
        r.windows_stored,
        r.windows_evicted,
        r.windows_queued,
        r.wrong_state,
        r.converge,
        r.operator_resumes,
        r.backlog_peak,
        r.drained
    );
    assert!(
        r.violations.is_empty(),
        "seed {}: invariants broken: {:#?}",
        r.seed,
        r.violations
    );
    assert_eq!(r.wrong_state, 0, "seed {}", r.seed);
    assert!(
        r.windows_stored + r.windows_evicted <= r.windows_made,
        "seed {}: more windows stored than made",
        r.seed
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_fixed_seeds() {
    for seed in seeds(&[1, 2, 3]) {
        check(ChaosConfig {
            seed,
            agents: 6,
            duration: secs(12),
            gap: (Duration::from_millis(300), Duration::from_millis(1200)),
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long chaos run (minutes); see BENCHMARKS.md, Faults"]
async fn chaos_long() {
    for seed in seeds(&[11, 12, 13, 14, 15]) {
        check(ChaosConfig {
            seed,
            agents: 12,
            duration: secs(120),
            gap: (Duration::from_millis(200), Duration::from_millis(1500)),
        })
        .await;
    }
}
