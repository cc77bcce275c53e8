//! Latency histograms side by side: the hdrhistogram crate, the log-linear
//! histogram Drover shipped first (32 buckets per octave), finer log-linear
//! grids, and the crate's `LatencyHistogram` as it is now (128 per octave,
//! occupied-range merge, runs of empty buckets collapsed on the wire).
//!
//! `cargo bench -p drover-protocol --bench latency_histogram` prints the
//! tables that BENCHMARKS.md quotes. Timings use `Instant` over many repeats;
//! they are for comparing rows of one run, not absolute claims.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use drover_protocol::LatencyHistogram;
use drover_protocol::testkit::SplitMix;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer, V2Serializer};
use serde::Serialize;

const MAX_US: u64 = 60_000_000;
const WINDOW: usize = 6_000;

/// What every contender offers, enough to measure it.
trait Contender: Clone {
    fn name(&self) -> String;
    fn fresh(&self) -> Self;
    fn record(&mut self, us: u64);
    fn merge(&mut self, other: &Self);
    fn quantile(&self, q: f64) -> u64;
    fn memory(&self) -> usize;
    fn encoded(&self) -> Vec<usize>;
}

/// Log-linear, `2^BITS` buckets per octave, dense `u64` counts: the grid of
/// Drover's first histogram at `BITS = 5`. Wire form as then: the non-zero
/// range of counts, postcard varints.
#[derive(Clone)]
struct LogLinear<const BITS: u32> {
    counts: Vec<u64>,
    total: u64,
    sum: u64,
    max: u64,
}

impl<const BITS: u32> LogLinear<BITS> {
    fn new() -> Self {
        LogLinear {
            counts: vec![0; Self::bucket_of(MAX_US) + 1],
            total: 0,
            sum: 0,
            max: 0,
        }
    }

    fn bucket_of(us: u64) -> usize {
        let sub = 1u64 << BITS;
        if us < sub {
            return us as usize;
        }
        let msb = 63 - us.leading_zeros();
        let shift = msb - BITS;
        (((msb - BITS + 1) as u64) * sub + ((us >> shift) & (sub - 1))) as usize
    }

    fn mid(idx: usize) -> u64 {
        let sub = 1u64 << BITS;
        let idx = idx as u64;
        if idx < sub {
            return idx;
        }
        let octave = idx / sub;
        let low = (sub + idx % sub) << (octave - 1);
        low + (1u64 << (octave - 1)) / 2
    }
}

#[derive(Serialize)]
struct Wire<'a> {
    first: u16,
    counts: &'a [u64],
    sum: u64,
    max: u64,
}

impl<const BITS: u32> Contender for LogLinear<BITS> {
    fn name(&self) -> String {
        format!(
            "log-linear {}/octave{}",
            1u32 << BITS,
            if BITS == 5 {
                " (before)"
            } else {
                ", dense merge, range wire form"
            }
        )
    }
    fn fresh(&self) -> Self {
        Self::new()
    }
    #[inline]
    fn record(&mut self, us: u64) {
        let idx = Self::bucket_of(us.min(MAX_US));
        if let Some(c) = self.counts.get_mut(idx) {
            *c += 1;
        }
        self.total += 1;
        self.sum = self.sum.saturating_add(us);
        self.max = self.max.max(us);
    }
    fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
        self.sum = self.sum.saturating_add(other.sum);
        self.max = self.max.max(other.max);
    }
    fn quantile(&self, q: f64) -> u64 {
        let rank = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::mid(i).min(self.max);
            }
        }
        self.max
    }
    fn memory(&self) -> usize {
        std::mem::size_of::<Self>() + self.counts.len() * 8
    }
    fn encoded(&self) -> Vec<usize> {
        let first = self.counts.iter().position(|c| *c > 0).unwrap_or(0);
        let last = self
            .counts
            .iter()
            .rposition(|c| *c > 0)
            .map_or(0, |l| l + 1);
        let w = Wire {
            first: first as u16,
            counts: &self.counts[first..last],
            sum: self.sum,
            max: self.max,
        };
        vec![postcard::to_allocvec(&w).unwrap().len()]
    }
}

/// The crate's `LatencyHistogram` as it is on this branch.
#[derive(Clone, Default)]
struct Current(LatencyHistogram);

impl Contender for Current {
    fn name(&self) -> String {
        format!(
            "LatencyHistogram now ({} buckets)",
            LatencyHistogram::BUCKETS
        )
    }
    fn fresh(&self) -> Self {
        Self::default()
    }
    #[inline]
    fn record(&mut self, us: u64) {
        self.0.record(us);
    }
    fn merge(&mut self, other: &Self) {
        self.0.merge(&other.0);
    }
    fn quantile(&self, q: f64) -> u64 {
        self.0.quantile(q).unwrap_or(0)
    }
    fn memory(&self) -> usize {
        std::mem::size_of::<LatencyHistogram>() + LatencyHistogram::BUCKETS * 8
    }
    fn encoded(&self) -> Vec<usize> {
        vec![postcard::to_allocvec(&self.0).unwrap().len()]
    }
}

/// hdrhistogram over 1 µs .. 60 s; quantiles as the crate reports them
/// (`value_at_quantile`, the highest value equivalent to the bucket).
#[derive(Clone)]
struct Hdr<T: hdrhistogram::Counter> {
    h: Histogram<T>,
    digits: u8,
}

impl<T: hdrhistogram::Counter> Hdr<T> {
    fn new(digits: u8) -> Self {
        Hdr {
            h: Histogram::new_with_bounds(1, MAX_US, digits).unwrap(),
            digits,
        }
    }
}

impl<T: hdrhistogram::Counter> Contender for Hdr<T> {
    fn name(&self) -> String {
        format!(
            "hdrhistogram {} digits, {}",
            self.digits,
            std::any::type_name::<T>()
        )
    }
    fn fresh(&self) -> Self {
        Self::new(self.digits)
    }
    #[inline]
    fn record(&mut self, us: u64) {
        self.h.saturating_record(us.clamp(1, MAX_US));
    }
    fn merge(&mut self, other: &Self) {
        self.h.add(&other.h).unwrap();
    }
    fn quantile(&self, q: f64) -> u64 {
        self.h.value_at_quantile(q)
    }
    fn memory(&self) -> usize {
        std::mem::size_of::<Histogram<T>>() + self.h.distinct_values() * std::mem::size_of::<T>()
    }
    fn encoded(&self) -> Vec<usize> {
        let mut v2 = Vec::new();
        V2Serializer::new().serialize(&self.h, &mut v2).unwrap();
        let mut deflate = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&self.h, &mut deflate)
            .unwrap();
        vec![v2.len(), deflate.len()]
    }
}

/// Latency samples in µs.
#[derive(Clone, Copy)]
enum Dist {
    /// Log-normal, median 400 µs, sigma 0.3 (p99 ~ 800 µs).
    LogNormal,
    /// 80 % log-normal around 400 µs (sigma 0.15), 20 % around 2.5 ms
    /// (sigma 0.2): a cache-miss or throttled slow path; p95 and p99 lie in
    /// the slow mode.
    Bimodal,
}

impl Dist {
    fn name(self) -> &'static str {
        match self {
            Dist::LogNormal => "log-normal 400 us",
            Dist::Bimodal => "bimodal 400 us / 2.5 ms",
        }
    }
    fn sample(self, rng: &mut SplitMix) -> u64 {
        let z = rng.normal();
        let us = match self {
            Dist::LogNormal => 400.0 * (0.3 * z).exp(),
            Dist::Bimodal => {
                if rng.uniform() < 0.8 {
                    400.0 * (0.15 * z).exp()
                } else {
                    2_500.0 * (0.2 * z).exp()
                }
            }
        };
        us.round() as u64
    }
    fn window(self, seed: u64) -> Vec<u64> {
        let mut rng = SplitMix(seed);
        (0..WINDOW).map(|_| self.sample(&mut rng)).collect()
    }
}

fn exact(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

struct Row {
    name: String,
    memory: usize,
    encoded: Vec<Vec<usize>>,
    err: Vec<[f64; 3]>,
    record_ns: f64,
    merge_ns: f64,
    ratio: (f64, f64),
    same: (f64, f64),
}

const QS: [f64; 3] = [0.5, 0.95, 0.99];
const SEEDS: u64 = 100;

fn measure<C: Contender>(proto: C, dists: &[Dist]) -> Row {
    let mut encoded = Vec::new();
    let mut err = Vec::new();
    for &d in dists {
        let mut worst = [0f64; 3];
        let mut sizes = Vec::new();
        for seed in 0..SEEDS {
            let samples = d.window(seed);
            let mut h = proto.fresh();
            for &s in &samples {
                h.record(s);
            }
            let mut sorted = samples.clone();
            sorted.sort_unstable();
            for (i, q) in QS.iter().enumerate() {
                let truth = exact(&sorted, *q) as f64;
                let e = (h.quantile(*q) as f64 - truth).abs() / truth;
                worst[i] = worst[i].max(e);
            }
            if seed == 0 {
                sizes = h.encoded();
            }
        }
        encoded.push(sizes);
        err.push(worst);
    }

    // Record: the agent's hot path, one histogram per window. Best of five
    // rounds: the machine is shared, and the minimum is the least disturbed.
    let samples = Dist::LogNormal.window(7);
    let mut window = proto.fresh();
    for &s in &samples {
        window.record(s);
    }
    let (mut record_ns, mut merge_ns) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let reps = 100;
        let mut h = proto.fresh();
        let t = Instant::now();
        for _ in 0..reps {
            for &s in &samples {
                h.record(black_box(s));
            }
        }
        record_ns = record_ns.min(t.elapsed().as_nanos() as f64 / (reps * samples.len()) as f64);
        black_box(h.quantile(0.5));

        // Merge: the controller folds each arriving window into one aggregate.
        let mut agg = proto.fresh();
        let merges = 5_000;
        let t = Instant::now();
        for _ in 0..merges {
            agg.merge(black_box(&window));
        }
        merge_ns = merge_ns.min(t.elapsed().as_nanos() as f64 / merges as f64);
        black_box(agg.quantile(0.5));
    }

    Row {
        name: proto.name(),
        memory: proto.fresh().memory(),
        encoded,
        err,
        record_ns,
        merge_ns,
        ratio: ratio_range(&proto, 1.02),
        same: ratio_range(&proto, 1.0),
    }
}

/// The smallest and largest p95 ratio read from two histograms whose samples
/// are the same log-normal draws, the second scaled by `factor`, over control
/// p95s swept from 1 ms to 50 ms: the true sample ratio is `factor` at every
/// scale, so the spread is the histogram's own.
fn ratio_range<C: Contender>(proto: &C, factor: f64) -> (f64, f64) {
    let mut rng = SplitMix(11);
    let z: Vec<f64> = (0..20_000).map(|_| rng.normal()).collect();
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for step in 0..200 {
        // p95 of exp(0.3 z) is exp(0.3 * 1.645) ~ 1.64.
        let median = 1_000.0 / 1.64 * 50f64.powf(step as f64 / 199.0);
        let (mut a, mut b) = (proto.fresh(), proto.fresh());
        for z in &z {
            let v = median * (0.3 * z).exp();
            a.record(v.round() as u64);
            b.record((v * factor).round() as u64);
        }
        let r = b.quantile(0.95) as f64 / a.quantile(0.95) as f64;
        lo = lo.min(r);
        hi = hi.max(r);
    }
    (lo, hi)
}

fn main() {
    let dists = [Dist::LogNormal, Dist::Bimodal];
    let rows = vec![
        measure(LogLinear::<5>::new(), &dists),
        measure(LogLinear::<7>::new(), &dists),
        measure(LogLinear::<8>::new(), &dists),
        measure(Current::default(), &dists),
        measure(Hdr::<u64>::new(3), &dists),
        measure(Hdr::<u32>::new(3), &dists),
        measure(Hdr::<u64>::new(2), &dists),
    ];

    println!(
        "Windows of {WINDOW} samples; errors are the worst over {SEEDS} windows against exact sample quantiles."
    );
    println!(
        "Encoded: postcard bytes of the histogram as it would sit in a window; hdrhistogram: V2 / V2+deflate.\n"
    );
    println!(
        "| histogram | memory | encoded, {} | encoded, {} | record ns | merge ns | 1.02 p95 ratio read as | 1.00 read as |",
        dists[0].name(),
        dists[1].name()
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let enc = |i: usize| {
            r.encoded[i]
                .iter()
                .map(|b| format!("{b} B"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        println!(
            "| {} | {:.1} KiB | {} | {} | {:.1} | {:.0} | {:.4} .. {:.4} | {:.4} .. {:.4} |",
            r.name,
            r.memory as f64 / 1024.0,
            enc(0),
            enc(1),
            r.record_ns,
            r.merge_ns,
            r.ratio.0,
            r.ratio.1,
            r.same.0,
            r.same.1,
        );
    }
    println!();
    println!(
        "| histogram | p50 err, {0} | p95 err | p99 err | p50 err, {1} | p95 err | p99 err |",
        dists[0].name(),
        dists[1].name()
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let e: Vec<String> = r
            .err
            .iter()
            .flat_map(|w| w.iter().map(|e| format!("{:.2} %", e * 100.0)))
            .collect();
        println!("| {} | {} |", r.name, e.join(" | "));
    }
}
