//! SQLite persistence (WAL, `PRAGMA user_version` migrations) and the model
//! file layout of the data directory: installed models, active/previous/shadow
//! pointers, trust state, pending downloads, the telemetry outbox and the
//! window sequence counter.
//!
//! One owner: [`StoreHandle`] holds the connection behind a mutex and runs
//! every call on tokio's blocking pool, one at a time.
//!
//! ```text
//! DATA_DIR/agent.db            SQLite database
//! DATA_DIR/models/SHA.onnx     installed artifacts, content-addressed
//! DATA_DIR/partial/SHA.part    downloads in progress
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use drover_protocol::codec;
use drover_protocol::manifest::ModelManifest;
use drover_protocol::messages::{AgentSettings, Command, Up};
use drover_protocol::telemetry::TelemetryWindow;
use drover_protocol::{ModelRef, Sha256, Signed, TrustState};

use crate::core::deploy::PendingDownload;
pub use crate::core::slots::Slot;

/// Schema version this build writes.
const SCHEMA_VERSION: i32 = 1;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A stored value does not decode.
    #[error("corrupt store value {what}: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// A value could not be encoded.
    #[error("cannot encode {0}")]
    Encode(String),
    /// The database was written by a newer agent.
    #[error("database schema version {0} is newer than this agent understands ({SCHEMA_VERSION})")]
    FutureSchema(i32),
    /// The blocking task running the call died.
    #[error("store task failed: {0}")]
    Task(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A model on disk and the manifest that describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstalledModel {
    /// `name@version`.
    pub model: ModelRef,
    /// Artifact digest (also its file name).
    pub sha256: Sha256,
    /// Artifact size.
    pub size: u64,
    /// The signed manifest, as received.
    pub manifest: Signed<ModelManifest>,
}

/// Which models serve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pointers {
    /// The serving model.
    pub active: Option<ModelRef>,
    /// Kept for instant rollback.
    pub previous: Option<ModelRef>,
    /// The shadow candidate.
    pub shadow: Option<ModelRef>,
    /// Share of inputs the shadow sees, per mille.
    pub shadow_per_mille: u16,
}

impl Pointers {
    /// Whether `m` is active, previous or shadow.
    pub fn holds(&self, m: &ModelRef) -> bool {
        [&self.active, &self.previous, &self.shadow]
            .into_iter()
            .any(|p| p.as_ref() == Some(m))
    }
}

/// The agent's database and model directories.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    dir: PathBuf,
}

fn encode<T: serde::Serialize>(v: &T, what: &str) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|e| StoreError::Encode(format!("{what}: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8], what: &'static str) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn parse_ref(s: &str) -> Result<ModelRef, StoreError> {
    s.parse().map_err(
        |e: drover_protocol::ids::ModelRefError| StoreError::Corrupt {
            what: "model ref",
            detail: e.to_string(),
        },
    )
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating and migrating) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        for d in [
            data_dir.to_path_buf(),
            data_dir.join("models"),
            data_dir.join("partial"),
        ] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let mut conn = Connection::open(data_dir.join("agent.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Store {
            conn,
            dir: data_dir.to_path_buf(),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where an installed artifact lives.
    pub fn model_path(&self, sha: &Sha256) -> PathBuf {
        self.dir
            .join("models")
            .join(format!("{}.onnx", sha.to_hex()))
    }

    /// Where a download in progress lives.
    pub fn partial_path(&self, sha: &Sha256) -> PathBuf {
        self.dir
            .join("partial")
            .join(format!("{}.part", sha.to_hex()))
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn set_meta(conn: &Connection, key: &str, value: &[u8]) -> Result<(), StoreError> {
        conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// The device and fleet this data directory belongs to, once recorded.
    pub fn identity(&self) -> Result<Option<String>, StoreError> {
        self.meta("identity")?
            .map(|b| {
                String::from_utf8(b).map_err(|e| StoreError::Corrupt {
                    what: "identity",
                    detail: e.to_string(),
                })
            })
            .transpose()
    }

    /// Records the device and fleet this data directory belongs to.
    pub fn set_identity(&self, identity: &str) -> Result<(), StoreError> {
        Self::set_meta(&self.conn, "identity", identity.as_bytes())
    }

    /// The persisted trust state, if any.
    pub fn trust(&self) -> Result<Option<TrustState>, StoreError> {
        self.meta("trust")?
            .map(|b| decode(&b, "trust state"))
            .transpose()
    }

    /// Persists the trust state.
    pub fn save_trust(&self, t: &TrustState) -> Result<(), StoreError> {
        Self::set_meta(&self.conn, "trust", &encode(t, "trust state")?)
    }

    /// Persists the trust state that accepts `cmd` together with `cmd`
    /// itself, in one transaction: a process that dies before the command's
    /// action has durably started finds it again at start
    /// ([`Store::accepted_command`]) instead of a sequence number that
    /// says "accepted" over an action that never happened.
    pub fn accept_command(&mut self, t: &TrustState, cmd: &Command) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        Self::set_meta(&tx, "trust", &encode(t, "trust state")?)?;
        Self::set_meta(&tx, "accepted_command", &encode(cmd, "accepted command")?)?;
        tx.commit()?;
        Ok(())
    }

    /// The accepted command whose action had not durably started when the
    /// process stopped, if any.
    pub fn accepted_command(&self) -> Result<Option<Command>, StoreError> {
        self.meta("accepted_command")?
            .map(|b| decode(&b, "accepted command"))
            .transpose()
    }

    /// Forgets the accepted command: its action has started (or finished).
    pub fn clear_accepted_command(&self) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM meta WHERE key = 'accepted_command'", [])?;
        Ok(())
    }

    /// Settings changed by Configure commands.
    pub fn settings(&self) -> Result<AgentSettings, StoreError> {
        Ok(self
            .meta("settings")?
            .map(|b| decode(&b, "settings"))
            .transpose()?
            .unwrap_or_default())
    }

    /// Persists settings.
    pub fn save_settings(&self, s: &AgentSettings) -> Result<(), StoreError> {
        Self::set_meta(&self.conn, "settings", &encode(s, "settings")?)
    }

    /// Active/previous/shadow.
    pub fn pointers(&self) -> Result<Pointers, StoreError> {
        let get = |k: &str| -> Result<Option<ModelRef>, StoreError> {
            match self.meta(k)? {
                None => Ok(None),
                Some(b) => {
                    let s = String::from_utf8(b).map_err(|e| StoreError::Corrupt {
                        what: "pointer",
                        detail: e.to_string(),
                    })?;
                    parse_ref(&s).map(Some)
                }
            }
        };
        let per_mille = self
            .meta("shadow_per_mille")?
            .and_then(|b| <[u8; 2]>::try_from(b.as_slice()).ok())
            .map(u16::from_le_bytes)
            .unwrap_or(0);
        Ok(Pointers {
            active: get("active")?,
            previous: get("previous")?,
            shadow: get("shadow")?,
            shadow_per_mille: per_mille,
        })
    }

    fn write_pointers(conn: &Connection, p: &Pointers) -> Result<(), StoreError> {
        for (k, v) in [
            ("active", &p.active),
            ("previous", &p.previous),
            ("shadow", &p.shadow),
        ] {
            match v {
                Some(r) => Self::set_meta(conn, k, r.to_string().as_bytes())?,
                None => {
                    conn.execute("DELETE FROM meta WHERE key = ?1", [k])?;
                }
            }
        }
        Self::set_meta(conn, "shadow_per_mille", &p.shadow_per_mille.to_le_bytes())
    }

    /// Persists pointers.
    pub fn set_pointers(&mut self, p: &Pointers) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        Self::write_pointers(&tx, p)?;
        tx.commit()?;
        Ok(())
    }

    fn write_model(conn: &Connection, m: &InstalledModel) -> Result<(), StoreError> {
        conn.execute(
            "INSERT INTO models(name, version, sha256, size, manifest)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(name, version) DO UPDATE SET
               sha256 = excluded.sha256, size = excluded.size, manifest = excluded.manifest",
            params![
                m.model.name.as_str(),
                to_i64(m.model.version.0),
                m.sha256.to_hex(),
                to_i64(m.size),
                encode(&m.manifest, "manifest")?,
            ],
        )?;
        Ok(())
    }

    /// Records an installed model, the new pointers and trust state, and
    /// clears the download slot, in one transaction: the swap this enables
    /// happens only after it commits.
    pub fn commit_install(
        &mut self,
        m: &InstalledModel,
        pointers: &Pointers,
        trust: &TrustState,
        slot: Option<Slot>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        Self::write_model(&tx, m)?;
        Self::write_pointers(&tx, pointers)?;
        Self::set_meta(&tx, "trust", &encode(trust, "trust state")?)?;
        if let Some(slot) = slot {
            tx.execute("DELETE FROM pending WHERE slot = ?1", [slot.as_str()])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// One installed model.
    pub fn model(&self, r: &ModelRef) -> Result<Option<InstalledModel>, StoreError> {
        self.conn
            .query_row(
                "SELECT name, version, sha256, size, manifest FROM models
                 WHERE name = ?1 AND version = ?2",
                params![r.name.as_str(), to_i64(r.version.0)],
                row_to_parts,
            )
            .optional()?
            .map(parts_to_model)
            .transpose()
    }

    /// Every installed model.
    pub fn models(&self) -> Result<Vec<InstalledModel>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT name, version, sha256, size, manifest FROM models ORDER BY name, version",
        )?;
        let rows = st.query_map([], row_to_parts)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(parts_to_model(r?)?);
        }
        Ok(out)
    }

    /// Forgets an installed model (the caller deletes the file).
    pub fn remove_model(&self, r: &ModelRef) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM models WHERE name = ?1 AND version = ?2",
            params![r.name.as_str(), to_i64(r.version.0)],
        )?;
        Ok(())
    }

    /// Saves a download's progress.
    pub fn put_pending(&self, slot: Slot, p: &PendingDownload) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO pending(slot, body) VALUES (?1, ?2)
             ON CONFLICT(slot) DO UPDATE SET body = excluded.body",
            params![slot.as_str(), encode(p, "pending download")?],
        )?;
        Ok(())
    }

    /// Downloads to resume.
    pub fn pending(&self) -> Result<Vec<(Slot, PendingDownload)>, StoreError> {
        let mut out = Vec::new();
        for slot in [Slot::Deploy, Slot::Shadow] {
            let body: Option<Vec<u8>> = self
                .conn
                .query_row(
                    "SELECT body FROM pending WHERE slot = ?1",
                    [slot.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(b) = body {
                out.push((slot, decode(&b, "pending download")?));
            }
        }
        Ok(out)
    }

    /// Drops a download record.
    pub fn delete_pending(&self, slot: Slot) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM pending WHERE slot = ?1", [slot.as_str()])?;
        Ok(())
    }

    /// Stores a closed window (encoded as the `up` payload it will be
    /// published as), deletes evicted ones and advances the window sequence,
    /// in one transaction.
    pub fn outbox_push(
        &mut self,
        window: &TelemetryWindow,
        evicted: &[u64],
    ) -> Result<(), StoreError> {
        let payload = codec::encode_up(&Up::Telemetry(window.clone()))
            .map_err(|e| StoreError::Encode(format!("telemetry window: {e}")))?;
        let tx = self.conn.transaction()?;
        for s in evicted {
            tx.execute("DELETE FROM outbox WHERE seq = ?1", [to_i64(*s)])?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO outbox(seq, payload, evicted) VALUES (?1, ?2, ?3)",
            params![to_i64(window.seq), payload, to_i64(window.evicted_windows)],
        )?;
        Self::set_meta(&tx, "next_window_seq", &(window.seq + 1).to_le_bytes())?;
        tx.commit()?;
        Ok(())
    }

    /// The `up` payload of a stored window.
    pub fn outbox_payload(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT payload FROM outbox WHERE seq = ?1",
                [to_i64(seq)],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Deletes acknowledged windows.
    pub fn outbox_delete(&mut self, seqs: &[u64]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for s in seqs {
            tx.execute("DELETE FROM outbox WHERE seq = ?1", [to_i64(*s)])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Stored windows as (seq, evictions each reports), oldest first.
    pub fn outbox_seqs(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT seq, evicted FROM outbox ORDER BY seq")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (s, e) = r?;
            out.push((u64::try_from(s).unwrap_or(0), u64::try_from(e).unwrap_or(0)));
        }
        Ok(out)
    }

    /// The sequence the next window gets (survives restarts).
    pub fn next_window_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta("next_window_seq")?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes)
            .unwrap_or(1))
    }
}

type ModelParts = (String, i64, String, i64, Vec<u8>);

fn row_to_parts(r: &rusqlite::Row<'_>) -> rusqlite::Result<ModelParts> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn parts_to_model(p: ModelParts) -> Result<InstalledModel, StoreError> {
    let (name, version, sha, size, manifest) = p;
    let corrupt = |detail: String| StoreError::Corrupt {
        what: "installed model",
        detail,
    };
    Ok(InstalledModel {
        model: parse_ref(&format!("{name}@{version}"))?,
        sha256: Sha256::from_hex(&sha).map_err(|e| corrupt(e.to_string()))?,
        size: u64::try_from(size).map_err(|e| corrupt(e.to_string()))?,
        manifest: decode(&manifest, "manifest")?,
    })
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let v: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if v > SCHEMA_VERSION {
        return Err(StoreError::FutureSchema(v));
    }
    if v < 1 {
        let tx = conn.transaction()?;
        tx.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE models (
                 name TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 sha256 TEXT NOT NULL,
                 size INTEGER NOT NULL,
                 manifest BLOB NOT NULL,
                 PRIMARY KEY (name, version)
             );
             CREATE TABLE pending (slot TEXT PRIMARY KEY, body BLOB NOT NULL);
             CREATE TABLE outbox (
                 seq INTEGER PRIMARY KEY,
                 payload BLOB NOT NULL,
                 evicted INTEGER NOT NULL DEFAULT 0
             );
             PRAGMA user_version = 1;",
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// The single owner of the [`Store`]: calls run on the blocking pool, one at
/// a time, so SQLite never blocks an async worker.
#[derive(Debug, Clone)]
pub struct StoreHandle(Arc<Mutex<Store>>);

impl StoreHandle {
    /// Wraps an open store.
    pub fn new(store: Store) -> StoreHandle {
        StoreHandle(Arc::new(Mutex::new(store)))
    }

    /// Runs `f` with the store on the blocking pool.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = inner.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut s)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::deploy::JobKind;
    use drover_protocol::testkit::{self, TestKeys};
    use drover_protocol::{DeviceId, Timestamp};

    fn model(keys: &TestKeys, v: u64) -> InstalledModel {
        let m = testkit::manifest("sensor", v, b"bytes", Timestamp(0));
        InstalledModel {
            model: m.model_ref(),
            sha256: m.artifact.sha256,
            size: m.artifact.size,
            manifest: keys.sign_manifest(&m),
        }
    }

    #[test]
    fn everything_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TestKeys::new(1);
        let mut trust = TrustState::new(
            drover_protocol::Sign::public_key(&keys.root),
            DeviceId::new("d1").unwrap(),
        );
        trust.raise_floor(&"sensor".parse().unwrap(), drover_protocol::Version(2));
        {
            let mut s = Store::open(dir.path()).unwrap();
            assert_eq!(s.trust().unwrap(), None);
            assert_eq!(s.pointers().unwrap(), Pointers::default());
            let m = model(&keys, 2);
            let p = Pointers {
                active: Some(m.model.clone()),
                previous: None,
                shadow: None,
                shadow_per_mille: 250,
            };
            let pending = PendingDownload {
                seq: 4,
                kind: JobKind::Deploy,
                manifest: m.manifest.clone(),
                held: vec![(0, 10)],
            };
            s.put_pending(Slot::Deploy, &pending).unwrap();
            s.put_pending(Slot::Shadow, &pending).unwrap();
            s.commit_install(&m, &p, &trust, Some(Slot::Deploy))
                .unwrap();
            s.install_settings_for_test();
            let mut w = testkit::realistic_window(1);
            s.outbox_push(&w, &[]).unwrap();
            w.seq = 2;
            s.outbox_push(&w, &[]).unwrap();
            w.seq = 3;
            s.outbox_push(&w, &[1]).unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(s.trust().unwrap(), Some(trust));
        let p = s.pointers().unwrap();
        assert_eq!(p.active.unwrap().to_string(), "sensor@2");
        assert_eq!(p.shadow_per_mille, 250);
        assert_eq!(s.models().unwrap(), vec![model(&keys, 2)]);
        let pend = s.pending().unwrap();
        assert_eq!(pend.len(), 1);
        assert_eq!(pend[0].0, Slot::Shadow);
        assert_eq!(pend[0].1.held, vec![(0, 10)]);
        assert_eq!(s.outbox_seqs().unwrap(), vec![(2, 0), (3, 0)]);
        assert_eq!(s.next_window_seq().unwrap(), 4);
        let payload = s.outbox_payload(3).unwrap().unwrap();
        match codec::decode_up(&payload).unwrap() {
            Up::Telemetry(w) => assert_eq!(w.seq, 3),
            other => panic!("{other:?}"),
        }
        s.outbox_delete(&[2, 3]).unwrap();
        assert!(s.outbox_seqs().unwrap().is_empty());
        assert_eq!(s.settings().unwrap().telemetry_window_ms, Some(1234));
        s.remove_model(&model(&keys, 2).model).unwrap();
        assert!(s.models().unwrap().is_empty());
        s.delete_pending(Slot::Shadow).unwrap();
        assert!(s.pending().unwrap().is_empty());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.conn.pragma_update(None, "user_version", 99).unwrap();
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::FutureSchema(99))
        ));
    }

    impl Store {
        fn install_settings_for_test(&self) {
            self.save_settings(&AgentSettings {
                telemetry_window_ms: Some(1234),
                capture_per_mille: None,
            })
            .unwrap();
        }
    }
}
