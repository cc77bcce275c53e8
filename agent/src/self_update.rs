//! The file side of the agent's update of itself, around
//! [`crate::core::self_update`]: the `<data_dir>/bin/` directory, the
//! boot record in it, staged binaries, and the stable link the service
//! starts.
//!
//! ```text
//! <data_dir>/bin/
//!   current            -> agent-0.2.0-<sha>  (the unit's ExecStart runs this link)
//!   agent-0.2.0-<sha>     staged binaries, 0755, written then renamed
//!   boot.json             the BootRecord (written to a temp file, fsynced, renamed)
//! ```
//!
//! The link is switched atomically (a new link renamed over the old one),
//! so a crash leaves either the old or the new target, never none. The
//! packaged binary (outside `bin/`) is the first fallback and is never
//! deleted. `drover-agent run` calls [`boot_check`] before anything else.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use drover_protocol::manifest::AgentVersion;
use drover_protocol::release::AgentRelease;

use crate::core::self_update::{
    BootAction, BootConfig, BootRecord, SelfUpdate, Slot, StartDecision,
};

/// Exit code asking the service manager to start `bin/current` again
/// (sysexits EX_TEMPFAIL; the unit restarts on failure).
pub const EX_RESTART: u8 = 75;

/// The `bin/` directory of a data dir.
#[derive(Debug, Clone)]
pub struct BinDir {
    dir: PathBuf,
}

fn io_context(what: &str, path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl BinDir {
    /// `<data_dir>/bin`.
    pub fn new(data_dir: &Path) -> BinDir {
        BinDir {
            dir: data_dir.join("bin"),
        }
    }

    /// The stable link the service starts.
    pub fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("boot.json")
    }

    /// Where a release's binary is staged.
    pub fn staged_path(&self, release: &AgentRelease) -> PathBuf {
        let sha = release.artifact.sha256.to_hex();
        self.dir
            .join(format!("agent-{}-{}", release.version, &sha[..12]))
    }

    fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_context("creating", &self.dir, e))
    }

    /// The stored record, if any.
    pub fn load(&self) -> std::io::Result<Option<BootRecord>> {
        let path = self.record_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
                .map_err(|e| io_context("reading", &path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_context("reading", &path, e)),
        }
    }

    /// Writes the record atomically.
    pub fn save(&self, record: &BootRecord) -> std::io::Result<()> {
        self.create()?;
        let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        write_atomically(&self.record_path(), &bytes, 0o600)
    }

    /// Writes a verified binary for `release` (mode 0755) and returns its
    /// slot. The caller has checked `bytes` against the release.
    pub fn stage(&self, release: &AgentRelease, bytes: &[u8]) -> std::io::Result<Slot> {
        self.create()?;
        let file = self.staged_path(release);
        write_atomically(&file, bytes, 0o755)?;
        Ok(Slot {
            version: release.version,
            file,
        })
    }

    /// Moves a verified download at `path` into place for `release` (mode
    /// 0755, synced) and returns its slot.
    pub fn stage_file(&self, release: &AgentRelease, path: &Path) -> std::io::Result<Slot> {
        self.create()?;
        let file = self.staged_path(release);
        let f = std::fs::File::open(path).map_err(|e| io_context("opening", path, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(std::fs::Permissions::from_mode(0o755))
                .map_err(|e| io_context("chmod", path, e))?;
        }
        f.sync_all().map_err(|e| io_context("syncing", path, e))?;
        std::fs::rename(path, &file).map_err(|e| io_context("moving", &file, e))?;
        sync_dir(&self.dir)?;
        Ok(Slot {
            version: release.version,
            file,
        })
    }

    /// Points `current` at `target`: a fresh link renamed over the old one.
    pub fn point_current(&self, target: &Path) -> std::io::Result<()> {
        self.create()?;
        let tmp = self.dir.join(".current.tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(target, &tmp).map_err(|e| io_context("linking", &tmp, e))?;
        let current = self.current();
        std::fs::rename(&tmp, &current).map_err(|e| io_context("switching", &current, e))?;
        sync_dir(&self.dir)
    }

    /// Carries out `actions` for `record` (already updated by the core);
    /// returns true if the process must exit for a restart.
    pub fn apply(&self, record: &BootRecord, actions: &[BootAction]) -> std::io::Result<bool> {
        let mut restart = false;
        for a in actions {
            match a {
                BootAction::Persist => self.save(record)?,
                BootAction::PointCurrent(target) => self.point_current(target)?,
                BootAction::Discard(file) => {
                    // Only what this directory staged; never the packaged binary.
                    if file.parent() == Some(self.dir.as_path()) {
                        if let Err(e) = std::fs::remove_file(file) {
                            tracing::warn!(file = %file.display(), error = %e, "cannot delete an old agent binary");
                        }
                    }
                }
                BootAction::Restart => restart = true,
            }
        }
        Ok(restart)
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "agent self-update needs symbolic links (Unix)",
    ))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_context("syncing", dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_context("writing", path, e));
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// What a start may do after [`boot_check`].
#[derive(Debug)]
pub enum Boot {
    /// Run the agent; a trial must be confirmed by `confirm_by` (agent
    /// clock ms) with [`SelfUpdate::handle_confirmed`] (then
    /// [`BinDir::apply`]).
    Run {
        /// The state machine, to confirm or time out.
        machine: Box<SelfUpdate>,
        /// The deadline of a trial start.
        confirm_by: Option<u64>,
    },
    /// Exit with [`EX_RESTART`]: `current` points back at the good binary.
    Restart,
}

fn load_or_init(bin: &BinDir, running: AgentVersion, exe: &Path) -> std::io::Result<BootRecord> {
    let record = match bin.load()? {
        Some(r) => r,
        None => {
            let r = BootRecord::initial(Slot {
                version: running,
                file: exe.to_path_buf(),
            });
            bin.save(&r)?;
            r
        }
    };
    if std::fs::symlink_metadata(bin.current()).is_err() {
        bin.point_current(&record.good.file)?;
    }
    Ok(record)
}

/// `drover-agent boot-check` (the unit's `ExecStartPre`, run by the
/// packaged binary `exe` of version `running`): counts the coming start of
/// a trial binary, or switches `current` back to the good one after too
/// many. Creates the record and the link on a first start.
pub fn pre_start_check(
    bin: &BinDir,
    cfg: BootConfig,
    running: AgentVersion,
    exe: &Path,
) -> std::io::Result<()> {
    let record = load_or_init(bin, running, exe)?;
    let mut machine = SelfUpdate::new(cfg, record);
    let actions = machine.handle_pre_start();
    bin.apply(machine.record(), &actions)?;
    Ok(())
}

/// The first thing `drover-agent run` does: loads (or creates, with the
/// running binary `exe` as the good one) the boot record, counts this start
/// unless `counted` (a [`pre_start_check`] did), and persists before the
/// agent runs, so a crash still counts. Also makes sure `bin/current`
/// exists.
pub fn boot_check(
    bin: &BinDir,
    cfg: BootConfig,
    running: AgentVersion,
    exe: &Path,
    now_ms: u64,
    counted: bool,
) -> std::io::Result<Boot> {
    let record = load_or_init(bin, running, exe)?;
    let had_trial = record.trial.is_some();
    let mut machine = SelfUpdate::new(cfg, record);
    match machine.handle_start(running, now_ms, counted) {
        StartDecision::Run {
            confirm_by,
            actions,
        } => {
            if had_trial {
                bin.save(machine.record())?;
            }
            bin.apply(machine.record(), &actions)?;
            if let Some(r) = &machine.record().report {
                tracing::warn!(from = %r.from, to = %r.to, reason = %r.reason, "fell back to the previous agent binary");
            }
            Ok(Boot::Run {
                machine: Box::new(machine),
                confirm_by,
            })
        }
        StartDecision::FallBack(actions) => {
            bin.apply(machine.record(), &actions)?;
            Ok(Boot::Restart)
        }
    }
}

#[cfg(test)]
mod tests;
