//! SQLite state: one WAL-mode database per data dir, versioned migrations via
//! `PRAGMA user_version`, and a small handle that runs queries off the async
//! executor.
//!
//! # Adding a migration (other modules: rollout, drift, retrain)
//!
//! Append a [`Migration`] to the end of [`MIGRATIONS`]; its position (1-based)
//! becomes the schema version it brings the database to. Keep the SQL next to
//! the module that owns the tables (`pub(crate) const MIGRATION_1: &str = ...`)
//! and reference it from here. Never edit, reorder or remove a migration that
//! has shipped: databases in the field have already applied it. Each
//! migration runs in its own transaction together with the `user_version`
//! bump, so a failure leaves the database at the previous version.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Owner and purpose, e.g. `core: devices, models, telemetry`; for logs.
    pub name: &'static str,
    /// SQL run in one transaction (may hold several statements).
    pub sql: &'static str,
}

/// Every migration, in order. Append only (see the module docs).
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "core: keys, models, aliases, devices, commands, deployments, telemetry",
        sql: CORE_V1,
    },
    Migration {
        name: "rollout_service: rollouts and their audit trail",
        sql: crate::rollouts::store::MIGRATION,
    },
    Migration {
        name: "fleet: device keys and uplink counters",
        sql: DEVICE_KEYS_V3,
    },
    Migration {
        name: "agent_releases: signed agent binaries per version and arch",
        sql: AGENT_RELEASES_V4,
    },
    Migration {
        name: "telemetry: per-minute rollups by model, version, role and cohort",
        sql: TELEMETRY_ROLLUPS_V5,
    },
];

/// Per-minute telemetry rollups (`crate::telemetry::rollup`).
// Here rather than in telemetry/ (which imports this module): no import cycle.
const TELEMETRY_ROLLUPS_V5: &str = r#"
CREATE TABLE telemetry_rollups (
    model    TEXT NOT NULL,
    version  INTEGER NOT NULL,
    role     TEXT NOT NULL,
    cohort   TEXT NOT NULL,
    minute   INTEGER NOT NULL,
    windows  INTEGER NOT NULL,
    merged   BLOB NOT NULL,
    PRIMARY KEY (model, version, role, cohort, minute)
) WITHOUT ROWID;
CREATE INDEX telemetry_rollups_by_minute ON telemetry_rollups (minute);
"#;

/// Device keys (public half, hex) and each device's uplink position: the
/// last accepted counter and its clock offset (see `core::uplink`).
// Here rather than in fleet/ (which imports this module): no import cycle.
const DEVICE_KEYS_V3: &str = r#"
ALTER TABLE devices ADD COLUMN device_key TEXT;
ALTER TABLE devices ADD COLUMN uplink_counter INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN clock_offset_us INTEGER NOT NULL DEFAULT 0;
"#;

/// Agent releases (`crate::agent_releases`), one row per `(version, arch)`;
/// the version's parts as integers so listings sort numerically.
// Here rather than in agent_releases.rs (which imports this module): no
// import cycle.
const AGENT_RELEASES_V4: &str = r#"
CREATE TABLE agent_releases (
    version     TEXT NOT NULL,
    arch        TEXT NOT NULL,
    major       INTEGER NOT NULL,
    minor       INTEGER NOT NULL,
    patch       INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    signed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (version, arch)
);
"#;

const CORE_V1: &str = r#"
CREATE TABLE key_lists (
    version     INTEGER PRIMARY KEY,
    signed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE models (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    signed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE aliases (
    name        TEXT NOT NULL,
    alias       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE devices (
    id                TEXT PRIMARY KEY,
    registered        INTEGER NOT NULL DEFAULT 0,
    password_hash     TEXT,
    reg_labels        TEXT NOT NULL DEFAULT '{}',
    labels            TEXT NOT NULL DEFAULT '{}',
    hardware          TEXT,
    arch              TEXT,
    agent_version     TEXT,
    active            TEXT,
    previous          TEXT,
    shadow            TEXT,
    reported_seq      INTEGER NOT NULL DEFAULT 0,
    issued_seq        INTEGER NOT NULL DEFAULT 0,
    key_list_version  INTEGER NOT NULL DEFAULT 0,
    outbox_depth      INTEGER NOT NULL DEFAULT 0,
    online            INTEGER NOT NULL DEFAULT 0,
    last_seen         INTEGER,
    deploy_state      TEXT,
    created_at        INTEGER NOT NULL
);
CREATE TABLE commands (
    device      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    model       TEXT,
    issued_at   INTEGER NOT NULL,
    result      TEXT,
    PRIMARY KEY (device, seq)
);
CREATE TABLE deployments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device      TEXT NOT NULL,
    model       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    shadow      INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    state       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX deployments_by_seq ON deployments (device, seq);
CREATE TABLE telemetry (
    device      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    model       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    role        TEXT NOT NULL,
    start_ms    INTEGER NOT NULL,
    end_ms      INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    errors      INTEGER NOT NULL,
    labelled    INTEGER NOT NULL,
    correct     INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    window      BLOB NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE INDEX telemetry_by_model ON telemetry (model, version, end_ms);
CREATE INDEX telemetry_by_end ON telemetry (end_ms);
"#;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database is newer than this build understands.
    #[error(
        "database schema version {found} is newer than this build supports ({supported}); upgrade drover"
    )]
    TooNew {
        /// Version on disk.
        found: u32,
        /// Highest version this build knows.
        supported: u32,
    },
    /// A migration failed.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        /// Target version.
        version: u32,
        /// Its name.
        name: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A stored value does not decode.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The blocking task running the query died.
    #[error("database task failed: {0}")]
    Task(String),
}

/// A cheap-to-clone handle on the controller's SQLite database.
///
/// One connection behind a mutex: SQLite serialises writers anyway, and WAL
/// keeps readers of other processes unblocked. Async callers use
/// [`Db::call`], which runs the closure on the blocking pool.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies
    /// [`MIGRATIONS`].
    pub fn open(path: &Path) -> Result<Db, DbError> {
        Self::open_with(path, MIGRATIONS)
    }

    /// Opens the database and applies `migrations` (tests use this to check
    /// the mechanism with their own lists).
    pub fn open_with(path: &Path, migrations: &[Migration]) -> Result<Db, DbError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn, migrations)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Locks the connection for synchronous use. Only call from blocking
    /// contexts (`spawn_blocking`, CLI-less startup, tests).
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every
        // write is transactional), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<R, F>(&self, f: F) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, DbError> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = db.lock();
            f(&mut conn)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// The schema version on disk.
    pub fn schema_version(&self) -> Result<u32, DbError> {
        Ok(self
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }
}

fn migrate(conn: &mut Connection, migrations: &[Migration]) -> Result<(), DbError> {
    let current: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = u32::try_from(migrations.len()).unwrap_or(u32::MAX);
    if current > supported {
        return Err(DbError::TooNew {
            found: current,
            supported,
        });
    }
    for (i, m) in migrations.iter().enumerate().skip(current as usize) {
        let version = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let run = |conn: &mut Connection| -> Result<(), rusqlite::Error> {
            let tx = conn.transaction()?;
            tx.execute_batch(m.sql)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()
        };
        run(conn).map_err(|source| DbError::Migration {
            version,
            name: m.name,
            source,
        })?;
        tracing::info!(version, name = m.name, "applied database migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let first = [Migration {
            name: "a",
            sql: "CREATE TABLE a (x INTEGER);",
        }];
        let db = Db::open_with(&path, &first).unwrap();
        assert_eq!(db.schema_version().unwrap(), 1);
        db.lock().execute("INSERT INTO a VALUES (1)", []).unwrap();
        drop(db);
        let both = [
            first[0],
            Migration {
                name: "b",
                sql: "CREATE TABLE b (y INTEGER);",
            },
        ];
        let db = Db::open_with(&path, &both).unwrap();
        assert_eq!(db.schema_version().unwrap(), 2);
        let n: i64 = db
            .lock()
            .query_row("SELECT count(*) FROM a", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "re-opening must not re-run migration 1");
        drop(db);
        assert!(matches!(
            Db::open_with(&path, &first),
            Err(DbError::TooNew {
                found: 2,
                supported: 1
            })
        ));
    }

    #[test]
    fn failed_migration_leaves_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let bad = [
            Migration {
                name: "ok",
                sql: "CREATE TABLE a (x INTEGER);",
            },
            Migration {
                name: "bad",
                sql: "CREATE TABLE c (x INTEGER); THIS IS NOT SQL;",
            },
        ];
        assert!(matches!(
            Db::open_with(&path, &bad),
            Err(DbError::Migration { version: 2, .. })
        ));
        let db = Db::open_with(&path, &bad[..1]).unwrap();
        assert_eq!(db.schema_version().unwrap(), 1);
        let c: i64 = db
            .lock()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'c'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(c, 0);
    }

    #[test]
    fn core_schema_applies() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(db.schema_version().unwrap() as usize, MIGRATIONS.len());
        let mode: String = db
            .lock()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
