//! Agent releases in the registry (`drover agent push|list`): an agent
//! binary is checked (its ELF header must name the arch the operator
//! claims), stored content-addressed in the artifact store next to model
//! artifacts (so devices fetch it with the same chunk requests), and
//! described by an [`AgentRelease`] signed with the `agents` key. A
//! `(version, arch)` pair is immutable: pushing the same bytes again is a
//! no-op, other bytes under it are refused.

use std::io::Write as _;

use drover_protocol::codec;
use drover_protocol::manifest::{AgentVersion, Artifact};
use drover_protocol::release::{AgentRelease, Arch, ElfError, elf_arch};
use drover_protocol::{Sha256, Sign, Signed, Timestamp};
use rusqlite::{OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

use crate::controller::Controller;
use crate::db::{Db, DbError};

/// How long a release's signature stays valid; rotating the agents key
/// re-signs every release.
pub(crate) const RELEASE_VALIDITY_MS: u64 = 365 * 24 * 3600 * 1000;

/// Why an agent push or lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentReleaseError {
    /// The version is not `major.minor.patch`.
    #[error("version {0:?} is not major.minor.patch (e.g. 0.2.0)")]
    BadVersion(String),
    /// The arch is not one Drover ships agents for.
    #[error("arch {0:?} is not x86_64, aarch64 or armv7")]
    BadArch(String),
    /// The file is not an executable for a supported arch.
    #[error("not an agent binary: {0}")]
    NotAnExecutable(#[from] ElfError),
    /// The ELF header names another arch than the one given.
    #[error("the binary is built for {elf}, not {claimed} (from its ELF header)")]
    ArchMismatch {
        /// What the operator said.
        claimed: Arch,
        /// What the header says.
        elf: Arch,
    },
    /// This `(version, arch)` exists with other bytes.
    #[error(
        "agent {version} for {arch} already exists with sha256 {existing}; releases are immutable, push a new version"
    )]
    Exists {
        /// Version.
        version: AgentVersion,
        /// Arch.
        arch: Arch,
        /// The stored digest.
        existing: Sha256,
    },
    /// No such release.
    #[error("no agent release {version} for {arch}")]
    NotFound {
        /// Version.
        version: AgentVersion,
        /// Arch.
        arch: Arch,
    },
    /// Writing the binary failed.
    #[error("storing the agent binary: {0}")]
    Io(String),
    /// Signing or encoding the release failed.
    #[error("signing the release: {0}")]
    Sign(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A background task failed.
    #[error("internal task failed: {0}")]
    Task(String),
    /// The device has not said which arch it is (no Hello yet).
    #[error("device {0} has not reported its arch yet (no Hello); cannot pick a release")]
    UnknownArch(String),
    /// Sending the command failed, or the device is unknown.
    #[error(transparent)]
    Controller(#[from] crate::controller::ControllerError),
}

/// One release as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReleaseView {
    /// `major.minor.patch`.
    pub version: String,
    /// `x86_64`, `aarch64` or `armv7`.
    pub arch: String,
    /// Digest of the binary (hex).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// When signed (ms).
    pub created_at: u64,
    /// Refused by devices after this (ms).
    pub expires_at: u64,
    /// The agents key that signed it.
    pub key_id: String,
    /// True if this push stored it; false if it was already there.
    #[serde(default)]
    pub created: bool,
}

impl AgentReleaseView {
    fn new(r: &AgentRelease, signed: &Signed<AgentRelease>, created: bool) -> AgentReleaseView {
        AgentReleaseView {
            version: r.version.to_string(),
            arch: r.arch.to_string(),
            sha256: r.artifact.sha256.to_hex(),
            size: r.artifact.size,
            created_at: r.created_at.0,
            expires_at: r.expires_at.0,
            key_id: signed.key_id.to_string(),
            created,
        }
    }
}

/// Parses the operator's `--version` and `--arch`.
pub fn parse_target(version: &str, arch: &str) -> Result<(AgentVersion, Arch), AgentReleaseError> {
    let v = AgentVersion::parse(version)
        .ok_or_else(|| AgentReleaseError::BadVersion(version.to_string()))?;
    let a = Arch::parse(arch).ok_or_else(|| AgentReleaseError::BadArch(arch.to_string()))?;
    Ok((v, a))
}

/// Checks that `binary` is an executable for `claimed`.
pub fn check_binary(binary: &[u8], claimed: Arch) -> Result<(), AgentReleaseError> {
    let elf = elf_arch(binary)?;
    if elf != claimed {
        return Err(AgentReleaseError::ArchMismatch { claimed, elf });
    }
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<Signed<AgentRelease>, DbError> {
    codec::decode(bytes, usize::MAX)
        .map_err(|e| DbError::Corrupt(format!("stored agent release: {e}")))
}

fn encode(s: &Signed<AgentRelease>) -> Result<Vec<u8>, AgentReleaseError> {
    codec::encode(s, usize::MAX).map_err(|e| AgentReleaseError::Sign(e.to_string()))
}

/// The stored release `(version, arch)`, if any.
pub(crate) fn load(
    db: &Db,
    version: AgentVersion,
    arch: Arch,
) -> Result<Option<(AgentRelease, Signed<AgentRelease>)>, DbError> {
    let bytes: Option<Vec<u8>> = db
        .lock()
        .query_row(
            "SELECT signed FROM agent_releases WHERE version = ?1 AND arch = ?2",
            params![version.to_string(), arch.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    bytes
        .map(|b| {
            let signed = decode(&b)?;
            let r = signed
                .decode_unverified()
                .map_err(|e| DbError::Corrupt(format!("stored agent release: {e}")))?;
            Ok((r, signed))
        })
        .transpose()
}

/// Every release, newest version first, then by arch.
pub(crate) fn list(db: &Db) -> Result<Vec<AgentReleaseView>, DbError> {
    let conn = db.lock();
    let mut stmt = conn.prepare(
        "SELECT signed FROM agent_releases ORDER BY major DESC, minor DESC, patch DESC, arch",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for row in rows {
        let signed = decode(&row?)?;
        let r = signed
            .decode_unverified()
            .map_err(|e| DbError::Corrupt(format!("stored agent release: {e}")))?;
        out.push(AgentReleaseView::new(&r, &signed, false));
    }
    Ok(out)
}

/// Re-signs every release with `signer` (after an agents key rotation).
pub(crate) fn resign_all(db: &Db, signer: &dyn Sign) -> Result<usize, AgentReleaseError> {
    let mut conn = db.lock();
    let tx = conn.transaction().map_err(DbError::from)?;
    let rows: Vec<(String, String, Vec<u8>)> = {
        let mut stmt = tx
            .prepare("SELECT version, arch, signed FROM agent_releases")
            .map_err(DbError::from)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(DbError::from)?;
        rows.collect::<Result<_, _>>().map_err(DbError::from)?
    };
    for (version, arch, bytes) in &rows {
        let old = decode(bytes)?;
        let release = old
            .decode_unverified()
            .map_err(|e| DbError::Corrupt(format!("stored agent release: {e}")))?;
        let signed =
            Signed::sign(&release, signer).map_err(|e| AgentReleaseError::Sign(e.to_string()))?;
        tx.execute(
            "UPDATE agent_releases SET signed = ?3 WHERE version = ?1 AND arch = ?2",
            params![version, arch, encode(&signed)?],
        )
        .map_err(DbError::from)?;
    }
    tx.commit().map_err(DbError::from)?;
    Ok(rows.len())
}

/// Writes `bytes` to `path` if absent (temp file, fsync, rename).
fn write_content_addressed(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", hex::encode(nonce)));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl Controller {
    /// `drover agent push`: checks `binary` is an executable for `arch`,
    /// stores it, signs and records the release. Idempotent for the same
    /// bytes; [`AgentReleaseError::Exists`] for other bytes.
    pub async fn push_agent(
        &self,
        binary: Vec<u8>,
        version: AgentVersion,
        arch: Arch,
    ) -> Result<AgentReleaseView, AgentReleaseError> {
        check_binary(&binary, arch)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.push_agent_blocking(&binary, version, arch))
            .await
            .map_err(|e| AgentReleaseError::Task(e.to_string()))?
    }

    fn push_agent_blocking(
        &self,
        binary: &[u8],
        version: AgentVersion,
        arch: Arch,
    ) -> Result<AgentReleaseView, AgentReleaseError> {
        let inner = &self.inner;
        let sha256 = Sha256::of(binary);
        if let Some((existing, signed)) = load(&inner.db, version, arch)? {
            if existing.artifact.sha256 == sha256 {
                return Ok(AgentReleaseView::new(&existing, &signed, false));
            }
            return Err(AgentReleaseError::Exists {
                version,
                arch,
                existing: existing.artifact.sha256,
            });
        }
        let path = inner.store.artifact_path(&sha256);
        write_content_addressed(&path, binary)
            .map_err(|e| AgentReleaseError::Io(format!("{}: {e}", path.display())))?;
        let now: Timestamp = self.now();
        let release = AgentRelease {
            version,
            arch,
            artifact: Artifact {
                sha256,
                size: binary.len() as u64,
            },
            created_at: now,
            expires_at: now.plus_ms(RELEASE_VALIDITY_MS),
        };
        let signer = self.agents_signer();
        let signed = Signed::sign(&release, signer.as_ref())
            .map_err(|e| AgentReleaseError::Sign(e.to_string()))?;
        // A concurrent push of the same pair loses on the primary key and
        // is answered like a repeated push.
        let inserted = inner
            .db
            .lock()
            .execute(
                "INSERT OR IGNORE INTO agent_releases
                   (version, arch, major, minor, patch, sha256, size, signed, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    version.to_string(),
                    arch.as_str(),
                    version.major,
                    version.minor,
                    version.patch,
                    sha256.to_hex(),
                    binary.len() as i64,
                    encode(&signed)?,
                    now.0 as i64
                ],
            )
            .map_err(DbError::from)?;
        if inserted == 0 {
            return self.push_agent_blocking(binary, version, arch);
        }
        tracing::info!(release = %release.label(), sha256 = %sha256, "stored agent release");
        Ok(AgentReleaseView::new(&release, &signed, true))
    }

    /// `drover agent list`: every release, newest first.
    pub async fn agent_releases(&self) -> Result<Vec<AgentReleaseView>, AgentReleaseError> {
        let db = self.inner.db.clone();
        Ok(tokio::task::spawn_blocking(move || list(&db))
            .await
            .map_err(|e| AgentReleaseError::Task(e.to_string()))??)
    }

    /// `drover agent update`: sends `device` an UpdateAgent command for
    /// `version` built for the device's arch (from its Hello). With
    /// `rollback` the device may go below its agent version floor. Returns
    /// the command's sequence number.
    pub async fn update_agent(
        &self,
        device: &drover_protocol::DeviceId,
        version: AgentVersion,
        rollback: bool,
    ) -> Result<u64, AgentReleaseError> {
        let info = self
            .device(device)
            .await?
            .ok_or_else(|| crate::controller::ControllerError::UnknownDevice(device.to_string()))?;
        let arch = info
            .arch
            .as_deref()
            .and_then(Arch::parse)
            .ok_or_else(|| AgentReleaseError::UnknownArch(device.to_string()))?;
        let (_, signed) = self.agent_release(version, arch).await?;
        let action = drover_protocol::Action::UpdateAgent {
            release: signed,
            rollback,
        };
        Ok(self.send_command(device, action).await?)
    }

    /// An `Up::AgentUpdate` from `device`: logged and announced to
    /// in-process subscribers ([`crate::DeviceEvent::AgentUpdate`]).
    pub(crate) fn handle_agent_update(
        &self,
        device: drover_protocol::DeviceId,
        status: drover_protocol::messages::AgentUpdateStatus,
    ) {
        use drover_protocol::messages::AgentUpdatePhase;
        match &status.phase {
            AgentUpdatePhase::Failed(r) | AgentUpdatePhase::FellBack { reason: r, .. } => {
                tracing::warn!(%device, seq = status.seq, version = %status.version, reason = %r, phase = ?status.phase, "agent update did not take");
            }
            _ => {
                tracing::info!(%device, seq = status.seq, version = %status.version, phase = ?status.phase, "agent update");
            }
        }
        self.emit(crate::DeviceEvent::AgentUpdate { device, status });
    }

    /// One release and its signed form (what a device receives).
    pub async fn agent_release(
        &self,
        version: AgentVersion,
        arch: Arch,
    ) -> Result<(AgentRelease, Signed<AgentRelease>), AgentReleaseError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || load(&db, version, arch))
            .await
            .map_err(|e| AgentReleaseError::Task(e.to_string()))??
            .ok_or(AgentReleaseError::NotFound { version, arch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(machine: u16, bits: u8) -> Vec<u8> {
        let mut h = vec![0u8; 128];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = if bits == 64 { 2 } else { 1 };
        h[5] = 1;
        h[16..18].copy_from_slice(&3u16.to_le_bytes());
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    #[test]
    fn binaries_must_match_the_claimed_arch() {
        assert!(check_binary(&elf(0xB7, 64), Arch::Aarch64).is_ok());
        assert!(check_binary(&elf(0x28, 32), Arch::Armv7).is_ok());
        assert!(matches!(
            check_binary(&elf(0x3E, 64), Arch::Aarch64),
            Err(AgentReleaseError::ArchMismatch {
                claimed: Arch::Aarch64,
                elf: Arch::X86_64
            })
        ));
        assert!(matches!(
            check_binary(b"#!/bin/sh\nexit 0\n", Arch::X86_64),
            Err(AgentReleaseError::NotAnExecutable(ElfError::NotElf))
        ));
    }

    #[test]
    fn targets_parse() {
        assert!(parse_target("0.2.0", "aarch64").is_ok());
        assert!(matches!(
            parse_target("0.2", "aarch64"),
            Err(AgentReleaseError::BadVersion(_))
        ));
        assert!(matches!(
            parse_target("0.2.0", "sparc"),
            Err(AgentReleaseError::BadArch(_))
        ));
    }
}
