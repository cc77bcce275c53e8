//! Deliberately broken signed fixtures, in the spirit of TUF's conformance
//! suite: each must be refused with its specific error and leave the trust
//! state exactly as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use drover_protocol::manifest::ModelManifest;
use drover_protocol::signing::{Ed25519Signer, Sign, SignatureError};
use drover_protocol::testkit::{self, TestKeys};
use drover_protocol::trust::{KeyEntry, KeyList, Role, check_artifact};
use drover_protocol::{
    Action, Command, DeviceId, ModelName, ReasonCode, Sha256, Signed, Timestamp, TrustError,
    TrustState, Version,
};

const NOW: Timestamp = Timestamp(1_750_000_000_000);
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

fn dev() -> DeviceId {
    DeviceId::new("dev-1").unwrap()
}

/// A device that trusts `keys` (key list v1) and has accepted command 5
/// and activated sensor@3.
fn trusted(keys: &TestKeys) -> TrustState {
    let mut t = TrustState::new(keys.root.public_key(), dev());
    t.handle_key_list(&keys.key_list(1, NOW.plus_ms(YEAR_MS)), NOW)
        .unwrap();
    let cmd = keys.sign_command(&testkit::command(&dev(), 5, NOW, Action::StopShadow));
    t.accept_command(&cmd, NOW).unwrap();
    t.raise_floor(&ModelName::new("sensor").unwrap(), Version(3));
    t
}

fn deploy(keys: &TestKeys, seq: u64, manifest: Signed<ModelManifest>) -> Signed<Command> {
    keys.sign_command(&testkit::command(
        &dev(),
        seq,
        NOW,
        Action::Deploy { manifest },
    ))
}

fn good_manifest(keys: &TestKeys, version: u64) -> Signed<ModelManifest> {
    keys.sign_manifest(&testkit::manifest("sensor", version, b"model-bytes", NOW))
}

/// Runs a command check that must fail, and asserts the state did not move.
fn refuse(t: &mut TrustState, cmd: &Signed<Command>) -> TrustError {
    let before = t.clone();
    let err = t.accept_command(cmd, NOW).unwrap_err();
    assert_eq!(*t, before, "a refused command changed the trust state");
    err
}

#[test]
fn valid_deploy_is_accepted() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    let cmd = t
        .accept_command(&deploy(&keys, 6, good_manifest(&keys, 4)), NOW)
        .unwrap();
    assert_eq!(cmd.seq, 6);
    assert_eq!(t.last_command_seq(), 6);
}

#[test]
fn tampered_manifest_body() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    let mut m = good_manifest(&keys, 4);
    let last = m.body.len() - 1;
    m.body[last] ^= 0x01;
    let err = refuse(&mut t, &deploy(&keys, 6, m));
    assert_eq!(err, TrustError::Signature(SignatureError::BadSignature));
    assert_eq!(err.code(), ReasonCode::BadSignature);
}

#[test]
fn tampered_command_body() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    let mut c = deploy(&keys, 6, good_manifest(&keys, 4));
    c.body[3] ^= 0x40;
    assert_eq!(
        refuse(&mut t, &c),
        TrustError::Signature(SignatureError::BadSignature)
    );
}

#[test]
fn manifest_signed_by_unlisted_key() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    let rogue = Ed25519Signer::from_seed([99; 32]);
    let m = Signed::sign(&testkit::manifest("sensor", 4, b"x", NOW), &rogue).unwrap();
    let err = refuse(&mut t, &deploy(&keys, 6, m));
    assert!(matches!(err, TrustError::UnknownKey(_)), "{err:?}");
}

#[test]
fn manifest_signed_by_key_without_models_role() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    // The commands key is listed, but only for commands.
    let m = Signed::sign(&testkit::manifest("sensor", 4, b"x", NOW), &keys.commands).unwrap();
    let err = refuse(&mut t, &deploy(&keys, 6, m));
    assert_eq!(
        err,
        TrustError::MissingRole {
            key: keys.commands.public_key().key_id().to_string(),
            role: Role::Models
        }
    );
}

#[test]
fn command_signed_by_models_key() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    let c = Signed::sign(
        &testkit::command(&dev(), 6, NOW, Action::StopShadow),
        &keys.models,
    )
    .unwrap();
    assert!(matches!(
        refuse(&mut t, &c),
        TrustError::MissingRole {
            role: Role::Commands,
            ..
        }
    ));
}

#[test]
fn expired_manifest() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    let mut m = testkit::manifest("sensor", 4, b"x", NOW);
    m.expires_at = Timestamp(NOW.0 - 1);
    let err = refuse(&mut t, &deploy(&keys, 6, keys.sign_manifest(&m)));
    assert!(matches!(err, TrustError::ManifestExpired { .. }), "{err:?}");
}

#[test]
fn expired_command() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    let mut c = testkit::command(&dev(), 6, NOW, Action::StopShadow);
    c.expires_at = Timestamp(NOW.0 - 1);
    assert!(matches!(
        refuse(&mut t, &keys.sign_command(&c)),
        TrustError::CommandExpired { seq: 6, .. }
    ));
}

#[test]
fn expired_key_list_is_refused_on_install() {
    let keys = TestKeys::new(1);
    let mut t = TrustState::new(keys.root.public_key(), dev());
    let err = t
        .handle_key_list(&keys.key_list(1, Timestamp(NOW.0 - 1)), NOW)
        .unwrap_err();
    assert!(matches!(err, TrustError::KeyListExpired { version: 1, .. }));
    assert!(t.key_list().is_none());
}

#[test]
fn installed_key_list_that_expired_stops_trusting_delegates() {
    let keys = TestKeys::new(1);
    let mut t = TrustState::new(keys.root.public_key(), dev());
    t.handle_key_list(&keys.key_list(1, NOW.plus_ms(10)), NOW)
        .unwrap();
    let later = NOW.plus_ms(11);
    let c = keys.sign_command(&testkit::command(&dev(), 1, NOW, Action::StopShadow));
    assert!(matches!(
        t.check_command(&c, later),
        Err(TrustError::KeyListExpired { .. })
    ));
}

#[test]
fn replayed_command_sequence() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    let c = keys.sign_command(&testkit::command(&dev(), 5, NOW, Action::StopShadow));
    assert_eq!(refuse(&mut t, &c), TrustError::Replay { last: 5, got: 5 });
    let older = keys.sign_command(&testkit::command(&dev(), 2, NOW, Action::StopShadow));
    assert_eq!(
        refuse(&mut t, &older),
        TrustError::Replay { last: 5, got: 2 }
    );
}

#[test]
fn command_for_another_device() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    let other = DeviceId::new("dev-2").unwrap();
    let c = keys.sign_command(&testkit::command(&other, 6, NOW, Action::StopShadow));
    assert_eq!(
        refuse(&mut t, &c),
        TrustError::WrongTarget {
            expected: dev(),
            got: other
        }
    );
}

#[test]
fn downgrade_below_version_floor() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    let err = refuse(&mut t, &deploy(&keys, 6, good_manifest(&keys, 2)));
    assert_eq!(
        err,
        TrustError::Downgrade {
            model: ModelName::new("sensor").unwrap(),
            floor: Version(3),
            offered: Version(2)
        }
    );
    // The same version as the floor is a re-deploy, not a downgrade.
    t.accept_command(&deploy(&keys, 7, good_manifest(&keys, 3)), NOW)
        .unwrap();
}

#[test]
fn explicit_signed_rollback_goes_below_the_floor() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    let c = keys.sign_command(&testkit::command(
        &dev(),
        6,
        NOW,
        Action::Rollback {
            model: ModelName::new("sensor").unwrap(),
            to: Some(Version(1)),
            reason: "canary failed".into(),
        },
    ));
    assert!(t.accept_command(&c, NOW).is_ok());
    // The floor does not drop: re-deploying v1 later still needs a rollback.
    assert_eq!(
        t.floor(&ModelName::new("sensor").unwrap()),
        Some(Version(3))
    );
}

#[test]
fn key_list_rollback() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    t.handle_key_list(&keys.key_list(3, NOW.plus_ms(YEAR_MS)), NOW)
        .unwrap();
    let before = t.clone();
    assert_eq!(
        t.handle_key_list(&keys.key_list(2, NOW.plus_ms(YEAR_MS)), NOW),
        Err(TrustError::KeyListRollback {
            installed: 3,
            offered: 2
        })
    );
    assert_eq!(t, before);
    // Same version re-offered is a no-op; same version, other content is a conflict.
    t.handle_key_list(&keys.key_list(3, NOW.plus_ms(YEAR_MS)), NOW)
        .unwrap();
    assert_eq!(
        t.handle_key_list(&keys.key_list(3, NOW.plus_ms(YEAR_MS + 1)), NOW),
        Err(TrustError::KeyListConflict(3))
    );
}

#[test]
fn key_list_not_signed_by_root() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    let before = t.clone();
    let list = KeyList {
        version: 9,
        expires_at: NOW.plus_ms(YEAR_MS),
        keys: vec![KeyEntry {
            public_key: Ed25519Signer::from_seed([66; 32]).public_key(),
            roles: vec![Role::Models, Role::Commands],
        }],
    };
    // Signed by the (legitimate) models key, which is not the root.
    let forged = Signed::sign(&list, &keys.models).unwrap();
    let err = t.handle_key_list(&forged, NOW).unwrap_err();
    assert!(matches!(
        err,
        TrustError::KeyListNotRootSigned(SignatureError::WrongKey { .. })
    ));
    assert_eq!(err.code(), ReasonCode::KeyListNotRootSigned);
    assert_eq!(t, before);
}

#[test]
fn rotated_key_list_retires_old_keys() {
    let old = TestKeys::new(1);
    let mut t = trusted(&old);
    // Root stays; models/commands keys rotate.
    let new = TestKeys {
        root: Ed25519Signer::from_seed([1; 32]),
        models: Ed25519Signer::from_seed([50; 32]),
        commands: Ed25519Signer::from_seed([51; 32]),
        agents: Ed25519Signer::from_seed([52; 32]),
    };
    t.handle_key_list(&new.key_list(2, NOW.plus_ms(YEAR_MS)), NOW)
        .unwrap();
    // A command signed with the retired key is now unknown.
    let c = old.sign_command(&testkit::command(&dev(), 6, NOW, Action::StopShadow));
    assert!(matches!(refuse(&mut t, &c), TrustError::UnknownKey(_)));
    let c = new.sign_command(&testkit::command(&dev(), 6, NOW, Action::StopShadow));
    assert!(t.accept_command(&c, NOW).is_ok());
}

#[test]
fn mismatched_artifact_hash_and_size() {
    let m = testkit::manifest("sensor", 4, b"model-bytes", NOW);
    assert!(check_artifact(&m, Sha256::of(b"model-bytes"), 11).is_ok());
    let err = check_artifact(&m, Sha256::of(b"model-bytez"), 11).unwrap_err();
    assert!(matches!(err, TrustError::ArtifactMismatch { .. }));
    assert_eq!(err.code(), ReasonCode::ArtifactMismatch);
    assert!(check_artifact(&m, Sha256::of(b"model-bytes"), 12).is_err());
}

#[test]
fn no_key_list_trusts_nothing() {
    let keys = TestKeys::new(1);
    let t = TrustState::new(keys.root.public_key(), dev());
    let c = keys.sign_command(&testkit::command(&dev(), 1, NOW, Action::StopShadow));
    assert_eq!(t.check_command(&c, NOW), Err(TrustError::NoKeyList));
}

#[test]
fn truncated_signature() {
    let keys = TestKeys::new(1);
    let mut t = trusted(&keys);
    let mut c = keys.sign_command(&testkit::command(&dev(), 6, NOW, Action::StopShadow));
    c.signature.truncate(10);
    assert_eq!(
        refuse(&mut t, &c),
        TrustError::Signature(SignatureError::BadSignatureLength(10))
    );
}

#[test]
fn trust_state_survives_persistence() {
    let keys = TestKeys::new(1);
    let t = trusted(&keys);
    let bytes = postcard::to_allocvec(&t).unwrap();
    let back: TrustState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, t);
}
