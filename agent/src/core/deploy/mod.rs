//! One deploy (or shadow) job as a state machine: chunk requests under a
//! bounded window, chunk intake (other digests and offsets ignored,
//! duplicates dropped), re-requests after a timeout, then verify → load →
//! health check → activate, with a DeployStatus report at each step.
//! Resumable: a job built from a persisted [`PendingDownload`] never asks
//! again for bytes it already holds. Sans-IO: the shell performs the
//! [`DeployAction`]s and feeds results back through `handle_*`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use drover_protocol::manifest::{AgentVersion, ModelManifest};
use drover_protocol::messages::{
    Chunk, ChunkRequest, DeployPhase, DeployStatus, Reason, ReasonCode,
};
use drover_protocol::trust::check_artifact;
use drover_protocol::{ModelRef, Sha256, Signed, Timestamp};

/// Download flow control and timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeployConfig {
    /// Bytes asked for per request.
    pub chunk_size: u32,
    /// Requests outstanding at most.
    pub window: usize,
    /// A request unanswered this long (ms) is sent again.
    pub request_timeout_ms: u64,
    /// Download progress is reported at most this often (ms).
    pub progress_interval_ms: u64,
    /// No byte for this long (ms) while connected fails the job.
    pub stall_timeout_ms: u64,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            chunk_size: 64 * 1024,
            window: 4,
            request_timeout_ms: 5_000,
            progress_interval_ms: 1_000,
            stall_timeout_ms: 300_000,
        }
    }
}

/// What the job ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// Activate the model.
    Deploy,
    /// Run it as shadow candidate on a sample of live inputs.
    Shadow {
        /// Share of inputs, per mille.
        sample_per_mille: u16,
    },
}

/// A download as persisted, to resume after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingDownload {
    /// Command that started it.
    pub seq: u64,
    /// Deploy or shadow.
    pub kind: JobKind,
    /// The signed manifest, exactly as received.
    pub manifest: Signed<ModelManifest>,
    /// Byte ranges `[start, end)` already written to the partial file.
    pub held: Vec<(u64, u64)>,
}

/// Sorted, disjoint, merged half-open byte ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    /// Normalises arbitrary ranges (empty ones dropped, overlaps merged).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> RangeSet {
        let mut s = RangeSet::default();
        for (a, b) in ranges {
            s.insert(a, b);
        }
        s
    }

    /// Adds `[start, end)`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.0 {
            if b < start {
                out.push((a, b));
            } else if a > end {
                if !placed {
                    out.push((start, end));
                    placed = true;
                }
                out.push((a, b));
            } else {
                start = start.min(a);
                end = end.max(b);
            }
        }
        if !placed {
            out.push((start, end));
        }
        self.0 = out;
    }

    /// Bytes covered.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }

    /// Whether all of `[start, end)` is covered.
    pub fn contains(&self, start: u64, end: u64) -> bool {
        self.0.iter().any(|&(a, b)| a <= start && end <= b)
    }

    /// The ranges.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// First position at or after `from` that is not covered.
    fn next_missing(&self, from: u64) -> u64 {
        let mut pos = from;
        for &(a, b) in &self.0 {
            if a <= pos && pos < b {
                pos = b;
            }
        }
        pos
    }

    /// Start of the first range beginning after `pos`.
    fn next_start_after(&self, pos: u64) -> Option<u64> {
        self.0.iter().map(|(a, _)| *a).find(|a| *a > pos)
    }
}

/// What the shell must do next, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum DeployAction {
    /// Publish this request on `up`.
    RequestChunk(ChunkRequest),
    /// Write `data` at `offset` of the partial file, then persist
    /// [`DeployJob::pending`] (the write must be durable first).
    WriteChunk {
        /// Offset in the artifact.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Hash the complete file; call [`DeployJob::handle_digest`].
    Verify,
    /// Load with tract; call [`DeployJob::handle_loaded`].
    Load,
    /// Run the manifest's health checks; call [`DeployJob::handle_health`].
    RunHealthChecks,
    /// Install and swap in (or start shadowing); call [`DeployJob::handle_activated`].
    Activate,
    /// Publish this status report.
    Report(DeployStatus),
    /// The job failed: delete the partial file and the pending record.
    Discard,
}

/// What became of a received chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// New bytes, to be written.
    Accepted,
    /// Bytes already held (a late answer to a re-sent request).
    Duplicate,
    /// Not for this job (other digest).
    NotOurs,
    /// No outstanding request starts at this offset, or the job is not downloading.
    Unrequested,
    /// Inconsistent with the manifest (size, range).
    Invalid(&'static str),
}

/// Where the job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Fetching chunks.
    Downloading,
    /// Waiting for the file digest.
    Verifying,
    /// Waiting for tract.
    Loading,
    /// Waiting for health-check results.
    HealthCheck,
    /// Waiting for the swap.
    Activating,
    /// Active (or shadowing).
    Done,
    /// Refused or failed.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outstanding {
    offset: u64,
    len: u64,
    sent_at: Timestamp,
}

/// One deploy/shadow job.
#[derive(Debug, Clone)]
pub struct DeployJob {
    seq: u64,
    kind: JobKind,
    signed: Signed<ModelManifest>,
    manifest: ModelManifest,
    cfg: DeployConfig,
    phase: Phase,
    held: RangeSet,
    outstanding: Vec<Outstanding>,
    connected: bool,
    last_gain: Timestamp,
    last_report: Option<Timestamp>,
    re_requests: u64,
    duplicates: u64,
    actions: VecDeque<DeployAction>,
}

impl DeployJob {
    /// Starts (or resumes, with `held` non-empty) a job for a verified manifest.
    pub fn new(
        seq: u64,
        kind: JobKind,
        signed: Signed<ModelManifest>,
        manifest: ModelManifest,
        held: RangeSet,
        cfg: DeployConfig,
        now: Timestamp,
    ) -> DeployJob {
        let size = manifest.artifact.size;
        let held = RangeSet::from_ranges(
            held.ranges()
                .iter()
                .map(|&(a, b)| (a.min(size), b.min(size))),
        );
        let cfg = DeployConfig {
            chunk_size: cfg.chunk_size.max(1),
            window: cfg.window.max(1),
            ..cfg
        };
        let mut job = DeployJob {
            seq,
            kind,
            signed,
            manifest,
            cfg,
            phase: Phase::Downloading,
            held,
            outstanding: Vec::new(),
            connected: false,
            last_gain: now,
            last_report: None,
            re_requests: 0,
            duplicates: 0,
            actions: VecDeque::new(),
        };
        job.report_progress(now, true);
        if job.held.total() >= size {
            job.complete();
        }
        job
    }

    /// Resumes a persisted download. `manifest` is `p.manifest` decoded.
    pub fn resume(
        p: PendingDownload,
        manifest: ModelManifest,
        cfg: DeployConfig,
        now: Timestamp,
    ) -> DeployJob {
        let held = RangeSet::from_ranges(p.held);
        DeployJob::new(p.seq, p.kind, p.manifest, manifest, held, cfg, now)
    }

    /// The record to persist so the job can resume.
    pub fn pending(&self) -> PendingDownload {
        PendingDownload {
            seq: self.seq,
            kind: self.kind,
            manifest: self.signed.clone(),
            held: self.held.ranges().to_vec(),
        }
    }

    /// Command sequence that started the job.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Deploy or shadow.
    pub fn kind(&self) -> JobKind {
        self.kind
    }

    /// The manifest.
    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    /// The signed manifest, as received.
    pub fn signed_manifest(&self) -> &Signed<ModelManifest> {
        &self.signed
    }

    /// `name@version`.
    pub fn model_ref(&self) -> ModelRef {
        self.manifest.model_ref()
    }

    /// Artifact digest (routes chunks).
    pub fn sha256(&self) -> Sha256 {
        self.manifest.artifact.sha256
    }

    /// Where the job stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the job is over (done or failed) and all actions were taken.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed) && self.actions.is_empty()
    }

    /// Bytes held.
    pub fn held_bytes(&self) -> u64 {
        self.held.total()
    }

    /// Held byte ranges.
    pub fn held(&self) -> &RangeSet {
        &self.held
    }

    /// Requests re-sent after a timeout, and duplicate chunks dropped.
    pub fn retry_counts(&self) -> (u64, u64) {
        (self.re_requests, self.duplicates)
    }

    /// The next action for the shell.
    pub fn poll_action(&mut self) -> Option<DeployAction> {
        self.actions.pop_front()
    }

    fn status(&self, phase: DeployPhase) -> DeployAction {
        DeployAction::Report(DeployStatus {
            seq: self.seq,
            model: self.model_ref(),
            phase,
        })
    }

    fn report_progress(&mut self, now: Timestamp, force: bool) {
        let due = match self.last_report {
            None => true,
            Some(t) => now >= t.plus_ms(self.cfg.progress_interval_ms),
        };
        if force || due {
            self.last_report = Some(now);
            let a = self.status(DeployPhase::Downloading {
                received: self.held.total(),
                total: self.manifest.artifact.size,
            });
            self.actions.push_back(a);
        }
    }

    fn next_request(&self) -> Option<(u64, u64)> {
        let size = self.manifest.artifact.size;
        let cs = u64::from(self.cfg.chunk_size);
        let mut pos = 0;
        loop {
            pos = self.held.next_missing(pos);
            if pos >= size {
                return None;
            }
            if let Some(o) = self
                .outstanding
                .iter()
                .find(|o| o.offset <= pos && pos < o.offset + o.len)
            {
                pos = o.offset + o.len;
                continue;
            }
            // Aligned to chunk boundaries, so a resumed download asks for the
            // same ranges a fresh one would.
            let mut end = size.min((pos / cs + 1) * cs);
            if let Some(h) = self.held.next_start_after(pos) {
                end = end.min(h);
            }
            for o in &self.outstanding {
                if o.offset > pos {
                    end = end.min(o.offset);
                }
            }
            return Some((pos, end - pos));
        }
    }

    fn fill(&mut self, now: Timestamp) {
        if self.phase != Phase::Downloading || !self.connected {
            return;
        }
        while self.outstanding.len() < self.cfg.window {
            let Some((offset, len)) = self.next_request() else {
                return;
            };
            self.outstanding.push(Outstanding {
                offset,
                len,
                sent_at: now,
            });
            self.actions
                .push_back(DeployAction::RequestChunk(ChunkRequest {
                    sha256: self.sha256(),
                    offset,
                    len: u32::try_from(len).unwrap_or(u32::MAX),
                }));
        }
    }

    fn complete(&mut self) {
        self.outstanding.clear();
        self.phase = Phase::Verifying;
        let a = self.status(DeployPhase::Verifying);
        self.actions.push_back(a);
        self.actions.push_back(DeployAction::Verify);
    }

    fn fail(&mut self, reason: Reason, discard: bool) {
        if matches!(self.phase, Phase::Done | Phase::Failed) {
            return;
        }
        self.phase = Phase::Failed;
        self.outstanding.clear();
        let a = self.status(DeployPhase::Failed(reason));
        self.actions.push_back(a);
        if discard {
            self.actions.push_back(DeployAction::Discard);
        }
    }

    /// The link went up or down. Down forgets outstanding requests (their
    /// answers are lost with the session); up asks again.
    pub fn handle_link(&mut self, connected: bool, now: Timestamp) {
        self.connected = connected;
        if connected {
            // Time offline does not count towards the stall limit.
            self.last_gain = now;
            self.fill(now);
        } else {
            self.outstanding.clear();
        }
    }

    /// A chunk for this job's digest arrived.
    pub fn handle_chunk(&mut self, chunk: Chunk, now: Timestamp) -> ChunkOutcome {
        if chunk.sha256 != self.sha256() {
            return ChunkOutcome::NotOurs;
        }
        if self.phase != Phase::Downloading {
            self.duplicates += 1;
            return ChunkOutcome::Unrequested;
        }
        let size = self.manifest.artifact.size;
        if chunk.total != size {
            return ChunkOutcome::Invalid("chunk_total_mismatch");
        }
        let len = chunk.data.len() as u64;
        if len == 0 {
            return ChunkOutcome::Invalid("chunk_empty");
        }
        let Some(end) = chunk.offset.checked_add(len).filter(|e| *e <= size) else {
            return ChunkOutcome::Invalid("chunk_out_of_range");
        };
        if self.held.contains(chunk.offset, end) {
            self.duplicates += 1;
            return ChunkOutcome::Duplicate;
        }
        let Some(i) = self
            .outstanding
            .iter()
            .position(|o| o.offset == chunk.offset && len <= o.len)
        else {
            return ChunkOutcome::Unrequested;
        };
        self.outstanding.swap_remove(i);
        self.held.insert(chunk.offset, end);
        self.last_gain = now;
        self.actions.push_back(DeployAction::WriteChunk {
            offset: chunk.offset,
            data: chunk.data,
        });
        let complete = self.held.total() >= size;
        self.report_progress(now, complete);
        if complete {
            self.complete();
        } else {
            self.fill(now);
        }
        ChunkOutcome::Accepted
    }

    /// Writing a chunk failed (disk full, I/O error).
    pub fn handle_write_failed(&mut self, detail: &str) {
        self.fail(Reason::new(ReasonCode::WriteFailed, detail), true);
    }

    /// Re-sends timed-out requests and fails a stalled download.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.phase != Phase::Downloading || !self.connected {
            return;
        }
        if now >= self.last_gain.plus_ms(self.cfg.stall_timeout_ms) {
            let detail = format!(
                "no artifact bytes for {} ms ({} of {} held)",
                self.cfg.stall_timeout_ms,
                self.held.total(),
                self.manifest.artifact.size
            );
            self.fail(Reason::new(ReasonCode::DownloadStalled, detail), true);
            return;
        }
        let timeout = self.cfg.request_timeout_ms;
        let sha256 = self.sha256();
        for o in self.outstanding.iter_mut() {
            if now >= o.sent_at.plus_ms(timeout) {
                o.sent_at = now;
                self.re_requests += 1;
                self.actions
                    .push_back(DeployAction::RequestChunk(ChunkRequest {
                        sha256,
                        offset: o.offset,
                        len: u32::try_from(o.len).unwrap_or(u32::MAX),
                    }));
            }
        }
    }

    /// The next deadline (request timeout or stall), labelled.
    pub fn poll_timeout(&self) -> Option<(Timestamp, &'static str)> {
        if self.phase != Phase::Downloading || !self.connected {
            return None;
        }
        let stall = (
            self.last_gain.plus_ms(self.cfg.stall_timeout_ms),
            "download_stalled",
        );
        self.outstanding
            .iter()
            .map(|o| {
                (
                    o.sent_at.plus_ms(self.cfg.request_timeout_ms),
                    "chunk_request",
                )
            })
            .chain(std::iter::once(stall))
            .min_by_key(|(t, _)| *t)
    }

    /// The shell hashed the complete file.
    pub fn handle_digest(&mut self, sha256: Sha256, size: u64) {
        if self.phase != Phase::Verifying {
            return;
        }
        match check_artifact(&self.manifest, sha256, size) {
            Ok(()) => {
                self.phase = Phase::Loading;
                let a = self.status(DeployPhase::Loading);
                self.actions.push_back(a);
                self.actions.push_back(DeployAction::Load);
            }
            Err(e) => self.fail(e.reason(), true),
        }
    }

    /// tract loaded the model, or why not.
    pub fn handle_loaded(&mut self, result: Result<(), Reason>) {
        if self.phase != Phase::Loading {
            return;
        }
        match result {
            Ok(()) => {
                self.phase = Phase::HealthCheck;
                let a = self.status(DeployPhase::HealthCheck);
                self.actions.push_back(a);
                self.actions.push_back(DeployAction::RunHealthChecks);
            }
            Err(r) => self.fail(r, true),
        }
    }

    /// Health-check results.
    pub fn handle_health(&mut self, result: Result<(), Reason>) {
        if self.phase != Phase::HealthCheck {
            return;
        }
        match result {
            Ok(()) => {
                self.phase = Phase::Activating;
                self.actions.push_back(DeployAction::Activate);
            }
            Err(r) => self.fail(r, true),
        }
    }

    /// The shell swapped the model in (or started shadowing), or why not.
    pub fn handle_activated(&mut self, result: Result<(), Reason>) {
        if self.phase != Phase::Activating {
            return;
        }
        match result {
            Ok(()) => {
                self.phase = Phase::Done;
                let phase = match self.kind {
                    JobKind::Deploy => DeployPhase::Active,
                    JobKind::Shadow { .. } => DeployPhase::Shadowing,
                };
                let a = self.status(phase);
                self.actions.push_back(a);
            }
            Err(r) => self.fail(r, true),
        }
    }

    /// Abandons the job (superseded by a newer command). `discard` = false
    /// keeps the partial file for a successor with the same artifact.
    pub fn cancel(&mut self, reason: Reason, discard: bool) {
        self.fail(reason, discard);
    }
}

/// Size limits checked before a download starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest artifact accepted.
    pub max_model_bytes: u64,
    /// Model files (kept plus the new one) may use at most this much disk.
    pub disk_budget_bytes: u64,
}

/// Whether a manifest may be downloaded at all: agent version, model size,
/// disk budget (`disk_in_use` = bytes of model files that will be kept),
/// and a shape Drover can serve.
pub fn admit(
    m: &ModelManifest,
    agent: AgentVersion,
    limits: &Limits,
    disk_in_use: u64,
) -> Result<(), Reason> {
    if m.min_agent_version > agent {
        return Err(Reason::new(
            ReasonCode::AgentTooOld,
            format!(
                "{} needs agent {} or newer; this is {agent}",
                m.model_ref(),
                m.min_agent_version
            ),
        ));
    }
    if m.artifact.size > limits.max_model_bytes {
        return Err(Reason::new(
            ReasonCode::ModelTooLarge,
            format!(
                "artifact is {} bytes; this device accepts at most {}",
                m.artifact.size, limits.max_model_bytes
            ),
        ));
    }
    if disk_in_use.saturating_add(m.artifact.size) > limits.disk_budget_bytes {
        return Err(Reason::new(
            ReasonCode::DiskBudget,
            format!(
                "{} bytes of models kept plus {} new exceed the {}-byte disk budget",
                disk_in_use, m.artifact.size, limits.disk_budget_bytes
            ),
        ));
    }
    // Any number of named inputs with any dims is served; the manifest must
    // name at least one, each once.
    let mut names: Vec<&str> = m.inputs.iter().map(|i| i.name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    if before == 0 || names.len() != before {
        return Err(Reason::new(
            ReasonCode::UnsupportedModel,
            format!(
                "{} must list at least one input, each name once",
                m.model_ref()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
