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

use drover_agent::status::AgentStatus;
use drover_controller::Controller;
use drover_controller::core::rollout::Phase;
use drover_controller::rollouts::RolloutService;
use drover_protocol::DeviceId;

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

/// Windows stored, and the sum over devices of the highest stored
/// sequence (windows made and acknowledged or evicted, when invariant 2 holds).
pub async fn window_totals(ctl: &Controller) -> anyhow::Result<(u64, u64)> {
    let db = stored(ctl).await?;
    Ok(db
        .values()
        .fold((0, 0), |(n, m), s| (n + s.windows, m + s.max_window_seq)))
}

/// A device as the checker sees it: its id and, while it is up, what its
/// agent reports (in-process: `Agent::status`; a process: `GET /v1/status`).
#[derive(Debug, Clone)]
pub struct DeviceState {
    /// Device id.
    pub id: String,
    /// The agent's status; `None` while it is down.
    pub status: Option<AgentStatus>,
}

/// The states of an in-process fleet's devices.
pub async fn fleet_states(fleet: &Fleet) -> Vec<DeviceState> {
    let mut out = Vec::with_capacity(fleet.devices.len());
    for d in &fleet.devices {
        out.push(DeviceState {
            id: d.id.to_string(),
            status: d.with_agent(|a| a.status()).await,
        });
    }
    out
}

/// Rows of a table whose `(device, seq)` appears more than once: zero while
/// the primary key holds; counted so that a schema change that drops the key
/// cannot let a duplicate through unseen.
async fn duplicated(ctl: &Controller, table: &'static str) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(ctl
        .db()
        .call(move |c| {
            let mut q = c.prepare(&format!(
                "SELECT device, seq FROM {table} GROUP BY device, seq HAVING COUNT(*) > 1 LIMIT 5"
            ))?;
            let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?)
}

/// Checks all four invariants once for an in-process fleet.
pub async fn check(
    ctl: &Controller,
    rollouts: Option<&RolloutService>,
    fleet: &Fleet,
) -> anyhow::Result<Vec<Violation>> {
    check_states(ctl, rollouts, &fleet_states(fleet).await).await
}

/// Checks all four invariants once and returns what is broken.
pub async fn check_states(
    ctl: &Controller,
    rollouts: Option<&RolloutService>,
    devices: &[DeviceState],
) -> anyhow::Result<Vec<Violation>> {
    let mut v = Vec::new();
    let db = stored(ctl).await?;
    for (table, invariant) in [("telemetry", "windows"), ("commands", "sequence")] {
        for (d, seq) in duplicated(ctl, table).await? {
            v.push(Violation {
                invariant,
                detail: format!("{d}: {table} seq {seq} stored more than once"),
            });
        }
    }
    for d in devices {
        let Some(status) = &d.status else {
            // A device that is down is checked when it is back.
            continue;
        };
        let believed = ctl
            .device(&DeviceId::new(d.id.clone())?)
            .await?
            .and_then(|i| i.active);
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

/// Waits (up to `timeout`) for every invariant to hold for an in-process
/// fleet. Returns the time it took, or the violations still seen at the end.
pub async fn converge(
    ctl: &Controller,
    rollouts: Option<&RolloutService>,
    fleet: &Fleet,
    timeout: Duration,
) -> Result<Duration, Vec<Violation>> {
    converge_with(ctl, rollouts, timeout, || fleet_states(fleet)).await
}

/// Waits (up to `timeout`) for every invariant to hold over the devices
/// `states` reports: after a fault the fleet needs a moment to converge.
pub async fn converge_with<F, Fut>(
    ctl: &Controller,
    rollouts: Option<&RolloutService>,
    timeout: Duration,
    states: F,
) -> Result<Duration, Vec<Violation>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<DeviceState>>,
{
    let start = tokio::time::Instant::now();
    loop {
        let v = match check_states(ctl, rollouts, &states().await).await {
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
