//! Every message survives encode → decode unchanged, and a realistic
//! telemetry window stays within its size budget.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use drover_protocol::codec::{self, CodecError};
use drover_protocol::messages::*;
use drover_protocol::testkit::{self, TestKeys};
use drover_protocol::topic::Channel;
use drover_protocol::{DeviceId, ModelName, ModelRef, Sha256, Timestamp, Version};

fn now() -> Timestamp {
    Timestamp(1_750_000_000_000)
}

fn model_ref() -> ModelRef {
    ModelRef {
        name: ModelName::new("sensor").unwrap(),
        version: Version(2),
    }
}

fn all_up() -> Vec<Up> {
    vec![
        Up::Hello(Hello {
            agent_version: "0.1.0".into(),
            arch: "aarch64".into(),
            hardware: "rpi4".into(),
            labels: testkit::labels(&[("region", "eu"), ("hw", "rpi4")]),
            active: Some(model_ref()),
            previous: None,
            shadow: None,
            last_command_seq: 7,
            key_list_version: 1,
            outbox_depth: 3,
        }),
        Up::Ack(CommandAck {
            seq: 9,
            result: Err(Reason::new(ReasonCode::ReplayedCommand, "seq 9 <= 10")),
        }),
        Up::Ack(CommandAck {
            seq: 10,
            result: Ok(()),
        }),
        Up::DeployStatus(DeployStatus {
            seq: 10,
            model: model_ref(),
            phase: DeployPhase::Downloading {
                received: 1024,
                total: 4096,
            },
        }),
        Up::DeployStatus(DeployStatus {
            seq: 0,
            model: model_ref(),
            phase: DeployPhase::RolledBack {
                to: None,
                // A code this build does not know still round-trips.
                reason: Reason::new(
                    ReasonCode::Unknown("latency_budget".into()),
                    "p95 80ms > 50ms",
                ),
            },
        }),
        Up::Telemetry(testkit::realistic_window(1)),
        Up::Telemetry(testkit::window_with_shadow(2)),
        Up::ChunkRequest(ChunkRequest {
            sha256: Sha256::of(b"x"),
            offset: 65536,
            len: 65536,
        }),
        Up::Capture(CaptureUpload {
            seq: 11,
            model: model_ref(),
            part: 0,
            last: true,
            samples: vec![
                CapturedSample {
                    input: vec![1.0, 2.0],
                    label: Some(Label::Class(1)),
                },
                CapturedSample {
                    input: vec![3.0],
                    label: Some(Label::Value(0.5)),
                },
                CapturedSample {
                    input: vec![],
                    label: None,
                },
            ],
        }),
    ]
}

fn all_down() -> Vec<Down> {
    let keys = TestKeys::new(1);
    let dev = DeviceId::new("dev-1").unwrap();
    let manifest = keys.sign_manifest(&testkit::manifest("sensor", 2, b"onnx", now()));
    let actions = vec![
        Action::Deploy {
            manifest: manifest.clone(),
        },
        Action::Shadow {
            manifest,
            sample_per_mille: 100,
        },
        Action::StopShadow,
        Action::Rollback {
            model: ModelName::new("sensor").unwrap(),
            to: Some(Version(1)),
            reason: "canary failed".into(),
        },
        Action::Capture {
            max_samples: 100,
            max_bytes: 65536,
        },
        Action::Configure(AgentSettings {
            telemetry_window_ms: Some(5000),
            capture_per_mille: None,
        }),
    ];
    let mut out: Vec<Down> = actions
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            Down::Command(keys.sign_command(&testkit::command(&dev, i as u64 + 1, now(), a)))
        })
        .collect();
    out.push(Down::TelemetryAck(TelemetryAck {
        seqs: vec![1, 2, 3],
    }));
    out.push(Down::KeyList(keys.key_list(1, now().plus_ms(1000))));
    out.push(Down::Chunk(Chunk {
        sha256: Sha256::of(b"abc"),
        offset: 0,
        total: 3,
        data: b"abc".to_vec(),
    }));
    out
}

#[test]
fn every_up_message_round_trips() {
    for msg in all_up() {
        let bytes = codec::encode_up(&msg).unwrap();
        assert_eq!(bytes[0], codec::PROTOCOL_VERSION);
        assert_eq!(codec::decode_up(&bytes).unwrap(), msg);
    }
}

#[test]
fn every_down_message_round_trips_on_its_channel() {
    for msg in all_down() {
        let bytes = codec::encode_down(&msg).unwrap();
        let channel = codec::down_channel(&msg);
        assert_eq!(codec::decode_down(&bytes, channel).unwrap(), msg);
    }
}

#[test]
fn status_round_trips() {
    for msg in [
        Status::Online {
            agent_version: "0.1.0".into(),
            active: Some(model_ref()),
        },
        Status::Offline,
    ] {
        let bytes = codec::encode_status(&msg).unwrap();
        assert_eq!(codec::decode_status(&bytes).unwrap(), msg);
    }
}

#[test]
fn signed_bodies_survive_transport_and_verify() {
    let keys = TestKeys::new(1);
    for msg in all_down() {
        let bytes = codec::encode_down(&msg).unwrap();
        if let Down::Command(c) = codec::decode_down(&bytes, Channel::Down).unwrap() {
            let cmd = c
                .verify(&drover_protocol::Sign::public_key(&keys.commands))
                .unwrap();
            assert_eq!(cmd.target.as_str(), "dev-1");
        }
    }
}

#[test]
fn realistic_telemetry_window_fits_in_1_2_kb() {
    let w = testkit::realistic_window(12345);
    assert_eq!(w.features.len(), 10);
    assert!(w.features.iter().all(|f| f.len() == 20));
    assert_eq!(w.latency.count(), 6000);
    let bytes = codec::encode_up(&Up::Telemetry(w)).unwrap();
    println!("realistic window: {} bytes", bytes.len());
    assert!(
        bytes.len() <= 1200,
        "realistic window encodes to {} bytes",
        bytes.len()
    );
}

#[test]
fn decoder_errors_are_specific() {
    assert_eq!(codec::decode_up(&[]), Err(CodecError::Empty));
    assert_eq!(
        codec::decode_up(&[9, 0]),
        Err(CodecError::UnsupportedVersion { got: 9 })
    );
    let big = vec![1u8; codec::MAX_STATUS_PAYLOAD + 1];
    assert!(matches!(
        codec::decode_status(&big),
        Err(CodecError::TooLarge { .. })
    ));
    let mut ok = codec::encode_status(&Status::Offline).unwrap();
    ok.push(0);
    assert_eq!(codec::decode_status(&ok), Err(CodecError::TrailingBytes(1)));
    assert!(matches!(
        codec::decode_up(&[1, 200]),
        Err(CodecError::Malformed(_))
    ));
    // A chunk is too big for the down channel's... no: the down limit equals
    // the chunk data limit, so check an oversized chunk is refused on encode.
    let huge = Down::Chunk(Chunk {
        sha256: Sha256::of(b""),
        offset: 0,
        total: 0,
        data: vec![0; codec::MAX_CHUNK_PAYLOAD],
    });
    assert!(matches!(
        codec::encode_down(&huge),
        Err(CodecError::Encode(_))
    ));
}
