//! Telemetry windows and the compact latency histogram they carry.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{ModelRef, Timestamp};

/// Log-linear buckets: 128 per power of two, so a bucket is at most 1/128 of
/// its values wide and its midpoint is within 1/256 (0.4 %) of any value in
/// it. Rollout gates divide canary by control quantiles and must read a true
/// 1.02 as 1.01 ..= 1.03; the 32 per octave used before read it as 1.00 or
/// 1.04. This is the grid of an hdrhistogram at 2 significant digits; the
/// comparison that chose it is in BENCHMARKS.md.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

/// A mergeable latency histogram in microseconds (1 µs .. 60 s, ±0.4 %).
///
/// A fixed 2,533 buckets (20 KiB in memory) rather than an hdrhistogram at
/// 3 digits (136 KiB, and its merges are tens of times slower than this
/// one's): the controller folds every
/// arriving window into one of these per (model, version, cohort, bucket).
/// The occupied bucket range is tracked so a merge touches only the few
/// hundred buckets a window uses, and the wire form carries only that range
/// with runs of empty buckets collapsed: a window of realistic latencies
/// costs a few hundred bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    /// First non-zero bucket; `BUCKETS` while empty.
    lo: usize,
    /// One past the last non-zero bucket; 0 while empty.
    hi: usize,
    total: u64,
    sum_us: u64,
    max_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: vec![0; Self::BUCKETS],
            lo: Self::BUCKETS,
            hi: 0,
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
        // Wrapping, not saturating, adds: saturation doubled the cost of a
        // record on the agent's hot path (about 2 -> 4 ns), and 2^64 records are
        // out of reach; only merges of untrusted windows come near, and
        // `merge` saturates.
        if let Some(c) = self.counts.get_mut(idx) {
            *c = c.wrapping_add(1);
            self.lo = self.lo.min(idx);
            self.hi = self.hi.max(idx + 1);
        }
        self.total = self.total.wrapping_add(1);
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Adds all of `other` into `self`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        if let (Some(dst), Some(src)) = (
            self.counts.get_mut(other.lo..other.hi),
            other.counts.get(other.lo..other.hi),
        ) {
            for (a, b) in dst.iter_mut().zip(src) {
                *a = a.saturating_add(*b);
            }
            self.lo = self.lo.min(other.lo);
            self.hi = self.hi.max(other.hi);
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
        for (idx, c) in self.occupied() {
            seen = seen.saturating_add(c);
            if seen >= rank {
                return Some(bucket_mid(idx).min(self.max_us.max(bucket_low(idx))));
            }
        }
        Some(self.max_us)
    }

    /// Non-zero bucket counts as (bucket index, count); for tests and tools.
    pub fn buckets(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.occupied().filter(|(_, c)| *c > 0)
    }

    /// (index, count) over the occupied range, zeros included.
    fn occupied(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.counts
            .get(self.lo..self.hi)
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .map(|(i, c)| (self.lo + i, *c))
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

/// Wire form: the grid (`SUB_BITS`), then the occupied range of buckets from
/// `first`, as tokens. The grid makes the bucket indices self-describing:
/// histograms of another grid (the 32-per-octave one before, or a finer one
/// later) are refused instead of read as the wrong latencies. A token
/// with the low bit clear is one bucket's count (`count << 1`); with it set,
/// a run of `token >> 1` empty buckets. Tails and the gap between the modes
/// of a bimodal window are mostly empty buckets; a run costs one or two bytes
/// instead of one per bucket.
#[derive(Serialize, Deserialize)]
struct WireHistogram {
    grid: u8,
    first: u16,
    tokens: Vec<u64>,
    sum_us: u64,
    max_us: u64,
}

/// Counts above this do not fit a token; no window or merge of windows
/// comes near 2^63 samples, so clamping there loses nothing real.
const MAX_TOKEN_COUNT: u64 = u64::MAX >> 1;

impl Serialize for LatencyHistogram {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut tokens = Vec::new();
        let mut run = 0u64;
        for (_, c) in self.occupied() {
            if c == 0 {
                run += 1;
                continue;
            }
            if run > 0 {
                tokens.push((run << 1) | 1);
                run = 0;
            }
            tokens.push(c.min(MAX_TOKEN_COUNT) << 1);
        }
        WireHistogram {
            grid: SUB_BITS as u8,
            first: if self.lo < self.hi { self.lo as u16 } else { 0 },
            tokens,
            sum_us: self.sum_us,
            max_us: self.max_us,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for LatencyHistogram {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireHistogram::deserialize(d)?;
        if u32::from(w.grid) != SUB_BITS {
            return Err(serde::de::Error::custom(format!(
                "latency histogram grid {} not supported (this build uses {SUB_BITS})",
                w.grid
            )));
        }
        let out_of_range = || serde::de::Error::custom("latency histogram out of range");
        let mut h = LatencyHistogram::default();
        let mut idx = w.first as usize;
        for token in w.tokens {
            if token & 1 == 1 {
                // Checked before use: a run may claim up to 2^63 buckets.
                let n = usize::try_from(token >> 1).map_err(|_| out_of_range())?;
                idx = idx
                    .checked_add(n)
                    .filter(|i| *i <= Self::BUCKETS)
                    .ok_or_else(out_of_range)?;
                continue;
            }
            let c = h.counts.get_mut(idx).ok_or_else(out_of_range)?;
            *c = token >> 1;
            if *c > 0 {
                h.lo = h.lo.min(idx);
                h.hi = idx + 1;
            }
            h.total = h.total.saturating_add(token >> 1);
            idx += 1;
        }
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
    /// Shadow comparison, when a shadow candidate ran: on the candidate's
    /// own (`Shadow`) window, which names the version compared.
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
            assert!(err <= 1.0 / 256.0 + 1e-9, "{us}: error {err}");
        }
        assert_eq!(
            bucket_of(LatencyHistogram::MAX_US),
            LatencyHistogram::BUCKETS - 1
        );
        assert_eq!(LatencyHistogram::BUCKETS, 2533);
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
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut both) = (
            LatencyHistogram::default(),
            LatencyHistogram::default(),
            LatencyHistogram::default(),
        );
        for us in [3, 400, 401, 90_000] {
            a.record(us);
            both.record(us);
        }
        for us in [1, 2_500, 70_000_000] {
            b.record(us);
            both.record(us);
        }
        let mut merged = a.clone();
        merged.merge(&b);
        merged.merge(&LatencyHistogram::default());
        assert_eq!(merged, both);
        let mut from_empty = LatencyHistogram::default();
        from_empty.merge(&both);
        assert_eq!(from_empty, both);
        // 400 and 401 share a 2 µs wide bucket.
        assert_eq!(both.buckets().count(), 6);
    }

    #[test]
    fn wire_form_collapses_empty_runs() {
        let mut h = LatencyHistogram::default();
        h.record(400);
        h.record(2_500);
        let bytes = postcard::to_allocvec(&h).unwrap();
        // grid (1) + first (2) + token count (1) + count, run (2), count + sum (2) + max (2)
        assert!(bytes.len() <= 13, "{} bytes", bytes.len());
        let back: LatencyHistogram = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, h);
        let empty = postcard::to_allocvec(&LatencyHistogram::default()).unwrap();
        let back: LatencyHistogram = postcard::from_bytes(&empty).unwrap();
        assert_eq!(back, LatencyHistogram::default());
    }

    fn decode(first: u16, tokens: Vec<u64>) -> Result<LatencyHistogram, postcard::Error> {
        decode_grid(SUB_BITS as u8, first, tokens)
    }

    fn decode_grid(
        grid: u8,
        first: u16,
        tokens: Vec<u64>,
    ) -> Result<LatencyHistogram, postcard::Error> {
        let w = WireHistogram {
            grid,
            first,
            tokens,
            sum_us: 0,
            max_us: 0,
        };
        postcard::from_bytes(&postcard::to_allocvec(&w).unwrap())
    }

    #[test]
    fn out_of_range_wire_histogram_is_refused() {
        let last = (LatencyHistogram::BUCKETS - 1) as u16;
        assert!(decode(last, vec![2]).is_ok());
        assert!(decode(last, vec![2, 2]).is_err());
        assert!(decode(u16::MAX, vec![2]).is_err());
        // Runs of empty buckets may reach the end but not pass it, however
        // large the claimed run.
        assert!(decode(0, vec![((LatencyHistogram::BUCKETS as u64) << 1) | 1]).is_ok());
        assert!(decode(0, vec![((LatencyHistogram::BUCKETS as u64) << 1) | 1, 2]).is_err());
        assert!(decode(5, vec![u64::MAX, 2]).is_err());
        assert!(decode(5, vec![u64::MAX - 1]).is_ok());
        assert!(decode_grid(5, 10, vec![2]).is_err());
        assert!(decode_grid(8, 10, vec![2]).is_err());
        let h = decode(10, vec![2, 7, 0, 4]).unwrap();
        assert_eq!(h.buckets().collect::<Vec<_>>(), vec![(10, 1), (15, 2)]);
        assert_eq!(h.count(), 3);
    }

    proptest::proptest! {
        #[test]
        fn any_wire_histogram_decodes_within_range_or_is_refused(
            first in proptest::prelude::any::<u16>(),
            tokens in proptest::collection::vec(
                proptest::prop_oneof![0u64..600, proptest::prelude::any::<u64>()],
                0..64,
            ),
        ) {
            if let Ok(h) = decode(first % 3000, tokens) {
                let sum = h.buckets().fold(0u64, |a, (_, c)| a.saturating_add(c));
                proptest::prop_assert_eq!(sum, h.count());
                proptest::prop_assert!(h.buckets().all(|(i, _)| i < LatencyHistogram::BUCKETS));
                let again: LatencyHistogram =
                    postcard::from_bytes(&postcard::to_allocvec(&h).unwrap()).unwrap();
                proptest::prop_assert_eq!(again, h);
            }
        }

        #[test]
        fn recorded_histograms_round_trip(
            samples in proptest::collection::vec(0u64..120_000_000, 0..300),
        ) {
            let mut h = LatencyHistogram::default();
            for s in &samples {
                h.record(*s);
            }
            let back: LatencyHistogram =
                postcard::from_bytes(&postcard::to_allocvec(&h).unwrap()).unwrap();
            proptest::prop_assert_eq!(back.count(), samples.len() as u64);
            proptest::prop_assert_eq!(back, h);
        }
    }
}
