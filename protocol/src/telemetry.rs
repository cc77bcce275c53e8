//! Telemetry windows and the compact latency histogram they carry.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{ModelRef, Timestamp};

/// Log-linear buckets: 32 per power of two, so any recorded value is off by
/// at most 1/32 (3 %) of itself. Values are microseconds; everything above
/// [`LatencyHistogram::MAX_US`] lands in the last bucket.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;

/// A mergeable latency histogram in microseconds (1 µs .. 60 s, ±3 %).
///
/// A fixed 698 buckets (5.5 KiB in memory) instead of an hdrhistogram
/// (136 KiB at 3 digits): the controller merges one of these per
/// (model, version, cohort, bucket) as windows arrive. On the wire only the
/// non-zero range is sent, so a window of realistic latencies costs a few
/// hundred bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    total: u64,
    sum_us: u64,
    max_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: vec![0; Self::BUCKETS],
            total: 0,
            sum_us: 0,
            max_us: 0,
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("total", &self.total)
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .finish()
    }
}

impl LatencyHistogram {
    /// Values above this (60 s) are clamped into the last bucket.
    pub const MAX_US: u64 = 60_000_000;
    /// Number of buckets.
    pub const BUCKETS: usize = bucket_of(Self::MAX_US) + 1;

    /// Records one latency.
    #[inline]
    pub fn record(&mut self, us: u64) {
        let idx = bucket_of(us.min(Self::MAX_US));
        if let Some(c) = self.counts.get_mut(idx) {
            *c += 1;
        }
        self.total += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Adds all of `other` into `self`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.total = self.total.saturating_add(other.total);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest recorded value.
    pub fn max(&self) -> u64 {
        self.max_us
    }

    /// Mean of recorded values (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` in [0, 1] (bucket midpoint), `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (idx, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_mid(idx).min(self.max_us.max(bucket_low(idx))));
            }
        }
        Some(self.max_us)
    }

    /// Non-zero bucket counts as (bucket index, count); for tests and tools.
    pub fn buckets(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i, *c))
    }
}

const fn bucket_of(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros();
    let shift = msb - SUB_BITS;
    (((msb - SUB_BITS + 1) as u64) * SUB + ((us >> shift) & (SUB - 1))) as usize
}

fn bucket_low(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < SUB {
        return idx;
    }
    let octave = idx / SUB; // >= 1
    let sub = idx % SUB;
    (SUB + sub) << (octave - 1)
}

fn bucket_mid(idx: usize) -> u64 {
    let low = bucket_low(idx);
    let width = if (idx as u64) < SUB {
        1
    } else {
        1u64 << ((idx as u64) / SUB - 1)
    };
    low + width / 2
}

/// Wire form: only the non-zero range of buckets.
#[derive(Serialize, Deserialize)]
struct WireHistogram {
    first: u16,
    counts: Vec<u64>,
    sum_us: u64,
    max_us: u64,
}

impl Serialize for LatencyHistogram {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let first = self.counts.iter().position(|c| *c > 0).unwrap_or(0);
        let last = self
            .counts
            .iter()
            .rposition(|c| *c > 0)
            .map_or(0, |l| l + 1);
        WireHistogram {
            first: first as u16,
            counts: self.counts.get(first..last).unwrap_or(&[]).to_vec(),
            sum_us: self.sum_us,
            max_us: self.max_us,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for LatencyHistogram {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireHistogram::deserialize(d)?;
        let first = w.first as usize;
        if first + w.counts.len() > Self::BUCKETS {
            return Err(serde::de::Error::custom("latency histogram out of range"));
        }
        let mut h = LatencyHistogram::default();
        let mut total = 0u64;
        for (i, c) in w.counts.iter().enumerate() {
            h.counts[first + i] = *c;
            total = total.saturating_add(*c);
        }
        h.total = total;
        h.sum_us = w.sum_us;
        h.max_us = w.max_us;
        Ok(h)
    }
}

/// Whether a window describes the serving model or a shadow candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub enum ModelRole {
    /// The model answering requests.
    Active,
    /// A candidate running on sampled inputs off the hot path.
    Shadow,
}

/// Comparison of a shadow candidate with the active model over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ShadowStats {
    /// Inputs both models answered.
    pub compared: u64,
    /// Of those, how many gave the same label (or within tolerance for regression).
    pub agreed: u64,
    /// Sampled inputs dropped because the shadow queue was full.
    pub dropped: u64,
    /// Candidate errors.
    pub errors: u64,
    /// Candidate latency.
    pub latency: LatencyHistogram,
}

/// One device's measurements of one model over one time window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryWindow {
    /// Per-device sequence, increasing; the controller dedupes on (device, seq).
    pub seq: u64,
    /// The model measured.
    pub model: ModelRef,
    /// Active or shadow.
    pub role: ModelRole,
    /// Window start.
    pub start: Timestamp,
    /// Window end.
    pub end: Timestamp,
    /// Inferences in the window.
    pub count: u64,
    /// Inferences that failed.
    pub errors: u64,
    /// Inference latency.
    pub latency: LatencyHistogram,
    /// Per feature, counts per bin of the manifest's edges (+ under/overflow).
    pub features: Vec<Vec<u32>>,
    /// Predicted class counts, or counts per bin of the reference output edges.
    pub outputs: Vec<u32>,
    /// Top-class probability in 10 equal bins over [0, 1] (classifiers).
    pub confidence: Vec<u32>,
    /// Inferences that received ground truth.
    pub labelled: u64,
    /// Of those, how many were right (classification).
    pub correct: u64,
    /// Sum of absolute errors over labelled inferences (regression).
    pub abs_error_sum: f64,
    /// Shadow comparison, when a shadow candidate ran.
    pub shadow: Option<ShadowStats>,
    /// Windows this device's outbox evicted (oldest first) since the last report.
    pub evicted_windows: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_continuous_and_accurate() {
        let mut prev = 0;
        for us in 0..200_000u64 {
            let b = bucket_of(us);
            assert!(b == prev || b == prev + 1, "gap at {us}");
            prev = b;
            let low = bucket_low(b);
            assert!(low <= us, "{us} below its bucket {low}");
            let err = (bucket_mid(b) as f64 - us as f64).abs() / (us.max(1) as f64);
            assert!(err <= 1.0 / 32.0 + 1e-9, "{us}: error {err}");
        }
        assert_eq!(LatencyHistogram::BUCKETS, 698);
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = LatencyHistogram::default();
        for us in 1..=1000 {
            a.record(us);
        }
        let p50 = a.quantile(0.5).unwrap() as f64;
        assert!((p50 - 500.0).abs() / 500.0 < 0.04, "{p50}");
        let p99 = a.quantile(0.99).unwrap() as f64;
        assert!((p99 - 990.0).abs() / 990.0 < 0.04, "{p99}");
        let mut b = LatencyHistogram::default();
        b.record(5_000);
        a.merge(&b);
        assert_eq!(a.count(), 1001);
        assert_eq!(a.max(), 5_000);
        assert_eq!(a.quantile(1.0), Some(5_000));
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
    }

    #[test]
    fn huge_values_clamp() {
        let mut h = LatencyHistogram::default();
        h.record(u64::MAX);
        assert_eq!(h.count(), 1);
        assert!(h.quantile(0.5).is_some());
    }

    #[test]
    fn wire_form_round_trips() {
        let mut h = LatencyHistogram::default();
        for us in [30, 400, 401, 9000] {
            h.record(us);
        }
        let bytes = postcard::to_allocvec(&h).unwrap();
        let back: LatencyHistogram = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn out_of_range_wire_histogram_is_refused() {
        let w = WireHistogram {
            first: 700,
            counts: vec![1; 10],
            sum_us: 0,
            max_us: 0,
        };
        let bytes = postcard::to_allocvec(&w).unwrap();
        assert!(postcard::from_bytes::<LatencyHistogram>(&bytes).is_err());
    }
}
