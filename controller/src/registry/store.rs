//! Registry storage: manifests (signed, postcard) in SQLite, aliases, and
//! artifacts content-addressed as `DATA_DIR/artifacts/<sha256>.onnx`.

use std::path::{Path, PathBuf};

use drover_protocol::codec;
use drover_protocol::{ModelManifest, ModelName, Sha256, Sign, Signed, Timestamp, Version};
use rusqlite::{OptionalExtension as _, params};

use super::{ModelSummary, RegistryError, task_kind};
use crate::db::{Db, DbError};

/// A stored version.
#[derive(Debug, Clone)]
pub struct StoredModel {
    /// The manifest.
    pub manifest: ModelManifest,
    /// The manifest as signed (what goes to devices).
    pub signed: Signed<ModelManifest>,
    /// Aliases pointing at this version.
    pub aliases: Vec<String>,
}

/// Manifests, aliases and artifacts.
#[derive(Debug, Clone)]
pub struct ModelStore {
    db: Db,
    dir: PathBuf,
}

fn encode_signed(s: &Signed<ModelManifest>) -> Result<Vec<u8>, RegistryError> {
    codec::encode(s, usize::MAX).map_err(|e| RegistryError::Sign(e.to_string()))
}

fn decode_signed(bytes: &[u8]) -> Result<Signed<ModelManifest>, DbError> {
    codec::decode(bytes, usize::MAX).map_err(|e| DbError::Corrupt(format!("stored manifest: {e}")))
}

/// Checks an alias name (same alphabet as ids: `[a-z0-9_-]`).
pub fn validate_alias(alias: &str) -> Result<(), RegistryError> {
    ModelName::new(alias)
        .map(|_| ())
        .map_err(|e| RegistryError::Invalid(format!("bad alias {alias:?}: {e}")))?;
    if alias.parse::<u64>().is_ok() {
        return Err(RegistryError::Invalid(format!(
            "alias {alias:?} would be mistaken for a version number"
        )));
    }
    Ok(())
}

impl ModelStore {
    /// The store of a data dir; creates `artifacts/`.
    pub fn new(db: Db, data_dir: &Path) -> Result<ModelStore, RegistryError> {
        let dir = data_dir.join("artifacts");
        std::fs::create_dir_all(&dir)
            .map_err(|e| RegistryError::Io(format!("creating {}: {e}", dir.display())))?;
        Ok(ModelStore { db, dir })
    }

    /// Where the artifact with digest `sha` lives.
    pub fn artifact_path(&self, sha: &Sha256) -> PathBuf {
        self.dir.join(format!("{}.onnx", sha.to_hex()))
    }

    /// Reads an artifact.
    pub fn read_artifact(&self, sha: &Sha256) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.artifact_path(sha))
    }

    /// Writes the artifact if new; returns whether this call created it.
    fn write_artifact(&self, bytes: &[u8]) -> Result<bool, RegistryError> {
        use std::io::Write as _;
        let sha = Sha256::of(bytes);
        let path = self.artifact_path(&sha);
        if path.exists() {
            return Ok(false);
        }
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| RegistryError::Io(e.to_string()))?;
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", sha.to_hex(), hex::encode(nonce)));
        let io = |e: std::io::Error| RegistryError::Io(format!("{}: {e}", path.display()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        Ok(true)
    }

    /// Moves an uploaded file (already hashed: `sha`) into the store unless
    /// that artifact exists; returns whether this call created it. The file
    /// is gone afterwards either way.
    fn move_artifact(&self, file: &Path, sha: &Sha256) -> Result<bool, RegistryError> {
        let path = self.artifact_path(sha);
        let io = |e: std::io::Error| RegistryError::Io(format!("{}: {e}", path.display()));
        if path.exists() {
            let _ = std::fs::remove_file(file);
            return Ok(false);
        }
        std::fs::rename(file, &path).map_err(io)?;
        // The rename is durable once the directory entry is.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(true)
    }

    /// Stores a new version of `template.name`: writes the artifact, assigns
    /// the next version, signs, inserts and optionally moves `alias`, all or
    /// nothing. Blocking.
    pub fn insert(
        &self,
        template: ModelManifest,
        artifact: &[u8],
        signer: &dyn Sign,
        alias: Option<&str>,
        now: Timestamp,
    ) -> Result<StoredModel, RegistryError> {
        if let Some(a) = alias {
            validate_alias(a)?;
        }
        let created = self.write_artifact(artifact)?;
        self.commit(template, created, signer, alias, now)
    }

    /// [`ModelStore::insert`] for an artifact uploaded to `file` (synced,
    /// on the data dir's file system, its digest in `template`): the file
    /// is renamed into the store, never read here. On a refusal before the
    /// rename the file is left to the caller.
    pub fn insert_file(
        &self,
        template: ModelManifest,
        file: &Path,
        signer: &dyn Sign,
        alias: Option<&str>,
        now: Timestamp,
    ) -> Result<StoredModel, RegistryError> {
        if let Some(a) = alias {
            validate_alias(a)?;
        }
        let created = self.move_artifact(file, &template.artifact.sha256)?;
        self.commit(template, created, signer, alias, now)
    }

    /// Assigns the version, signs and inserts; removes the artifact again
    /// on failure when `created`.
    fn commit(
        &self,
        mut template: ModelManifest,
        created: bool,
        signer: &dyn Sign,
        alias: Option<&str>,
        now: Timestamp,
    ) -> Result<StoredModel, RegistryError> {
        let sha = template.artifact.sha256;
        let result = (|| {
            let mut conn = self.db.lock();
            let tx = conn.transaction().map_err(DbError::from)?;
            let name = template.name.to_string();
            if let Some(parent) = template.lineage.parent {
                let exists: Option<i64> = tx
                    .query_row(
                        "SELECT 1 FROM models WHERE name = ?1 AND version = ?2",
                        params![name, parent.0 as i64],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(DbError::from)?;
                if exists.is_none() {
                    return Err(RegistryError::Invalid(format!(
                        "parent version {name}@{parent} does not exist"
                    )));
                }
            }
            let max: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(version), 0) FROM models WHERE name = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .map_err(DbError::from)?;
            template.version = Version(max as u64 + 1);
            let signed =
                Signed::sign(&template, signer).map_err(|e| RegistryError::Sign(e.to_string()))?;
            tx.execute(
                "INSERT INTO models (name, version, sha256, size, signed, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    name,
                    template.version.0 as i64,
                    template.artifact.sha256.to_hex(),
                    template.artifact.size as i64,
                    encode_signed(&signed)?,
                    now.0 as i64
                ],
            )
            .map_err(DbError::from)?;
            if let Some(a) = alias {
                upsert_alias(&tx, &name, a, template.version, now)?;
            }
            tx.commit().map_err(DbError::from)?;
            Ok(StoredModel {
                manifest: template,
                signed,
                aliases: alias.map(|a| vec![a.to_string()]).unwrap_or_default(),
            })
        })();
        if result.is_err() && created {
            let _ = std::fs::remove_file(self.artifact_path(&sha));
        }
        result
    }

    /// One version.
    pub fn get(
        &self,
        name: &ModelName,
        version: Version,
    ) -> Result<Option<StoredModel>, RegistryError> {
        let conn = self.db.lock();
        let row: Option<Vec<u8>> = conn
            .query_row(
                "SELECT signed FROM models WHERE name = ?1 AND version = ?2",
                params![name.as_str(), version.0 as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(DbError::from)?;
        let Some(bytes) = row else { return Ok(None) };
        let signed = decode_signed(&bytes)?;
        let manifest = signed
            .decode_unverified()
            .map_err(|e| DbError::Corrupt(e.to_string()))?;
        let aliases = aliases_of(&conn, name.as_str(), version)?;
        Ok(Some(StoredModel {
            manifest,
            signed,
            aliases,
        }))
    }

    /// `version` as a number or an alias of `name`.
    pub fn resolve(
        &self,
        name: &ModelName,
        version_or_alias: &str,
    ) -> Result<Version, RegistryError> {
        if let Ok(v) = version_or_alias.parse::<u64>() {
            return Ok(Version(v));
        }
        let conn = self.db.lock();
        let v: Option<i64> = conn
            .query_row(
                "SELECT version FROM aliases WHERE name = ?1 AND alias = ?2",
                params![name.as_str(), version_or_alias],
                |r| r.get(0),
            )
            .optional()
            .map_err(DbError::from)?;
        v.map(|v| Version(v as u64))
            .ok_or_else(|| RegistryError::NotFound(format!("{name}@{version_or_alias}")))
    }

    /// Every version of every model, by name then version.
    pub fn list(&self) -> Result<Vec<ModelSummary>, RegistryError> {
        let conn = self.db.lock();
        let mut stmt = conn
            .prepare("SELECT name, version, signed FROM models ORDER BY name, version")
            .map_err(DbError::from)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(DbError::from)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(DbError::from)?;
        let mut out = Vec::with_capacity(rows.len());
        for (name, version, bytes) in rows {
            let m = decode_signed(&bytes)?
                .decode_unverified()
                .map_err(|e| DbError::Corrupt(e.to_string()))?;
            out.push(ModelSummary {
                aliases: aliases_of(&conn, &name, Version(version as u64))?,
                name,
                version: version as u64,
                sha256: m.artifact.sha256.to_hex(),
                size: m.artifact.size,
                task: task_kind(&m.task).to_string(),
                parent: m.lineage.parent.map(|v| v.0),
                created_at: m.created_at.0,
            });
        }
        Ok(out)
    }

    /// Points `alias` of `name` at `version` (which must exist).
    pub fn set_alias(
        &self,
        name: &ModelName,
        alias: &str,
        version: Version,
        now: Timestamp,
    ) -> Result<(), RegistryError> {
        validate_alias(alias)?;
        let mut conn = self.db.lock();
        let tx = conn.transaction().map_err(DbError::from)?;
        let exists: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM models WHERE name = ?1 AND version = ?2",
                params![name.as_str(), version.0 as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(DbError::from)?;
        if exists.is_none() {
            return Err(RegistryError::NotFound(format!("{name}@{version}")));
        }
        upsert_alias(&tx, name.as_str(), alias, version, now)?;
        tx.commit().map_err(DbError::from)?;
        Ok(())
    }

    /// Re-signs every stored manifest with `signer` (after a models-key
    /// rotation). Bodies are unchanged; only signatures are replaced.
    pub fn resign_all(&self, signer: &dyn Sign) -> Result<usize, RegistryError> {
        let mut conn = self.db.lock();
        let tx = conn.transaction().map_err(DbError::from)?;
        let rows: Vec<(String, i64, Vec<u8>)> = {
            let mut stmt = tx
                .prepare("SELECT name, version, signed FROM models")
                .map_err(DbError::from)?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(DbError::from)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(DbError::from)?
        };
        for (name, version, bytes) in &rows {
            let old = decode_signed(bytes)?;
            let fresh: Signed<ModelManifest> = Signed::sign_bytes(old.body.clone(), signer);
            tx.execute(
                "UPDATE models SET signed = ?3 WHERE name = ?1 AND version = ?2",
                params![name, version, encode_signed(&fresh)?],
            )
            .map_err(DbError::from)?;
        }
        tx.commit().map_err(DbError::from)?;
        Ok(rows.len())
    }
}

fn upsert_alias(
    conn: &rusqlite::Connection,
    name: &str,
    alias: &str,
    version: Version,
    now: Timestamp,
) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO aliases (name, alias, version, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        params![name, alias, version.0 as i64, now.0 as i64],
    )?;
    Ok(())
}

fn aliases_of(
    conn: &rusqlite::Connection,
    name: &str,
    version: Version,
) -> Result<Vec<String>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT alias FROM aliases WHERE name = ?1 AND version = ?2 ORDER BY alias",
    )?;
    let out = stmt
        .query_map(params![name, version.0 as i64], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(out)
}
