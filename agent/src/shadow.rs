//! Shadow mode: a candidate model fed a sample of live inputs through a
//! bounded queue (full ⇒ the input is dropped and counted; the hot path never
//! waits), run by a worker thread that compares each answer with the active
//! model's and records the candidate's own latency and telemetry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use drover_protocol::telemetry::ShadowStats;

use crate::clock::Clock;
use crate::core::window::{Prediction, Record};
use crate::model::{LoadedModel, micros};

struct Job {
    row: Vec<f32>,
    active: Option<Prediction>,
}

#[derive(Debug, Default)]
struct Stats {
    inner: Mutex<ShadowStats>,
    dropped: AtomicU64,
    dropped_total: AtomicU64,
}

/// A running shadow candidate.
pub(crate) struct Shadow {
    candidate: Arc<LoadedModel>,
    per_mille: u16,
    seen: AtomicU64,
    tx: mpsc::Sender<Job>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow")
            .field("candidate", self.candidate.model_ref())
            .field("per_mille", &self.per_mille)
            .finish()
    }
}

impl Shadow {
    /// Starts the worker thread. It ends when the `Shadow` is dropped (its
    /// queue closes) after finishing what is queued.
    pub(crate) fn start(
        candidate: Arc<LoadedModel>,
        per_mille: u16,
        queue: usize,
        clock: Clock,
    ) -> std::io::Result<Arc<Shadow>> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let stats = Arc::new(Stats::default());
        let worker_model = candidate.clone();
        let worker_stats = stats.clone();
        std::thread::Builder::new()
            .name("drover-shadow".into())
            .spawn(move || work(rx, &worker_model, &worker_stats, clock))?;
        Ok(Arc::new(Shadow {
            candidate,
            per_mille: per_mille.min(1000),
            seen: AtomicU64::new(0),
            tx,
            stats,
        }))
    }

    /// The candidate.
    pub(crate) fn candidate(&self) -> &Arc<LoadedModel> {
        &self.candidate
    }

    /// Hot path: maybe queue this input for the candidate. Never blocks.
    #[inline]
    pub(crate) fn offer(&self, row: &[f32], active: Option<Prediction>) {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        let pm = u64::from(self.per_mille);
        // Evenly spread sampling without an RNG: take input n when the running
        // quota n * pm / 1000 steps up.
        if (n + 1) * pm / 1000 == n * pm / 1000 {
            return;
        }
        let job = Job {
            row: row.to_vec(),
            active,
        };
        if self.tx.try_send(job).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.stats.dropped_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the stats gathered since the last call.
    pub(crate) fn take_stats(&self) -> ShadowStats {
        let mut s =
            std::mem::take(&mut *self.stats.inner.lock().unwrap_or_else(|e| e.into_inner()));
        s.dropped = self.stats.dropped.swap(0, Ordering::Relaxed);
        s
    }

    /// Inputs dropped since start (for metrics).
    pub(crate) fn dropped_total(&self) -> u64 {
        self.stats.dropped_total.load(Ordering::Relaxed)
    }
}

fn work(mut rx: mpsc::Receiver<Job>, model: &LoadedModel, stats: &Stats, clock: Clock) {
    let tolerance = model.tolerance();
    while let Some(job) = rx.blocking_recv() {
        let t0 = Instant::now();
        let result = model.run(&job.row);
        let t1 = Instant::now();
        let latency_us = micros(t1.duration_since(t0));
        let prediction = result.ok().and_then(|o| model.predict(&o));
        model.recorder().record(&Record {
            request_id: 0,
            at_ms: clock.at(t1).0,
            latency_us,
            row: &job.row,
            prediction,
        });
        let mut s = stats.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.latency.record(latency_us);
        match (prediction, job.active) {
            (None, _) => s.errors += 1,
            (Some(c), Some(a)) => {
                s.compared += 1;
                if c.agrees_with(&a, tolerance) {
                    s.agreed += 1;
                }
            }
            (Some(_), None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::window::RecorderConfig;
    use crate::model::tests::{classifier_manifest, fixture};

    fn model(file: &str, v: u64) -> Arc<LoadedModel> {
        Arc::new(
            LoadedModel::load(
                &fixture(file),
                classifier_manifest(file, v),
                RecorderConfig::default(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn samples_compares_and_counts_drops() {
        let cand = model("sensor_clf_v2.onnx", 2);
        let active = model("sensor_clf_v1.onnx", 1);
        let shadow = Shadow::start(cand.clone(), 500, 1000, Clock::new()).unwrap();
        let rows: Vec<[f32; 4]> = (0..100)
            .map(|i| [50.0 + i as f32 * 0.2, 1.0 + (i % 7) as f32, 12.0, 40.0])
            .collect();
        for r in &rows {
            let p = active.predict(&active.run(r).unwrap());
            shadow.offer(r, p);
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let n = cand.recorder().peek().count();
            if n == 50 {
                break;
            }
            assert!(Instant::now() < deadline, "shadow ran {n} of 50");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let s = shadow.take_stats();
        assert_eq!(s.compared, 50);
        assert!(s.agreed >= 40, "v1 and v2 mostly agree: {}", s.agreed);
        assert_eq!(s.latency.count(), 50);
        assert_eq!(s.dropped, 0);
        assert_eq!(shadow.take_stats().compared, 0);
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking() {
        let cand = model("sensor_clf_slow.onnx", 3);
        let shadow = Shadow::start(cand, 1000, 1, Clock::new()).unwrap();
        let t0 = Instant::now();
        for _ in 0..50 {
            shadow.offer(&[0.0; 4], None);
        }
        assert!(t0.elapsed() < std::time::Duration::from_millis(200));
        let s = shadow.take_stats();
        assert!(s.dropped >= 45, "dropped {}", s.dropped);
        assert_eq!(shadow.dropped_total(), s.dropped);
    }
}
