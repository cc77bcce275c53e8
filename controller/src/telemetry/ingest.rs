//! Telemetry ingest: windows from the MQTT dispatcher arrive on a bounded
//! queue; a single writer stores them in batches (deduplicated by
//! `(device, seq)` through the primary key), then acknowledges every window
//! it holds — new or duplicate — with one signed, device-bound
//! `SignedTelemetryAck` per device and batch. Retention prunes old windows.

use std::collections::BTreeMap;

use drover_protocol::Signed;
use drover_protocol::codec;
use drover_protocol::messages::{BoundTelemetryAck, Down};
use drover_protocol::telemetry::{ModelRole, TelemetryWindow};
use drover_protocol::{DeviceId, Timestamp};
use rusqlite::params;
use tokio::sync::{mpsc, watch};

use crate::controller::{Controller, DeviceEvent, WindowSummary};
use crate::db::DbError;
use crate::metrics::inc;

/// Windows stored per transaction at most.
pub(crate) const BATCH: usize = 256;

/// What a batch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct BatchOutcome {
    /// Sequences to acknowledge, per device.
    pub acks: BTreeMap<DeviceId, Vec<u64>>,
    /// Windows stored now (not duplicates).
    pub stored: Vec<(DeviceId, WindowSummary)>,
    /// Duplicates seen.
    pub duplicates: u64,
}

fn role_word(r: ModelRole) -> &'static str {
    match r {
        ModelRole::Active => "active",
        ModelRole::Shadow => "shadow",
    }
}

/// Stores a batch in one transaction.
pub(crate) fn store_batch(
    conn: &mut rusqlite::Connection,
    items: &[(DeviceId, TelemetryWindow)],
    now: Timestamp,
) -> Result<BatchOutcome, DbError> {
    let tx = conn.transaction()?;
    let mut out = BatchOutcome::default();
    // Windows stored now (not duplicates): merged into their rollups in
    // the same transaction, so a rollup counts each window exactly once.
    let mut new: Vec<(&DeviceId, &TelemetryWindow, &'static str)> = Vec::new();
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO telemetry (device, seq, model, version, role, start_ms, end_ms,
                count, errors, labelled, correct, received_at, window)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        let mut touch = tx.prepare_cached(
            "INSERT INTO devices (id, created_at, last_seen) VALUES (?1, ?2, ?2)
             ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
        )?;
        for (device, w) in items {
            let blob = codec::encode(w, usize::MAX).map_err(|e| DbError::Corrupt(e.to_string()))?;
            let n = insert.execute(params![
                device.as_str(),
                w.seq as i64,
                w.model.name.as_str(),
                w.model.version.0 as i64,
                role_word(w.role),
                w.start.0 as i64,
                w.end.0 as i64,
                w.count as i64,
                w.errors as i64,
                w.labelled as i64,
                w.correct as i64,
                now.0 as i64,
                blob
            ])?;
            touch.execute(params![device.as_str(), now.0 as i64])?;
            out.acks.entry(device.clone()).or_default().push(w.seq);
            if n == 1 {
                new.push((device, w, role_word(w.role)));
                out.stored.push((
                    device.clone(),
                    WindowSummary {
                        seq: w.seq,
                        model: w.model.to_string(),
                        role: role_word(w.role).into(),
                        start: w.start.0,
                        end: w.end.0,
                        count: w.count,
                        errors: w.errors,
                    },
                ));
            } else {
                out.duplicates += 1;
            }
        }
    }
    super::rollup::add(&tx, &new)?;
    tx.commit()?;
    Ok(out)
}

/// Deletes windows that ended before `cutoff`; returns how many.
pub(crate) fn prune(conn: &rusqlite::Connection, cutoff: Timestamp) -> Result<usize, DbError> {
    Ok(conn.execute(
        "DELETE FROM telemetry WHERE end_ms < ?1",
        params![cutoff.0 as i64],
    )?)
}

async fn flush(ctrl: &Controller, batch: Vec<(DeviceId, TelemetryWindow)>) {
    let now = ctrl.now();
    let n = batch.len();
    let result = ctrl.db().call(move |c| store_batch(c, &batch, now)).await;
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            // Nothing acknowledged: the agents keep the windows and resend.
            tracing::error!(error = %e, windows = n, "storing telemetry failed");
            return;
        }
    };
    // Committed, not yet acknowledged: the agents resend, the key dedups.
    crate::fault::hit("telemetry.stored");
    let metrics = ctrl.metrics();
    metrics.windows_ingested.fetch_add(
        out.stored.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    metrics
        .windows_deduped
        .fetch_add(out.duplicates, std::sync::atomic::Ordering::Relaxed);
    let signer = ctrl.commands_signer();
    for (device, seqs) in out.acks {
        // Bound to the device and signed with the commands key the agent
        // already trusts: no other client can make it drop windows.
        let ack = BoundTelemetryAck {
            fleet: ctrl.fleet().clone(),
            device: device.clone(),
            seqs,
        };
        let signed = match Signed::sign(&ack, signer.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(%device, error = %e, "signing a telemetry ack failed");
                continue;
            }
        };
        match ctrl
            .publish_down(&device, &Down::SignedTelemetryAck(signed))
            .await
        {
            Ok(()) => inc(&metrics.telemetry_acks_sent),
            Err(e) => tracing::warn!(%device, error = %e, "publishing a telemetry ack failed"),
        }
    }
    for (device, window) in out.stored {
        ctrl.emit(DeviceEvent::TelemetryStored { device, window });
    }
}

/// The writer task. On shutdown it stores what is already queued, then stops.
pub(crate) async fn run(
    ctrl: Controller,
    mut rx: mpsc::Receiver<(DeviceId, TelemetryWindow)>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = shutdown.changed() => {
                rx.close();
                let mut rest = Vec::new();
                while let Ok(item) = rx.try_recv() {
                    rest.push(item);
                    if rest.len() >= BATCH {
                        flush(&ctrl, std::mem::take(&mut rest)).await;
                    }
                }
                if !rest.is_empty() {
                    flush(&ctrl, rest).await;
                }
                return;
            }
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        flush(&ctrl, batch).await;
    }
}

/// The retention task: prunes raw windows older than `days` and rollups
/// older than `rollup_days`, at start and then every hour.
pub(crate) async fn retention(
    ctrl: Controller,
    days: u64,
    rollup_days: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let period = std::time::Duration::from_secs(3600);
    let ago =
        |d: u64, now: Timestamp| Timestamp(now.0.saturating_sub(d.saturating_mul(86_400_000)));
    loop {
        let now = ctrl.now();
        let (cutoff, rollup_cutoff) = (ago(days, now), ago(rollup_days, now));
        let pruned = ctrl
            .db()
            .call(move |c| Ok((prune(c, cutoff)?, super::rollup::prune(c, rollup_cutoff)?)))
            .await;
        match pruned {
            Ok((0, 0)) => {}
            Ok((windows, rollups)) => {
                tracing::info!(windows, rollups, days, rollup_days, "pruned old telemetry");
            }
            Err(e) => tracing::warn!(error = %e, "telemetry retention failed"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::testkit::realistic_window;

    #[test]
    fn duplicates_are_acked_but_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("t.db")).unwrap();
        let a = DeviceId::new("a").unwrap();
        let b = DeviceId::new("b").unwrap();
        let items = vec![
            (a.clone(), realistic_window(1)),
            (a.clone(), realistic_window(2)),
            (b.clone(), realistic_window(1)),
            (a.clone(), realistic_window(1)),
        ];
        let out = store_batch(&mut db.lock(), &items, Timestamp(5)).unwrap();
        assert_eq!(out.stored.len(), 3);
        assert_eq!(out.duplicates, 1);
        assert_eq!(out.acks[&a], vec![1, 2, 1]);
        assert_eq!(out.acks[&b], vec![1]);
        let again = store_batch(&mut db.lock(), &items[..1], Timestamp(6)).unwrap();
        assert!(again.stored.is_empty());
        assert_eq!(again.acks[&a], vec![1]);
        let n: i64 = db
            .lock()
            .query_row("SELECT count(*) FROM telemetry", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        // Unknown devices are inventoried (unregistered) with last_seen.
        let seen: i64 = db
            .lock()
            .query_row("SELECT last_seen FROM devices WHERE id = 'b'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(seen, 5);
        // Merge as we read: 3 windows of 6000 inferences.
        let f = crate::telemetry::query::TelemetryFilter {
            model: Some("sensor".into()),
            version: Some(3),
            per_device: true,
            ..Default::default()
        };
        let s = crate::telemetry::summary::summarize(&db.lock(), &f).unwrap();
        assert_eq!(s.merged.count, 18_000);
        assert_eq!(s.merged.windows, 3);
        assert_eq!(s.devices["a"].windows, 2);
        assert!(s.merged.p95_us.unwrap() > s.merged.p50_us.unwrap());
        assert_eq!(s.merged.outputs.iter().sum::<u64>(), 18_000);
        // Retention drops windows that ended before the cutoff.
        let end = realistic_window(1).end.0;
        assert_eq!(prune(&db.lock(), Timestamp(end)).unwrap(), 0);
        assert_eq!(prune(&db.lock(), Timestamp(end + 1)).unwrap(), 3);
    }
}
