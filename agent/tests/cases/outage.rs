//! The broker goes away for a while: windows pile up in the outbox, then
//! reach the controller once it is back, none lost and none counted twice.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_agent::InferRequest;
use drover_protocol::telemetry::{ModelRole, TelemetryWindow};

use crate::support::{LinkProxy, Mosquitto, ROWS, Setup, TestBroker, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_survive_a_broker_outage() {
    let mut mq = Mosquitto::start().await;
    let s = Setup::start_on(&mq.url(), "outage", |_| {}).await;
    s.peer.set_auto_ack(true);
    let v1 = s
        .deploy_classifier("sensor_clf_v1.onnx", 1)
        .await
        .model_ref();
    let agent = s.agent();
    let mut n = 0u64;
    for r in ROWS.iter().cycle().take(20) {
        agent.infer(InferRequest::new(r.to_vec())).unwrap();
        n += 1;
    }
    s.peer
        .wait("a window with traffic", Duration::from_secs(20), |st| {
            st.windows().iter().any(|w| w.count > 0).then_some(())
        })
        .await;

    mq.stop();
    until(agent, "link down", Duration::from_secs(20), || {
        (!agent.status().link.connected).then_some(())
    })
    .await;
    let seen_at_stop = s.peer.state().windows().len();
    let depth_at_stop = agent.status().outbox_depth;
    for r in ROWS.iter().cycle().take(30) {
        agent.infer(InferRequest::new(r.to_vec())).unwrap();
        n += 1;
    }
    until(
        agent,
        "windows buffered in the outbox",
        Duration::from_secs(20),
        || (agent.status().outbox_depth >= depth_at_stop + 4).then_some(()),
    )
    .await;
    assert_eq!(
        s.peer.state().windows().len(),
        seen_at_stop,
        "nothing delivered while down"
    );

    mq.restart().await;
    until(agent, "link back", Duration::from_secs(20), || {
        agent.status().link.connected.then_some(())
    })
    .await;
    // Every inference is in exactly one delivered window (by sequence).
    let by_seq: BTreeMap<u64, TelemetryWindow> = s
        .peer
        .wait(
            "all inferences delivered, no gaps",
            Duration::from_secs(30),
            |st| {
                let mut by_seq = BTreeMap::new();
                for w in st.windows() {
                    by_seq.insert(w.seq, (*w).clone());
                }
                let count: u64 = by_seq
                    .values()
                    .filter(|w| w.model == v1 && w.role == ModelRole::Active)
                    .map(|w| w.count)
                    .sum();
                // Windows may arrive out of order after a reconnect (a publish
                // lost while the controller re-subscribed is re-sent later), so
                // wait for the gaps to close too.
                let first = *by_seq.keys().next()?;
                let last = *by_seq.keys().last()?;
                let contiguous = by_seq.len() as u64 == last - first + 1;
                (count == n && contiguous).then_some(by_seq)
            },
        )
        .await;
    let first = *by_seq.keys().next().unwrap();
    let last = *by_seq.keys().last().unwrap();
    assert_eq!(
        by_seq.len() as u64,
        last - first + 1,
        "no sequence missing between {first} and {last}"
    );
    // A window delivered twice (at-least-once) is the same window. Windows
    // keep coming after the wait above returned (slowly, under qemu-user, it
    // can take long enough for the next one to land): those are newer.
    for w in s.peer.state().windows() {
        let Some(seen) = by_seq.get(&w.seq) else {
            assert!(w.seq > last, "window {} appeared late out of order", w.seq);
            continue;
        };
        assert_eq!(seen, w, "window {} differs between deliveries", w.seq);
    }
    assert!(by_seq.values().all(|w| w.evicted_windows == 0));
    until(agent, "outbox drained", Duration::from_secs(20), || {
        (agent.status().outbox_depth == 0).then_some(())
    })
    .await;
    assert!(agent.status().link.reconnects >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_evicts_the_oldest_and_reports_it() {
    let broker = TestBroker::start().await;
    let link = LinkProxy::start(&broker.url()).await;
    let s = Setup::start_split(&broker.url(), &link.url(), "evict", |c| {
        c.outbox_capacity = 3;
        c.telemetry_window_ms = 100;
    })
    .await;
    s.peer.set_auto_ack(true);
    s.deploy_classifier("sensor_clf_v1.onnx", 1).await;
    let agent = s.agent();
    link.cut();
    until(agent, "evictions", Duration::from_secs(20), || {
        (agent.status().outbox_evicted >= 3).then_some(())
    })
    .await;
    assert!(agent.status().outbox_depth <= 3);
    link.restore();
    // Every eviction is reported once, and every window the controller never
    // got was evicted.
    let (lost, reported) = s
        .peer
        .wait("eviction counts reported", Duration::from_secs(20), |st| {
            let mut by_seq = BTreeMap::new();
            for w in st.windows() {
                by_seq.insert(w.seq, w.evicted_windows);
            }
            let last = *by_seq.keys().last()?;
            let lost = (1..=last).filter(|q| !by_seq.contains_key(q)).count() as u64;
            let reported: u64 = by_seq.values().sum();
            (reported == agent.status().outbox_evicted).then_some((lost, reported))
        })
        .await;
    assert!(reported >= 3);
    assert!(
        lost <= reported,
        "{lost} windows lost, {reported} evictions reported"
    );
}

/// After a link cut the backlog goes out as soon as the link is back, not
/// when the resend timer fires (set far beyond the test's patience here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_flushes_the_backlog_without_the_resend_timer() {
    let broker = TestBroker::start().await;
    let link = LinkProxy::start(&broker.url()).await;
    let s = Setup::start_split(&broker.url(), &link.url(), "flush", |c| {
        c.telemetry_window_ms = 200;
        c.outbox_retransmit_ms = 600_000;
    })
    .await;
    s.peer.set_auto_ack(true);
    s.deploy_classifier("sensor_clf_v1.onnx", 1).await;
    let agent = s.agent();
    s.peer
        .wait("a first window", Duration::from_secs(20), |st| {
            (!st.windows().is_empty()).then_some(())
        })
        .await;
    link.cut();
    until(agent, "link down", Duration::from_secs(20), || {
        (!agent.status().link.connected).then_some(())
    })
    .await;
    until(agent, "a backlog", Duration::from_secs(20), || {
        (agent.status().outbox_depth >= 5).then_some(())
    })
    .await;
    link.restore();
    until(agent, "link back", Duration::from_secs(20), || {
        agent.status().link.connected.then_some(())
    })
    .await;
    // Every window made arrives well inside the resend timer (10 s against
    // 600 s): no gaps below the newest delivered one, which is past the
    // backlog.
    s.peer
        .wait("the backlog delivered", Duration::from_secs(10), |st| {
            let seqs: std::collections::BTreeSet<u64> =
                st.windows().iter().map(|w| w.seq).collect();
            let first = *seqs.first()?;
            let last = *seqs.last()?;
            (last >= first + 6 && seqs.len() as u64 == last - first + 1).then_some(())
        })
        .await;
}

/// A broker restart: the agent may be back (and flush) before the
/// controller has subscribed again, so its first flush can be lost at the
/// broker. The backlog still arrives without waiting for the resend timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_backlog_arrives_without_the_resend_timer() {
    let mut mq = Mosquitto::start().await;
    let s = Setup::start_on(&mq.url(), "flush-restart", |c| {
        c.telemetry_window_ms = 200;
        c.outbox_retransmit_ms = 600_000;
    })
    .await;
    s.peer.set_auto_ack(true);
    s.deploy_classifier("sensor_clf_v1.onnx", 1).await;
    let agent = s.agent();
    s.peer
        .wait("a first window", Duration::from_secs(20), |st| {
            (!st.windows().is_empty()).then_some(())
        })
        .await;
    mq.stop();
    until(agent, "link down", Duration::from_secs(20), || {
        (!agent.status().link.connected).then_some(())
    })
    .await;
    until(agent, "a backlog", Duration::from_secs(20), || {
        (agent.status().outbox_depth >= 5).then_some(())
    })
    .await;
    mq.restart().await;
    s.peer
        .wait("the backlog delivered", Duration::from_secs(15), |st| {
            let seqs: std::collections::BTreeSet<u64> =
                st.windows().iter().map(|w| w.seq).collect();
            let first = *seqs.first()?;
            let last = *seqs.last()?;
            (last >= first + 6 && seqs.len() as u64 == last - first + 1).then_some(())
        })
        .await;
}
