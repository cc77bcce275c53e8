//! The local guard rolls a model that breaks its latency budget back to the
//! previous one by itself, with the device's link cut, and reports why once
//! the link is back.

use std::time::Duration;

use drover_agent::InferRequest;
use drover_protocol::messages::{DeployPhase, ReasonCode};

use crate::support::{
    LinkProxy, ROWS, Setup, TestBroker, classifier_manifest, eventually, under_qemu, until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_model_is_rolled_back_offline_and_the_reason_reported() {
    // Under qemu-user (debug build) one inference of the slow fixture takes
    // about 5 s, so a 300 ms window never holds 5 of them: there the guard
    // judges 12 s windows with at least 2 inferences, within 120 s. Native
    // runs are unchanged (300 ms windows, 5 samples, 30 s).
    let (window_ms, min_samples, deadline) = if under_qemu() {
        (12_000, 2, 120)
    } else {
        (300, 5, 30)
    };
    let broker = TestBroker::start().await;
    let link = LinkProxy::start(&broker.url()).await;
    let s = Setup::start_split(&broker.url(), &link.url(), "guard", |c| {
        c.guard_min_samples = min_samples;
        c.guard_max_windows = 1000;
        c.telemetry_window_ms = window_ms;
    })
    .await;
    let agent = s.agent();
    let v1 = s
        .deploy_classifier("sensor_clf_v1.onnx", 1)
        .await
        .model_ref();
    let (mut slow, bytes) = classifier_manifest("sensor_clf_slow.onnx", 2);
    // The slow fixture takes milliseconds per row; v1 takes microseconds.
    slow.latency_budget_us = Some(500);
    s.peer.add_artifact(&bytes);
    let seq = s.peer.deploy(&slow).await;
    assert_eq!(s.peer.outcome(seq).await, DeployPhase::Active);
    assert_eq!(agent.active_model(), Some(slow.model_ref()));

    link.cut();
    until(agent, "link down", Duration::from_secs(20), || {
        (!agent.status().link.connected).then_some(())
    })
    .await;
    let rolled_back = eventually("local rollback", Duration::from_secs(deadline), || async {
        if agent.active_model() == Some(v1.clone()) {
            return Some(());
        }
        for r in ROWS.iter().take(2) {
            let _ = agent.infer(InferRequest::new(r.to_vec()));
        }
        None
    });
    rolled_back.await;
    let r = agent.infer(InferRequest::new(ROWS[0].to_vec())).unwrap();
    assert_eq!(*r.model, v1, "serving v1 again while still offline");
    assert!(!agent.status().link.connected);
    until(
        agent,
        "the bad model is not kept as previous",
        Duration::from_secs(10),
        || agent.status().previous.is_none().then_some(()),
    )
    .await;

    link.restore();
    let (model, to, reason) = s
        .peer
        .wait("the guard's report", Duration::from_secs(30), |st| {
            st.statuses_for(0).iter().find_map(|x| match &x.phase {
                DeployPhase::RolledBack { to, reason } => {
                    Some((x.model.clone(), to.clone(), reason.clone()))
                }
                _ => None,
            })
        })
        .await;
    assert_eq!(model, slow.model_ref());
    assert_eq!(to, Some(v1));
    assert_eq!(
        reason.code,
        ReasonCode::GuardLatencyBudget,
        "{}",
        reason.detail
    );
}
