//! A rollback that arrives while a newer version is still downloading wins:
//! the download is cancelled (its partial file and pending row gone) and
//! the device stays on the rollback target.

use std::time::Duration;

use drover_protocol::ModelName;
use drover_protocol::messages::{Action, DeployPhase};
use drover_protocol::reasons::ReasonCode;

use crate::support::{Setup, classifier_manifest, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_during_download_cancels_it_and_stays_on_the_target() {
    let s = Setup::start_with("rollback-race", |c| {
        c.chunk_size = 64 * 1024;
        c.chunk_window = 2;
        c.chunk_timeout_ms = 20_000;
    })
    .await;
    let v1 = s.deploy_classifier("sensor_clf_v1.onnx", 1).await;
    // The slow fixture is ~4 MiB; the peer serves a few chunks and then
    // holds the rest back, so the download stays in flight.
    let (m2, bytes2) = classifier_manifest("sensor_clf_slow.onnx", 2);
    s.peer.add_artifact(&bytes2);
    s.peer.set_chunk_budget(Some(3));
    let deploy_seq = s.peer.deploy(&m2).await;
    s.peer
        .wait("three chunks served", Duration::from_secs(20), |st| {
            (st.served.len() >= 3).then_some(())
        })
        .await;
    let agent = s.agent();
    until(
        agent,
        "the download is in flight",
        Duration::from_secs(20),
        || (agent.status().downloads.first().map(|d| d.received) > Some(0)).then_some(()),
    )
    .await;

    let rb = s
        .peer
        .command(Action::Rollback {
            model: ModelName::new("sensor").unwrap(),
            to: Some(v1.version),
            reason: "test".into(),
        })
        .await;
    assert!(
        matches!(s.peer.outcome(rb).await, DeployPhase::RolledBack { .. }),
        "rollback reported"
    );
    // Let the peer serve everything it has: a download still alive would
    // finish and activate now. The cancelled deploy says so instead.
    s.peer.set_chunk_budget(None);
    let phase = s.peer.outcome(deploy_seq).await;
    match &phase {
        DeployPhase::Failed(r) => assert_eq!(r.code, ReasonCode::Cancelled, "{r:?}"),
        other => panic!("the superseded download ended as {other:?}"),
    }
    let requested = s.peer.state().requested.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.peer.state().requested.len(),
        requested,
        "the cancelled download kept asking for chunks"
    );
    let st = agent.status();
    assert_eq!(st.active.as_deref(), Some("sensor@1"), "{st:?}");
    assert!(st.downloads.is_empty(), "pending download left: {st:?}");
    let partial: Vec<_> = std::fs::read_dir(s.dir.path().join("partial"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(partial.is_empty(), "partial files left: {partial:?}");
}
