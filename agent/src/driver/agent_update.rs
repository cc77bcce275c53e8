//! Updates of the agent itself (`Action::UpdateAgent`): admitted by
//! [`crate::core::self_update::admit`] (signature and `agents` role,
//! expiry, arch, version floor), the binary fetched on the chunk topic with
//! the same `ChunkRequest`s as a model (in order, a window of requests,
//! asked again from the first missing byte when a request goes unanswered
//! or the link comes back), verified against the release, staged in
//! `<data_dir>/bin/` and switched to (see [`crate::self_update`]); then the
//! agent asks its shell to restart into it. Progress, refusals and a
//! fallback after the restart go up as `Up::AgentUpdate`.

use std::path::PathBuf;

use drover_protocol::messages::{
    AgentUpdatePhase, AgentUpdateStatus, Chunk, ChunkRequest, Reason, ReasonCode, Up,
};
use drover_protocol::release::{AgentRelease, Arch};
use drover_protocol::trust::check_bytes;
use drover_protocol::{Signed, Timestamp};

use super::Driver;
use super::files::{agent_version, blocking, digest_file, write_at};
use crate::core::self_update::{Admission, BootConfig, BootRecord, SelfUpdate, Slot, admit};
use crate::link::Delivery;
use crate::self_update::BinDir;

/// One download of an agent binary.
#[derive(Debug)]
pub(super) struct UpdateJob {
    seq: u64,
    release: AgentRelease,
    partial: PathBuf,
    /// Bytes held, all from offset 0.
    received: u64,
    /// Bytes asked for (from `received`).
    requested: u64,
    /// When the oldest unanswered request was sent.
    asked_at: Timestamp,
    /// `received` at the last progress report.
    reported: u64,
}

impl UpdateJob {
    /// The download's file (kept by the driver's disk hygiene).
    pub(super) fn partial(&self) -> &std::path::Path {
        &self.partial
    }

    pub(super) fn timeout(&self, request_timeout_ms: u64) -> Timestamp {
        self.asked_at.plus_ms(request_timeout_ms)
    }
}

/// The boot record, or a first one with the running binary as good.
fn load_record(bin: &BinDir) -> std::io::Result<BootRecord> {
    match bin.load()? {
        Some(r) => Ok(r),
        None => Ok(BootRecord::initial(Slot {
            version: agent_version(),
            file: std::env::current_exe()?,
        })),
    }
}

impl Driver {
    fn update_report(
        &self,
        seq: u64,
        version: drover_protocol::manifest::AgentVersion,
        phase: AgentUpdatePhase,
    ) {
        match &phase {
            AgentUpdatePhase::Failed(r) => {
                tracing::warn!(seq, %version, reason = %r, "agent update failed");
                self.shared.metrics.deploy_failed(r.code.as_str());
            }
            _ => tracing::info!(seq, %version, ?phase, "agent update"),
        }
        self.link.send(
            &Up::AgentUpdate(AgentUpdateStatus {
                seq,
                version,
                phase,
            }),
            Delivery::Reliable,
        );
    }

    /// Reports a fallback the boot check recorded, once (on the first
    /// connection after it).
    pub(super) async fn report_fallback(&mut self) {
        let bin = BinDir::new(&self.cfg.data_dir);
        let Ok(Ok(Some(record))) = blocking(move || bin.load()).await else {
            return;
        };
        let Some(report) = record.report.clone() else {
            return;
        };
        let mut machine = SelfUpdate::new(BootConfig::default(), record);
        machine.take_report();
        let bin = BinDir::new(&self.cfg.data_dir);
        let rec = machine.record().clone();
        match blocking(move || bin.save(&rec)).await {
            Ok(Ok(())) => self.update_report(
                0,
                report.from,
                AgentUpdatePhase::FellBack {
                    running: report.to,
                    reason: report.reason,
                },
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "cannot clear the reported fallback"),
            Err(r) => tracing::error!(reason = %r, "cannot clear the reported fallback"),
        }
    }

    pub(super) async fn start_agent_update(
        &mut self,
        seq: u64,
        signed: Signed<AgentRelease>,
        rollback: bool,
        now: Timestamp,
    ) {
        let offered = signed
            .decode_unverified()
            .map(|r| r.version)
            .unwrap_or_default();
        let bin = BinDir::new(&self.cfg.data_dir);
        let record = match blocking(move || load_record(&bin)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let r = Reason::new(ReasonCode::StoreFailed, format!("boot record: {e}"));
                return self.update_report(seq, offered, AgentUpdatePhase::Failed(r));
            }
            Err(r) => return self.update_report(seq, offered, AgentUpdatePhase::Failed(r)),
        };
        let Some(arch) = Arch::parse(std::env::consts::ARCH) else {
            let r = Reason::new(
                ReasonCode::WrongArch,
                format!(
                    "this device's arch {} gets no agent releases",
                    std::env::consts::ARCH
                ),
            );
            return self.update_report(seq, offered, AgentUpdatePhase::Failed(r));
        };
        let release = match admit(
            &self.trust,
            &signed,
            arch,
            agent_version(),
            &record,
            rollback,
            self.cfg.max_agent_bytes,
            now,
        ) {
            Ok(Admission::Install(r)) => r,
            Ok(Admission::AlreadyRunning) => {
                tracing::info!(seq, version = %offered, "agent update: this version already runs");
                return self.update_report(seq, offered, AgentUpdatePhase::Running);
            }
            Err(r) => return self.update_report(seq, offered, AgentUpdatePhase::Failed(r)),
        };
        // The same release again (the controller re-sent its command after
        // a reconnect): the download goes on under the newer sequence.
        if let Some(job) = self.agent_update.as_mut()
            && job.release.artifact.sha256 == release.artifact.sha256
        {
            job.seq = seq;
            let (received, total) = (job.received, release.artifact.size);
            self.update_report(
                seq,
                release.version,
                AgentUpdatePhase::Downloading { received, total },
            );
            return self.rerequest_agent_chunks(now);
        }
        if let Some(old) = self.agent_update.take() {
            let _ = std::fs::remove_file(&old.partial);
            tracing::info!(old = %old.release.version, new = %release.version, "agent update superseded");
        }
        let partial = self
            .cfg
            .data_dir
            .join("partial")
            .join(format!("agent-{}.part", release.artifact.sha256.to_hex()));
        let p = partial.clone();
        let size = release.artifact.size;
        // Bytes an earlier run of this download left (chunks are written in
        // order, so the file is a prefix) are kept: it resumes from there. A
        // file longer than the release is not a prefix of it and goes.
        let prepared = blocking(move || -> std::io::Result<u64> {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            match std::fs::metadata(&p) {
                Ok(m) if m.len() <= size => Ok(m.len()),
                Ok(_) => std::fs::remove_file(&p).map(|()| 0),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                Err(e) => Err(e),
            }
        })
        .await;
        let Ok(Ok(held)) = prepared else {
            let r = Reason::new(
                ReasonCode::WriteFailed,
                "cannot prepare the download directory",
            );
            return self.update_report(seq, release.version, AgentUpdatePhase::Failed(r));
        };
        if held > 0 {
            tracing::info!(version = %release.version, held, total = size, "agent download resumes");
        }
        self.update_report(
            seq,
            release.version,
            AgentUpdatePhase::Downloading {
                received: held,
                total: size,
            },
        );
        self.agent_update = Some(UpdateJob {
            seq,
            release,
            partial,
            received: held,
            requested: held,
            asked_at: now,
            reported: held,
        });
        self.request_agent_chunks(now);
        self.finish_agent_update_if_complete().await;
    }

    /// Asks for the missing bytes up to the window.
    pub(super) fn request_agent_chunks(&mut self, now: Timestamp) {
        if !self.connected {
            return;
        }
        let cfg = self.cfg.deploy();
        let Some(job) = self.agent_update.as_mut() else {
            return;
        };
        let total = job.release.artifact.size;
        let limit = job
            .received
            .saturating_add(u64::from(cfg.chunk_size) * cfg.window as u64)
            .min(total);
        if job.requested <= job.received {
            job.asked_at = now;
        }
        let mut offset = job.requested.max(job.received);
        while offset < limit {
            let len = (limit - offset).min(u64::from(cfg.chunk_size)) as u32;
            self.link.send(
                &Up::ChunkRequest(ChunkRequest {
                    sha256: job.release.artifact.sha256,
                    offset,
                    len,
                }),
                Delivery::BestEffort,
            );
            offset += u64::from(len);
        }
        job.requested = offset;
    }

    /// The link came back or a request went unanswered: ask again from the
    /// first missing byte.
    pub(super) fn rerequest_agent_chunks(&mut self, now: Timestamp) {
        if let Some(job) = self.agent_update.as_mut() {
            job.requested = job.received;
            job.asked_at = now;
        }
        self.request_agent_chunks(now);
    }

    /// A chunk on the chunk topic; true if it belonged to the agent update.
    pub(super) async fn handle_agent_chunk(&mut self, chunk: &Chunk, now: Timestamp) -> bool {
        let Some(job) = self.agent_update.as_mut() else {
            return false;
        };
        if chunk.sha256 != job.release.artifact.sha256 {
            return false;
        }
        // In order only: anything else is asked for again.
        let end = chunk.offset.saturating_add(chunk.data.len() as u64);
        if chunk.offset != job.received
            || chunk.data.is_empty()
            || end > job.release.artifact.size
            || chunk.total != job.release.artifact.size
        {
            return true;
        }
        let (path, offset, data) = (job.partial.clone(), chunk.offset, chunk.data.clone());
        match blocking(move || write_at(&path, offset, &data)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let r = Reason::new(ReasonCode::WriteFailed, e.to_string());
                self.fail_agent_update(r);
                return true;
            }
            Err(r) => {
                self.fail_agent_update(r);
                return true;
            }
        }
        let Some(job) = self.agent_update.as_mut() else {
            return true;
        };
        job.received = end;
        job.asked_at = now;
        let (seq, version, total) = (job.seq, job.release.version, job.release.artifact.size);
        if job.received - job.reported >= total / 10 && job.received < total {
            job.reported = job.received;
            let received = job.received;
            self.update_report(
                seq,
                version,
                AgentUpdatePhase::Downloading { received, total },
            );
        }
        self.request_agent_chunks(now);
        self.finish_agent_update_if_complete().await;
        true
    }

    fn fail_agent_update(&mut self, reason: Reason) {
        if let Some(job) = self.agent_update.take() {
            let _ = std::fs::remove_file(&job.partial);
            self.update_report(
                job.seq,
                job.release.version,
                AgentUpdatePhase::Failed(reason),
            );
        }
    }

    /// Every byte held: verify, stage, switch `current`, ask for a restart.
    async fn finish_agent_update_if_complete(&mut self) {
        let Some(job) = self
            .agent_update
            .take_if(|j| j.received == j.release.artifact.size)
        else {
            return;
        };
        let bin = BinDir::new(&self.cfg.data_dir);
        let release = job.release.clone();
        let partial = job.partial.clone();
        let staged = blocking(move || -> Result<bool, Reason> {
            let (sha, size) = digest_file(&partial)
                .map_err(|e| Reason::new(ReasonCode::WriteFailed, e.to_string()))?;
            let checked = check_bytes(&release.artifact, sha, size).map_err(|e| e.reason());
            if let Err(r) = checked {
                let _ = std::fs::remove_file(&partial);
                return Err(r);
            }
            let slot = bin
                .stage_file(&release, &partial)
                .map_err(|e| Reason::new(ReasonCode::InstallFailed, e.to_string()))?;
            let record = load_record(&bin)
                .map_err(|e| Reason::new(ReasonCode::StoreFailed, e.to_string()))?;
            let mut machine = SelfUpdate::new(BootConfig::default(), record);
            let actions = machine.handle_staged(slot);
            bin.apply(machine.record(), &actions)
                .map_err(|e| Reason::new(ReasonCode::InstallFailed, e.to_string()))
        })
        .await
        .and_then(|r| r);
        match staged {
            Ok(restart) => {
                self.update_report(job.seq, job.release.version, AgentUpdatePhase::Restarting);
                if restart {
                    tracing::info!(version = %job.release.version, "agent binary staged; restarting into it");
                    let _ = self.shared.restart.send(true);
                }
            }
            Err(r) => self.update_report(job.seq, job.release.version, AgentUpdatePhase::Failed(r)),
        }
    }
}
