//! Shadow mode: a candidate sees a sample of live inputs; agreement, compared
//! counts and its latency arrive in telemetry; promotion reuses its file.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_agent::InferRequest;
use drover_protocol::Action;
use drover_protocol::messages::DeployPhase;
use drover_protocol::telemetry::ModelRole;

use crate::support::{ROWS, Setup, classifier_manifest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_stats_reach_telemetry_and_promotion_needs_no_download() {
    let s = Setup::start("shadow").await;
    s.peer.set_auto_ack(true);
    let agent = s.agent();
    let v1 = s
        .deploy_classifier("sensor_clf_v1.onnx", 1)
        .await
        .model_ref();
    let (m2, b2) = classifier_manifest("sensor_clf_v2.onnx", 2);
    s.peer.add_artifact(&b2);
    let seq = s
        .peer
        .command(Action::Shadow {
            manifest: s.peer.keys.sign_manifest(&m2),
            sample_per_mille: 1000,
        })
        .await;
    assert_eq!(s.peer.outcome(seq).await, DeployPhase::Shadowing);
    assert_eq!(agent.status().shadow.as_deref(), Some("sensor@2"));
    assert_eq!(
        agent.active_model(),
        Some(v1.clone()),
        "shadow does not serve"
    );

    let n = 40u64;
    for r in ROWS.iter().cycle().take(n as usize) {
        let resp = agent.infer(InferRequest::new(r.to_vec())).unwrap();
        assert_eq!(*resp.model, v1);
    }
    let (compared, agreed, latency, shadow_count) = s
        .peer
        .wait(
            "shadow stats for every input",
            Duration::from_secs(30),
            |st| {
                let mut active = BTreeMap::new();
                let mut shadow = BTreeMap::new();
                for w in st.windows() {
                    match w.role {
                        ModelRole::Active => active.insert(w.seq, (*w).clone()),
                        ModelRole::Shadow => shadow.insert(w.seq, (*w).clone()),
                    };
                }
                // The comparison travels with the candidate's window (the
                // version a rollout's shadow gate selects), never with the
                // active model's.
                assert!(active.values().all(|w| w.shadow.is_none()));
                let stats: Vec<_> = shadow
                    .values()
                    .filter(|w| w.model == m2.model_ref())
                    .filter_map(|w| w.shadow.clone())
                    .collect();
                let compared: u64 = stats.iter().map(|x| x.compared).sum();
                let agreed: u64 = stats.iter().map(|x| x.agreed).sum();
                let latency: u64 = stats.iter().map(|x| x.latency.count()).sum();
                let shadow_count: u64 = shadow
                    .values()
                    .filter(|w| w.model == m2.model_ref())
                    .map(|w| w.count)
                    .sum();
                (compared == n && shadow_count == n).then_some((
                    compared,
                    agreed,
                    latency,
                    shadow_count,
                ))
            },
        )
        .await;
    assert_eq!(compared, n);
    assert_eq!(latency, n);
    assert_eq!(shadow_count, n);
    assert!(
        agreed >= n / 2 && agreed <= n,
        "v1 and v2 mostly agree: {agreed}/{n}"
    );

    // Promoting the candidate reuses its installed file.
    let requested = s.peer.state().requested.len();
    let seq = s.peer.deploy(&m2).await;
    assert_eq!(s.peer.outcome(seq).await, DeployPhase::Active);
    assert_eq!(s.peer.state().requested.len(), requested, "no download");
    let st = agent.status();
    assert_eq!(st.active.as_deref(), Some("sensor@2"));
    assert_eq!(st.previous.as_deref(), Some("sensor@1"));
    assert_eq!(st.shadow, None);

    // Shadowing the installed previous model, then stopping it.
    let (m1, _) = classifier_manifest("sensor_clf_v1.onnx", 1);
    let seq = s
        .peer
        .command(Action::Shadow {
            manifest: s.peer.keys.sign_manifest(&m1),
            sample_per_mille: 100,
        })
        .await;
    assert_eq!(s.peer.outcome(seq).await, DeployPhase::Shadowing);
    assert_eq!(agent.status().shadow_per_mille, 100);
    let seq = s.peer.command(Action::StopShadow).await;
    assert_eq!(s.peer.ack_of(seq).await.result, Ok(()));
    crate::support::until(agent, "shadow stopped", Duration::from_secs(10), || {
        agent.status().shadow.is_none().then_some(())
    })
    .await;
}
