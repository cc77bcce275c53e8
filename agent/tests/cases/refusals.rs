//! Every refusal is reported with its reason and leaves the device serving
//! what it served before: tampered chunks, bad signatures, replays, foreign
//! keys, expired and mis-targeted commands, failing health checks,
//! unsupported operators.

use drover_agent::InferRequest;
use drover_protocol::messages::{DeployPhase, ReasonCode};
use drover_protocol::testkit::{self, TestKeys};
use drover_protocol::{Action, DeviceId, Sha256, Signed};

use crate::support::{ROWS, Setup, classifier_manifest, fixture, now};

fn failed_code(p: DeployPhase) -> String {
    match p {
        DeployPhase::Failed(r) => r.code.as_str().to_string(),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_leave_the_old_model_serving() {
    let s = Setup::start("refuse").await;
    let agent = s.agent();
    let v1 = s
        .deploy_classifier("sensor_clf_v1.onnx", 1)
        .await
        .model_ref();
    let before = agent.infer(InferRequest::new(ROWS[2].to_vec())).unwrap();
    let serving = |what: &str| {
        let r = agent.infer(InferRequest::new(ROWS[2].to_vec())).unwrap();
        assert_eq!(*r.model, v1, "after {what}");
        assert_eq!(r.outputs, before.outputs, "after {what}");
    };

    // Tampered chunk: the right digest claimed, other bytes served.
    let (m2, b2) = classifier_manifest("sensor_clf_v2.onnx", 2);
    let mut tampered = b2.clone();
    tampered[b2.len() / 2] ^= 0xff;
    s.peer.add_artifact_as(m2.artifact.sha256, tampered);
    let seq = s.peer.deploy(&m2).await;
    assert_eq!(s.peer.ack_of(seq).await.result, Ok(()));
    assert_eq!(failed_code(s.peer.outcome(seq).await), "artifact_mismatch");
    serving("a tampered artifact");
    let partial = std::fs::read_dir(s.dir.path().join("partial"))
        .unwrap()
        .count();
    assert_eq!(partial, 0, "the tampered download is discarded");
    let last_seq = agent.status().last_command_seq;

    // Bad signatures and other trust failures: Ack with the reason, nothing changes.
    let mut cases: Vec<(&str, Signed<drover_protocol::Command>)> = Vec::new();
    let cmd = s
        .peer
        .command_with_seq(s.peer.next_seq(), Action::StopShadow);
    let mut bad_sig = s.peer.keys.sign_command(&cmd);
    bad_sig.signature[0] ^= 1;
    cases.push(("bad_signature", bad_sig));
    // A valid command body under another command's signature.
    let seq = s.peer.next_seq();
    let cmd = s.peer.command_with_seq(seq, Action::StopShadow);
    let mut swapped = s.peer.keys.sign_command(&cmd);
    let other = s.peer.command_with_seq(
        seq,
        Action::Capture {
            max_samples: 1,
            max_bytes: 1,
        },
    );
    swapped.body = s.peer.keys.sign_command(&other).body;
    cases.push(("bad_signature", swapped));
    let foreign = TestKeys::new(99);
    let cmd = s
        .peer
        .command_with_seq(s.peer.next_seq(), Action::StopShadow);
    cases.push(("unknown_key", foreign.sign_command(&cmd)));
    // A good command carrying a manifest signed by an unlisted key.
    let (m2, _) = classifier_manifest("sensor_clf_v2.onnx", 2);
    let cmd = s.peer.command_with_seq(
        s.peer.next_seq(),
        Action::Deploy {
            manifest: foreign.sign_manifest(&m2),
        },
    );
    cases.push(("unknown_key", s.peer.keys.sign_command(&cmd)));
    // A manifest signed with the commands key (wrong role).
    let cmd = s.peer.command_with_seq(
        s.peer.next_seq(),
        Action::Deploy {
            manifest: Signed::sign(&m2, &s.peer.keys.commands).unwrap(),
        },
    );
    cases.push(("missing_role", s.peer.keys.sign_command(&cmd)));
    let mut cmd = s
        .peer
        .command_with_seq(s.peer.next_seq(), Action::StopShadow);
    cmd.target = DeviceId::new("someone-else").unwrap();
    cases.push(("wrong_target", s.peer.keys.sign_command(&cmd)));
    let mut cmd = s
        .peer
        .command_with_seq(s.peer.next_seq(), Action::StopShadow);
    cmd.expires_at = now().plus_ms(0).0.saturating_sub(1000).into_ts();
    cases.push(("command_expired", s.peer.keys.sign_command(&cmd)));
    let cmd = s.peer.command_with_seq(1, Action::StopShadow);
    cases.push(("replayed_command", s.peer.keys.sign_command(&cmd)));
    let mut expired_manifest = m2.clone();
    expired_manifest.expires_at = drover_protocol::Timestamp(1);
    let cmd = s.peer.command_with_seq(
        s.peer.next_seq(),
        Action::Deploy {
            manifest: s.peer.keys.sign_manifest(&expired_manifest),
        },
    );
    cases.push(("manifest_expired", s.peer.keys.sign_command(&cmd)));

    // Only a verified, fresh command is answered with its own sequence;
    // forged, foreign and replayed ones are answered with 0 (the controller
    // never maps those to a deployment, so a replay cannot fail one).
    let mut seen: std::collections::HashMap<&str, usize> = Default::default();
    for (code, signed) in cases {
        let seq = signed.decode_unverified().unwrap().seq;
        let ack_seq = match code {
            "command_expired" | "manifest_expired" => seq,
            _ => 0,
        };
        let n = {
            let e = seen.entry(code).or_default();
            *e += 1;
            *e
        };
        s.peer.send_signed(signed).await;
        let reason = s
            .peer
            .wait(
                &format!("refusal {code}"),
                std::time::Duration::from_secs(20),
                |st| {
                    let of_code: Vec<_> = st
                        .acks(ack_seq)
                        .iter()
                        .filter_map(|a| a.result.clone().err())
                        .filter(|r| r.code.as_str() == code)
                        .collect();
                    (of_code.len() >= n).then(|| of_code[n - 1].clone())
                },
            )
            .await;
        assert_eq!(reason.code.as_str(), code, "{}", reason.detail);
        if code != "replayed_command" {
            assert!(
                s.peer.state().statuses_for(seq).is_empty(),
                "{code}: no action taken"
            );
        }
        serving(code);
    }
    let st = agent.status();
    assert_eq!(
        st.last_command_seq, last_seq,
        "refused commands do not move the sequence"
    );
    assert_eq!(st.counters.get("rejected_commands.bad_signature"), Some(&2));
    assert_eq!(st.counters.get("rejected_commands.unknown_key"), Some(&2));
    assert_eq!(
        st.counters.get("rejected_commands.replayed_command"),
        Some(&1)
    );

    // Health checks that do not reproduce.
    let (mut bad, bad_bytes) = classifier_manifest("sensor_clf_bad.onnx", 3);
    bad.health_checks = classifier_manifest("sensor_clf_v1.onnx", 1).0.health_checks;
    s.peer.add_artifact(&bad_bytes);
    let seq = s.peer.deploy(&bad).await;
    assert_eq!(
        failed_code(s.peer.outcome(seq).await),
        "health_check_failed"
    );
    serving("a failing health check");

    // An operator neither tract nor Drover implements.
    let unsupported = fixture("unknown_op.onnx");
    let mut m = testkit::manifest("sensor", 4, &unsupported, now());
    m.health_checks.samples.clear();
    s.peer.add_artifact(&unsupported);
    let seq = s.peer.deploy(&m).await;
    match s.peer.outcome(seq).await {
        DeployPhase::Failed(r) => {
            assert_eq!(r.code, ReasonCode::UnsupportedOperator);
            assert!(r.detail.contains("FusedMatMul"), "{}", r.detail);
            assert!(r.detail.contains("fused_matmul_0"), "{}", r.detail);
        }
        other => panic!("{other:?}"),
    }
    serving("an unsupported operator");

    // Too large for this device.
    let mut huge = m2.clone();
    huge.version = drover_protocol::Version(5);
    huge.artifact.size = u64::MAX / 2;
    huge.artifact.sha256 = Sha256::of(b"huge");
    let seq = s.peer.deploy(&huge).await;
    assert_eq!(failed_code(s.peer.outcome(seq).await), "model_too_large");
    let deploy_failures: u64 = agent
        .status()
        .counters
        .iter()
        .filter(|(k, _)| k.starts_with("deploy_failures."))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(deploy_failures, 4);
    assert_eq!(agent.active_model(), Some(v1));
}

trait IntoTs {
    fn into_ts(self) -> drover_protocol::Timestamp;
}

impl IntoTs for u64 {
    fn into_ts(self) -> drover_protocol::Timestamp {
        drover_protocol::Timestamp(self)
    }
}
