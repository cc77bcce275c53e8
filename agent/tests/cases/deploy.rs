//! Deploy → infer (library and HTTP) → feedback → telemetry → ack; capture;
//! commanded rollback; idempotent deploy; downgrade refusal; disk hygiene.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use drover_agent::{FeedbackError, FeedbackLabel, InferError, InferRequest};
use drover_protocol::messages::{DeployPhase, Label, ReasonCode, Status, Up};
use drover_protocol::telemetry::ModelRole;
use drover_protocol::{Action, ModelName, Version};

use crate::support::{ROWS, Setup, classifier_manifest, until};

fn le_bytes(row: &[f32]) -> Vec<u8> {
    row.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_infer_feedback_telemetry_ack() {
    let s = Setup::start("deploy").await;
    let agent = s.agent();
    let http = reqwest::Client::new();

    // Nothing active yet.
    assert_eq!(
        agent.infer(InferRequest::new(ROWS[0].to_vec())),
        Err(InferError::NoModel)
    );
    let r = http
        .post(format!("{}/v1/infer", s.api()))
        .json(&json!({"data": ROWS[0]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    {
        let st = s.peer.state();
        let hello = st
            .ups
            .iter()
            .find_map(|u| match u {
                Up::Hello(h) => Some(h.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(hello.arch, std::env::consts::ARCH);
        assert_eq!(hello.agent_version, drover_agent::AGENT_VERSION);
        assert!(
            st.statuses
                .iter()
                .any(|x| matches!(x, Status::Online { active: None, .. }))
        );
    }

    // Deploy v1: every step reported, with byte progress.
    let (m, bytes) = classifier_manifest("sensor_clf_v1.onnx", 1);
    s.peer.add_artifact(&bytes);
    let seq = s.peer.deploy(&m).await;
    assert_eq!(s.peer.outcome(seq).await, DeployPhase::Active);
    assert_eq!(s.peer.ack_of(seq).await.result, Ok(()));
    let phases: Vec<DeployPhase> = s
        .peer
        .state()
        .statuses_for(seq)
        .iter()
        .map(|x| x.phase.clone())
        .collect();
    let total = bytes.len() as u64;
    assert_eq!(
        phases.first(),
        Some(&DeployPhase::Downloading { received: 0, total })
    );
    assert!(phases.contains(&DeployPhase::Downloading {
        received: total,
        total
    }));
    let tail: Vec<_> = phases
        .iter()
        .filter(|p| !matches!(p, DeployPhase::Downloading { .. }))
        .cloned()
        .collect();
    assert_eq!(
        tail,
        vec![
            DeployPhase::Verifying,
            DeployPhase::Loading,
            DeployPhase::HealthCheck,
            DeployPhase::Active
        ]
    );
    assert_eq!(agent.active_model(), Some(m.model_ref()));
    s.peer
        .wait(
            "retained Online with the active model",
            Duration::from_secs(10),
            |st| {
                st.statuses
                .iter()
                .any(|x| matches!(x, Status::Online { active: Some(a), .. } if *a == m.model_ref()))
                .then_some(())
            },
        )
        .await;

    // Library inference.
    let r1 = agent.infer(InferRequest::new(ROWS[0].to_vec())).unwrap();
    assert_eq!(*r1.model, m.model_ref());
    let label = r1.label.clone().unwrap();
    assert!(["fault", "normal", "warning"].contains(&&*label));
    let score = r1.score.unwrap();
    assert!((0.0..=1.0).contains(&score));
    let names: Vec<&str> = r1.outputs.iter().map(|o| o.name()).collect();
    assert_eq!(names, vec!["label", "probabilities"]);

    // HTTP: full form, shorthand, binary.
    let api = s.api();
    let full: serde_json::Value = http
        .post(format!("{api}/v1/infer"))
        .json(&json!({"inputs": {"input": {"shape": [1, 4], "data": ROWS[0]}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(full["model"], "sensor");
    assert_eq!(full["version"], 1);
    assert_eq!(full["label"], &*label);
    assert_eq!(full["outputs"]["probabilities"]["shape"], json!([1, 3]));
    let probs = full["outputs"]["probabilities"]["data"].as_array().unwrap();
    assert_eq!(probs.len(), 3);
    let short: serde_json::Value = http
        .post(format!("{api}/v1/infer"))
        .json(&json!({"data": ROWS[1]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bin: serde_json::Value = http
        .post(format!("{api}/v1/infer"))
        .header("content-type", "application/octet-stream")
        .body(le_bytes(&ROWS[1]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(short["outputs"], bin["outputs"], "JSON and binary agree");
    assert!(short["latency_us"].as_u64().is_some());
    let inferences = 4u64;

    // Feedback: library (index) and HTTP (class name); unknown ids counted.
    let truth = FeedbackLabel::ClassName(label.to_string());
    assert_eq!(agent.feedback(r1.request_id, truth), Ok(true));
    let fb = http
        .post(format!("{api}/v1/feedback"))
        .json(&json!({"request_id": short["request_id"], "label": "fault"}))
        .send()
        .await
        .unwrap();
    assert_eq!(fb.status(), 200);
    assert_eq!(
        agent.feedback(1, FeedbackLabel::Class(0)),
        Err(FeedbackError::Unknown)
    );
    let unknown = http
        .post(format!("{api}/v1/feedback"))
        .json(&json!({"request_id": 42, "label": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let body: serde_json::Value = unknown.json().await.unwrap();
    assert_eq!(body["error"], "unknown_request");
    assert_eq!(agent.status().counters.get("feedback.unknown"), Some(&2));

    // Telemetry: windows reach the controller and stay in the outbox until acked.
    let v1 = m.model_ref();
    let labelled_seen = s
        .peer
        .wait(
            "windows with every inference and both labels",
            Duration::from_secs(20),
            |st| {
                let mut by_seq = BTreeMap::new();
                for w in st.windows() {
                    if w.model == v1 && w.role == ModelRole::Active {
                        by_seq.insert(w.seq, (w.count, w.labelled, w.correct));
                    }
                }
                let count: u64 = by_seq.values().map(|v| v.0).sum();
                let labelled: u64 = by_seq.values().map(|v| v.1).sum();
                let correct: u64 = by_seq.values().map(|v| v.2).sum();
                (count == inferences && labelled == 2).then_some((by_seq, correct))
            },
        )
        .await;
    assert!(
        labelled_seen.1 >= 1,
        "the library feedback named the predicted class"
    );
    let w = s
        .peer
        .state()
        .windows()
        .into_iter()
        .find(|w| w.count > 0)
        .cloned()
        .unwrap();
    assert_eq!(w.features.len(), 4);
    assert_eq!(w.outputs.len(), 3);
    assert_eq!(w.confidence.len(), 10);
    assert_eq!(w.latency.count(), w.count);
    // Unacked windows are published again after the retransmit timeout.
    s.peer
        .wait("a window published twice", Duration::from_secs(20), |st| {
            let mut seen = std::collections::BTreeSet::new();
            st.windows()
                .iter()
                .any(|w| !seen.insert(w.seq))
                .then_some(())
        })
        .await;
    let depth = agent.status().outbox_depth;
    assert!(depth >= 2, "nothing acked yet, depth {depth}");
    // Ack everything seen; from now on ack as they come: the outbox empties.
    let seen: Vec<u64> = s.peer.state().windows().iter().map(|w| w.seq).collect();
    s.peer.set_auto_ack(true);
    s.peer.ack(seen).await;
    until(
        agent,
        "outbox empty after acks",
        Duration::from_secs(20),
        || (agent.status().outbox_depth == 0).then_some(()),
    )
    .await;
    assert!(agent.status().last_ack_ms.is_some());

    // Capture: the most recent rows, with the label that feedback gave.
    let r = agent.infer(InferRequest::new(ROWS[3].to_vec())).unwrap();
    agent
        .feedback(r.request_id, FeedbackLabel::Class(2))
        .unwrap();
    let cseq = s
        .peer
        .command(Action::Capture {
            max_samples: 3,
            max_bytes: 10_000,
        })
        .await;
    let parts = s
        .peer
        .wait("capture upload", Duration::from_secs(10), |st| {
            let parts: Vec<_> = st
                .ups
                .iter()
                .filter_map(|u| match u {
                    Up::Capture(c) if c.seq == cseq => Some(c.clone()),
                    _ => None,
                })
                .collect();
            parts.iter().any(|p| p.last).then_some(parts)
        })
        .await;
    let samples: Vec<_> = parts.iter().flat_map(|p| p.samples.clone()).collect();
    assert_eq!(samples.len(), 3);
    let last = samples.last().unwrap();
    assert_eq!(last.input, ROWS[3].to_vec());
    assert_eq!(last.label, Some(Label::Class(2)));
    // A byte budget smaller than one row yields an empty final part.
    let cseq = s
        .peer
        .command(Action::Capture {
            max_samples: 3,
            max_bytes: 10,
        })
        .await;
    s.peer
        .wait("empty capture", Duration::from_secs(10), |st| {
            st.ups
                .iter()
                .any(|u| matches!(u, Up::Capture(c) if c.seq == cseq && c.last && c.samples.is_empty()))
                .then_some(())
        })
        .await;

    // Status and metrics.
    let status: serde_json::Value = http
        .get(format!("{api}/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["active"], "sensor@1");
    assert_eq!(status["link"]["connected"], true);
    assert_eq!(status["device"], "dev-1");
    let metrics = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("drover_agent_inferences_total 5"),
        "{metrics}"
    );
    assert!(metrics.contains("drover_agent_feedback_total{outcome=\"unknown\"} 2"));
    assert!(metrics.contains("drover_agent_inference_latency_us{quantile=\"0.5\"}"));

    // Graceful shutdown says Offline.
    let mut s = s;
    s.agent.take().unwrap().shutdown().await.unwrap();
    s.peer
        .wait("Offline status", Duration::from_secs(10), |st| {
            matches!(st.statuses.last(), Some(Status::Offline)).then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_idempotence_downgrade_and_disk_hygiene() {
    let s = Setup::start("rollback").await;
    let agent = s.agent();
    let v1 = s
        .deploy_classifier("sensor_clf_v1.onnx", 1)
        .await
        .model_ref();
    let v2 = s
        .deploy_classifier("sensor_clf_v2.onnx", 2)
        .await
        .model_ref();
    let st = agent.status();
    assert_eq!(st.active.as_deref(), Some("sensor@2"));
    assert_eq!(st.previous.as_deref(), Some("sensor@1"));

    // Deploying the active version again just reports Active (no download).
    let (m2, _) = classifier_manifest("sensor_clf_v2.onnx", 2);
    let requests_before = s.peer.state().requested.len();
    let seq = s.peer.deploy(&m2).await;
    assert_eq!(s.peer.outcome(seq).await, DeployPhase::Active);
    assert_eq!(s.peer.state().requested.len(), requests_before);

    // Signed rollback to the previous model.
    let name = ModelName::new("sensor").unwrap();
    let seq = s
        .peer
        .command(Action::Rollback {
            model: name.clone(),
            to: None,
            reason: "operator".into(),
        })
        .await;
    match s.peer.outcome(seq).await {
        DeployPhase::RolledBack { to, reason } => {
            assert_eq!(to, Some(v1.clone()));
            assert_eq!(reason.code, ReasonCode::Commanded);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(agent.active_model(), Some(v1.clone()));
    assert_eq!(agent.status().previous.as_deref(), Some("sensor@2"));

    // A version that is not installed.
    let seq = s
        .peer
        .command(Action::Rollback {
            model: name.clone(),
            to: Some(Version(9)),
            reason: "typo".into(),
        })
        .await;
    match s.peer.outcome(seq).await {
        DeployPhase::Failed(r) => assert_eq!(r.code, ReasonCode::NotInstalled),
        other => panic!("{other:?}"),
    }
    assert_eq!(agent.active_model(), Some(v1.clone()));

    // A named installed version.
    let seq = s
        .peer
        .command(Action::Rollback {
            model: name,
            to: Some(Version(2)),
            reason: "forward again".into(),
        })
        .await;
    assert!(matches!(
        s.peer.outcome(seq).await,
        DeployPhase::RolledBack { to: Some(ref t), .. } if *t == v2
    ));

    // The floor is 2: a Deploy of v1 is a downgrade, refused in the Ack.
    let (m1, _) = classifier_manifest("sensor_clf_v1.onnx", 1);
    let seq = s.peer.deploy(&m1).await;
    let ack = s.peer.ack_of(seq).await;
    assert_eq!(ack.result.unwrap_err().code, ReasonCode::Downgrade);
    assert_eq!(agent.active_model(), Some(v2.clone()));

    // v3: only active and previous stay on disk.
    let (mut m3, b3) = classifier_manifest("sensor_clf_bad.onnx", 3);
    m3.latency_budget_us = None;
    s.peer.add_artifact(&b3);
    let seq = s.peer.deploy(&m3).await;
    assert_eq!(s.peer.outcome(seq).await, DeployPhase::Active);
    let files: Vec<_> = std::fs::read_dir(s.dir.path().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let partial = std::fs::read_dir(s.dir.path().join("partial"))
        .unwrap()
        .count();
    assert_eq!(partial, 0);
    assert_eq!(agent.status().previous.as_deref(), Some("sensor@2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_agent_goes_offline_through_its_last_will() {
    let mut s = Setup::start("will").await;
    s.peer
        .wait("Online", Duration::from_secs(10), |st| {
            matches!(st.statuses.last(), Some(Status::Online { .. })).then_some(())
        })
        .await;
    // Like a crash: no shutdown, no final Offline publish from the agent.
    drop(s.agent.take());
    s.peer
        .wait("Offline from the will", Duration::from_secs(20), |st| {
            matches!(st.statuses.last(), Some(Status::Offline)).then_some(())
        })
        .await;
}
