//! Arbitrary bytes never panic a decoder; they give a typed error or a value.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use drover_protocol::codec;
use drover_protocol::messages::{Command, Down};
use drover_protocol::testkit::{self, TestKeys};
use drover_protocol::topic::{Channel, Topic};
use drover_protocol::{Signed, Timestamp, TrustState};
use proptest::prelude::*;
use std::sync::OnceLock;

fn valid_payloads() -> Vec<Vec<u8>> {
    let keys = &fixtures().0;
    let dev = drover_protocol::DeviceId::new("dev-1").unwrap();
    let now = Timestamp(1_750_000_000_000);
    let m = keys.sign_manifest(&testkit::manifest("sensor", 1, b"x", now));
    let c = keys.sign_command(&testkit::command(
        &dev,
        1,
        now,
        drover_protocol::Action::Deploy { manifest: m },
    ));
    vec![
        codec::encode_up(&drover_protocol::Up::Telemetry(
            testkit::window_with_shadow(1),
        ))
        .unwrap(),
        codec::encode_down(&Down::Command(c)).unwrap(),
        codec::encode_down(&Down::KeyList(keys.key_list(1, now))).unwrap(),
    ]
}

fn payloads() -> &'static Vec<Vec<u8>> {
    static P: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    P.get_or_init(valid_payloads)
}

fn decode_everything(bytes: &[u8]) {
    let _ = codec::decode_up(bytes);
    let _ = codec::decode_status(bytes);
    let _ = codec::decode_down(bytes, Channel::Down);
    let _ = codec::decode_down(bytes, Channel::Chunk);
    let _ = Topic::parse(&String::from_utf8_lossy(bytes));
    // Signed bodies are decoded after verification; feed raw bytes through
    // the trust path too.
    let (keys, trust) = fixtures();
    if let Ok(Down::Command(c)) = codec::decode_down(bytes, Channel::Down) {
        let _ = trust.check_command(&c, Timestamp(0));
    }
    if let Ok(Down::KeyList(k)) = codec::decode_down(bytes, Channel::Down) {
        let _ = trust.clone().handle_key_list(&k, Timestamp(0));
    }
    let s: Signed<Command> = Signed::sign_bytes(bytes.to_vec(), &keys.commands);
    let _ = s.decode_unverified();
}

/// Keys and a trusting state, built once: signing in debug builds is slow.
fn fixtures() -> &'static (TestKeys, TrustState) {
    static F: OnceLock<(TestKeys, TrustState)> = OnceLock::new();
    F.get_or_init(|| {
        let keys = TestKeys::new(3);
        let mut t = TrustState::new(
            drover_protocol::Sign::public_key(&keys.root),
            drover_protocol::DeviceId::new("dev-1").unwrap(),
        );
        t.handle_key_list(&keys.key_list(1, Timestamp(u64::MAX)), Timestamp(0))
            .unwrap();
        (keys, t)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_everything(&bytes);
    }

    #[test]
    fn versioned_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut v = vec![codec::PROTOCOL_VERSION];
        v.extend(bytes);
        decode_everything(&v);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = payloads()[which].clone();
        for (pos, val) in flips {
            let len = bytes.len();
            bytes[pos % len] = val;
        }
        let cut = cut % (bytes.len() + 1);
        decode_everything(&bytes[..cut]);
        decode_everything(&bytes);
    }
}
