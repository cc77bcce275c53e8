//! Test-only fault points, shared by the agent and the controller. With
//! cargo feature `fault-points` (turned on by their `sim` features) and
//! `DROVER_SIM_FAULT=<point>[@<n>]` in the environment, the process aborts
//! (SIGABRT: no destructors, no flush, no Offline message: what `kill -9`
//! leaves) the n-th time (default the first) it reaches `<point>`. The fault
//! matrix (`tests/tests/faults_*.rs`) uses it to kill a real `drover-agent`
//! or `drover serve` at an exact phase. Without the feature `hit` is empty
//! and the variable is never read: device and release builds carry no fault
//! point.

/// Aborts the process here if the environment armed this point.
#[cfg(feature = "fault-points")]
pub fn hit(point: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let v = std::env::var("DROVER_SIM_FAULT").ok()?;
        Some(match v.split_once('@') {
            Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
            None => (v, 1),
        })
    });
    if let Some((p, n)) = armed
        && p == point
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= *n
    {
        eprintln!("DROVER_SIM_FAULT: abort at {point}");
        std::process::abort();
    }
}

/// Without feature `fault-points`: nothing.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub fn hit(_point: &str) {}
