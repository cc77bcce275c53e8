//! Deliberately broken agent releases (the TUF-fixture style of
//! `trust_fixtures.rs`): each is refused with its specific error and code,
//! and verifying never changes the trust state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use drover_protocol::manifest::AgentVersion;
use drover_protocol::release::{AgentRelease, Arch};
use drover_protocol::signing::{Ed25519Signer, Sign, SignatureError};
use drover_protocol::testkit::{self, TestKeys};
use drover_protocol::trust::{KeyEntry, KeyList, Role, check_bytes, check_release_target};
use drover_protocol::{DeviceId, ReasonCode, Sha256, Signed, Timestamp, TrustError, TrustState};

const NOW: Timestamp = Timestamp(1_750_000_000_000);
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
const BINARY: &[u8] = b"\x7fELF pretend agent binary";

fn trusted(keys: &TestKeys) -> TrustState {
    let mut t = TrustState::new(keys.root.public_key(), DeviceId::new("dev-1").unwrap());
    t.handle_key_list(&keys.key_list(1, NOW.plus_ms(YEAR_MS)), NOW)
        .unwrap();
    t
}

fn release(version: &str) -> AgentRelease {
    testkit::release(version, Arch::Aarch64, BINARY, NOW)
}

fn v(s: &str) -> AgentVersion {
    AgentVersion::parse(s).unwrap()
}

/// Verifies a release that must be refused; the state must not move.
fn refuse(t: &TrustState, signed: &Signed<AgentRelease>, now: Timestamp) -> TrustError {
    let before = t.clone();
    let err = t.verify_agent_release(signed, now).unwrap_err();
    assert_eq!(*t, before);
    err
}

#[test]
fn release_signed_by_the_agents_key_verifies_and_round_trips() {
    let keys = TestKeys::new(1);
    let t = trusted(&keys);
    let r = release("0.2.0");
    let signed = keys.sign_release(&r);
    assert_eq!(t.verify_agent_release(&signed, NOW).unwrap(), r);
    // Through the codec and back, signature intact.
    let bytes = postcard::to_allocvec(&signed).unwrap();
    let back: Signed<AgentRelease> = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, signed);
    assert_eq!(t.verify_agent_release(&back, NOW).unwrap(), r);
    // And as JSON (the HTTP API lists releases).
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"Aarch64\""), "{json}");
    assert_eq!(serde_json::from_str::<AgentRelease>(&json).unwrap(), r);
    assert_eq!(r.label(), "agent@0.2.0/aarch64");
}

#[test]
fn release_signed_by_a_models_key_is_refused_for_its_role() {
    let keys = TestKeys::new(1);
    let t = trusted(&keys);
    let forged = Signed::sign(&release("0.2.0"), &keys.models).unwrap();
    let err = refuse(&t, &forged, NOW);
    assert_eq!(
        err,
        TrustError::MissingRole {
            key: keys.models.public_key().key_id().to_string(),
            role: Role::Agents
        }
    );
    assert_eq!(err.code(), ReasonCode::MissingRole);
    // Nor does the commands key ship code.
    let forged = Signed::sign(&release("0.2.0"), &keys.commands).unwrap();
    assert_eq!(refuse(&t, &forged, NOW).code(), ReasonCode::MissingRole);
}

#[test]
fn release_signed_by_an_unlisted_key_is_refused() {
    let keys = TestKeys::new(1);
    let t = trusted(&keys);
    let stranger = Ed25519Signer::from_seed([77; 32]);
    let forged = Signed::sign(&release("0.2.0"), &stranger).unwrap();
    assert_eq!(refuse(&t, &forged, NOW).code(), ReasonCode::UnknownKey);
}

#[test]
fn agents_key_signs_nothing_else() {
    // A key list whose only delegate holds just the agents role: its
    // signature on a model manifest or a command is refused for the role.
    let keys = TestKeys::new(1);
    let list = KeyList {
        version: 1,
        expires_at: NOW.plus_ms(YEAR_MS),
        keys: vec![KeyEntry {
            public_key: keys.agents.public_key(),
            roles: vec![Role::Agents],
        }],
    };
    let mut t = TrustState::new(keys.root.public_key(), DeviceId::new("dev-1").unwrap());
    t.handle_key_list(&Signed::sign(&list, &keys.root).unwrap(), NOW)
        .unwrap();
    let m = Signed::sign(&testkit::manifest("sensor", 1, b"m", NOW), &keys.agents).unwrap();
    let err = t.verify_manifest(&m, NOW).unwrap_err();
    assert_eq!(err.code(), ReasonCode::MissingRole);
    assert!(
        t.verify_agent_release(&Signed::sign(&release("0.2.0"), &keys.agents).unwrap(), NOW)
            .is_ok()
    );
}

#[test]
fn tampered_release_body_is_refused() {
    let keys = TestKeys::new(1);
    let t = trusted(&keys);
    let mut signed = keys.sign_release(&release("0.2.0"));
    // Flip a byte of the digest inside the signed body: the signature no
    // longer covers it.
    let good = signed.clone();
    let at = signed
        .body
        .windows(32)
        .position(|w| w == Sha256::of(BINARY).0)
        .unwrap();
    signed.body[at] ^= 0x01;
    let err = refuse(&t, &signed, NOW);
    assert_eq!(err, TrustError::Signature(SignatureError::BadSignature));
    assert_eq!(err.code(), ReasonCode::BadSignature);
    assert!(t.verify_agent_release(&good, NOW).is_ok());
}

#[test]
fn tampered_binary_is_refused_by_its_hash() {
    let r = release("0.2.0");
    assert!(check_bytes(&r.artifact, Sha256::of(BINARY), BINARY.len() as u64).is_ok());
    let mut evil = BINARY.to_vec();
    evil[5] ^= 0x20;
    let err = check_bytes(&r.artifact, Sha256::of(&evil), evil.len() as u64).unwrap_err();
    assert!(matches!(err, TrustError::ArtifactMismatch { .. }));
    assert_eq!(err.code(), ReasonCode::ArtifactMismatch);
    // Truncated: right prefix, wrong size.
    let err = check_bytes(&r.artifact, Sha256::of(&BINARY[..4]), 4).unwrap_err();
    assert_eq!(err.code(), ReasonCode::ArtifactMismatch);
}

#[test]
fn expired_release_is_refused() {
    let keys = TestKeys::new(1);
    let t = trusted(&keys);
    let mut r = release("0.2.0");
    r.expires_at = NOW.plus_ms(1_000);
    let signed = keys.sign_release(&r);
    assert!(t.verify_agent_release(&signed, NOW).is_ok());
    let err = refuse(&t, &signed, NOW.plus_ms(1_001));
    assert_eq!(
        err,
        TrustError::ReleaseExpired {
            release: "agent@0.2.0/aarch64".into(),
            expires_at: NOW.plus_ms(1_000)
        }
    );
    assert_eq!(err.code(), ReasonCode::ManifestExpired);
}

#[test]
fn release_for_another_arch_is_refused() {
    let err = check_release_target(&release("0.2.0"), Arch::X86_64, v("0.1.0"), false).unwrap_err();
    assert_eq!(
        err,
        TrustError::WrongArch {
            release: Arch::Aarch64,
            device: Arch::X86_64
        }
    );
    assert_eq!(err.code(), ReasonCode::WrongArch);
    assert_eq!(err.reason().code.as_str(), "wrong_arch");
    // Not even an explicit rollback installs another arch.
    assert!(check_release_target(&release("0.2.0"), Arch::Armv7, v("0.1.0"), true).is_err());
}

#[test]
fn release_below_the_floor_needs_an_explicit_rollback() {
    let r = release("0.1.5");
    let err = check_release_target(&r, Arch::Aarch64, v("0.2.0"), false).unwrap_err();
    assert_eq!(
        err,
        TrustError::AgentDowngrade {
            floor: v("0.2.0"),
            offered: v("0.1.5")
        }
    );
    assert_eq!(err.code(), ReasonCode::Downgrade);
    assert!(check_release_target(&r, Arch::Aarch64, v("0.2.0"), true).is_ok());
    // At or above the floor is fine.
    assert!(check_release_target(&r, Arch::Aarch64, v("0.1.5"), false).is_ok());
    assert!(check_release_target(&release("0.10.0"), Arch::Aarch64, v("0.9.9"), false).is_ok());
}

#[test]
fn old_key_lists_without_the_agents_role_trust_no_release() {
    // A device still on a key list that names only models and commands.
    let keys = TestKeys::new(1);
    let list = KeyList {
        version: 1,
        expires_at: NOW.plus_ms(YEAR_MS),
        keys: vec![
            KeyEntry {
                public_key: keys.models.public_key(),
                roles: vec![Role::Models],
            },
            KeyEntry {
                public_key: keys.commands.public_key(),
                roles: vec![Role::Commands],
            },
        ],
    };
    let mut t = TrustState::new(keys.root.public_key(), DeviceId::new("dev-1").unwrap());
    t.handle_key_list(&Signed::sign(&list, &keys.root).unwrap(), NOW)
        .unwrap();
    let err = refuse(&t, &keys.sign_release(&release("0.2.0")), NOW);
    assert_eq!(err.code(), ReasonCode::UnknownKey);
}

#[test]
fn update_command_and_status_round_trip_through_the_codec() {
    use drover_protocol::codec;
    use drover_protocol::messages::{AgentUpdatePhase, AgentUpdateStatus, Down, Up};
    use drover_protocol::topic::Channel;
    use drover_protocol::{Action, Reason};

    let keys = TestKeys::new(1);
    let dev = DeviceId::new("dev-1").unwrap();
    let cmd = testkit::command(
        &dev,
        9,
        NOW,
        Action::UpdateAgent {
            release: keys.sign_release(&release("0.2.0")),
            rollback: false,
        },
    );
    assert_eq!(cmd.action.kind(), "update_agent");
    let down = Down::Command(keys.sign_command(&cmd));
    let bytes = codec::encode_down(&down).unwrap();
    assert_eq!(codec::decode_down(&bytes, Channel::Down).unwrap(), down);
    // The command verifies, and so does the release inside it.
    let mut t = trusted(&keys);
    let Action::UpdateAgent { release: r, .. } = t
        .accept_command(&keys.sign_command(&cmd), NOW)
        .unwrap()
        .action
    else {
        panic!("not an update");
    };
    assert_eq!(t.verify_agent_release(&r, NOW).unwrap(), release("0.2.0"));

    for phase in [
        AgentUpdatePhase::Downloading {
            received: 1,
            total: 2,
        },
        AgentUpdatePhase::Restarting,
        AgentUpdatePhase::Failed(Reason::new(ReasonCode::WrongArch, "x")),
        AgentUpdatePhase::FellBack {
            running: v("0.1.0"),
            reason: Reason::new(ReasonCode::AgentUnconfirmed, "no broker"),
        },
    ] {
        let up = Up::AgentUpdate(AgentUpdateStatus {
            seq: 9,
            version: v("0.2.0"),
            phase,
        });
        let bytes = codec::encode_up(&up).unwrap();
        assert_eq!(codec::decode_up(&bytes).unwrap(), up);
    }
}
