//! The invariants every fault test checks afterwards, in one place:
//!
//! 1. every device runs the version the controller believes it runs;
//! 2. every telemetry window a device made is stored once (the primary key
//!    `(device, seq)` makes a second copy impossible) or accounted for as
//!    evicted or still waiting in the device's outbox;
//! 3. no rollout is stuck without a reason an operator can read (an active
//!    rollout is moving, or paused / rolling back with a non-empty reason);
//! 4. no command reused a sequence number: the controller's log holds each
//!    `(device, seq)` once, and no device accepted a sequence number the
//!    controller never issued (which is what a controller that forgot its
//!    counter after a crash would send).

use std::collections::BTreeMap;
use std::time::Duration;

use drover_controller::Controller;
use drover_controller::core::rollout::Phase;
use drover_controller::rollouts::RolloutService;

use crate::fleet::Fleet;

/// One broken invariant, for a failure message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (1–4 above, by name).
    pub invariant: &'static str,
    /// The device or rollout concerned and what was seen.
    pub detail: String,
}

/// Per-device facts read from the controller's database.
#[derive(Debug, Default, Clone)]
struct Stored {
    windows: u64,
    max_window_seq: u64,
    max_command_seq: u64,
}

async fn stored(ctl: &Controller) -> anyhow::Result<BTreeMap<String, Stored>> {
    let rows = ctl
        .db()
        .call(|c| {
            let mut out: BTreeMap<String, Stored> = BTreeMap::new();
            let mut q =
                c.prepare("SELECT device, COUNT(*), MAX(seq) FROM telemetry GROUP BY device")?;
            let rows = q.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for r in rows {
                let (d, n, max) = r?;
                let e = out.entry(d).or_default();
                e.windows = n.max(0) as u64;
                e.max_window_seq = max.max(0) as u64;
            }
            let mut q = c.prepare("SELECT device, MAX(seq) FROM commands GROUP BY device")?;
            let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for r in rows {
                let (d, max) = r?;
                out.entry(d).or_default().max_command_seq = max.max(0) as u64;
            }
            Ok(out)
        })
        .await?;
    Ok(rows)
}

/// Checks all four invariants once and returns what is broken.
pub async fn check(
    ctl: &Controller,
    rollouts: Option<&RolloutService>,
    fleet: &Fleet,
) -> anyhow::Result<Vec<Violation>> {
    let mut v = Vec::new();
    let db = stored(ctl).await?;
    for d in &fleet.devices {
        let Some(status) = d.with_agent(|a| a.status()).await else {
            // A device that is down is checked when it is back.
            continue;
        };
        let believed = ctl.device(&d.id).await?.and_then(|i| i.active);
        if believed != status.active {
            v.push(Violation {
                invariant: "version",
                detail: format!(
                    "{}: runs {:?}, controller believes {:?}",
                    d.id, status.active, believed
                ),
            });
        }
        let s = db.get(d.id.as_str()).cloned().unwrap_or_default();
        // Windows 1..=max stored are each stored, evicted, or still queued.
        let missing = s.max_window_seq.saturating_sub(s.windows);
        if missing > status.outbox_evicted + status.outbox_depth {
            v.push(Violation {
                invariant: "windows",
                detail: format!(
                    "{}: {missing} windows below seq {} neither stored nor evicted ({} evicted, {} queued)",
                    d.id, s.max_window_seq, status.outbox_evicted, status.outbox_depth
                ),
            });
        }
        if status.last_command_seq > s.max_command_seq {
            v.push(Violation {
                invariant: "sequence",
                detail: format!(
                    "{}: accepted command {} but the controller issued at most {}",
                    d.id, status.last_command_seq, s.max_command_seq
                ),
            });
        }
    }
    if let Some(r) = rollouts {
        for summary in r.list().await {
            if !summary.active {
                continue;
            }
            let detail = r.detail(&summary.id, 1).await?;
            let reason = match &detail.status.phase {
                Phase::Paused { reason, .. } | Phase::RollingBack { reason, .. } => {
                    Some(reason.clone())
                }
                _ => None,
            };
            if reason.is_some_and(|r| r.trim().is_empty()) {
                v.push(Violation {
                    invariant: "rollout",
                    detail: format!("{} is {} without a reason", summary.id, summary.phase),
                });
            }
        }
    }
    Ok(v)
}

/// Waits (up to `timeout`) for every invariant to hold: after a fault the
/// fleet needs a moment to converge. Returns the time it took, or the
/// violations still seen at the end.
pub async fn converge(
    ctl: &Controller,
    rollouts: Option<&RolloutService>,
    fleet: &Fleet,
    timeout: Duration,
) -> Result<Duration, Vec<Violation>> {
    let start = tokio::time::Instant::now();
    loop {
        let v = match check(ctl, rollouts, fleet).await {
            Ok(v) => v,
            Err(e) => vec![Violation {
                invariant: "check",
                detail: e.to_string(),
            }],
        };
        if v.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
