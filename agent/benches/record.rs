//! Telemetry recording cost per inference (goal: ≤ 100 ns): 4 features with
//! 20 bins each, class and confidence bins, the feedback ring and the
//! capture ring, under the recorder's mutex.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::hint::black_box;

use criterion::Criterion;

use drover_agent::core::window::{Prediction, Record, Recorder, RecorderConfig, WindowSpec};
use drover_protocol::Timestamp;
use drover_protocol::manifest::BinnedProfile;
use drover_protocol::testkit;

fn recorder() -> Recorder {
    let mut m = testkit::manifest("sensor", 1, b"x", Timestamp(0));
    for f in &mut m.reference.features {
        f.bins = BinnedProfile {
            edges: (0..19).map(|i| i as f32 * 5.0).collect(),
            frequencies: vec![0.05; 20],
        };
    }
    Recorder::new(WindowSpec::from_manifest(&m), RecorderConfig::default())
}

const ROWS: [[f32; 4]; 4] = [
    [58.3, 1.8, 11.3, 61.0],
    [55.9, 4.3, 8.4, 52.7],
    [70.0, 5.5, 16.0, 30.0],
    [50.0, 1.0, 9.0, 70.0],
];

fn record(r: &Recorder, id: u64) {
    let row = &ROWS[(id % 4) as usize];
    r.record(black_box(&Record {
        request_id: id,
        at_ms: id / 1000,
        latency_us: 40 + id % 50,
        row,
        prediction: Some(Prediction::Class {
            index: (id % 3) as u32,
            confidence: 0.6,
        }),
    }));
}

fn main() {
    let r = recorder();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut id = 1u64;
    c.bench_function("telemetry_record", |b| {
        b.iter(|| {
            id += 1;
            record(&r, id)
        })
    });
    c.final_summary();

    // Steady state (feedback pages already allocated), single thread.
    let r = recorder();
    let n = 2_000_000u64;
    for id in 1..=200_000 {
        record(&r, id);
    }
    let t = Instant::now();
    for id in 200_001..=200_000 + n {
        record(&r, id);
    }
    let single = t.elapsed().as_nanos() as f64 / n as f64;

    // Two threads on one recorder: the mutex is now contended.
    let r = Arc::new(recorder());
    let t = Instant::now();
    let handles: Vec<_> = (0..2u64)
        .map(|k| {
            let r = r.clone();
            std::thread::spawn(move || {
                for i in 0..n / 2 {
                    record(&r, 1 + k + 2 * i);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let contended = t.elapsed().as_nanos() as f64 / n as f64;
    println!();
    println!("== drover-agent telemetry record summary ==");
    println!("record, one thread     {single:7.1} ns/inference (goal <= 100)");
    println!("record, two threads    {contended:7.1} ns/inference of wall time (shared mutex)");
}
