//! SQLite persistence of rollouts: the whole state machine as JSON plus an
//! append-only audit log, written in one transaction per step.

use rusqlite::{Connection, params};

use crate::core::rollout::{AuditEvent, Rollout};

/// Schema of the rollout tables (a migration in `db::MIGRATIONS`).
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE rollouts (
    id          TEXT PRIMARY KEY,
    model       TEXT NOT NULL,
    target      INTEGER NOT NULL,
    active      INTEGER NOT NULL,
    state       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE rollout_audit (
    rollout     TEXT NOT NULL,
    n           INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    event       TEXT NOT NULL,
    PRIMARY KEY (rollout, n)
);
CREATE TABLE failed_versions (
    model       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    rollout     TEXT NOT NULL,
    PRIMARY KEY (model, version)
);
"#;

/// Writes a rollout's state and its new audit events atomically.
pub(crate) fn save(
    conn: &mut Connection,
    rollout: &Rollout,
    audit: &[AuditEvent],
    now_ms: u64,
) -> rusqlite::Result<()> {
    let state = rollout
        .to_json()
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO rollouts (id, model, target, active, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT(id) DO UPDATE SET active = ?4, state = ?5, updated_at = ?6",
        params![
            rollout.id(),
            rollout.spec().model.as_str(),
            rollout.spec().target.0 as i64,
            rollout.is_active(),
            state,
            now_ms as i64
        ],
    )?;
    if !audit.is_empty() {
        let mut n: i64 = tx.query_row(
            "SELECT COALESCE(MAX(n), 0) FROM rollout_audit WHERE rollout = ?1",
            params![rollout.id()],
            |r| r.get(0),
        )?;
        for ev in audit {
            n += 1;
            let json = serde_json::to_string(ev)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            tx.execute(
                "INSERT INTO rollout_audit (rollout, n, at, event) VALUES (?1, ?2, ?3, ?4)",
                params![rollout.id(), n, ev.at.0 as i64, json],
            )?;
        }
    }
    for v in rollout.failed_versions() {
        tx.execute(
            "INSERT OR IGNORE INTO failed_versions (model, version, rollout) VALUES (?1, ?2, ?3)",
            params![rollout.spec().model.as_str(), v.0 as i64, rollout.id()],
        )?;
    }
    tx.commit()
}

/// Appends one audit entry saying which operator acted (`by`, a token
/// name), in the same shape as the engine's events.
pub(crate) fn append_actor(
    conn: &mut Connection,
    rollout: &str,
    at_ms: u64,
    by: &str,
    action: &str,
) -> rusqlite::Result<()> {
    let ev = serde_json::json!({
        "at": at_ms,
        "rollout": rollout,
        "event": { "kind": "operator", "by": by, "action": action },
        "message": format!("{action} by {by:?}"),
    });
    let tx = conn.transaction()?;
    let n: i64 = tx.query_row(
        "SELECT COALESCE(MAX(n), 0) FROM rollout_audit WHERE rollout = ?1",
        params![rollout],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO rollout_audit (rollout, n, at, event) VALUES (?1, ?2, ?3, ?4)",
        params![rollout, n + 1, at_ms as i64, ev.to_string()],
    )?;
    tx.commit()
}

/// Every stored rollout, oldest first. States that no longer decode are
/// skipped with a warning rather than stopping the controller.
pub(crate) fn load_all(conn: &Connection) -> rusqlite::Result<Vec<Rollout>> {
    let mut stmt = conn.prepare("SELECT id, state FROM rollouts ORDER BY created_at, id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, state) = row?;
        match Rollout::from_json(&state) {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::warn!(rollout = %id, error = %e, "stored rollout does not decode; skipped")
            }
        }
    }
    Ok(out)
}

/// Versions of `model` that failed a rollout.
pub(crate) fn failed_versions(conn: &Connection, model: &str) -> rusqlite::Result<Vec<u64>> {
    let mut stmt = conn.prepare("SELECT version FROM failed_versions WHERE model = ?1")?;
    let rows = stmt.query_map(params![model], |r| r.get::<_, i64>(0))?;
    rows.map(|r| r.map(|v| v as u64)).collect()
}

/// The last `limit` audit events of a rollout, oldest first.
pub(crate) fn audit(
    conn: &Connection,
    id: &str,
    limit: u32,
) -> rusqlite::Result<Vec<serde_json::Value>> {
    let mut stmt = conn.prepare(
        "SELECT event FROM (SELECT n, event FROM rollout_audit WHERE rollout = ?1 ORDER BY n DESC LIMIT ?2) ORDER BY n",
    )?;
    let rows = stmt.query_map(params![id, limit], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for r in rows {
        let text = r?;
        if let Ok(v) = serde_json::from_str(&text) {
            out.push(v);
        }
    }
    Ok(out)
}
