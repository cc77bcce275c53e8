//! Malformed HTTP bodies and malformed MQTT payloads: typed errors and
//! counters, and the agent keeps serving.

use serde_json::json;

use drover_agent::InferRequest;
use drover_protocol::codec;
use drover_protocol::messages::{AgentSettings, Chunk, Down, TelemetryAck};
use drover_protocol::testkit::SplitMix;
use drover_protocol::topic::Channel;
use drover_protocol::{Action, Sha256};

use std::time::Duration;

use crate::support::peer::eventually;
use crate::support::{ROWS, Setup};

async fn expect(req: reqwest::RequestBuilder, status: u16, code: &str) {
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), status, "expected {code}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_bodies_are_refused_and_counted() {
    let s = Setup::start_with("http", |c| c.max_body_bytes = 4096).await;
    let http = reqwest::Client::new();
    let api = s.api();
    let infer = || http.post(format!("{api}/v1/infer"));
    expect(infer().json(&json!({"data": ROWS[0]})), 503, "no_model").await;
    s.deploy_classifier("sensor_clf_v1.onnx", 1).await;

    let json_body = |b: &str| {
        infer()
            .header("content-type", "application/json")
            .body(b.to_string())
    };
    expect(json_body("{\"data\": [1, 2"), 400, "bad_json").await;
    expect(json_body("not json"), 400, "bad_json").await;
    expect(json_body(""), 400, "bad_json").await;
    expect(
        json_body("{\"data\": [\"a\", \"b\", \"c\", \"d\"]}"),
        400,
        "wrong_type",
    )
    .await;
    expect(json_body("{\"data\": {\"x\": 1}}"), 400, "wrong_type").await;
    expect(json_body("{\"unexpected\": 1}"), 400, "wrong_type").await;
    expect(json_body("{\"data\": [1, 2, 3]}"), 400, "bad_shape").await;
    expect(
        json_body("{\"data\": [1, 2, 3, 4], \"shape\": [2, 2]}"),
        400,
        "bad_shape",
    )
    .await;
    expect(
        json_body("{\"inputs\": {\"input\": {\"shape\": [1, 5], \"data\": [1, 2, 3, 4, 5]}}}"),
        400,
        "bad_shape",
    )
    .await;
    expect(
        json_body("{\"inputs\": {\"nope\": {\"data\": [1, 2, 3, 4]}}}"),
        400,
        "unknown_input",
    )
    .await;
    expect(json_body("{\"inputs\": {}}"), 400, "bad_inputs").await;
    expect(json_body("{}"), 400, "bad_request").await;
    let big = json!({"data": vec![0.5f32; 2000]});
    expect(infer().json(&big), 413, "body_too_large").await;
    expect(
        infer().header("content-type", "text/plain").body("1,2,3,4"),
        415,
        "unsupported_media_type",
    )
    .await;
    expect(
        infer()
            .header("content-type", "application/octet-stream")
            .body(vec![0u8; 15]),
        400,
        "bad_shape",
    )
    .await;
    expect(
        infer()
            .header("content-type", "application/octet-stream")
            .body(vec![0u8; 20]),
        400,
        "bad_shape",
    )
    .await;
    // Non-finite inputs: refused, not run (binary NaN; JSON 1e39 overflows f32).
    let nan: Vec<u8> = [f32::NAN, 1.0, 2.0, 3.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    expect(
        infer()
            .header("content-type", "application/octet-stream")
            .body(nan),
        400,
        "non_finite_input",
    )
    .await;
    expect(
        json_body("{\"data\": [1e39, 2, 3, 4]}"),
        400,
        "non_finite_input",
    )
    .await;
    // What `curl -d '{...}'` sends: form encoding, JSON body. Served.
    let r = infer()
        .header("content-type", "application/x-www-form-urlencoded")
        .body(json!({"data": ROWS[0]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fb = || http.post(format!("{api}/v1/feedback"));
    expect(
        fb().header("content-type", "application/json").body("{"),
        400,
        "bad_json",
    )
    .await;
    expect(fb().json(&json!({"request_id": 1})), 400, "bad_request").await;
    expect(
        fb().json(&json!({"request_id": "x", "label": 1})),
        400,
        "wrong_type",
    )
    .await;
    expect(
        fb().json(&json!({"request_id": 7, "label": 1})),
        404,
        "unknown_request",
    )
    .await;
    let ok: serde_json::Value = infer()
        .json(&json!({"data": ROWS[0]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    expect(
        fb().json(&json!({"request_id": ok["request_id"], "label": "no-such-class"})),
        400,
        "label_mismatch",
    )
    .await;
    expect(http.get(format!("{api}/v2/nothing")), 404, "not_found").await;

    // Still serving, over HTTP and in-process.
    let r = infer()
        .json(&json!({"data": ROWS[1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(s.agent().infer(InferRequest::new(ROWS[1].to_vec())).is_ok());
    let metrics = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "drover_agent_http_errors_total{error=\"bad_json\"} 4",
        "drover_agent_http_errors_total{error=\"wrong_type\"} 4",
        "drover_agent_http_errors_total{error=\"bad_shape\"} 5",
        "drover_agent_http_errors_total{error=\"body_too_large\"} 1",
        "drover_agent_http_errors_total{error=\"unsupported_media_type\"} 1",
        "drover_agent_http_errors_total{error=\"no_model\"} 1",
        "drover_agent_http_errors_total{error=\"non_finite_input\"} 2",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_mqtt_payloads_are_counted_and_ignored() {
    let s = Setup::start("mqtt").await;
    let v1 = s
        .deploy_classifier("sensor_clf_v1.onnx", 1)
        .await
        .model_ref();
    let mut rng = SplitMix(5);
    for channel in [Channel::Down, Channel::Chunk] {
        for len in [1usize, 2, 7, 64, 1000, 60_000] {
            let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            b[0] = codec::PROTOCOL_VERSION;
            s.peer.send_raw(channel, b).await;
        }
        s.peer.send_raw(channel, Vec::new()).await;
        s.peer.send_raw(channel, vec![9, 0, 0]).await;
        s.peer
            .send_raw(channel, vec![codec::PROTOCOL_VERSION; 260 * 1024])
            .await;
    }
    // Valid messages on the wrong channel.
    let ack = codec::encode(
        &Down::TelemetryAck(TelemetryAck { seqs: vec![1] }),
        codec::MAX_DOWN_PAYLOAD,
    )
    .unwrap();
    s.peer.send_raw(Channel::Chunk, ack).await;
    let chunk = Down::Chunk(Chunk {
        sha256: Sha256::of(b"nothing"),
        offset: 0,
        total: 4,
        data: vec![1, 2, 3, 4],
    });
    s.peer
        .send_raw(
            Channel::Down,
            codec::encode(&chunk, codec::MAX_CHUNK_PAYLOAD).unwrap(),
        )
        .await;
    // An unsolicited chunk on the right channel is ignored.
    s.peer.send_down(&chunk).await;

    // Messages are handled in order: once this is acknowledged, all of the
    // above has been seen.
    let seq = s
        .peer
        .command(Action::Configure(AgentSettings {
            telemetry_window_ms: Some(400),
            capture_per_mille: None,
        }))
        .await;
    assert_eq!(s.peer.ack_of(seq).await.result, Ok(()));
    // MQTT orders messages per topic only: the Configure ack proves every
    // `down` message was seen, but `chunk` messages may still be in flight.
    let malformed_total = |st: &drover_agent::AgentStatus| -> u64 {
        st.counters
            .iter()
            .filter(|(k, _)| k.starts_with("malformed."))
            .map(|(_, v)| v)
            .sum()
    };
    let agent = s.agent();
    eventually(
        "all 20 malformed payloads counted",
        Duration::from_secs(20),
        || {
            let st = agent.status();
            std::future::ready((malformed_total(&st) >= 2 * 9 + 2).then_some(()))
        },
    )
    .await;
    let st = s.agent().status();
    assert_eq!(malformed_total(&st), 2 * 9 + 2, "{:?}", st.counters);
    assert!(st.counters.contains_key("malformed.down_empty"));
    assert!(st.counters.contains_key("malformed.chunk_too_large"));
    assert!(
        st.counters
            .contains_key("malformed.down_unsupported_version")
    );
    assert!(st.counters.contains_key("malformed.chunk_wrong_channel"));
    assert_eq!(st.telemetry_window_ms, 400);
    let r = s
        .agent()
        .infer(InferRequest::new(ROWS[0].to_vec()))
        .unwrap();
    assert_eq!(*r.model, v1);
    assert!(st.link.connected);
}
