//! Synthetic sensor data: the built-in dataset of the demo and the input
//! streams of simulated devices, with drift that can be switched on per
//! device on cue.
//!
//! Four features (`temp`, `vibration`, `current`, `humidity`) and three
//! classes (`normal`, `warning`, `fault`). The class follows a noisy linear
//! rule on the features, so a softmax regression reaches ~90 % accuracy.

use std::io::Write;

use drover_protocol::testkit::SplitMix;

/// Feature names, in input order.
pub const FEATURES: [&str; 4] = ["temp", "vibration", "current", "humidity"];
/// Class names, by index.
pub const CLASSES: [&str; 3] = ["normal", "warning", "fault"];

/// Per-feature mean and standard deviation of the reference (undrifted) data.
pub const MEAN: [f64; 4] = [45.0, 2.0, 12.0, 40.0];
/// See [`MEAN`].
pub const STD: [f64; 4] = [8.0, 0.8, 3.0, 10.0];

/// One input row and its true class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Feature values, in [`FEATURES`] order.
    pub features: [f32; 4],
    /// True class index into [`CLASSES`].
    pub label: usize,
}

/// A shift of one feature's distribution, in standard deviations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drift {
    /// Feature index.
    pub feature: usize,
    /// Mean shift in units of that feature's reference standard deviation.
    pub shift_sigma: f64,
}

/// A deterministic stream of samples for one device.
#[derive(Debug, Clone)]
pub struct SensorStream {
    rng: SplitMix,
    drift: Option<Drift>,
}

impl SensorStream {
    /// A stream seeded by `seed` (e.g. a hash of the device id).
    pub fn new(seed: u64) -> SensorStream {
        SensorStream {
            rng: SplitMix(seed),
            drift: None,
        }
    }

    /// Starts (or with `None` stops) drifting.
    pub fn set_drift(&mut self, drift: Option<Drift>) {
        self.drift = drift;
    }

    /// The current drift.
    pub fn drift(&self) -> Option<Drift> {
        self.drift
    }

    /// Next sample. The label depends on the *true* (undrifted) condition of
    /// the machine, so a drifted sensor both moves the input distribution and
    /// costs the old model accuracy — what retraining on captured data fixes.
    pub fn next_sample(&mut self) -> Sample {
        let z: [f64; 4] = std::array::from_fn(|_| self.rng.normal());
        let score = 0.9 * z[0] + 1.1 * z[1] + 0.7 * z[2] - 0.3 * z[3] + 0.35 * self.rng.normal();
        let label = if score > 1.9 {
            2
        } else if score > 0.9 {
            1
        } else {
            0
        };
        let mut features: [f32; 4] = std::array::from_fn(|i| (MEAN[i] + STD[i] * z[i]) as f32);
        if let Some(d) = self.drift
            && let Some(f) = features.get_mut(d.feature)
        {
            *f += (d.shift_sigma * STD[d.feature]) as f32;
        }
        Sample { features, label }
    }
}

/// `n` reference samples (no drift) from `seed`.
pub fn reference_samples(n: usize, seed: u64) -> Vec<Sample> {
    let mut s = SensorStream::new(seed);
    (0..n).map(|_| s.next_sample()).collect()
}

/// Writes samples as CSV with a header and string labels (the format
/// `drover model push --reference` and `drover train --data` read).
pub fn write_csv(samples: &[Sample], mut out: impl Write) -> std::io::Result<()> {
    writeln!(out, "{},label", FEATURES.join(","))?;
    for s in samples {
        let f = s.features;
        let label = CLASSES.get(s.label).copied().unwrap_or("normal");
        writeln!(out, "{},{},{},{},{}", f[0], f[1], f[2], f[3], label)?;
    }
    Ok(())
}

/// A stable 64-bit seed from a string (FNV-1a), for per-device streams.
pub fn seed_of(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic() {
        let a = reference_samples(100, 7);
        let b = reference_samples(100, 7);
        assert_eq!(a, b);
        assert_ne!(a, reference_samples(100, 8));
    }

    #[test]
    fn classes_are_all_present_and_imbalanced() {
        let s = reference_samples(5000, 1);
        let mut counts = [0usize; 3];
        for x in &s {
            counts[x.label] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[2], "{counts:?}");
        assert!(counts[2] > 100, "{counts:?}");
    }

    #[test]
    fn drift_shifts_the_mean_by_sigma() {
        let mut s = SensorStream::new(3);
        s.set_drift(Some(Drift {
            feature: 0,
            shift_sigma: 1.0,
        }));
        let n = 20_000;
        let mean: f64 = (0..n)
            .map(|_| f64::from(s.next_sample().features[0]))
            .sum::<f64>()
            / n as f64;
        assert!((mean - (MEAN[0] + STD[0])).abs() < 0.3, "{mean}");
    }

    #[test]
    fn csv_has_header_and_rows() {
        let mut buf = Vec::new();
        write_csv(&reference_samples(3, 1), &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(text.starts_with("temp,vibration,current,humidity,label\n"));
    }
}
