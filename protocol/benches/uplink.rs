//! What signing uplinks costs per telemetry window: sealing on the agent
//! (ed25519 sign over the encoded window) and opening on the controller
//! (ed25519 verify + decode), against encoding and decoding the same window
//! unsigned, in the same run.
//!
//! `cargo bench -p drover-protocol --bench uplink` prints the table that
//! BENCHMARKS.md quotes. Timings use `Instant` over many repeats; compare the
//! rows of one run (ratios), not absolute numbers across machines.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use drover_protocol::codec;
use drover_protocol::messages::Up;
use drover_protocol::testkit::realistic_window;
use drover_protocol::uplink;
use drover_protocol::{DeviceId, Ed25519Signer, FleetId, Sign};

fn per_op_us(iters: u32, mut f: impl FnMut(u32)) -> f64 {
    // Warm up, then take the best of three runs (least disturbed by load).
    for i in 0..iters / 10 {
        f(i);
    }
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                f(i);
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(iters)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let fleet = FleetId::new("plant").unwrap();
    let device = DeviceId::new("dev-0042").unwrap();
    let key = Ed25519Signer::from_seed([7; 32]);
    let public = key.public_key();
    let window = Up::Telemetry(realistic_window(1));
    let plain = codec::encode_up(&window).unwrap();
    let sealed = uplink::seal(&key, &fleet, &device, 1, plain.clone()).unwrap();
    let Up::Signed(sealed_msg) = codec::decode_up(&sealed).unwrap() else {
        unreachable!()
    };
    let iters = 20_000;

    let encode = per_op_us(iters, |_| {
        black_box(codec::encode_up(black_box(&window)).unwrap());
    });
    let encode_seal = per_op_us(iters, |i| {
        let body = codec::encode_up(black_box(&window)).unwrap();
        black_box(uplink::seal(&key, &fleet, &device, u64::from(i) + 1, body).unwrap());
    });
    let decode = per_op_us(iters, |_| {
        black_box(codec::decode_up(black_box(&plain)).unwrap());
    });
    let decode_open = per_op_us(iters, |_| {
        let Up::Signed(s) = codec::decode_up(black_box(&sealed)).unwrap() else {
            unreachable!()
        };
        black_box(uplink::open(&s, &fleet, &device, &public).unwrap());
    });
    let open_only = per_op_us(iters, |_| {
        black_box(uplink::open(black_box(&sealed_msg), &fleet, &device, &public).unwrap());
    });

    println!(
        "telemetry window: {} bytes encoded, {} bytes sealed (+{})",
        plain.len(),
        sealed.len(),
        sealed.len() - plain.len()
    );
    println!("{:<44} {:>10} {:>8}", "operation", "µs/window", "ratio");
    println!(
        "{:<44} {:>10.2} {:>8}",
        "agent: encode (unsigned, baseline)", encode, "1.00"
    );
    println!(
        "{:<44} {:>10.2} {:>8.2}",
        "agent: encode + seal (ed25519 sign)",
        encode_seal,
        encode_seal / encode
    );
    println!(
        "{:<44} {:>10.2} {:>8}",
        "controller: decode (unsigned, baseline)", decode, "1.00"
    );
    println!(
        "{:<44} {:>10.2} {:>8.2}",
        "controller: decode + open (ed25519 verify)",
        decode_open,
        decode_open / decode
    );
    println!("{:<44} {:>10.2}", "controller: open alone", open_only);
    println!(
        "one core verifies ~{:.0} sealed windows/s",
        1e6 / decode_open
    );
}
