//! Answers the rollout engine's metrics requests from stored telemetry:
//! windows of the cohort's devices, model version and role whose end falls in
//! the request's time range, merged one window at a time.

use std::collections::{BTreeSet, HashSet};

use drover_protocol::codec;
use drover_protocol::telemetry::TelemetryWindow;
use drover_protocol::{DeviceId, Version};
use rusqlite::{Connection, params};

use crate::core::rollout::{CohortMetrics, MetricsKind, MetricsRequest};

/// Merges the windows of `devices` for `model@version` in `role` over
/// `[since, until)` (by window end).
pub(crate) fn cohort(
    conn: &Connection,
    model: &str,
    versions: &[Version],
    role: &str,
    devices: &[DeviceId],
    since: u64,
    until: u64,
) -> rusqlite::Result<CohortMetrics> {
    let mut m = CohortMetrics::default();
    if devices.is_empty() || versions.is_empty() {
        return Ok(m);
    }
    let wanted: HashSet<&str> = devices.iter().map(DeviceId::as_str).collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    // Filter devices in Rust: a wave can hold thousands of ids, more than
    // SQLite's bound-parameter limit.
    let mut stmt = conn.prepare_cached(
        "SELECT device, window FROM telemetry
         WHERE model = ?1 AND version = ?2 AND role = ?3 AND end_ms >= ?4 AND end_ms < ?5",
    )?;
    for v in versions {
        let mut rows = stmt.query(params![
            model,
            v.0 as i64,
            role,
            since as i64,
            until.min(i64::MAX as u64) as i64
        ])?;
        while let Some(row) = rows.next()? {
            let device: String = row.get(0)?;
            if !wanted.contains(device.as_str()) {
                continue;
            }
            let blob: Vec<u8> = row.get(1)?;
            match codec::decode::<TelemetryWindow>(&blob, codec::MAX_UP_PAYLOAD) {
                Ok(w) => {
                    m.add_window(&w);
                    seen.insert(device);
                }
                Err(e) => {
                    tracing::warn!(%device, error = %e, "stored window does not decode; skipped")
                }
            }
        }
    }
    m.devices = seen.len() as u64;
    Ok(m)
}

/// Canary and control metrics for a request.
pub(crate) fn answer(
    conn: &Connection,
    req: &MetricsRequest,
) -> rusqlite::Result<(CohortMetrics, CohortMetrics)> {
    let canary_role = match req.kind {
        MetricsKind::Shadow => "shadow",
        MetricsKind::Wave => "active",
    };
    let model = req.model.as_str();
    let canary = cohort(
        conn,
        model,
        &[req.new_version],
        canary_role,
        &req.canary,
        req.since.0,
        req.until.0,
    )?;
    let control = cohort(
        conn,
        model,
        &req.old_versions,
        "active",
        &req.control,
        req.since.0,
        req.until.0,
    )?;
    Ok((canary, control))
}
