//! An agent shut down mid-download and restarted on the same data directory
//! resumes from the bytes it held: the controller never sends a held range
//! again.

use std::time::Duration;

use drover_agent::{Agent, InferRequest};
use drover_protocol::messages::DeployPhase;

use crate::support::{ROWS, Setup, classifier_manifest, until};

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_download_resumes_without_refetching() {
    let mut s = Setup::start_with("resume", |c| {
        c.chunk_size = 64 * 1024;
        c.chunk_window = 3;
        // Long enough that no request is re-sent because a busy test machine
        // was slow to answer it.
        c.chunk_timeout_ms = 20_000;
    })
    .await;
    // The slow fixture is ~4 MiB: 65 chunks of 64 KiB.
    let (m, bytes) = classifier_manifest("sensor_clf_slow.onnx", 1);
    let sha = m.artifact.sha256;
    s.peer.add_artifact(&bytes);
    s.peer.set_chunk_budget(Some(10));
    let seq = s.peer.deploy(&m).await;
    s.peer
        .wait("ten chunks served", Duration::from_secs(20), |st| {
            (st.served.len() == 10).then_some(())
        })
        .await;
    let held_before: u64 = s.peer.state().served.iter().map(|x| x.2).sum();
    let agent = s.agent();
    until(
        agent,
        "the agent holds every served byte",
        Duration::from_secs(20),
        || {
            let st = agent.status();
            (st.downloads.first().map(|d| d.received) == Some(held_before)).then_some(())
        },
    )
    .await;
    s.agent.take().unwrap().shutdown().await.unwrap();

    let (before, requested_before) = {
        let st = s.peer.state();
        let before: Vec<(u64, u64)> = st.served.iter().map(|x| (x.1, x.2)).collect();
        (before, st.requested.len())
    };
    s.peer.set_chunk_budget(None);
    s.agent = Some(Agent::start(s.config.clone()).await.unwrap());
    assert_eq!(s.peer.outcome(seq).await, DeployPhase::Active);

    let st = s.peer.state();
    let resumed_report = st
        .statuses_for(seq)
        .iter()
        .filter_map(|x| match x.phase {
            DeployPhase::Downloading { received, .. } => Some(received),
            _ => None,
        })
        .any(|r| r == held_before);
    assert!(
        resumed_report,
        "the restarted agent reports the bytes it held"
    );
    let after: Vec<(u64, u64)> = st.served[before.len()..]
        .iter()
        .filter(|x| x.0 == sha)
        .map(|x| (x.1, x.2))
        .collect();
    for a in &after {
        for b in &before {
            assert!(
                !overlaps(*a, *b),
                "range {a:?} was served again (held {b:?})"
            );
        }
    }
    for r in &st.requested[requested_before..] {
        for b in &before {
            assert!(
                !overlaps((r.1, u64::from(r.2)), *b),
                "the agent asked again for held bytes {r:?}"
            );
        }
    }
    let mut covered = drover_agent::core::deploy::RangeSet::default();
    for (o, l) in before.iter().chain(&after) {
        covered.insert(*o, o + l);
    }
    assert_eq!(covered.ranges(), &[(0, bytes.len() as u64)]);
    drop(st);
    let r = s
        .agent()
        .infer(InferRequest::new(ROWS[0].to_vec()))
        .unwrap();
    assert_eq!(*r.model, m.model_ref());
}
