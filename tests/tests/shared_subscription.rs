//! Controllers sharing the device uplinks of one fleet through a broker's
//! shared subscription (`drover serve --mqtt-shared-group`), on a real
//! Mosquitto 2: each uplink reaches exactly one controller of the group,
//! and every controller gets some; without a group each gets them all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use drover_controller::fleet::broker::BrokerChoice;
use drover_controller::serve::{self, RunningController, ServeConfig};
use drover_sim::metrics::scrape;
use drover_sim::net::SpawnedMosquitto;
use rumqttc::{AsyncClient, MqttOptions, QoS};

const UPLINKS: usize = 200;

async fn controller(
    dir: &std::path::Path,
    broker: &SpawnedMosquitto,
    group: Option<&str>,
) -> RunningController {
    let mut c = ServeConfig::ephemeral(dir);
    c.broker = BrokerChoice::External {
        host: "127.0.0.1".into(),
        port: broker.addr().port(),
        tls: false,
    };
    c.mqtt_shared_group = group.map(str::to_string);
    serve::start(c).await.unwrap()
}

async fn received(c: &RunningController) -> u64 {
    let m = scrape(&c.http_url(), c.admin_token().unwrap())
        .await
        .unwrap();
    m.get("drover_mqtt_messages_total").copied().unwrap_or(0.0) as u64
}

/// Publishes `n` uplinks of the fleet (from unregistered device ids: each
/// still counts as one message received) and waits for them to be counted
/// `expect` times over both controllers; returns each one's count.
async fn publish_and_count(
    a: &RunningController,
    b: &RunningController,
    broker: &SpawnedMosquitto,
    n: usize,
    expect: u64,
) -> (u64, u64) {
    let (before_a, before_b) = (received(a).await, received(b).await);
    let mut opts = MqttOptions::new("raw-publisher", "127.0.0.1", broker.addr().port());
    opts.set_clean_session(true);
    let (client, mut el) = AsyncClient::new(opts, 1024);
    let poll = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    for i in 0..n {
        let topic = format!("drover/{}/d/dev-{}/up", a.fleet(), i % 20);
        client
            .publish(topic, QoS::AtLeastOnce, false, vec![1u8, 2, 3])
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ca, cb) = (received(a).await - before_a, received(b).await - before_b);
        if ca + cb >= expect {
            poll.abort();
            return (ca, cb);
        }
        assert!(
            Instant::now() < deadline,
            "only {ca} + {cb} of {expect} uplinks arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_uplink_reaches_one_controller_of_the_group() {
    let broker = SpawnedMosquitto::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = controller(&dir.path().join("a"), &broker, Some("drover")).await;
    let b = controller(&dir.path().join("b"), &broker, Some("drover")).await;
    assert_eq!(a.fleet(), b.fleet());

    let (ca, cb) = publish_and_count(&a, &b, &broker, UPLINKS, UPLINKS as u64).await;
    assert_eq!(ca + cb, UPLINKS as u64, "each uplink once: {ca} + {cb}");
    assert!(ca > 0 && cb > 0, "both replicas get a share: {ca} + {cb}");
    // Nothing more trickles in: one more uplink makes exactly one more.
    let (ca2, cb2) = publish_and_count(&a, &b, &broker, 1, 1).await;
    assert_eq!(ca2 + cb2, 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_group_every_controller_gets_every_uplink() {
    let broker = SpawnedMosquitto::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = controller(&dir.path().join("a"), &broker, None).await;
    let b = controller(&dir.path().join("b"), &broker, None).await;
    let (ca, cb) = publish_and_count(&a, &b, &broker, UPLINKS, 2 * UPLINKS as u64).await;
    assert_eq!((ca, cb), (UPLINKS as u64, UPLINKS as u64));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_needs_an_external_broker_and_a_plain_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ServeConfig::ephemeral(dir.path().join("embedded"));
    c.mqtt_shared_group = Some("drover".into());
    let Err(e) = serve::start(c).await else {
        panic!("refused")
    };
    assert!(e.to_string().contains("external broker"), "{e}");
    let broker = SpawnedMosquitto::start().await.unwrap();
    for bad in ["a/b", "+", "#", ""] {
        let mut c = ServeConfig::ephemeral(dir.path().join("bad"));
        c.broker = BrokerChoice::External {
            host: "127.0.0.1".into(),
            port: broker.addr().port(),
            tls: false,
        };
        c.mqtt_shared_group = Some(bad.into());
        let Err(e) = serve::start(c).await else {
            panic!("refused")
        };
        assert!(e.to_string().contains("shared subscription group"), "{e}");
    }
}
