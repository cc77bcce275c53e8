//! Artifact delivery: answers `ChunkRequest`s with `Chunk`s on each device's
//! `chunk` topic. A sans-IO [`ChunkScheduler`] holds a bounded queue per
//! device, serves devices round-robin and holds a global bytes/s cap (token
//! bucket); the async driver around it validates requests against the
//! artifact store, keeps hot artifacts in a bounded LRU and publishes.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use drover_protocol::codec::MAX_CHUNK_DATA;
use drover_protocol::messages::{Chunk, ChunkRequest, Down};
use drover_protocol::{DeviceId, Sha256};
use tokio::sync::{mpsc, watch};

use crate::controller::Controller;
use crate::metrics::inc;

/// Scheduler settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkConfig {
    /// Requests queued per device; more are dropped (the agent re-requests).
    pub per_device_queue: usize,
    /// Global cap on chunk bytes per second.
    pub rate_bytes_per_sec: u64,
    /// Bucket size: bytes that may go out at once after an idle spell.
    pub burst_bytes: u64,
}

impl ChunkConfig {
    /// Settings for a rate, with a burst of a tenth of a second (at least one
    /// full chunk, so every chunk can eventually go).
    pub(crate) fn with_rate(rate_bytes_per_sec: u64) -> ChunkConfig {
        ChunkConfig {
            per_device_queue: 64,
            rate_bytes_per_sec: rate_bytes_per_sec.max(1),
            burst_bytes: (rate_bytes_per_sec / 10).max(MAX_CHUNK_DATA as u64),
        }
    }
}

/// Default global cap: 50 MB/s.
pub(crate) const DEFAULT_RATE_BYTES_PER_SEC: u64 = 50_000_000;

/// A validated chunk to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkJob {
    /// Artifact.
    pub sha256: Sha256,
    /// First byte.
    pub offset: u64,
    /// Bytes to send (already clamped to the artifact and [`MAX_CHUNK_DATA`]).
    pub len: u32,
}

/// The device's queue is full; the request was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("chunk queue full")]
pub(crate) struct QueueFull;

/// Fair, rate-capped chunk scheduling. Time is milliseconds on any
/// monotonic scale, passed in.
#[derive(Debug)]
pub(crate) struct ChunkScheduler {
    cfg: ChunkConfig,
    queues: HashMap<DeviceId, VecDeque<ChunkJob>>,
    ring: VecDeque<DeviceId>,
    tokens: f64,
    last_ms: u64,
}

impl ChunkScheduler {
    /// A scheduler with a full bucket at `now_ms`.
    pub(crate) fn new(cfg: ChunkConfig, now_ms: u64) -> ChunkScheduler {
        ChunkScheduler {
            cfg,
            queues: HashMap::new(),
            ring: VecDeque::new(),
            tokens: cfg.burst_bytes as f64,
            last_ms: now_ms,
        }
    }

    /// Queues a job for `device`. A request for a chunk already queued
    /// for the device is taken as that one: an agent re-requests after its
    /// request timeout, and behind a slow, rate-capped link the original is
    /// often still waiting here; serving both would send the bytes twice.
    pub(crate) fn handle_request(
        &mut self,
        device: DeviceId,
        job: ChunkJob,
    ) -> Result<(), QueueFull> {
        let q = self.queues.entry(device.clone()).or_default();
        if q.contains(&job) {
            return Ok(());
        }
        if q.len() >= self.cfg.per_device_queue {
            return Err(QueueFull);
        }
        if q.is_empty() {
            self.ring.push_back(device);
        }
        q.push_back(job);
        Ok(())
    }

    fn refill(&mut self, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + dt as f64 * self.cfg.rate_bytes_per_sec as f64 / 1000.0)
            .min(self.cfg.burst_bytes as f64);
    }

    /// The next chunk to send, if the rate allows one now: devices take
    /// turns, one chunk each.
    pub(crate) fn poll_transmit(&mut self, now_ms: u64) -> Option<(DeviceId, ChunkJob)> {
        self.refill(now_ms);
        let device = self.ring.front()?.clone();
        let q = self.queues.get_mut(&device)?;
        let job = *q.front()?;
        if self.tokens < f64::from(job.len) {
            return None;
        }
        self.tokens -= f64::from(job.len);
        q.pop_front();
        self.ring.pop_front();
        if q.is_empty() {
            self.queues.remove(&device);
        } else {
            self.ring.push_back(device.clone());
        }
        Some((device, job))
    }

    /// When the next queued chunk can go (`None`: nothing queued).
    pub(crate) fn poll_timeout(&self) -> Option<u64> {
        let device = self.ring.front()?;
        let job = self.queues.get(device)?.front()?;
        let missing = f64::from(job.len) - self.tokens;
        if missing <= 0.0 {
            return Some(self.last_ms);
        }
        let wait = (missing * 1000.0 / self.cfg.rate_bytes_per_sec as f64).ceil() as u64;
        Some(self.last_ms + wait.max(1))
    }

    /// Jobs queued across all devices.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }
}

/// Hot artifacts in memory, least recently used evicted past `max_bytes`.
#[derive(Debug)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    max_bytes: usize,
    bytes: usize,
    tick: u64,
    entries: HashMap<Sha256, (Arc<Vec<u8>>, u64)>,
}

impl ArtifactCache {
    /// A cache over `DATA_DIR/artifacts`.
    pub(crate) fn new(dir: PathBuf, max_bytes: usize) -> ArtifactCache {
        ArtifactCache {
            dir,
            max_bytes,
            bytes: 0,
            tick: 0,
            entries: HashMap::new(),
        }
    }

    /// The artifact's bytes, or `None` if the store has no such artifact.
    pub(crate) async fn get(&mut self, sha: &Sha256) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        if let Some((data, used)) = self.entries.get_mut(sha) {
            *used = self.tick;
            return Some(data.clone());
        }
        let path = self.dir.join(format!("{}.onnx", sha.to_hex()));
        let data = Arc::new(tokio::fs::read(&path).await.ok()?);
        if data.len() <= self.max_bytes {
            while self.bytes + data.len() > self.max_bytes {
                let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(k, _)| *k)
                else {
                    break;
                };
                if let Some((old, _)) = self.entries.remove(&oldest) {
                    self.bytes -= old.len();
                }
            }
            self.bytes += data.len();
            self.entries.insert(*sha, (data.clone(), self.tick));
        }
        Some(data)
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Clamps a request to the artifact; `None` if it is out of range.
pub(crate) fn validate(req: &ChunkRequest, size: u64) -> Option<ChunkJob> {
    if req.len == 0 || req.offset >= size {
        return None;
    }
    let len = u64::from(req.len)
        .min(MAX_CHUNK_DATA as u64)
        .min(size - req.offset);
    Some(ChunkJob {
        sha256: req.sha256,
        offset: req.offset,
        len: u32::try_from(len).ok()?,
    })
}

/// The chunk server task.
pub(crate) async fn run(
    ctrl: Controller,
    mut rx: mpsc::Receiver<(DeviceId, ChunkRequest)>,
    cfg: ChunkConfig,
    cache_bytes: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let start = tokio::time::Instant::now();
    let now_ms = |start: tokio::time::Instant| start.elapsed().as_millis() as u64;
    let mut sched = ChunkScheduler::new(cfg, 0);
    let mut cache = ArtifactCache::new(ctrl.data_dir().join("artifacts"), cache_bytes);
    let metrics = ctrl.metrics();
    loop {
        while let Some((device, job)) = sched.poll_transmit(now_ms(start)) {
            let Some(data) = cache.get(&job.sha256).await else {
                inc(&metrics.chunks_refused);
                continue;
            };
            let from = job.offset as usize;
            let Some(slice) = data.get(from..from + job.len as usize) else {
                inc(&metrics.chunks_refused);
                continue;
            };
            let chunk = Down::Chunk(Chunk {
                sha256: job.sha256,
                offset: job.offset,
                total: data.len() as u64,
                data: slice.to_vec(),
            });
            match ctrl.publish_down(&device, &chunk).await {
                Ok(()) => metrics.chunk_sent(u64::from(job.len), start.elapsed().as_secs()),
                Err(e) => tracing::warn!(%device, error = %e, "publishing a chunk failed"),
            }
        }
        let deadline = sched
            .poll_timeout()
            .map(|ms| start + std::time::Duration::from_millis(ms));
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            req = rx.recv() => {
                let Some((device, req)) = req else { return };
                let Some(data) = cache.get(&req.sha256).await else {
                    inc(&metrics.chunks_refused);
                    metrics.malformed("chunk_unknown_artifact");
                    tracing::warn!(%device, sha256 = %req.sha256, "chunk request for an unknown artifact");
                    continue;
                };
                let Some(job) = validate(&req, data.len() as u64) else {
                    inc(&metrics.chunks_refused);
                    metrics.malformed("chunk_bad_range");
                    tracing::warn!(%device, offset = req.offset, len = req.len, "chunk request out of range");
                    continue;
                };
                if sched.handle_request(device, job).is_err() {
                    inc(&metrics.chunk_requests_dropped);
                }
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(i: usize) -> DeviceId {
        DeviceId::new(format!("d{i}")).unwrap()
    }

    fn job(offset: u64, len: u32) -> ChunkJob {
        ChunkJob {
            sha256: Sha256::of(b"a"),
            offset,
            len,
        }
    }

    #[test]
    fn devices_take_turns() {
        let mut s = ChunkScheduler::new(ChunkConfig::with_rate(u64::MAX / 4), 0);
        for k in 0..3 {
            s.handle_request(dev(0), job(k, 10)).unwrap();
        }
        s.handle_request(dev(1), job(0, 10)).unwrap();
        s.handle_request(dev(2), job(0, 10)).unwrap();
        let order: Vec<String> = std::iter::from_fn(|| s.poll_transmit(0))
            .map(|(d, _)| d.to_string())
            .collect();
        assert_eq!(order, ["d0", "d1", "d2", "d0", "d0"]);
        assert_eq!(s.pending(), 0);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_re_request_of_a_queued_chunk_is_served_once() {
        let mut s = ChunkScheduler::new(ChunkConfig::with_rate(u64::MAX / 4), 0);
        s.handle_request(dev(0), job(0, 10)).unwrap();
        s.handle_request(dev(0), job(1, 10)).unwrap();
        s.handle_request(dev(0), job(0, 10)).unwrap();
        // Another device asking for the same chunk is its own request.
        s.handle_request(dev(1), job(0, 10)).unwrap();
        assert_eq!(s.pending(), 3);
        let sent: Vec<(String, u64)> = std::iter::from_fn(|| s.poll_transmit(0))
            .map(|(d, j)| (d.to_string(), j.offset))
            .collect();
        assert_eq!(sent, [("d0".into(), 0), ("d1".into(), 0), ("d0".into(), 1)]);
        // Once sent, a new request for it is queued again (the chunk may be lost).
        s.handle_request(dev(0), job(0, 10)).unwrap();
        assert_eq!(s.pending(), 1);
    }

    #[test]
    fn per_device_queue_is_bounded() {
        let mut cfg = ChunkConfig::with_rate(1000);
        cfg.per_device_queue = 2;
        let mut s = ChunkScheduler::new(cfg, 0);
        assert!(s.handle_request(dev(0), job(0, 1)).is_ok());
        assert!(s.handle_request(dev(0), job(1, 1)).is_ok());
        assert_eq!(s.handle_request(dev(0), job(2, 1)), Err(QueueFull));
        assert!(
            s.handle_request(dev(1), job(0, 1)).is_ok(),
            "other devices unaffected"
        );
    }

    #[test]
    fn rate_cap_holds_over_fake_time() {
        // 1 MB/s, 100 KB chunks, 10 devices with 10 chunks each = 10 MB.
        let rate = 1_000_000;
        let cfg = ChunkConfig {
            per_device_queue: 64,
            rate_bytes_per_sec: rate,
            burst_bytes: 262_144,
        };
        let mut s = ChunkScheduler::new(cfg, 0);
        for d in 0..10 {
            for k in 0..10 {
                s.handle_request(dev(d), job(k * 100_000, 100_000)).unwrap();
            }
        }
        let mut now = 0u64;
        let mut sent = 0u64;
        let mut per_second = [0u64; 20];
        while s.pending() > 0 {
            while let Some((_, j)) = s.poll_transmit(now) {
                sent += u64::from(j.len);
                per_second[(now / 1000) as usize] += u64::from(j.len);
            }
            let Some(next) = s.poll_timeout() else { break };
            assert!(next > now, "timeout must move time forward");
            now = next;
        }
        assert_eq!(sent, 10_000_000);
        // 10 MB at 1 MB/s with a 256 KB burst: just under 10 s.
        assert!((9_700..=10_100).contains(&now), "finished at {now} ms");
        for (sec, b) in per_second.iter().enumerate() {
            assert!(*b <= rate + 262_144, "second {sec}: {b} bytes");
        }
    }

    #[test]
    fn requests_are_validated_and_clamped() {
        let req = |offset, len| ChunkRequest {
            sha256: Sha256::of(b"a"),
            offset,
            len,
        };
        assert_eq!(validate(&req(0, 100), 50).unwrap().len, 50);
        assert_eq!(validate(&req(40, 100), 50).unwrap().len, 10);
        assert_eq!(
            validate(&req(0, u32::MAX), 10_000_000).unwrap().len as usize,
            MAX_CHUNK_DATA
        );
        assert!(validate(&req(50, 1), 50).is_none());
        assert!(validate(&req(0, 0), 50).is_none());
        assert!(validate(&req(u64::MAX, 1), 50).is_none());
    }

    #[tokio::test]
    async fn cache_is_bounded_lru() {
        let dir = tempfile::tempdir().unwrap();
        let mut shas = Vec::new();
        for i in 0..3u8 {
            let data = vec![i; 100];
            let sha = Sha256::of(&data);
            std::fs::write(dir.path().join(format!("{}.onnx", sha.to_hex())), &data).unwrap();
            shas.push(sha);
        }
        let mut c = ArtifactCache::new(dir.path().to_path_buf(), 250);
        assert_eq!(c.get(&shas[0]).await.unwrap()[0], 0);
        c.get(&shas[1]).await.unwrap();
        c.get(&shas[0]).await.unwrap();
        c.get(&shas[2]).await.unwrap();
        assert_eq!(c.bytes(), 200);
        assert!(c.entries.contains_key(&shas[0]), "recently used stays");
        assert!(
            !c.entries.contains_key(&shas[1]),
            "least recently used goes"
        );
        assert!(c.get(&Sha256::of(b"nope")).await.is_none());
    }
}
