//! The agent's update of itself, as decisions: whether a release may be
//! installed ([`admit`]), and the boot-counter state machine that makes a
//! new binary prove itself or gives the previous one back ([`SelfUpdate`]).
//! Sans-IO: the shell (`crate::self_update`) stores the [`BootRecord`],
//! writes binaries, switches the `bin/current` link and exits; time comes
//! in as milliseconds on a monotonic scale of one process.
//!
//! The life of an update:
//! 1. A verified binary is staged in `<data_dir>/bin/`;
//!    [`SelfUpdate::handle_staged`] makes it the *trial*, points `current`
//!    at it and asks for a restart.
//! 2. Every start is counted before the new binary runs: by the packaged
//!    binary as the unit's `ExecStartPre` ([`SelfUpdate::handle_pre_start`],
//!    which also catches a binary that cannot execute at all), or by the
//!    agent itself first thing ([`SelfUpdate::handle_start`]); the shell
//!    persists the record before going on. A trial gets at most
//!    [`BootConfig::max_starts`] starts; at the next one the agent falls
//!    back to the last good binary instead.
//! 3. A trial start must be confirmed ([`SelfUpdate::handle_confirmed`]:
//!    connected to the broker, Hello delivered) by
//!    [`SelfUpdate::poll_timeout`], or [`SelfUpdate::handle_timeout`] falls
//!    back.
//! 4. Once back on the good binary, [`SelfUpdate::take_report`] yields why,
//!    once, for the controller.
//!
//! A confirmed binary becomes the good one and raises the version floor; the
//! one before it is kept as `previous` (an explicit rollback target) and the
//! one before that is discarded.

use std::path::PathBuf;

use drover_protocol::manifest::AgentVersion;
use drover_protocol::messages::{Reason, ReasonCode};
use drover_protocol::release::{AgentRelease, Arch};
use drover_protocol::trust::check_release_target;
use drover_protocol::{Signed, Timestamp, TrustState};
use serde::{Deserialize, Serialize};

/// Boot-counter settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootConfig {
    /// Starts a new binary gets before the agent falls back.
    pub max_starts: u32,
    /// How long one start of a new binary has to be confirmed (ms).
    pub confirm_within_ms: u64,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            max_starts: 3,
            confirm_within_ms: 120_000,
        }
    }
}

/// One agent binary on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The version it reports.
    pub version: AgentVersion,
    /// Where it is (in `<data_dir>/bin/`, or the packaged binary).
    pub file: PathBuf,
}

/// A binary switched to but not confirmed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The new binary.
    pub slot: Slot,
    /// Starts so far.
    pub starts: u32,
}

/// Why the agent went back to its previous binary, reported once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackReport {
    /// The version that failed.
    pub from: AgentVersion,
    /// The version running again.
    pub to: AgentVersion,
    /// Why (`agent_start_failed` or `agent_unconfirmed`).
    pub reason: Reason,
}

/// What the shell persists between starts (`<data_dir>/bin/boot.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    /// The last binary confirmed good: where a fallback goes.
    pub good: Slot,
    /// The good binary before it (an explicit rollback target).
    pub previous: Option<Slot>,
    /// The binary on trial, if any.
    pub trial: Option<Trial>,
    /// Highest version ever confirmed; releases below it are downgrades.
    pub floor: AgentVersion,
    /// A fallback not yet reported to the controller.
    pub report: Option<FallbackReport>,
    /// Versions this device fell back from (newest last, at most
    /// [`MAX_FELL_BACK`]): refused if offered again, so a command re-sent
    /// after the fallback cannot start the same failing binary again.
    #[serde(default)]
    pub fell_back: Vec<AgentVersion>,
}

/// How many failed versions a [`BootRecord`] remembers.
pub const MAX_FELL_BACK: usize = 16;

impl BootRecord {
    /// The first record: the binary running now (the packaged one) is good.
    pub fn initial(running: Slot) -> BootRecord {
        BootRecord {
            floor: running.version,
            good: running,
            previous: None,
            trial: None,
            report: None,
            fell_back: Vec::new(),
        }
    }
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootAction {
    /// Write the record (atomically) before anything else happens.
    Persist,
    /// Point the stable link `bin/current` at this file (atomically).
    PointCurrent(PathBuf),
    /// Delete a binary no longer referenced. The shell deletes only inside
    /// `bin/`, so the packaged binary (the first fallback) is never lost.
    Discard(PathBuf),
    /// Exit so the service manager starts `bin/current`.
    Restart,
}

/// What a start may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartDecision {
    /// Carry out `actions` (none, or a persist after an abandoned trial),
    /// then run; a trial must be confirmed by `confirm_by` (ms), if set.
    Run {
        /// Deadline for [`SelfUpdate::handle_confirmed`].
        confirm_by: Option<u64>,
        /// To do first.
        actions: Vec<BootAction>,
    },
    /// Do not run this binary: carry out the actions (persist, point
    /// `current` back, restart).
    FallBack(Vec<BootAction>),
}

/// Whether an offered release is installed.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Download, verify and stage it.
    Install(AgentRelease),
    /// This version already runs; nothing to do.
    AlreadyRunning,
}

/// Decides whether `signed` may be installed on this device: signed by a
/// listed `agents` key and unexpired ([`TrustState::verify_agent_release`]),
/// for this `arch`, not below the floor (the higher of the record's floor
/// and the running version) unless `rollback`, at most `max_bytes` large,
/// and no other trial pending.
#[allow(clippy::too_many_arguments)]
pub fn admit(
    trust: &TrustState,
    signed: &Signed<AgentRelease>,
    arch: Arch,
    running: AgentVersion,
    record: &BootRecord,
    rollback: bool,
    max_bytes: u64,
    now: Timestamp,
) -> Result<Admission, Reason> {
    let release = trust
        .verify_agent_release(signed, now)
        .map_err(|e| e.reason())?;
    let floor = record.floor.max(running);
    check_release_target(&release, arch, floor, rollback).map_err(|e| e.reason())?;
    if release.version == running {
        return Ok(Admission::AlreadyRunning);
    }
    if record.fell_back.contains(&release.version) {
        return Err(Reason::new(
            ReasonCode::AgentStartFailed,
            format!(
                "agent {} failed to come up on this device before (it fell back); releases are immutable, push a new version",
                release.version
            ),
        ));
    }
    if release.artifact.size > max_bytes {
        return Err(Reason::new(
            ReasonCode::ReleaseTooLarge,
            format!(
                "agent {} is {} bytes; this device takes at most {max_bytes} (max_agent_bytes)",
                release.version, release.artifact.size
            ),
        ));
    }
    if let Some(t) = &record.trial {
        return Err(Reason::new(
            ReasonCode::AlreadyDeploying,
            format!("agent {} is still on trial", t.slot.version),
        ));
    }
    Ok(Admission::Install(release))
}

/// The boot-counter state machine over a [`BootRecord`].
#[derive(Debug, Clone)]
pub struct SelfUpdate {
    cfg: BootConfig,
    record: BootRecord,
    confirm_by: Option<u64>,
}

impl SelfUpdate {
    /// The machine over a loaded (or [`BootRecord::initial`]) record.
    pub fn new(cfg: BootConfig, record: BootRecord) -> SelfUpdate {
        SelfUpdate {
            cfg,
            record,
            confirm_by: None,
        }
    }

    /// The record to persist.
    pub fn record(&self) -> &BootRecord {
        &self.record
    }

    /// A verified binary was written to `slot.file`: it becomes the trial
    /// (replacing an unconfirmed one) and the agent restarts into it.
    pub fn handle_staged(&mut self, slot: Slot) -> Vec<BootAction> {
        let mut actions = Vec::new();
        if let Some(old) = self.record.trial.take()
            && old.slot.file != slot.file
        {
            actions.push(BootAction::Discard(old.slot.file));
        }
        let file = slot.file.clone();
        self.record.trial = Some(Trial { slot, starts: 0 });
        actions.extend([
            BootAction::Persist,
            BootAction::PointCurrent(file),
            BootAction::Restart,
        ]);
        actions
    }

    /// Called before the service starts whatever `bin/current` points at,
    /// by another binary (the packaged one, as the unit's `ExecStartPre`),
    /// so that a new binary that cannot even execute is counted too. Counts
    /// a start of the trial, or at the limit falls back (no restart: the
    /// start that follows runs the good binary).
    pub fn handle_pre_start(&mut self) -> Vec<BootAction> {
        let Some(trial) = self.record.trial.as_mut() else {
            return Vec::new();
        };
        if trial.starts >= self.cfg.max_starts {
            let detail = format!(
                "agent {} started {} times without confirming",
                trial.slot.version, trial.starts
            );
            let mut actions = self.fall_back(ReasonCode::AgentStartFailed, detail);
            actions.retain(|a| *a != BootAction::Restart);
            return actions;
        }
        trial.starts += 1;
        vec![BootAction::Persist]
    }

    /// Called first on every start of `running` (before the agent does
    /// anything it could crash on), at `now_ms`. Unless `counted` (a
    /// [`handle_pre_start`](Self::handle_pre_start) already counted this
    /// start) it counts the start; the shell persists the record whatever
    /// the answer, so a crash counts.
    pub fn handle_start(
        &mut self,
        running: AgentVersion,
        now_ms: u64,
        counted: bool,
    ) -> StartDecision {
        let Some(trial) = self.record.trial.as_mut() else {
            self.confirm_by = None;
            return StartDecision::Run {
                confirm_by: None,
                actions: Vec::new(),
            };
        };
        if running != trial.slot.version {
            // Not the trial binary that started (the link points elsewhere,
            // or the new binary reports another version than it was
            // released as): the trial did not take.
            let detail = format!(
                "agent {} was installed but {running} started",
                trial.slot.version
            );
            let mut actions = self.fall_back(ReasonCode::AgentStartFailed, detail);
            if running == self.record.good.version {
                // Already on the good binary: no restart needed.
                actions.retain(|a| *a != BootAction::Restart);
                return StartDecision::Run {
                    confirm_by: None,
                    actions,
                };
            }
            return StartDecision::FallBack(actions);
        }
        if !counted {
            if trial.starts >= self.cfg.max_starts {
                let detail = format!(
                    "agent {} started {} times without confirming",
                    trial.slot.version, trial.starts
                );
                return StartDecision::FallBack(
                    self.fall_back(ReasonCode::AgentStartFailed, detail),
                );
            }
            trial.starts += 1;
        }
        let by = now_ms.saturating_add(self.cfg.confirm_within_ms);
        self.confirm_by = Some(by);
        StartDecision::Run {
            confirm_by: Some(by),
            actions: Vec::new(),
        }
    }

    /// The running binary reached the broker and delivered its Hello. A
    /// trial becomes the good binary; returns the actions (persist, discard
    /// the binary two generations back), empty if nothing changed.
    pub fn handle_confirmed(&mut self, running: AgentVersion) -> Vec<BootAction> {
        self.confirm_by = None;
        let Some(trial) = self.record.trial.take_if(|t| t.slot.version == running) else {
            return Vec::new();
        };
        let mut actions = vec![BootAction::Persist];
        let old_good = std::mem::replace(&mut self.record.good, trial.slot);
        if let Some(gone) = self.record.previous.replace(old_good)
            && gone.file != self.record.good.file
        {
            actions.push(BootAction::Discard(gone.file));
        }
        self.record.floor = self.record.floor.max(running);
        actions
    }

    /// The next deadline: a trial start's confirmation.
    pub fn poll_timeout(&self) -> Option<(u64, &'static str)> {
        self.confirm_by.map(|t| (t, "agent update confirmation"))
    }

    /// Time passed; past an unconfirmed trial's deadline this falls back.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Option<Vec<BootAction>> {
        let by = self.confirm_by?;
        if now_ms < by {
            return None;
        }
        self.confirm_by = None;
        let trial = self.record.trial.as_ref()?;
        let detail = format!(
            "agent {} did not reach the broker within {} s",
            trial.slot.version,
            self.cfg.confirm_within_ms / 1000
        );
        Some(self.fall_back(ReasonCode::AgentUnconfirmed, detail))
    }

    /// The fallback to report, once: the shell sends it after connecting on
    /// the good binary, then persists.
    pub fn take_report(&mut self) -> Option<FallbackReport> {
        self.record.report.take()
    }

    fn fall_back(&mut self, code: ReasonCode, detail: String) -> Vec<BootAction> {
        self.confirm_by = None;
        let mut actions = vec![BootAction::Persist];
        if let Some(trial) = self.record.trial.take() {
            let failed = &mut self.record.fell_back;
            failed.retain(|v| *v != trial.slot.version);
            failed.push(trial.slot.version);
            if failed.len() > MAX_FELL_BACK {
                failed.remove(0);
            }
            self.record.report = Some(FallbackReport {
                from: trial.slot.version,
                to: self.record.good.version,
                reason: Reason::new(code, detail),
            });
            actions.push(BootAction::PointCurrent(self.record.good.file.clone()));
            if trial.slot.file != self.record.good.file {
                actions.push(BootAction::Discard(trial.slot.file));
            }
        }
        actions.push(BootAction::Restart);
        actions
    }
}

#[cfg(test)]
mod tests;
